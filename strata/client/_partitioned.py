"""The producer of a partitioned topic: one ``TopicProducer`` per partition, and a router.

A partitioned topic ``t`` of N partitions is N ordinary topics ``t-partition-0`` ..
``t-partition-{N-1}`` (``GetPartitionedTopicMetadata`` tells N). ``PartitionedProducer`` is
pulsar's ``PartitionedProducerImpl``: it opens a producer on every partition, each with its
own stream, batches, sequence ids, receipts and reconnects (a partition that moves to
another broker reconnects alone), and routes each message (``strata.client._routing``):
by the Murmur3 hash of its key, else round robin. Ordering holds per key, and per partition;
there is none across partitions.

``max_pending_messages`` bounds the messages pending over all partitions together, as the
sync wrapper's semaphore does.
"""

from __future__ import annotations

import asyncio
import datetime
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING

from strata.client._errors import AlreadyClosed, InvalidArgument, ProducerQueueIsFull
from strata.client._message import MessageId
from strata.client._options import ProducerOptions
from strata.client._producer import AsyncProducer, SendCallback, TopicProducer, wait_for_room
from strata.client._routing import RoundRobinRouter, partition_for_key
from strata.naming import TopicName

if TYPE_CHECKING:
    from strata.client._connection import ConnectionPool


class PartitionedProducer(AsyncProducer):
    """Publishes to every partition of a partitioned topic. Made by ``create_producer``.

    Lifecycle: ``_start`` opens partition 0 first and then the others with partition 0's
    producer name (so that the producer has one name, as in pulsar), and fails as a whole
    if any partition cannot be opened; ``close`` closes every partition producer.
    """

    def __init__(
        self,
        pool: ConnectionPool,
        topic: str,
        num_partitions: int,
        options: ProducerOptions,
        *,
        on_space_freed: Callable[[int], None] | None = None,
        on_close: Callable[[AsyncProducer], None] | None = None,
    ) -> None:
        if num_partitions < 1:
            raise InvalidArgument("a partitioned topic has at least one partition")
        name = TopicName.parse(topic)
        self._pool = pool
        self._topic = str(name)
        self._partition_names = [str(name.partition(i)) for i in range(num_partitions)]
        self._requested_name = options.producer_name
        self._max_pending_messages = options.max_pending_messages
        self._block_if_queue_full = options.block_if_queue_full
        self._on_space_freed_outer = on_space_freed
        self._on_close = on_close
        # Every partition producer gets the whole limit and never blocks: the bound that
        # binds, and the blocking, are ours.
        self._partition_options = replace(options, block_if_queue_full=False)
        self._router = RoundRobinRouter(
            num_partitions,
            batching_enabled=options.batching_enabled,
            batching_max_messages=options.batching_max_messages,
            batching_max_bytes=options.batching_max_allowed_size_in_bytes,
            batching_max_publish_delay_ms=options.batching_max_publish_delay_ms,
        )
        self._partitions: list[TopicProducer] = []
        self._pending_messages = 0
        self._space_waiters: deque[asyncio.Future[None]] = deque()
        self._closed = False

    # ----------------------------------------------------------------- public API

    def topic(self) -> str:
        return self._topic

    def producer_name(self) -> str:
        return self._partitions[0].producer_name() if self._partitions else ""

    def last_sequence_id(self) -> int:
        return max((p.last_sequence_id() for p in self._partitions), default=-1)

    def is_connected(self) -> bool:
        return not self._closed and all(p.is_connected() for p in self._partitions)

    @property
    def pending_messages(self) -> int:
        return self._pending_messages

    @property
    def num_partitions(self) -> int:
        return len(self._partition_names)

    def partition_for(self, content: bytes, partition_key: str | None) -> int:
        """The partition the next message with this content and key goes to."""
        if partition_key is not None:
            return partition_for_key(partition_key, len(self._partitions))
        return self._router.choose(len(content))

    async def send_async(
        self,
        content: bytes,
        properties: Mapping[str, str] | None = None,
        partition_key: str | None = None,
        event_timestamp: int | None = None,
        *,
        deliver_at: datetime.datetime | None = None,
        deliver_after: datetime.timedelta | None = None,
        ordering_key: str | None = None,
        sequence_id: int | None = None,
    ) -> asyncio.Future[MessageId]:
        if self._pending_messages >= self._max_pending_messages and self._block_if_queue_full:
            await self.wait_for_space()
        self._check_room()
        producer = self._partitions[self.partition_for(content, partition_key)]
        future = await producer.send_async(
            content,
            properties,
            partition_key,
            event_timestamp,
            deliver_at=deliver_at,
            deliver_after=deliver_after,
            ordering_key=ordering_key,
            sequence_id=sequence_id,
        )
        self._pending_messages += 1
        return future

    def send_nowait(
        self,
        content: bytes,
        properties: Mapping[str, str] | None = None,
        partition_key: str | None = None,
        event_timestamp: int | None = None,
        callback: SendCallback | None = None,
        *,
        sequence_id: int | None = None,
    ) -> None:
        self._check_room()
        producer = self._partitions[self.partition_for(content, partition_key)]
        producer.send_nowait(
            content, properties, partition_key, event_timestamp, callback, sequence_id=sequence_id
        )
        self._pending_messages += 1

    async def wait_for_space(self) -> None:
        await wait_for_room(
            lambda: self._pending_messages < self._max_pending_messages,
            self._space_waiters,
            self._check_usable,
        )

    async def flush(self) -> None:
        results = await asyncio.gather(
            *(p.flush() for p in self._partitions), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await asyncio.gather(*(p.close() for p in self._partitions), return_exceptions=True)
        self._wake_space_waiters()
        if self._on_close is not None:
            self._on_close(self)

    # ------------------------------------------------------------------ internals

    async def _start(self) -> None:
        """Open every partition's producer; on any failure close those opened, and raise."""
        try:
            first = self._make_partition(0, self._requested_name)
            await first._start()
            self._partitions.append(first)
            name = first.producer_name()
            rest = [self._make_partition(i, name) for i in range(1, self.num_partitions)]
            results = await asyncio.gather(*(p._start() for p in rest), return_exceptions=True)
            self._partitions.extend(rest)
            for result in results:
                if isinstance(result, BaseException):
                    raise result
        except BaseException:
            self._closed = True
            await asyncio.gather(*(p.close() for p in self._partitions), return_exceptions=True)
            raise

    def _make_partition(self, index: int, producer_name: str | None) -> TopicProducer:
        return TopicProducer(
            self._pool,
            self._partition_names[index],
            replace(self._partition_options, producer_name=producer_name),
            on_space_freed=self._on_space_freed,
        )

    def _on_space_freed(self, num_messages: int) -> None:
        self._pending_messages -= num_messages
        self._wake_space_waiters()
        if self._on_space_freed_outer is not None:
            self._on_space_freed_outer(num_messages)

    def _wake_space_waiters(self) -> None:
        while self._space_waiters:
            waiter = self._space_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    def _check_room(self) -> None:
        self._check_usable()
        if self._pending_messages >= self._max_pending_messages:
            raise ProducerQueueIsFull(
                f"{self._pending_messages} messages are pending (max_pending_messages)"
            )

    def _check_usable(self) -> None:
        if self._closed:
            raise AlreadyClosed(f"producer on {self._topic} is closed")
