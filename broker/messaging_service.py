"""The gRPC edge of the data path: ``strata.v1.MessagingService`` (Produce and Consume).

Each stream has one reader (the handler task, via ``context.read()``) and one writer task;
requests are validated here, at the edge, and every domain error is turned into a status by
``broker.errors.to_status``. Anything unexpected is logged once and answered INTERNAL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from broker.edge import abort_for
from broker.entry_format import stored_entry_for
from broker.errors import InvalidRequestError, MessageTooLargeError, ServiceUnavailableError
from broker.managed_ledger import Position
from broker.service import BrokerService
from broker.subscription import SUBSCRIPTION_EXCLUSIVE, SUBSCRIPTION_SHARED, ConsumerSession
from broker.topic import Topic
from strata.naming import TopicName
from strata.v1 import messaging_pb2, messaging_pb2_grpc

log = logging.getLogger(__name__)

# A consumer may hold at most this many permits (Pulsar caps receiver queues similarly).
MAX_PERMITS_PER_CONSUMER = 1_000_000
MAX_PENDING_ACK_RECEIPTS = 1000
MAX_SUBSCRIPTION_NAME_LENGTH = 255
_EOF: Any = grpc.aio.EOF


async def _run_stream(
    context: grpc.aio.ServicerContext[Any, Any],
    reader: Awaitable[None],
    writer: Callable[[], Awaitable[None]],
    topic: Topic,
) -> None:
    """Run the reader inline-as-task and the writer as a task; the first failure ends both.
    When the topic closes (unloaded from this broker) the stream ends with UNAVAILABLE, and
    the client looks the topic up again."""
    read_task = asyncio.ensure_future(reader)
    write_task = asyncio.ensure_future(writer())

    async def watch_topic() -> None:
        await topic.closing.wait()
        raise ServiceUnavailableError(
            f"topic {topic.name} was unloaded from this broker; look it up again"
        )

    watch_task = asyncio.ensure_future(watch_topic())
    try:
        pending = {read_task, write_task, watch_task}
        while not (read_task.done() and write_task.done()):
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
    finally:
        for task in (read_task, write_task, watch_task):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


class MessagingServicer(messaging_pb2_grpc.MessagingServiceServicer):
    def __init__(self, broker: BrokerService) -> None:
        self._broker = broker

    # ---- Produce ------------------------------------------------------------------------

    async def Produce(  # type: ignore[override]
        self,
        request_iterator: Any,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> None:
        try:
            await self._produce(context)
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception as exc:
            await abort_for(context, exc, "messaging")

    async def _produce(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        first = await context.read()
        if first is _EOF:
            return
        if not isinstance(first, messaging_pb2.ProduceRequest) or not first.HasField("open"):
            raise InvalidRequestError("the first request of a Produce stream must be 'open'")
        name = TopicName.parse(first.open.topic)
        topic = await self._broker.get_topic(name)
        producer_name, last_sequence_id = topic.add_producer(
            first.open.producer_name, self._broker.config.broker_name
        )
        max_size = self._broker.config.max_message_size_bytes
        queue: asyncio.Queue[tuple[int, int, asyncio.Future[Position]] | None] = asyncio.Queue(
            maxsize=self._broker.config.max_pending_publish_batches_per_producer
        )
        try:
            await context.write(
                messaging_pb2.ProduceResponse(
                    opened=messaging_pb2.ProducerOpened(
                        topic=str(name),
                        producer_name=producer_name,
                        last_sequence_id=last_sequence_id,
                        max_message_size_bytes=max_size,
                    )
                )
            )

            async def read_batches() -> None:
                while True:
                    request = await context.read()
                    if request is _EOF:
                        break
                    if not request.HasField("publish"):
                        raise InvalidRequestError(
                            "after 'open', a Produce stream carries only 'publish' requests"
                        )
                    for batch in request.publish.batches:
                        if batch.num_messages <= 0:
                            raise InvalidRequestError(
                                f"batch {batch.sequence_id} has no messages (num_messages=0)"
                            )
                        if len(batch.payload) > max_size:
                            raise MessageTooLargeError(
                                f"batch {batch.sequence_id} is {len(batch.payload)} bytes; "
                                f"the maximum message size is {max_size} bytes"
                            )
                        entry = stored_entry_for(producer_name, batch)
                        future = topic.publish(entry, batch.num_messages)
                        await queue.put((batch.sequence_id, batch.num_messages, future))
                await queue.put(None)

            async def write_receipts() -> None:
                while True:
                    item = await queue.get()
                    if item is None:
                        return
                    receipts = []
                    while True:
                        sequence_id, count, future = item
                        ledger_id, entry_id = await future
                        receipts.append(
                            messaging_pb2.SendReceipt(
                                sequence_id=sequence_id,
                                ledger_id=ledger_id,
                                entry_id=entry_id,
                                num_messages=count,
                            )
                        )
                        topic.producers[producer_name] = sequence_id + count - 1
                        if queue.empty():
                            break
                        peek = queue._queue[0]  # type: ignore[attr-defined]
                        if peek is None or not peek[2].done():
                            break
                        item = queue.get_nowait()
                        assert item is not None
                    await context.write(
                        messaging_pb2.ProduceResponse(
                            receipts=messaging_pb2.SendReceipts(receipts=receipts)
                        )
                    )

            await _run_stream(context, read_batches(), write_receipts, topic)
        finally:
            topic.remove_producer(producer_name)

    # ---- Lookup ---------------------------------------------------------------------------

    async def Lookup(
        self, request: messaging_pb2.LookupRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> messaging_pb2.LookupResponse:
        try:
            name = TopicName.parse(request.topic)
            redirect, address, authoritative = await self._broker.lookup(
                name, request.authoritative
            )
        except Exception as exc:
            await abort_for(context, exc, "messaging")
        result = (
            messaging_pb2.LookupResponse.REDIRECT
            if redirect
            else (messaging_pb2.LookupResponse.CONNECT)
        )
        return messaging_pb2.LookupResponse(
            result=result, broker_address=address, authoritative=authoritative
        )

    async def GetPartitionedTopicMetadata(
        self,
        request: messaging_pb2.PartitionedTopicMetadataRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> messaging_pb2.PartitionedTopicMetadata:
        try:
            name = TopicName.parse(request.topic)
            await self._broker.check_namespace(name.namespace_name)
            partitions = await self._broker.partitions_of(name)
        except Exception as exc:
            await abort_for(context, exc, "messaging")
        return messaging_pb2.PartitionedTopicMetadata(partitions=partitions)

    # ---- Consume ------------------------------------------------------------------------

    async def Consume(  # type: ignore[override]
        self,
        request_iterator: Any,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> None:
        try:
            await self._consume(context)
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception as exc:
            await abort_for(context, exc, "messaging")

    async def _consume(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        first = await context.read()
        if first is _EOF:
            return
        if not isinstance(first, messaging_pb2.ConsumeRequest) or not first.HasField("subscribe"):
            raise InvalidRequestError("the first request of a Consume stream must be 'subscribe'")
        request = first.subscribe
        name = TopicName.parse(request.topic)
        subscription_name = request.subscription
        if not subscription_name:
            raise InvalidRequestError("subscription name is empty")
        if (
            len(subscription_name) > MAX_SUBSCRIPTION_NAME_LENGTH
            or not subscription_name.isprintable()
        ):
            raise InvalidRequestError(
                "subscription name must be printable, without '/', and at most "
                f"{MAX_SUBSCRIPTION_NAME_LENGTH} characters"
            )
        sub_type = request.type or SUBSCRIPTION_EXCLUSIVE
        if sub_type not in (SUBSCRIPTION_EXCLUSIVE, SUBSCRIPTION_SHARED):
            raise InvalidRequestError(
                f"subscription type {sub_type} is not supported yet (Exclusive and Shared are)"
            )
        topic = await self._broker.get_topic(name)
        subscription = await topic.get_subscription(
            subscription_name,
            sub_type,
            start_at_earliest=request.initial_position == messaging_pb2.INITIAL_POSITION_EARLIEST,
        )
        # Unbounded in type, bounded in practice: deliveries by the consumer's permits,
        # receipts by MAX_PENDING_ACK_RECEIPTS. None ends the writer.
        outbound: asyncio.Queue[messaging_pb2.ConsumeResponse | None] = asyncio.Queue()
        consumer_name = request.consumer_name or f"{subscription_name}-{id(outbound):x}"

        def send(deliveries: list[messaging_pb2.Delivery]) -> None:
            outbound.put_nowait(
                messaging_pb2.ConsumeResponse(
                    deliveries=messaging_pb2.Deliveries(deliveries=deliveries)
                )
            )

        session = ConsumerSession(consumer_name, send)
        subscription.add_consumer(session, sub_type)
        receipt_tasks: set[asyncio.Task[None]] = set()
        try:
            await context.write(
                messaging_pb2.ConsumeResponse(
                    subscribed=messaging_pb2.Subscribed(
                        topic=str(name), subscription=subscription_name, consumer_name=consumer_name
                    )
                )
            )

            async def send_receipt(request_id: int) -> None:
                await subscription.cursor.flush()
                outbound.put_nowait(
                    messaging_pb2.ConsumeResponse(
                        ack_receipt=messaging_pb2.AckReceipt(request_id=request_id)
                    )
                )

            async def read_requests() -> None:
                while True:
                    req = await context.read()
                    if req is _EOF:
                        # Half-closed by the client: let pending ack receipts go out first.
                        if receipt_tasks:
                            await asyncio.wait(receipt_tasks, timeout=10)
                        outbound.put_nowait(None)
                        return
                    kind = req.WhichOneof("request")
                    if kind == "flow":
                        if session.permits + req.flow.permits > MAX_PERMITS_PER_CONSUMER:
                            raise InvalidRequestError(
                                f"a consumer may hold at most {MAX_PERMITS_PER_CONSUMER} permits"
                            )
                        subscription.add_permits(session, req.flow.permits)
                    elif kind == "ack":
                        ack = req.ack
                        if ack.cumulative:
                            if subscription.type != SUBSCRIPTION_EXCLUSIVE:
                                raise InvalidRequestError(
                                    "cumulative acknowledgement is not allowed on a "
                                    f"{subscription.type_name} subscription"
                                )
                            if len(ack.message_ids) != 1:
                                raise InvalidRequestError(
                                    "a cumulative acknowledgement carries exactly one id"
                                )
                            mid = ack.message_ids[0]
                            subscription.acknowledge_cumulative((mid.ledger_id, mid.entry_id))
                        else:
                            for mid in ack.message_ids:
                                subscription.acknowledge(
                                    session,
                                    (mid.ledger_id, mid.entry_id),
                                    mid.batch_index,
                                    mid.batch_size,
                                )
                        if ack.request_id:
                            if len(receipt_tasks) >= MAX_PENDING_ACK_RECEIPTS:
                                raise InvalidRequestError(
                                    f"more than {MAX_PENDING_ACK_RECEIPTS} ack receipts pending"
                                )
                            task = asyncio.get_running_loop().create_task(
                                send_receipt(ack.request_id)
                            )
                            receipt_tasks.add(task)
                            task.add_done_callback(receipt_tasks.discard)
                    elif kind == "redeliver":
                        ids = req.redeliver.message_ids
                        positions = [(m.ledger_id, m.entry_id) for m in ids] if ids else None
                        subscription.redeliver(session, positions)
                    else:
                        raise InvalidRequestError(
                            "after 'subscribe', a Consume stream carries flow, ack or redeliver"
                        )

            async def write_responses() -> None:
                while (response := await outbound.get()) is not None:
                    await context.write(response)

            await _run_stream(context, read_requests(), write_responses, topic)
        finally:
            for task in list(receipt_tasks):
                task.cancel()
            subscription.remove_consumer(session)
