"""The asyncio consumer: consume streams, flow permits, grouped acks, redelivery, partitions.

Wire behaviour (the contract with the broker, ``proto/strata/v1/messaging.proto``):

1. ``Consume`` stream; the first request is ``subscribe``; the broker answers
   ``subscribed``. The consumer then grants ``Flow(permits=receiver_queue_size)``.
2. ``deliveries`` carry whole entries. Each is decoded (``StoredEntry`` → decompress →
   ``MessageBatch``) into one ``Message`` per payload, skipping the batch indexes the
   delivery's bitset marks as acknowledged. Permits count messages: each message the
   application takes, and each skipped one, uses one; once half the queue is used the
   consumer grants that many again (pulsar's refill at half).
3. Acknowledgements are grouped: sent every ``ack_group_time_ms`` (10 ms) or once
   ``ack_group_max_ids`` (1000) entries or loose ids are pending, whichever first. An entry
   whose messages this consumer has all acknowledged goes as one whole-entry id (batch
   index -1); otherwise each acknowledged index goes with the entry's batch size, and the
   broker keeps the per-entry bitset. (The count is of entries, not messages, so that an
   entry of 1000 messages is not cut into 999 index acks by the count trigger.)
4. ``flush_acknowledgements(wait_durable=True)`` sends pending acks with a non-zero
   ``request_id`` and waits for the matching ``ack_receipt``. The consumer keeps every ack
   it sent until a receipt covers it, and sends them again after a reconnect, so a receipt
   means durable even across a broker restart. This relies on the broker answering
   ``AckReceipt(r)`` only once every ack sent before it on the stream is durable. Without
   explicit requests the consumer asks for a receipt every ``MAX_UNCONFIRMED_ACK_IDS`` ids
   to bound that memory.
5. ``negative_acknowledge`` sends ``RedeliverUnacknowledged`` for the message after
   ``negative_ack_redelivery_delay_ms``.
6. After a retriable failure (the broker died, the topic moved, the broker says it does
   not own the topic) the stream is reopened with backoff on whichever broker serves the
   topic now (``Reconnector``), indefinitely, as pulsar does; the subscription resumes from
   its durable cursor. Messages received but not yet taken are dropped, since the broker
   redelivers what is unacknowledged (at-least-once).

A partitioned topic (pulsar's ``MultiTopicsConsumerImpl``): the consumer keeps one
``_ConsumerStream`` per partition, each subscribed, reconnecting and granting permits on
its own (``receiver_queue_size`` each, at most ``MAX_TOTAL_RECEIVER_QUEUE_SIZE_ACROSS_
PARTITIONS`` over all), and all delivering into the consumer's one queue, so ``receive``
merges the partitions in arrival order. Acks and negative acks are grouped across
partitions and split by the partition their ``MessageId`` names when sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from itertools import repeat
from typing import TYPE_CHECKING, Protocol

import grpc
import grpc.aio

from strata.client._batch import BatchDecodeError, DecodedEntry, acked_flags, decode_entry
from strata.client._connection import (
    Reconnector,
    open_stream,
    run_until_first_error,
    write_request,
)
from strata.client._dead_letter import ConsumerDeadLetterPolicy, DeadLetterMover
from strata.client._enums import ConsumerType, InitialPosition
from strata.client._errors import (
    AlreadyClosed,
    ConsumerBusy,
    InternalError,
    InvalidArgument,
    ProtocolError,
    ServiceUnavailable,
    StrataException,
    Timeout,
)
from strata.client._message import ChunkedMessage, EntryInfo, Message, MessageId
from strata.client._options import ConsumerKeySharedPolicy
from strata.naming import TopicName
from strata.v1 import messaging_pb2

if TYPE_CHECKING:
    from strata.client._connection import BrokerChannel, ConnectionPool

log = logging.getLogger("strata.client.consumer")

_Call = grpc.aio.StreamStreamCall[messaging_pb2.ConsumeRequest, messaging_pb2.ConsumeResponse]
_ReceiptWaiter = asyncio.Future[StrataException | None]

DEFAULT_ACK_GROUP_TIME_MS = 10
DEFAULT_ACK_GROUP_MAX_IDS = 1000
# Acks sent without a receipt are kept for resending after a reconnect; past this many ids
# the consumer asks the broker for a receipt on its own, and then forgets what it covers.
MAX_UNCONFIRMED_ACK_IDS = 10_000
# If the broker never answers receipts, the oldest unconfirmed acks are dropped past this.
MAX_RETAINED_ACK_IDS = 1_000_000
# close() half-closes the stream and waits this long for that to be written.
HALF_CLOSE_TIMEOUT_S = 1.0
# Acks resent after a reconnect travel in requests of at most this many ids.
RESEND_CHUNK_IDS = 10_000
# Pulsar's maxTotalReceiverQueueSizeAcrossPartitions: a partitioned consumer grants each
# partition at most this many permits divided by the partition count.
MAX_TOTAL_RECEIVER_QUEUE_SIZE_ACROSS_PARTITIONS = 50_000


class ConsumerEventListener(Protocol):
    """Told when a consumer of a Failover subscription becomes the active consumer of a
    partition or a standby (pulsar-client's ``ConsumerEventListener``). ``partition_id`` is
    the partition's index, -1 on a topic that is not partitioned. Called on the client's
    event loop; it must not block, and what it raises is logged and ignored."""

    def became_active(self, consumer: AsyncConsumer, partition_id: int) -> None: ...

    def became_inactive(self, consumer: AsyncConsumer, partition_id: int) -> None: ...


# The subscription types that take cumulative acknowledgements (as the broker's check_ack).
_CUMULATIVE_TYPES = (
    messaging_pb2.SUBSCRIPTION_TYPE_EXCLUSIVE,
    messaging_pb2.SUBSCRIPTION_TYPE_FAILOVER,
)

# The shortest ack timeout (Pulsar's Java client's minimum, 1 s).
MIN_ACK_TIMEOUT_MS = 1000

# Failover priority levels a consumer may ask for (0 = chosen first), as the broker bounds them.
MAX_PRIORITY_LEVEL = 1000

# Ordered: states at or past _CLOSED refuse work.
_CONNECTING, _READY, _CLOSED, _FAILED = range(4)


class _ChunkBuffer:
    """The chunks of one message received so far."""

    __slots__ = ("created", "ids", "metadata", "parts", "total_size")

    def __init__(self, created: float, total_size: int) -> None:
        self.created = created
        self.total_size = total_size
        self.parts: list[bytes] = []
        self.ids: list[MessageId] = []
        self.metadata: messaging_pb2.SingleMessageMetadata | None = None


class AsyncConsumer:
    """Receives the messages of one subscription. Made by ``AsyncClient.subscribe``.

    Lifecycle: ``subscribe`` opens the stream (one per partition of a partitioned topic)
    and returns once the broker answered; ``receive``/``receive_many`` then take messages,
    ``acknowledge`` and ``negative_acknowledge`` settle them; ``close`` makes the pending
    acks durable (bounded by the operation timeout) and ends the streams, the ack timer,
    the negative-ack timer and the stream tasks. If a stream task dies unexpectedly,
    waiting receives fail with ``InternalError``.
    """

    def __init__(
        self,
        pool: ConnectionPool,
        topic: str,
        subscription_name: str,
        *,
        num_partitions: int = 0,
        consumer_type: ConsumerType = ConsumerType.Exclusive,
        initial_position: InitialPosition = InitialPosition.Latest,
        receiver_queue_size: int = 1000,
        consumer_name: str | None = None,
        negative_ack_redelivery_delay_ms: int = 60_000,
        ack_group_time_ms: float = DEFAULT_ACK_GROUP_TIME_MS,
        ack_group_max_ids: int = DEFAULT_ACK_GROUP_MAX_IDS,
        priority_level: int = 0,
        consumer_event_listener: ConsumerEventListener | None = None,
        unacked_messages_timeout_ms: int | None = None,
        dead_letter_policy: ConsumerDeadLetterPolicy | None = None,
        reader_start: tuple[MessageId, bool] | None = None,
        key_shared_policy: ConsumerKeySharedPolicy | None = None,
        on_close: Callable[[AsyncConsumer], None] | None = None,
        max_pending_chunked_message: int = 10,
        auto_ack_oldest_chunked_message_on_queue_full: bool = False,
        expire_time_of_incomplete_chunked_message_ms: int = 60_000,
        read_compacted: bool = False,
    ) -> None:
        if not subscription_name:
            raise InvalidArgument("subscription_name must not be empty")
        if receiver_queue_size < 1:
            raise InvalidArgument("receiver_queue_size must be at least 1")
        if ack_group_max_ids < 1 or ack_group_time_ms < 0 or negative_ack_redelivery_delay_ms < 0:
            raise InvalidArgument("ack grouping and negative-ack settings must be positive")
        if num_partitions < 0:
            raise InvalidArgument("num_partitions must not be negative")
        if unacked_messages_timeout_ms is not None and (
            unacked_messages_timeout_ms < MIN_ACK_TIMEOUT_MS
        ):
            raise InvalidArgument(
                f"unacked_messages_timeout_ms must be at least {MIN_ACK_TIMEOUT_MS} (or None: off)"
            )
        if not 0 <= priority_level <= MAX_PRIORITY_LEVEL:
            raise InvalidArgument(f"priority_level must be within 0..{MAX_PRIORITY_LEVEL}")
        self._pool = pool
        name = TopicName.parse(topic)
        self._topic = str(name)
        self._subscription = subscription_name
        self._consumer_type = messaging_pb2.SubscriptionType.ValueType(
            int(ConsumerType(consumer_type))
        )
        self._initial_position = messaging_pb2.InitialPosition.ValueType(
            int(InitialPosition(initial_position))
        )
        self._consumer_name = consumer_name or ""
        self._priority_level = priority_level
        self._key_shared: messaging_pb2.KeySharedMeta | None = None
        if key_shared_policy is not None:
            if consumer_type != ConsumerType.KeyShared:
                raise InvalidArgument("key_shared_policy is for ConsumerType.KeyShared")
            self._key_shared = messaging_pb2.KeySharedMeta(
                mode=messaging_pb2.KeySharedMeta.Mode.ValueType(
                    int(key_shared_policy.key_shared_mode)
                ),
                ranges=[
                    messaging_pb2.KeySharedMeta.HashRange(start=start, end=end)
                    for start, end in key_shared_policy.sticky_ranges
                ],
            )
        # A reader's consumer: a non-durable subscription starting at (id, inclusive); kept
        # at the last message taken, so that a reconnect goes on from there.
        self._reader_start = reader_start
        self._event_listener = consumer_event_listener
        self._nack_delay_s = negative_ack_redelivery_delay_ms / 1000
        self._read_compacted = read_compacted
        if max_pending_chunked_message < 1 or expire_time_of_incomplete_chunked_message_ms < 0:
            raise InvalidArgument(
                "max_pending_chunked_message must be at least 1 and "
                "expire_time_of_incomplete_chunked_message_ms not negative"
            )
        # Chunked messages being put together, oldest first (pulsar-client's settings bound
        # them: at most max_pending_chunked_message, each at most the expiry old).
        self._chunks: dict[str, _ChunkBuffer] = {}
        self._max_pending_chunked = max_pending_chunked_message
        self._auto_ack_dropped_chunks = auto_ack_oldest_chunked_message_on_queue_full
        self._chunk_expiry_s = expire_time_of_incomplete_chunked_message_ms / 1000
        self._ack_timeout_s = (unacked_messages_timeout_ms or 0) / 1000
        self._dead_letters = (
            None
            if dead_letter_policy is None
            else DeadLetterMover(
                pool,
                self._topic,
                subscription_name,
                dead_letter_policy,
                self.acknowledge_nowait,
                self._create_subscription,
            )
        )
        self._ack_group_time_s = ack_group_time_ms / 1000
        self._ack_group_max_ids = ack_group_max_ids
        self._on_close = on_close

        self._state = _CONNECTING
        self._close_started = False
        self._failure: StrataException | None = None
        self._loop = asyncio.get_running_loop()
        self._tasks: list[asyncio.Task[None]] = []

        # One stream for a plain topic (or a single partition named directly), else one per
        # partition, at the partition's index.
        if num_partitions:
            permits = max(
                1,
                min(
                    receiver_queue_size,
                    MAX_TOTAL_RECEIVER_QUEUE_SIZE_ACROSS_PARTITIONS // num_partitions,
                ),
            )
            stream_topics = [str(name.partition(i)) for i in range(num_partitions)]
        else:
            permits = receiver_queue_size
            stream_topics = [self._topic]
        self._streams = [
            _ConsumerStream(self, stream_topic, permits) for stream_topic in stream_topics
        ]
        self._single = len(self._streams) == 1 and not num_partitions

        # Received messages not yet taken, and receivers waiting for some.
        self._queue: deque[Message] = deque()
        self._waiters: deque[asyncio.Future[None]] = deque()

        # Acks not yet sent: entries with acked indexes, loose ids, and how many of both.
        self._ack_entries: list[EntryInfo] = []
        self._ack_loose: list[messaging_pb2.MessageIdData] = []
        self._ack_count = 0
        self._ack_timer: asyncio.TimerHandle | None = None

        # Negative acks waiting for their redelivery delay: (due time, id).
        self._nacks: deque[tuple[float, messaging_pb2.MessageIdData]] = deque()
        self._nack_timer: asyncio.TimerHandle | None = None

        # Ack timeout: entries taken by the application, in the order taken, with the time
        # they are due; at most as many as the broker lets this consumer hold unacknowledged.
        self._timed_entries: deque[tuple[float, EntryInfo]] = deque()
        self._ack_timeout_timer: asyncio.TimerHandle | None = None

    # ----------------------------------------------------------------- public API

    def topic(self) -> str:
        """The canonical name of the topic (a partitioned topic's base name)."""
        return self._topic

    def subscription_name(self) -> str:
        return self._subscription

    def consumer_name(self) -> str:
        return self._streams[0].consumer_name or self._consumer_name

    def is_connected(self) -> bool:
        return self._state == _READY and all(stream.call is not None for stream in self._streams)

    @property
    def num_partitions(self) -> int:
        """The partitions consumed: 0 for a topic that is not partitioned."""
        return 0 if self._single else len(self._streams)

    async def receive(self, timeout_millis: int | None = None) -> Message:
        """The next message; raises ``Timeout`` after ``timeout_millis`` (None: wait forever)."""
        if not self._queue:
            await self._wait_for_messages(timeout_millis)
        message = self._queue.popleft()
        if self._single:
            self._streams[0].use_permits(1)
        else:
            self._streams[message._entry.partition].use_permits(1)
        if self._ack_timeout_s:
            self._start_ack_timeouts((message,))
        return message

    async def receive_many(
        self, max_messages: int = 1000, timeout_millis: int | None = None
    ) -> list[Message]:
        """Up to ``max_messages`` messages, waiting only for the first one.

        The batch-level fast path: one call per delivery rather than per message. Raises
        ``Timeout`` if no message came within ``timeout_millis``.
        """
        if not self._queue:
            await self._wait_for_messages(timeout_millis)
        queue = self._queue
        count = min(max_messages, len(queue))
        if count == len(queue):
            messages = list(queue)
            queue.clear()
        else:
            messages = [queue.popleft() for _ in range(count)]
        if self._single:
            self._streams[0].use_permits(count)
        else:
            self._use_partition_permits(messages)
        if self._ack_timeout_s:
            self._start_ack_timeouts(messages)
        return messages

    def _start_ack_timeouts(self, messages: Iterable[Message]) -> None:
        """Ack timeout (pulsar-client's ``unacked_messages_timeout_ms``): the entries of
        ``messages`` are redelivered unless acknowledged within the timeout."""
        due = time.monotonic() + self._ack_timeout_s
        timed = self._timed_entries
        for message in messages:
            entry = message._entry
            if not entry.timed:
                entry.timed = True
                timed.append((due, entry))
        if timed and self._ack_timeout_timer is None:
            self._ack_timeout_timer = self._loop.call_later(
                max(0.0, timed[0][0] - time.monotonic()), self._redeliver_timed_out
            )

    def _redeliver_timed_out(self) -> None:
        """Ask for the redelivery of the entries whose ack timeout passed with messages of
        them unacknowledged (the acks made so far are sent first, so the broker skips them)."""
        self._ack_timeout_timer = None
        now = time.monotonic()
        timed = self._timed_entries
        due: list[list[messaging_pb2.MessageIdData]] = [[] for _ in self._streams]
        while timed and timed[0][0] <= now + 0.001:
            entry = timed.popleft()[1]
            entry.timed = False
            if entry.remaining > 0:
                due[0 if self._single else entry.partition].append(
                    messaging_pb2.MessageIdData(
                        ledger_id=entry.ledger_id,
                        entry_id=entry.entry_id,
                        batch_index=-1,
                        partition=entry.partition,
                    )
                )
        if any(due):
            self._flush_acks()
            for stream, stream_ids in zip(self._streams, due, strict=True):
                if stream_ids:
                    stream.send(
                        messaging_pb2.ConsumeRequest(
                            redeliver=messaging_pb2.RedeliverUnacknowledged(message_ids=stream_ids)
                        )
                    )
        if timed:
            self._ack_timeout_timer = self._loop.call_later(
                max(0.0, timed[0][0] - now), self._redeliver_timed_out
            )

    async def acknowledge(self, message: Message | MessageId) -> None:
        """Acknowledge one message; it is sent grouped with others within a few ms."""
        self.acknowledge_nowait(message)

    def acknowledge_nowait(self, message: Message | MessageId) -> None:
        """``acknowledge`` without the coroutine: for hot loops and the sync wrapper."""
        self.acknowledge_many((message,))

    def acknowledge_many(self, messages: Iterable[Message | MessageId]) -> None:
        """Acknowledge several messages at once (no coroutine, no I/O)."""
        if self._state >= _CLOSED:
            self._check_usable()
        pending_entries = self._ack_entries
        added = 0
        for message in messages:
            if type(message) is Message:
                entry = message._entry
                index = message._index
                slot = index if index >= 0 else 0
                acked = entry.acked
                if acked[slot]:
                    continue  # acknowledged already
                acked[slot] = 1
                entry.remaining -= 1
                entry.pending_indexes.append(index)
                if entry.in_pending:
                    continue
                entry.in_pending = True
                pending_entries.append(entry)
            elif isinstance(message, MessageId):
                self._check_partition(message)
                self._ack_loose.append(message.to_proto())
            elif type(message) is ChunkedMessage:
                # Every chunk's entry (the message's own EntryInfo is the last chunk's).
                self._ack_loose.extend(chunk_id.to_proto() for chunk_id in message.chunk_ids())
            else:
                raise TypeError(f"cannot acknowledge {type(message).__name__}")
            added += 1
            if self._ack_count + added >= self._ack_group_max_ids:
                self._ack_count += added
                added = 0
                self._flush_acks()
                pending_entries = self._ack_entries
        if added:
            self._ack_added(added)

    async def acknowledge_cumulative(self, message: Message | MessageId) -> None:
        """Acknowledge this message and every earlier one of its topic (of its partition, on
        a partitioned topic): pulsar-client's ``acknowledge_cumulative``. Exclusive and
        Failover subscriptions only (``InvalidArgument`` on Shared, as the broker refuses it).
        Acknowledgements made before it are sent first."""
        self.acknowledge_cumulative_nowait(message)

    def acknowledge_cumulative_nowait(self, message: Message | MessageId) -> None:
        """``acknowledge_cumulative`` without the coroutine (the sync wrapper)."""
        self._check_usable()
        if self._consumer_type not in _CUMULATIVE_TYPES:
            name = ConsumerType(self._consumer_type).name
            raise InvalidArgument(
                f"cumulative acknowledgement is not allowed on a {name} subscription"
            )
        message_id = message.message_id() if isinstance(message, Message) else message
        self._check_partition(message_id)
        self._flush_acks()
        stream = self._stream_of(max(0, message_id.partition()))
        stream.send_acks([message_id.to_proto()], with_receipt=False, cumulative=True)

    def negative_acknowledge(self, message: Message | MessageId) -> None:
        """Ask for redelivery of this message after ``negative_ack_redelivery_delay_ms``; with
        a dead-letter policy, a message redelivered ``max_redeliver_count`` times already goes
        to the dead-letter topic instead (and is then acknowledged here)."""
        self._check_usable()
        if type(message) is ChunkedMessage:
            self._drop_chunk_ids(list(message.chunk_ids()))
            return
        movers = self._dead_letters
        if movers is not None and isinstance(message, Message) and movers.wants(message):
            movers.submit(message)
            return
        message_id = message.message_id() if isinstance(message, Message) else message
        self._check_partition(message_id)
        self._nacks.append((time.monotonic() + self._nack_delay_s, message_id.to_proto()))
        if self._nack_timer is None:
            self._nack_timer = self._loop.call_later(self._nack_delay_s, self._send_due_nacks)

    async def flush_acknowledgements(self, wait_durable: bool = True) -> None:
        """Send the pending acks now; with ``wait_durable``, wait until the broker confirms
        that they (and every ack sent before them) are durable, on every partition.

        Raises ``Timeout`` after the client's operation timeout.
        """
        self._check_usable()
        if not wait_durable:
            self._flush_acks()
            return
        receipts = self._flush_acks(with_receipts=True)
        timeout_s = self._pool.operation_timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                errors = await asyncio.gather(*(waiter for _, _, waiter in receipts))
        except TimeoutError:
            raise Timeout(f"no ack receipt within {timeout_s:g} s") from None
        finally:
            for stream, request_id, _ in receipts:
                stream.receipt_waiters.pop(request_id, None)
        for error in errors:
            if error is not None:
                raise error

    async def close(self) -> None:
        """Make pending acks durable (bounded by the operation timeout), then end the streams.

        Received messages not yet taken are dropped; the broker redelivers them. Idempotent.
        """
        if self._state == _CLOSED or self._close_started:
            return
        # The state stays READY while the final acks go out; this flag makes close() once.
        self._close_started = True
        if self._dead_letters is not None:
            await self._dead_letters.close()  # its acknowledgements go out below
        if self._state == _READY and (
            self._ack_count or any(stream.unconfirmed for stream in self._streams)
        ):
            try:
                if all(stream.call is not None for stream in self._streams):
                    await self.flush_acknowledgements(wait_durable=True)
                else:
                    # A stream is down: the broker redelivers what its acks would have covered.
                    self._flush_acks()
            except StrataException as exc:
                log.warning(
                    "consumer on %s closed before its acks were confirmed: %s", self._topic, exc
                )
        self._state = _CLOSED
        await asyncio.gather(*(stream.half_close() for stream in self._streams))
        await self._stop_tasks()
        self._wake_all(AlreadyClosed(f"consumer on {self._topic} was closed"))
        if self._on_close is not None:
            self._on_close(self)

    # ------------------------------------------------------------ lifecycle internals

    async def _start(self) -> None:
        """Open the streams; return when the broker answered ``subscribed`` on every one,
        or raise why not (the first failure)."""
        for stream in self._streams:
            task = self._loop.create_task(
                stream.run(), name=f"strata-consumer-stream {stream.topic}"
            )
            task.add_done_callback(self._on_task_done)
            self._tasks.append(task)
        timeout_s = self._pool.operation_timeout_s
        error: StrataException | None = None
        try:
            async with asyncio.timeout(timeout_s):
                for subscribed in asyncio.as_completed([s.subscribed for s in self._streams]):
                    error = await subscribed
                    if error is not None:
                        break
        except TimeoutError:
            pending = [s for s in self._streams if not s.subscribed.done()]
            last_error = pending[0].reconnector.describe_last_error() if pending else ""
            error = Timeout(
                f"could not subscribe to {self._topic} within {timeout_s:g} s{last_error}"
            )
        except BaseException:
            self._state = _CLOSED
            await self._stop_tasks()
            raise
        if error is not None:
            self._state = _CLOSED
            await self._stop_tasks()
            raise error
        if self._state == _CONNECTING:
            self._state = _READY

    async def _stop_tasks(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        for timer in (self._ack_timer, self._nack_timer, self._ack_timeout_timer):
            if timer is not None:
                timer.cancel()
        self._ack_timer = None
        self._nack_timer = None
        self._ack_timeout_timer = None
        self._timed_entries.clear()

    def _on_task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        error = task.exception()
        if error is None:
            return
        log.error("consumer task %s died", task.get_name(), exc_info=error)
        self._fail_consumer(InternalError(f"consumer task died: {error!r}"))

    def _stream_ended(self, stream: _ConsumerStream, error: StrataException) -> None:
        """A stream gave up reconnecting (a non-retriable error): the consumer fails."""
        if self._state >= _CLOSED:
            return
        if not stream.subscribed.done():
            # Still subscribing: _start raises this and closes the consumer.
            stream.subscribed.set_result(error)
            return
        self._fail_consumer(error)

    def _fail_consumer(self, error: StrataException) -> None:
        if self._state in (_CLOSED, _FAILED):
            return
        self._state = _FAILED
        self._failure = error
        for stream in self._streams:
            if not stream.subscribed.done():
                stream.subscribed.set_result(error)
        self._wake_all(error)

    def _wake_all(self, error: StrataException) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()
        for stream in self._streams:
            stream.fail_receipts(error)

    def _check_usable(self) -> None:
        if self._state <= _READY:
            return
        if self._state == _FAILED:
            assert self._failure is not None
            raise self._failure
        raise AlreadyClosed(f"consumer on {self._topic} is closed")

    def _check_partition(self, message_id: MessageId) -> None:
        if not self._single and not 0 <= message_id.partition() < len(self._streams):
            raise InvalidArgument(
                f"{message_id!r} names no partition of {self._topic} "
                f"({len(self._streams)} partitions)"
            )

    def _stream_of(self, partition: int) -> _ConsumerStream:
        return self._streams[0] if self._single else self._streams[partition]

    # -------------------------------------------------------------------- receiving

    async def _wait_for_messages(self, timeout_millis: int | None) -> None:
        deadline = None if timeout_millis is None else self._loop.time() + timeout_millis / 1000
        while not self._queue:
            self._check_usable()
            waiter: asyncio.Future[None] = self._loop.create_future()
            self._waiters.append(waiter)
            try:
                async with asyncio.timeout_at(deadline):
                    await waiter
            except TimeoutError:
                raise Timeout(f"no message within {timeout_millis} ms") from None
            finally:
                if not waiter.done():
                    waiter.cancel()
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)

    def _use_partition_permits(self, messages: Sequence[Message]) -> None:
        counts = [0] * len(self._streams)
        for message in messages:
            counts[message._entry.partition] += 1
        for stream, count in zip(self._streams, counts, strict=True):
            if count:
                stream.use_permits(count)

    def _drop_queued(self, stream: _ConsumerStream) -> None:
        """Forget the messages of ``stream`` not yet taken: its broker redelivers them."""
        if self._single:
            self._queue.clear()
        else:
            partition = stream.partition
            self._queue = deque(m for m in self._queue if m._entry.partition != partition)

    def _on_deliveries(
        self, stream: _ConsumerStream, deliveries: Iterable[messaging_pb2.Delivery]
    ) -> None:
        queue = self._queue
        topic = stream.topic
        partition = stream.partition
        skipped = 0
        for delivery in deliveries:
            try:
                decoded = decode_entry(delivery.entry)
            except BatchDecodeError as exc:
                # pulsar discards (and acknowledges) corrupt messages rather than block
                # the subscription on them forever.
                log.error(
                    "discarding corrupt entry %d:%d of %s: %s",
                    delivery.ledger_id,
                    delivery.entry_id,
                    topic,
                    exc,
                )
                self._ack_loose.append(
                    messaging_pb2.MessageIdData(
                        ledger_id=delivery.ledger_id,
                        entry_id=delivery.entry_id,
                        batch_index=-1,
                        partition=partition,
                    )
                )
                self._ack_added(1)
                skipped += 1
                continue
            if decoded.chunk is not None:
                chunked = self._on_chunk(stream, delivery, decoded)
                if chunked is None:
                    skipped += 1  # a part, not a message: its permit is used all the same
                else:
                    queue.append(chunked)
                continue
            payloads = decoded.payloads
            metadata = decoded.metadata
            count = len(payloads)
            words = delivery.acked_batch_indexes
            entry = EntryInfo(
                topic,
                partition,
                delivery.ledger_id,
                delivery.entry_id,
                count,
                decoded.publish_time_ms,
                delivery.redelivery_count,
                acked_flags(words, count) if words else None,
            )
            if not words:
                entry.remaining = count
                if count == 1:
                    queue.append(Message(payloads[0], entry, -1, metadata[0] if metadata else None))
                elif metadata:
                    queue.extend(map(Message, payloads, repeat(entry), range(count), metadata))
                else:
                    queue.extend(map(Message, payloads, repeat(entry), range(count)))
                continue
            acked = entry.acked
            remaining = 0
            for index in range(count):
                if acked[index]:
                    skipped += 1
                    continue
                remaining += 1
                queue.append(
                    Message(
                        payloads[index],
                        entry,
                        -1 if count == 1 else index,
                        metadata[index] if metadata else None,
                    )
                )
            entry.remaining = remaining
        if skipped:
            # The broker charged permits for the skipped messages too.
            stream.use_permits(skipped)
        if queue and self._waiters:
            for waiter in self._waiters:
                if not waiter.done():
                    waiter.set_result(None)
            self._waiters.clear()

    # ------------------------------------------------------------------ chunking

    def _on_chunk(
        self,
        stream: _ConsumerStream,
        delivery: messaging_pb2.Delivery,
        decoded: DecodedEntry,
    ) -> ChunkedMessage | None:
        """Keep one chunk; return the whole message once its last chunk is in."""
        chunk = decoded.chunk
        assert chunk is not None
        chunk_id = MessageId(
            delivery.ledger_id, delivery.entry_id, -1, stream.partition, 1, stream.topic
        )
        if delivery.acked_batch_indexes:
            return None  # acknowledged already (a redelivered entry)
        now = time.monotonic()
        self._expire_chunks(now)
        buffer = self._chunks.get(chunk.uuid)
        if buffer is None:
            if chunk.chunk_id != 0:
                # Its first chunks went elsewhere or were dropped: ask for all of it again.
                self._drop_chunk_ids([chunk_id])
                return None
            while len(self._chunks) >= self._max_pending_chunked:
                oldest = next(iter(self._chunks))
                log.warning(
                    "dropping chunked message %s of %s: max_pending_chunked_message=%d",
                    oldest,
                    self._topic,
                    self._max_pending_chunked,
                )
                self._drop_chunk_ids(self._chunks.pop(oldest).ids)
            buffer = self._chunks[chunk.uuid] = _ChunkBuffer(now, chunk.total_size)
        if chunk.chunk_id < len(buffer.ids):
            return None  # a chunk we hold, redelivered
        if chunk.chunk_id != len(buffer.ids) or len(decoded.payloads) != 1:
            del self._chunks[chunk.uuid]
            self._drop_chunk_ids([*buffer.ids, chunk_id])
            return None
        buffer.parts.append(decoded.payloads[0])
        buffer.ids.append(chunk_id)
        if decoded.metadata:
            buffer.metadata = decoded.metadata[0]
        if len(buffer.ids) < chunk.num_chunks:
            return None
        del self._chunks[chunk.uuid]
        data = b"".join(buffer.parts)
        if len(data) != buffer.total_size:
            log.error(
                "discarding chunked message %s of %s: %d bytes, its chunks say %d",
                chunk.uuid,
                self._topic,
                len(data),
                buffer.total_size,
            )
            self.acknowledge_many(buffer.ids)
            return None
        entry = EntryInfo(
            stream.topic,
            stream.partition,
            delivery.ledger_id,
            delivery.entry_id,
            1,
            decoded.publish_time_ms,
            delivery.redelivery_count,
            None,
        )
        entry.remaining = 1
        return ChunkedMessage(data, entry, buffer.metadata, tuple(buffer.ids))

    def _expire_chunks(self, now: float) -> None:
        if not self._chunk_expiry_s:
            return
        while self._chunks:
            uuid, oldest = next(iter(self._chunks.items()))
            if now - oldest.created < self._chunk_expiry_s:
                return
            log.warning("chunked message %s of %s expired incomplete", uuid, self._topic)
            del self._chunks[uuid]
            self._drop_chunk_ids(oldest.ids)

    def _drop_chunk_ids(self, ids: list[MessageId]) -> None:
        """Chunks given up: acknowledged (``auto_ack_oldest_chunked_message_on_queue_full``)
        or asked for again after the negative-ack delay."""
        if self._auto_ack_dropped_chunks:
            self.acknowledge_many(ids)
            return
        due = time.monotonic() + self._nack_delay_s
        for chunk_id in ids:
            self._nacks.append((due, chunk_id.to_proto()))
        if ids and self._nack_timer is None:
            self._nack_timer = self._loop.call_later(self._nack_delay_s, self._send_due_nacks)

    # ------------------------------------------------------------------------ acks

    def _ack_added(self, count: int) -> None:
        self._ack_count += count
        if self._ack_count >= self._ack_group_max_ids:
            self._flush_acks()
        elif self._ack_timer is None:
            self._ack_timer = self._loop.call_later(self._ack_group_time_s, self._flush_acks)

    def _flush_acks(
        self, with_receipts: bool = False
    ) -> list[tuple[_ConsumerStream, int, _ReceiptWaiter]]:
        """Turn the pending acks into one ``Ack`` request per stream that has some.

        With ``with_receipts`` every stream's request asks for a receipt (even one with no
        ids, which confirms the acks sent before it); returns (stream, request id, waiter).
        """
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        ids = self._ack_loose
        self._ack_loose = []
        for entry in self._ack_entries:
            entry.in_pending = False
            if entry.remaining == 0:
                ids.append(
                    messaging_pb2.MessageIdData(
                        ledger_id=entry.ledger_id,
                        entry_id=entry.entry_id,
                        batch_index=-1,
                        batch_size=entry.batch_size,
                        partition=entry.partition,
                    )
                )
            else:
                for index in entry.pending_indexes:
                    ids.append(
                        messaging_pb2.MessageIdData(
                            ledger_id=entry.ledger_id,
                            entry_id=entry.entry_id,
                            batch_index=index,
                            batch_size=entry.batch_size,
                            partition=entry.partition,
                        )
                    )
            entry.pending_indexes = []
        self._ack_entries = []
        self._ack_count = 0
        if self._single:
            per_stream = [ids]
        else:
            per_stream = [[] for _ in self._streams]
            for message_id in ids:
                per_stream[message_id.partition].append(message_id)
        receipts: list[tuple[_ConsumerStream, int, _ReceiptWaiter]] = []
        for stream, stream_ids in zip(self._streams, per_stream, strict=True):
            receipt = stream.send_acks(stream_ids, with_receipt=with_receipts)
            if receipt is not None:
                receipts.append((stream, *receipt))
        return receipts

    def _send_due_nacks(self) -> None:
        self._nack_timer = None
        now = time.monotonic()
        due: list[list[messaging_pb2.MessageIdData]] = [[] for _ in self._streams]
        # 1 ms of slack groups the negative acks that fall due together.
        while self._nacks and self._nacks[0][0] <= now + 0.001:
            message_id = self._nacks.popleft()[1]
            due[0 if self._single else message_id.partition].append(message_id)
        for stream, stream_ids in zip(self._streams, due, strict=True):
            if stream_ids:
                stream.send(
                    messaging_pb2.ConsumeRequest(
                        redeliver=messaging_pb2.RedeliverUnacknowledged(message_ids=stream_ids)
                    )
                )
        if self._nacks:
            delay_s = max(0.0, self._nacks[0][0] - now)
            self._nack_timer = self._loop.call_later(delay_s, self._send_due_nacks)

    def _subscribe_request(self, stream: _ConsumerStream) -> messaging_pb2.ConsumeRequest:
        return messaging_pb2.ConsumeRequest(
            subscribe=messaging_pb2.Subscribe(
                topic=stream.topic,
                subscription=self._subscription,
                type=self._consumer_type,
                initial_position=self._initial_position,
                consumer_name=stream.consumer_name or self._consumer_name,
                priority_level=self._priority_level,
                key_shared=self._key_shared,
                non_durable=self._reader_start is not None,
                start_message_id=(
                    self._reader_start[0].to_proto() if self._reader_start is not None else None
                ),
                start_message_id_inclusive=(
                    self._reader_start[1] if self._reader_start is not None else False
                ),
                read_compacted=self._read_compacted,
            )
        )

    async def seek(self, target: MessageId | int) -> None:
        """Reset the subscription (pulsar-client's ``seek``): to a message id (it is the next
        received; ``MessageId.earliest``/``latest``), or to a publish time in ms since the epoch
        (the first message published at or after it). Messages received before are dropped and
        acknowledgements after the point forgotten. Only a subscription's single consumer may
        seek (``FailedPrecondition`` otherwise)."""
        self._check_usable()
        self._flush_acks()  # acks made before the seek go before it
        if isinstance(target, MessageId):
            streams = [self._stream_of(max(0, target.partition()))]
            seek = messaging_pb2.Seek(message_id=target.to_proto())
        elif isinstance(target, int):
            streams = list(self._streams)
            seek = messaging_pb2.Seek(publish_time_ms=target)
        else:
            raise TypeError(f"cannot seek to {type(target).__name__}")
        for stream in streams:
            request_id = stream._new_request_id()
            seek.request_id = request_id
            await stream.control(messaging_pb2.ConsumeRequest(seek=seek), request_id)
        if self._reader_start is not None and isinstance(target, MessageId):
            self._reader_start = (target, True)

    async def get_last_message_id(self) -> MessageId:
        """The id of the topic's last stored entry (``MessageId.earliest`` when it has none);
        not for partitioned topics."""
        self._check_usable()
        if not self._single:
            raise InvalidArgument("get_last_message_id needs a topic that is not partitioned")
        stream = self._streams[0]
        request_id = stream._new_request_id()
        response = await stream.control(
            messaging_pb2.ConsumeRequest(
                get_last_message_id=messaging_pb2.GetLastMessageId(request_id=request_id)
            ),
            request_id,
        )
        return MessageId.from_proto(response.last_message_id.message_id)

    def _on_seek_done(self, stream: _ConsumerStream) -> None:
        """The broker reset the subscription: what ``stream`` received before is stale. Its
        permits are granted again, its unconfirmed acks forgotten (applied before the reset,
        and never to be resent after it)."""
        before = len(self._queue)
        self._drop_queued(stream)
        if dropped := before - len(self._queue):
            stream.use_permits(dropped)
        stream.unconfirmed.clear()
        stream.unconfirmed_ids = 0

    def _dead_letter(self, message: Message) -> None:
        """Send ``message`` to the dead-letter topic now (a retry past its limit)."""
        if self._dead_letters is None:
            raise InvalidArgument("this consumer has no dead-letter policy")
        self._dead_letters.submit(message)

    async def _create_subscription(self, topic: str, subscription: str) -> None:
        """Create ``subscription`` on ``topic`` at its earliest message (a dead-letter topic's
        initial subscription) by subscribing once."""
        consumer = AsyncConsumer(
            self._pool,
            topic,
            subscription,
            consumer_type=ConsumerType.Shared,
            initial_position=InitialPosition.Earliest,
            receiver_queue_size=1,
        )
        await consumer._start()
        await consumer.close()

    def _on_active_change(self, stream: _ConsumerStream, is_active: bool) -> None:
        """Failover: the broker made this consumer the active one of ``stream``'s partition,
        or a standby. A standby's messages not yet taken are dropped (the broker gives them
        to the active consumer) and their permits granted again, as if they were taken."""
        if not is_active:
            before = len(self._queue)
            self._drop_queued(stream)
            if dropped := before - len(self._queue):
                stream.use_permits(dropped)
        listener = self._event_listener
        if listener is None:
            return
        partition_id = TopicName.parse(stream.topic).partition_index
        try:
            if is_active:
                listener.became_active(self, partition_id)
            else:
                listener.became_inactive(self, partition_id)
        except Exception:
            log.exception("consumer event listener failed")


class _ConsumerStream:
    """One consume stream of an ``AsyncConsumer``: the topic's, or one partition's.

    It subscribes on whichever broker serves its topic (through a ``Reconnector``), grants
    flow permits for its share of the receiver queue, sends the consumer's acks and
    negative acks for its partition, keeps the acks that no receipt has confirmed yet to
    send them again after a reconnect, and hands deliveries to the consumer. Owned by the
    consumer, which runs ``run`` as a task and cancels it in ``close``.
    """

    def __init__(self, consumer: AsyncConsumer, topic: str, receiver_queue_size: int) -> None:
        self.consumer = consumer
        self.topic = topic
        self.partition = TopicName.parse(topic).partition_index
        self.consumer_name = ""
        self.receiver_queue_size = receiver_queue_size
        self.refill_threshold = max(1, receiver_queue_size // 2)
        self.subscribed: asyncio.Future[StrataException | None] = consumer._loop.create_future()
        self.call: _Call | None = None
        # Permits used since the last Flow (taken or skipped messages).
        self.permits_used = 0
        # Requests for the writer, in order.
        self.outbox: deque[messaging_pb2.ConsumeRequest] = deque()
        self.writer_wakeup = asyncio.Event()
        # (ack sequence, ids, cumulative): acks sent and not yet covered by a receipt.
        self.unconfirmed: deque[tuple[int, list[messaging_pb2.MessageIdData], bool]] = deque()
        self.unconfirmed_ids = 0
        self.ack_sequence = 0
        # Receipt requests in flight: request id → ack sequence number it covers.
        self.receipt_marks: dict[int, int] = {}
        self.receipt_waiters: dict[int, _ReceiptWaiter] = {}
        # Seek and last-message-id requests in flight: request id → the answer's future.
        self.control_waiters: dict[int, asyncio.Future[messaging_pb2.ConsumeResponse]] = {}
        self.next_request_id = 1
        self.reconnector = Reconnector(
            consumer._pool,
            topic,
            f"consume stream of {consumer._subscription} on {topic}",
            may_retry=self._may_retry,
        )

    # ------------------------------------------------------------------ requests

    def send(self, request: messaging_pb2.ConsumeRequest) -> None:
        self.outbox.append(request)
        self.writer_wakeup.set()

    def use_permits(self, count: int) -> None:
        self.permits_used += count
        if self.permits_used >= self.refill_threshold:
            permits = self.permits_used
            self.permits_used = 0
            self.send(messaging_pb2.ConsumeRequest(flow=messaging_pb2.Flow(permits=permits)))

    def send_acks(
        self,
        ids: list[messaging_pb2.MessageIdData],
        *,
        with_receipt: bool,
        cumulative: bool = False,
    ) -> tuple[int, _ReceiptWaiter] | None:
        """Send ``ids`` in one ``Ack``, remembered until a receipt covers them; with
        ``with_receipt``, ask for one and return (request id, its waiter)."""
        request_id = 0
        if with_receipt:
            request_id = self._new_request_id()
        if not ids and not request_id:
            return None
        if ids:
            self.ack_sequence += 1
            self.unconfirmed.append((self.ack_sequence, ids, cumulative))
            self.unconfirmed_ids += len(ids)
            if (
                not request_id
                and self.unconfirmed_ids > MAX_UNCONFIRMED_ACK_IDS
                and not self.receipt_marks
            ):
                # Ask for a receipt on our own so that the resend memory stays bounded.
                request_id = self._new_request_id()
            while self.unconfirmed_ids > MAX_RETAINED_ACK_IDS and len(self.unconfirmed) > 1:
                _, dropped, _ = self.unconfirmed.popleft()
                self.unconfirmed_ids -= len(dropped)
                log.warning(
                    "broker sends no ack receipts; %d acks may be lost on reconnect", len(dropped)
                )
        waiter: _ReceiptWaiter | None = None
        if request_id:
            self.receipt_marks[request_id] = self.ack_sequence
            if with_receipt:
                waiter = self.consumer._loop.create_future()
                self.receipt_waiters[request_id] = waiter
        self.send(
            messaging_pb2.ConsumeRequest(
                ack=messaging_pb2.Ack(message_ids=ids, request_id=request_id, cumulative=cumulative)
            )
        )
        return None if waiter is None else (request_id, waiter)

    def _new_request_id(self) -> int:
        request_id = self.next_request_id
        self.next_request_id += 1
        return request_id

    def on_ack_receipt(self, request_id: int) -> None:
        mark = self.receipt_marks.pop(request_id, None)
        if mark is None:
            return  # a receipt from before a reconnect, already re-requested
        while self.unconfirmed and self.unconfirmed[0][0] <= mark:
            _, ids, _ = self.unconfirmed.popleft()
            self.unconfirmed_ids -= len(ids)
        # Receipts come in order, so this one covers every earlier request too.
        for earlier in [r for r, m in self.receipt_marks.items() if m <= mark and r < request_id]:
            del self.receipt_marks[earlier]
            self._resolve_receipt(earlier)
        self._resolve_receipt(request_id)

    def _resolve_receipt(self, request_id: int) -> None:
        waiter = self.receipt_waiters.get(request_id)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def fail_receipts(self, error: StrataException) -> None:
        for waiter in self.receipt_waiters.values():
            if not waiter.done():
                waiter.set_result(error)
        for control in self.control_waiters.values():
            if not control.done():
                control.set_exception(error)
        self.control_waiters.clear()

    async def control(
        self, request: messaging_pb2.ConsumeRequest, request_id: int
    ) -> messaging_pb2.ConsumeResponse:
        """Send a seek or last-message-id request and wait for its answer (bounded by the
        operation timeout)."""
        waiter: asyncio.Future[messaging_pb2.ConsumeResponse] = self.consumer._loop.create_future()
        self.control_waiters[request_id] = waiter
        self.send(request)
        timeout_s = self.consumer._pool.operation_timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                return await waiter
        except TimeoutError:
            raise Timeout(f"no answer from the broker within {timeout_s:g} s") from None
        finally:
            self.control_waiters.pop(request_id, None)

    def on_control(self, request_id: int, response: messaging_pb2.ConsumeResponse) -> None:
        waiter = self.control_waiters.get(request_id)
        if waiter is not None and not waiter.done():
            waiter.set_result(response)

    async def half_close(self) -> None:
        """Tell the broker we are done (bounded); the task is cancelled right after."""
        call = self.call
        if call is None:
            return
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError, TimeoutError):
            async with asyncio.timeout(HALF_CLOSE_TIMEOUT_S):
                await call.done_writing()

    # ---------------------------------------------------------------- the stream

    async def run(self) -> None:
        """Keep the stream subscribed (``Reconnector``); tell the consumer when it gives up."""
        error = await self.reconnector.run(self._attempt)
        self.consumer._stream_ended(self, error)

    def _may_retry(self, error: StrataException) -> bool:
        if self.consumer._state >= _CLOSED:
            return False
        # After a reconnect the broker may not yet have noticed that our old stream is
        # gone, and refuses the exclusive subscription as busy: that clears up, so it is
        # retried (as pulsar-client does).
        return error.retriable or (self.subscribed.done() and isinstance(error, ConsumerBusy))

    async def _attempt(self, broker: BrokerChannel) -> None:
        """Subscribe on ``broker`` and serve the stream until it fails (never returns)."""
        call = broker.messaging.Consume()
        try:
            subscribed = await open_stream(
                call, self.consumer._subscribe_request(self), "subscribed", "consume"
            )
            self._on_subscribed(subscribed, call)
            self.reconnector.opened()
            await run_until_first_error(self._read_loop(call), self._write_loop(call))
        finally:
            self.call = None
            call.cancel()

    def _on_subscribed(self, subscribed: messaging_pb2.Subscribed, call: _Call) -> None:
        if not self.subscribed.done():
            self.consumer_name = subscribed.consumer_name or self.consumer_name
            self.subscribed.set_result(None)
        else:
            # A new stream: the broker redelivers everything unacknowledged, so messages
            # not yet taken are dropped and the permits start afresh.
            self.consumer._drop_queued(self)
        self.permits_used = 0
        old_outbox = self.outbox
        self.outbox = deque()
        # Acks the old stream may have lost go again (acks are idempotent), then the
        # outstanding receipt requests, so their waiters hear from this stream; all before
        # the first Flow, so that the broker does not redeliver what they acknowledge.
        for _, ids, cumulative in self.unconfirmed:
            for start in range(0, len(ids), RESEND_CHUNK_IDS):
                self.outbox.append(
                    messaging_pb2.ConsumeRequest(
                        ack=messaging_pb2.Ack(
                            message_ids=ids[start : start + RESEND_CHUNK_IDS],
                            cumulative=cumulative,
                        )
                    )
                )
        for request_id in sorted(self.receipt_marks):
            self.outbox.append(
                messaging_pb2.ConsumeRequest(ack=messaging_pb2.Ack(request_id=request_id))
            )
        self.outbox.append(
            messaging_pb2.ConsumeRequest(flow=messaging_pb2.Flow(permits=self.receiver_queue_size))
        )
        for request in old_outbox:
            if request.WhichOneof("request") == "redeliver":
                self.outbox.append(request)
        self.call = call
        self.writer_wakeup.set()

    async def _write_loop(self, call: _Call) -> None:
        wakeup = self.writer_wakeup
        while True:
            await wakeup.wait()
            wakeup.clear()
            outbox = self.outbox
            while outbox:
                await write_request(call, outbox.popleft())

    async def _read_loop(self, call: _Call) -> None:
        consumer = self.consumer
        while (response := await call.read()) is not grpc.aio.EOF:
            assert isinstance(response, messaging_pb2.ConsumeResponse)
            kind = response.WhichOneof("response")
            if kind == "deliveries":
                consumer._on_deliveries(self, response.deliveries.deliveries)
            elif kind == "ack_receipt":
                if response.ack_receipt.error:
                    log.warning(
                        "the broker refused acknowledgements on %s: %s",
                        self.topic,
                        response.ack_receipt.error,
                    )
                self.on_ack_receipt(response.ack_receipt.request_id)
            elif kind == "active_consumer_change":
                consumer._on_active_change(self, response.active_consumer_change.is_active)
            elif kind == "seek_done":
                consumer._on_seek_done(self)
                self.on_control(response.seek_done.request_id, response)
            elif kind == "last_message_id":
                self.on_control(response.last_message_id.request_id, response)
            else:
                raise ProtocolError(f"unexpected {kind!r} on an open consume stream")
        raise ServiceUnavailable("the broker ended the consume stream")
