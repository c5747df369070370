"""The gRPC edge of the data path: ``strata.v1.MessagingService``.

A thin servicer. Produce and Consume each run one stream object (``ProducerStream``,
``ConsumerStream``) whose docstring tells its part in the protocol; their requests are
checked by the pure validators of ``broker.stream_requests``. Lookup,
GetPartitionedTopicMetadata and GetTopicsOfNamespace answer from ``BrokerService``. Every
method leaves through the broker's one error edge (``broker.edge``, shared with the admin
service): a domain error becomes its status, anything unexpected is logged once and
answered INTERNAL. Every call is authorized first (``broker.authorization``): the unary ones
by the class wrapper, Produce and Consume on their first request.
"""

from __future__ import annotations

from typing import Any

import grpc

from broker.authorization import authorize_calls
from broker.consumer_stream import ConsumerStream
from broker.edge import edge
from broker.errors import ResourceLimitError
from broker.producer_stream import ProducerStream
from broker.service import BrokerService
from strata.naming import NamespaceName, TopicName
from strata.v1 import messaging_pb2, messaging_pb2_grpc

# GetTopicsOfNamespace lists at most this many names (a bound on the response's size).
MAX_TOPICS_LISTED = 10_000


@authorize_calls("MessagingService", stream_methods=frozenset({"Produce", "Consume"}))
class MessagingServicer(messaging_pb2_grpc.MessagingServiceServicer):
    def __init__(self, broker: BrokerService) -> None:
        self._broker = broker
        self.authorizer = broker.authorizer

    # The context.read()/write() style of a grpc.aio stream handler returns None, which the
    # generated stub (typed for iterator handlers) does not know.
    @edge
    async def Produce(  # type: ignore[override]
        self, request_iterator: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        await ProducerStream(self._broker, context).run()

    @edge
    async def Consume(  # type: ignore[override]
        self, request_iterator: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        await ConsumerStream(self._broker, context).run()

    @edge
    async def Lookup(
        self, request: messaging_pb2.LookupRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> messaging_pb2.LookupResponse:
        name = TopicName.parse(request.topic)
        redirect, address, authoritative = await self._broker.lookup(name, request.authoritative)
        result = (
            messaging_pb2.LookupResponse.REDIRECT
            if redirect
            else messaging_pb2.LookupResponse.CONNECT
        )
        return messaging_pb2.LookupResponse(
            result=result, broker_address=address, authoritative=authoritative
        )

    @edge
    async def GetTopicsOfNamespace(
        self,
        request: messaging_pb2.GetTopicsOfNamespaceRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> messaging_pb2.GetTopicsOfNamespaceResponse:
        namespace = NamespaceName.parse(request.namespace)
        topics = sorted(await self._broker.list_topics(namespace))
        if len(topics) > MAX_TOPICS_LISTED:
            raise ResourceLimitError(
                f"{namespace} has {len(topics)} topics; at most {MAX_TOPICS_LISTED} are listed"
            )
        return messaging_pb2.GetTopicsOfNamespaceResponse(topics=topics)

    @edge
    async def GetPartitionedTopicMetadata(
        self,
        request: messaging_pb2.PartitionedTopicMetadataRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> messaging_pb2.PartitionedTopicMetadata:
        name = TopicName.parse(request.topic)
        await self._broker.check_namespace(name.namespace_name)
        partitions = await self._broker.partitions_of(name)
        return messaging_pb2.PartitionedTopicMetadata(partitions=partitions)
