"""Topic lookup and partition metadata: which broker serves a topic, and how many partitions.

The lookup protocol (``proto/strata/v1/messaging.proto``, pulsar's ``CommandLookupTopic``):

1. Ask a broker of the service URL ``Lookup(topic, authoritative=false)``.
2. ``REDIRECT(address, authoritative)``: ask that broker next, passing ``authoritative``
   on (a broker asked authoritatively takes the unowned topic itself); at most
   ``MAX_LOOKUP_REDIRECTS`` times, then the lookup fails with ``ServiceUnavailable``
   (retriable: ownership may be settling).
3. ``CONNECT(address)``: the answer; producers and consumers open their streams there.

A connection failure (UNAVAILABLE, DEADLINE_EXCEEDED) anywhere in the chain starts it again
at the next broker of the service URL; other errors are raised at once. A broker that does
not implement ``Lookup`` (UNIMPLEMENTED: a broker from before ownership) serves every topic
itself, and one without ``GetPartitionedTopicMetadata`` has no partitioned topics.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from strata.client._errors import NotSupported, ProtocolError, ServiceUnavailable
from strata.v1 import messaging_pb2

if TYPE_CHECKING:
    from strata.client._connection import ConnectionPool
    from strata.v1.messaging_pb2_grpc import MessagingServiceAsyncStub

# Pulsar's client follows at most 20 redirects (``MAX_LOOKUP_REDIRECTS`` in the C++ client).
MAX_LOOKUP_REDIRECTS = 20
# One Lookup call may wait this long (less if the operation timeout is shorter): a broker
# that accepted the connection but does not answer is given up for the next one.
LOOKUP_CALL_TIMEOUT_S = 10.0

_CONNECT = messaging_pb2.LookupResponse.CONNECT
_REDIRECT = messaging_pb2.LookupResponse.REDIRECT


async def lookup_topic(pool: ConnectionPool, topic: str) -> str:
    """The ``host:port`` of the broker that serves ``topic``, following redirects."""
    timeout_s = min(pool.operation_timeout_s, LOOKUP_CALL_TIMEOUT_S)

    async def follow(first_address: str) -> str:
        address = first_address
        authoritative = False
        for _ in range(MAX_LOOKUP_REDIRECTS + 1):
            request = messaging_pb2.LookupRequest(topic=topic, authoritative=authoritative)

            async def ask(
                stub: MessagingServiceAsyncStub, request: messaging_pb2.LookupRequest = request
            ) -> messaging_pb2.LookupResponse:
                return await stub.Lookup(request, timeout=timeout_s)

            try:
                response = await pool.unary(address, ask)
            except NotSupported:
                return address
            if response.result == _CONNECT:
                return response.broker_address or address
            if response.result != _REDIRECT or not response.broker_address:
                raise ProtocolError(
                    f"broker {address} answered a lookup of {topic} with result "
                    f"{response.result} and address {response.broker_address!r}"
                )
            address = response.broker_address
            authoritative = response.authoritative
        raise ServiceUnavailable(
            f"lookup of {topic} was redirected more than {MAX_LOOKUP_REDIRECTS} times "
            f"(last to {address})"
        )

    return await pool.call_service_brokers(follow)


async def partition_count(pool: ConnectionPool, topic: str) -> int:
    """``topic``'s partition count from any broker of the service URL; 0: not partitioned."""
    request = messaging_pb2.PartitionedTopicMetadataRequest(topic=topic)

    async def get(stub: MessagingServiceAsyncStub) -> messaging_pb2.PartitionedTopicMetadata:
        return await stub.GetPartitionedTopicMetadata(request, timeout=pool.operation_timeout_s)

    async def ask(address: str) -> int:
        try:
            metadata = await pool.unary(address, get)
        except NotSupported:
            return 0
        return int(metadata.partitions)

    return await pool.call_service_brokers(ask)


async def topics_of_namespace(pool: ConnectionPool, namespace: str) -> list[str]:
    """The topics of ``namespace`` that hold data, from any broker of the service URL."""
    request = messaging_pb2.GetTopicsOfNamespaceRequest(namespace=namespace)

    async def get(stub: MessagingServiceAsyncStub) -> messaging_pb2.GetTopicsOfNamespaceResponse:
        return await stub.GetTopicsOfNamespace(request, timeout=pool.operation_timeout_s)

    async def ask(address: str) -> list[str]:
        return list((await pool.unary(address, get)).topics)

    return await pool.call_service_brokers(ask)
