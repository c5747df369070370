"""One Produce call on the broker: ``ProducerStream``."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import grpc

from broker import backlog_quota
from broker.deduplication import DUPLICATE_POSITION, MAX_INFLIGHT_WAITS, Decision
from broker.entry_format import stored_entry_for
from broker.errors import BacklogQuotaExceededError, PreconditionError
from broker.limits import check_producer_room
from broker.metrics import PUBLISH_LATENCY_SECONDS
from broker.stream_driver import run_stream
from broker.stream_requests import check_open_request, check_publish_batch, check_publish_request
from strata.v1 import messaging_pb2

if TYPE_CHECKING:
    from broker.managed_ledger import Position
    from broker.service import BrokerService
    from broker.topic import Topic

_EOF: Any = grpc.aio.EOF


class ProducerStream:
    """One producer's Produce stream: batches in, receipts out, in sequence order.

    1. The client sends ``open`` (topic, and a producer name or "" to get one). The broker
       loads the topic (another broker's topic: FAILED_PRECONDITION naming the owner) and
       registers the producer with ``Topic.add_producer`` (a name already connected:
       FAILED_PRECONDITION). It answers ``opened`` with the producer name, the last sequence
       id receipted to that name on this topic (-1 if none; the client resumes after it) and
       the maximum message size.
    2. The client sends ``publish`` requests, each with batches in sequence order. Each batch
       is checked (``check_publish_batch``: at least one message, at most the maximum size,
       else INVALID_ARGUMENT ends the stream), wrapped once in its stored-entry header and
       appended to the topic as one ledger entry: per batch, never per message. With
       deduplication on (``broker.deduplication``), a batch whose sequence ids the topic
       has persisted is not stored again and gets a receipt at position (-1, -1); one whose
       first copy is still being written waits for it; one overlapping persisted ids is
       refused FAILED_PRECONDITION.
    3. A receipt goes out only once its entry is durable, and receipts go out in sequence
       order (an Architecture invariant): the writer waits for the oldest pending batch, then
       sends one ``SendReceipts`` for it and every following batch already durable, and
       records the last receipted sequence id with ``Topic.record_receipt``.
    4. At most ``max_pending_publish_batches_per_producer`` batches wait for their receipt;
       beyond that the reader stops reading, and gRPC flow control pushes back on the client.
    5. The stream ends OK when the client half-closes and every pending batch is receipted. A
       failed append (fenced ledger, no bookies) ends it with that error's status; a closing
       topic with UNAVAILABLE. Batches without a receipt are the client's to resend. The
       producer is unregistered however the stream ends.

    Lifecycle: ``run()`` once, for the whole call; its reader and writer are owned by
    ``broker.stream_driver.run_stream``.
    """

    def __init__(self, broker: BrokerService, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self._broker = broker
        self._context = context
        self._max_message_size_bytes = broker.config.max_message_size_bytes
        self._max_pending_batches = broker.config.max_pending_publish_batches_per_producer
        # Batches appended and not yet receipted, oldest first: (sequence id, message count,
        # future of the entry's durable position, monotonic time its request was read).
        self._pending: deque[tuple[int, int, asyncio.Future[Position], float]] = deque()
        self._appended = asyncio.Event()  # wakes the writer when a batch joins _pending
        self._room = asyncio.Event()  # wakes the reader when the writer made room in _pending
        self._reading = True

    async def run(self) -> None:
        first = await self._context.read()
        if first is _EOF:
            return
        request = check_open_request(first)
        await self._broker.authorizer.authorize("MessagingService/Produce", first)
        topic = await self._broker.get_topic(request.topic)
        if (
            topic.backlog_quota_exceeded is not None
            and topic.backlog_quota.policy == backlog_quota.EXCEPTION
        ):
            raise BacklogQuotaExceededError(topic.backlog_quota_exceeded)  # as Pulsar
        check_producer_room(
            topic, await self._broker.namespaces.limits_for(topic.name.namespace_name)
        )
        producer_name, last_sequence_id = topic.add_producer(
            request.producer_name, self._broker.config.broker_name
        )
        try:
            await self._context.write(
                messaging_pb2.ProduceResponse(
                    opened=messaging_pb2.ProducerOpened(
                        topic=str(request.topic),
                        producer_name=producer_name,
                        last_sequence_id=last_sequence_id,
                        max_message_size_bytes=self._max_message_size_bytes,
                    )
                )
            )
            await run_stream(
                topic,
                self._read_batches(topic, producer_name),
                self._write_receipts(topic, producer_name),
            )
        finally:
            topic.remove_producer(producer_name)

    async def _read_batches(self, topic: Topic, producer_name: str) -> None:
        pending = self._pending
        while (request := await self._context.read()) is not _EOF:
            check_publish_request(request)
            received = time.monotonic()
            for batch in request.publish.batches:
                check_publish_batch(batch, self._max_message_size_bytes)
                while len(pending) >= self._max_pending_batches:
                    self._room.clear()
                    await self._room.wait()
                if topic.backlog_quota_exceeded is not None:
                    await self._respect_backlog_quota(topic)
                limiter = topic.publish_limiter
                if limiter is not None:  # the namespace's publish rate: pause reading
                    limiter.charge(batch.num_messages, len(batch.payload))
                    await limiter.wait()
                if topic.deduplication.enabled:
                    future = await self._publish_once(topic, producer_name, batch)
                else:
                    future = topic.publish(
                        stored_entry_for(producer_name, batch),
                        batch.num_messages,
                        batch.deliver_at_time_ms,
                    )
                pending.append((batch.sequence_id, batch.num_messages, future, received))
                self._appended.set()
        self._reading = False
        self._appended.set()

    async def _respect_backlog_quota(self, topic: Topic) -> None:
        """Over quota (``broker.backlog_quota``): refuse at once (producer_exception) or wait
        for room, at most the hold timeout (producer_request_hold)."""
        refusal = topic.backlog_quota_exceeded
        if refusal is None or topic.backlog_quota.policy == backlog_quota.EVICTION:
            return
        if topic.backlog_quota.policy == backlog_quota.EXCEPTION:
            raise BacklogQuotaExceededError(refusal)
        timeout_s = self._broker.config.backlog_quota_hold_timeout_seconds
        try:
            await asyncio.wait_for(topic.backlog_quota_cleared.wait(), timeout_s)
        except TimeoutError:
            raise BacklogQuotaExceededError(
                f"{topic.backlog_quota_exceeded or refusal}; held {timeout_s:g} s"
            ) from None

    async def _publish_once(
        self, topic: Topic, producer_name: str, batch: messaging_pb2.ProducerBatch
    ) -> asyncio.Future[Position]:
        """Publish a batch unless deduplication knows it (``broker.deduplication``): a
        duplicate's future is already done, with the duplicate position."""
        dedup = topic.deduplication
        first = batch.sequence_id
        last = first + batch.num_messages - 1
        decision = dedup.check(producer_name, first, last)
        for _ in range(MAX_INFLIGHT_WAITS):
            if decision is not Decision.IN_FLIGHT:
                break
            await dedup.wait_in_flight(producer_name)
            decision = dedup.check(producer_name, first, last)
        if decision is Decision.IN_FLIGHT:
            persisted = dedup.last_sequence_id(producer_name)
            raise PreconditionError(
                f"batch of sequence ids {first}..{last} overlaps those producer "
                f"{producer_name!r} already published (persisted up to {persisted}): "
                "send batches that start after the persisted id"
            )
        if decision is Decision.DUPLICATE:
            done: asyncio.Future[Position] = asyncio.get_running_loop().create_future()
            done.set_result(DUPLICATE_POSITION)
            return done
        future = topic.publish(
            stored_entry_for(producer_name, batch), batch.num_messages, batch.deliver_at_time_ms
        )
        dedup.pushed(producer_name, last, future)
        return future

    async def _write_receipts(self, topic: Topic, producer_name: str) -> None:
        pending = self._pending
        while True:
            if not pending:
                if not self._reading:
                    return
                self._appended.clear()
                await self._appended.wait()
                continue
            # Receipts go in sequence order: the oldest batch first. ``wait`` rather than
            # ``await``: if this stream ends meanwhile, the entry's future must not be
            # cancelled with it (the write goes on, and deduplication learns its outcome).
            if not pending[0][2].done():
                await asyncio.wait([pending[0][2]])
            receipts = []
            now = time.monotonic()
            while pending and pending[0][2].done():
                sequence_id, count, future, received = pending.popleft()
                ledger_id, entry_id = future.result()
                PUBLISH_LATENCY_SECONDS.observe(now - received)
                receipts.append(
                    messaging_pb2.SendReceipt(
                        sequence_id=sequence_id,
                        ledger_id=ledger_id,
                        entry_id=entry_id,
                        num_messages=count,
                    )
                )
            self._room.set()
            last = receipts[-1]
            topic.record_receipt(producer_name, last.sequence_id + last.num_messages - 1)
            await self._context.write(
                messaging_pb2.ProduceResponse(
                    receipts=messaging_pb2.SendReceipts(receipts=receipts)
                )
            )
