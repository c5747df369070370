"""The asyncio producer: batching, the produce stream, receipts, reconnects.

Wire behaviour (the contract with the broker, ``proto/strata/v1/messaging.proto``):

1. ``Produce`` stream; the first request is ``open`` (canonical topic, producer name); the
   broker answers ``opened`` with the producer name, the last persisted sequence id (-1 for
   none) and the largest batch payload it accepts.
2. Messages accumulate into one open batch, sealed when it holds ``batching_max_messages``,
   reaches ``batching_max_allowed_size_in_bytes`` or has waited
   ``batching_max_publish_delay_ms`` (whichever comes first). The delay is a maximum: with
   no batch awaiting a receipt, the open batch goes at the end of the current event-loop
   pass; while a batch awaits its receipt (``HOLD_AFTER_BATCHES_IN_FLIGHT``, 1) it gathers,
   and goes as soon as the receipts are in (Nagle-style, clocked by receipts). At
   low rates nothing waits for a timer (which costs 1-2 ms in asyncio); under load the
   batches grow with the round trip, so a slow cluster is offered fewer, larger entries
   instead of one per delay, which is what let a replicated cluster fall behind its own
   queue (ARCHITECTURE.md, "Session 10"). Full batches never wait: throughput keeps its
   pipeline. The delay only bounds the hold when a receipt is slow. A sealed batch is one
   ``ProducerBatch``: first sequence id, count, compression, the ``MessageBatch`` payload.
   Every sealed batch not yet written is sent by the writer; when several are ready they
   share one ``PublishBatches`` request.
3. The broker answers ``receipts`` in sequence order; message i of a batch becomes
   ``MessageId(ledger_id, entry_id, i, partition)``, or batch index -1 for a batch of one.
4. When the stream fails with a retriable status (the broker died, the topic moved, the
   broker says it does not own the topic), the producer looks the topic up again (or goes
   to the owner the refusal named) and reopens the stream there with backoff
   (``Reconnector``), then resends every batch without a receipt, in order, so their
   receipts still come back. It gives up (failing what is pending) after a non-retriable
   status, or once no pending message can make its send timeout and the stream has been
   down for ``send_timeout_millis``. A batch without a receipt after
   ``send_timeout_millis`` fails with ``Timeout``, together with every batch behind it, as
   pulsar does.

``AsyncProducer`` is the public interface; ``TopicProducer`` implements it for one topic (or
one partition) and ``PartitionedProducer`` (``_partitioned``) routes over one per partition.

Bookkeeping is per batch: a message has a waiter (a future or a callback) only if the
caller asked for one, and a batch resolves its waiters when its receipt arrives.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import datetime
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, TypeAlias

import grpc
import grpc.aio

from strata.client._batch import PAYLOAD_OVERHEAD_BYTES, BatchBuilder, make_metadata
from strata.client._connection import (
    Reconnector,
    open_stream,
    run_until_first_error,
    write_request,
)
from strata.client._enums import BatchingType, CompressionType
from strata.client._errors import (
    AlreadyClosed,
    InternalError,
    InvalidArgument,
    MessageTooBig,
    ProducerBusy,
    ProducerQueueIsFull,
    ProtocolError,
    Result,
    ServiceUnavailable,
    StrataException,
    Timeout,
)
from strata.client._message import MessageId
from strata.client._options import ProducerOptions
from strata.naming import TopicName
from strata.v1 import messaging_pb2

if TYPE_CHECKING:
    from strata.client._connection import BrokerChannel, ConnectionPool

log = logging.getLogger("strata.client.producer")

SendCallback: TypeAlias = Callable[[Result, MessageId | None], None]
_Waiter: TypeAlias = "asyncio.Future[MessageId] | SendCallback"

# Several ready batches share one gRPC message up to this size; the channel allows 8 MiB.
MAX_PUBLISH_REQUEST_BYTES = 4 * 1024 * 1024
# With this many batches awaiting receipts, an open batch waits for a receipt or its delay.
HOLD_AFTER_BATCHES_IN_FLIGHT = 1
# Chunking: room a chunk leaves in a batch for the batch's own encoding, and the most chunks
# of one message (the broker's bound).
CHUNK_OVERHEAD_BYTES = 1024
MAX_CHUNKS = 100_000
# Explicit sequence ids are signed 64-bit, as Pulsar's.
MAX_SEQUENCE_ID = (1 << 63) - 1
# A receipt for a batch the broker had stored before (deduplication) names this position.
DUPLICATE_RECEIPT_ID = (1 << 64) - 1
# close() half-closes the stream and waits this long for that to be written.
HALF_CLOSE_TIMEOUT_S = 1.0
# Used until the broker says otherwise in ProducerOpened (pulsar's default maxMessageSize).
DEFAULT_MAX_MESSAGE_SIZE_BYTES = 5 * 1024 * 1024

_CONNECTING, _READY, _CLOSING, _CLOSED, _FAILED = range(5)


def _resolve(waiter: _Waiter, message_id: MessageId) -> None:
    if isinstance(waiter, asyncio.Future):
        if not waiter.done():
            waiter.set_result(message_id)
        return
    try:
        waiter(Result.Ok, message_id)
    except Exception:
        log.exception("send callback raised")


def _reject(waiter: _Waiter, error: StrataException) -> None:
    if isinstance(waiter, asyncio.Future):
        if not waiter.done():
            waiter.set_exception(error)
        return
    try:
        waiter(error.result, None)
    except Exception:
        log.exception("send callback raised")


class _PendingBatch:
    """A sealed batch between sealing and its receipt (pulsar's ``OpSendMsg``, per batch)."""

    __slots__ = ("completion", "deadline", "num_messages", "request", "sequence_id", "waiters")

    def __init__(
        self,
        request: messaging_pb2.ProducerBatch,
        waiters: list[tuple[int, _Waiter]] | None,
        deadline: float,
    ) -> None:
        self.request = request
        self.sequence_id = request.sequence_id
        self.num_messages = request.num_messages
        self.waiters = waiters
        self.deadline = deadline
        # Made only when someone flushes; its result is the error that failed the batch.
        self.completion: asyncio.Future[StrataException | None] | None = None


async def wait_for_room(
    has_room: Callable[[], bool],
    waiters: deque[asyncio.Future[None]],
    check_usable: Callable[[], None],
) -> None:
    """Wait until ``has_room()``; each wake-up of a future in ``waiters`` re-checks, and
    ``check_usable`` raises once the producer has failed or closed."""
    while not has_room():
        check_usable()
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters.append(waiter)
        try:
            await waiter
        finally:
            with contextlib.suppress(ValueError):
                waiters.remove(waiter)
    check_usable()


class AsyncProducer(abc.ABC):
    """Publishes messages to one topic. Made by ``AsyncClient.create_producer``.

    Lifecycle: ``create_producer`` opens the stream (one per partition of a partitioned
    topic) and returns once the broker answered; ``send``/``send_async``/``send_nowait`` may
    then be called from the client's event loop; ``flush`` waits for every receipt;
    ``close`` flushes, then ends the streams and the producer's background tasks. If a
    background task dies unexpectedly every pending send fails with ``InternalError``.

    On a partitioned topic a message with a ``partition_key`` goes to the partition of its
    key (``strata.client._routing``), one without to the partitions in turn; its
    ``MessageId`` names the partition.
    """

    @abc.abstractmethod
    def topic(self) -> str:
        """The canonical ``persistent://`` name of the topic (a partitioned topic's base name)."""

    @abc.abstractmethod
    def producer_name(self) -> str: ...

    @abc.abstractmethod
    def last_sequence_id(self) -> int:
        """The sequence id of the last message given an id by the broker, or -1 (the highest
        over the partitions of a partitioned topic)."""

    @abc.abstractmethod
    def is_connected(self) -> bool: ...

    @property
    @abc.abstractmethod
    def pending_messages(self) -> int:
        """Messages sent but without a receipt yet (the open batches included)."""

    async def send(
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
    ) -> MessageId:
        """Publish one message and return its id once the broker has it durably."""
        future = await self.send_async(
            content,
            properties,
            partition_key,
            event_timestamp,
            deliver_at=deliver_at,
            deliver_after=deliver_after,
            ordering_key=ordering_key,
            sequence_id=sequence_id,
        )
        return await future

    @abc.abstractmethod
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
        """Queue one message; returns the future of its id (aiokafka's shape).

        Waits for room when ``max_pending_messages`` are pending and ``block_if_queue_full``
        is set, else raises ``ProducerQueueIsFull``. ``fut = await producer.send_async(b"x")``
        then ``await fut`` when the id is needed.

        Delayed delivery (pulsar-client's ``deliver_at``/``deliver_after``): a Shared
        subscription delivers the message not before that time (Exclusive and Failover ones
        at once, as Pulsar). Such a message is sent as a batch of its own.

        ``sequence_id`` (pulsar-client's): number the message explicitly, 0 to 2^63-1; the
        messages after it continue from it. With deduplication on, the broker stores a
        sequence id of a producer name once: a message at or below the producer's
        ``last_sequence_id()`` gets a receipt with ``MessageId(-1, -1)`` and is not stored
        again (Pulsar's behaviour). A batch holds consecutive ids only.
        """

    @abc.abstractmethod
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
        """Queue one message without waiting and without a future: the cheapest send.

        ``callback(result, message_id)``, if given, runs on the event loop when the receipt
        (or the failure) arrives. Raises ``ProducerQueueIsFull`` when there is no room
        (whatever ``block_if_queue_full`` says; see ``wait_for_space``) and
        ``MessageTooBig``/``AlreadyClosed`` at once.
        """

    @abc.abstractmethod
    async def wait_for_space(self) -> None:
        """Return once fewer than ``max_pending_messages`` messages are pending."""

    @abc.abstractmethod
    async def flush(self) -> None:
        """Send the open batches now and wait until every message sent so far has a receipt.

        Raises the error that failed the last pending batch, if one did, and the producer's
        failure once it has failed.
        """

    @abc.abstractmethod
    async def close(self) -> None:
        """Flush (bounded by the send timeout), end the streams and the background tasks.

        Messages still without a receipt then fail with ``AlreadyClosed``. Idempotent.
        """


class TopicProducer(AsyncProducer):
    """The producer of one topic, or of one partition of a partitioned topic.

    Background tasks: the stream task (``_run``, driving a ``Reconnector``) and the
    send-timeout watchdog (``_expire_loop``); both are cancelled and awaited by ``close``.
    """

    def __init__(
        self,
        pool: ConnectionPool,
        topic: str,
        options: ProducerOptions,
        *,
        on_space_freed: Callable[[int], None] | None = None,
        on_close: Callable[[AsyncProducer], None] | None = None,
    ) -> None:
        self._pool = pool
        self._topic = str(TopicName.parse(topic))
        self._partition = -1
        self._requested_name = options.producer_name or ""
        self._producer_name = options.producer_name or ""
        self._send_timeout_s = options.send_timeout_millis / 1000
        self._compression = messaging_pb2.CompressionType.ValueType(
            int(CompressionType(options.compression_type))
        )
        self._max_pending_messages = options.max_pending_messages
        self._block_if_queue_full = options.block_if_queue_full
        self._batch_max_messages = options.batching_max_messages if options.batching_enabled else 1
        self._batch_max_bytes_setting = options.batching_max_allowed_size_in_bytes
        self._batch_max_bytes = options.batching_max_allowed_size_in_bytes
        self._batch_delay_s = options.batching_max_publish_delay_ms / 1000
        self._key_based = BatchingType(options.batching_type) == BatchingType.KeyBased
        self._max_message_size_bytes = DEFAULT_MAX_MESSAGE_SIZE_BYTES
        self._on_space_freed = on_space_freed
        self._on_close = on_close

        self._state = _CONNECTING
        self._failure: StrataException | None = None
        self._last_sequence_id = -1
        self._next_sequence_id = 0

        # The open batch, its first sequence id, its waiters and its publish-delay timer.
        self._batch: BatchBuilder | None = None
        self._batch_sequence_id = 0
        self._batch_waiters: list[tuple[int, _Waiter]] | None = None
        # A Handle (call_soon) while the window has room, else a TimerHandle (the delay).
        self._batch_timer: asyncio.Handle | None = None
        self._batch_deliver_at_ms = 0  # delayed delivery of the open batch (0 = at once)
        self._batch_chunk: messaging_pb2.ChunkInfo | None = None  # taken by the next _seal()
        self._chunking = options.chunking_enabled
        self._chunked_messages = 0
        self._batch_key = ""  # its first message's key: Key_Shared dispatches by it

        # Sealed batches awaiting receipts, in sequence order; _unsent is the suffix of
        # _pending not yet written on the current stream.
        self._pending: deque[_PendingBatch] = deque()
        self._unsent: deque[_PendingBatch] = deque()
        self._pending_messages = 0  # in the open batch and in _pending
        self._space_waiters: deque[asyncio.Future[None]] = deque()
        self._writer_wakeup = asyncio.Event()

        self._opened: asyncio.Future[StrataException | None] = (
            asyncio.get_running_loop().create_future()
        )
        self._call: (
            grpc.aio.StreamStreamCall[messaging_pb2.ProduceRequest, messaging_pb2.ProduceResponse]
            | None
        ) = None
        self._tasks: list[asyncio.Task[None]] = []
        self._reconnector = Reconnector(
            pool,
            self._topic,
            f"produce stream to {self._topic}",
            may_retry=self._may_retry,
            deadline_s=self._retry_deadline_s,
        )

    # ----------------------------------------------------------------- public API

    def topic(self) -> str:
        return self._topic

    def producer_name(self) -> str:
        return self._producer_name

    def last_sequence_id(self) -> int:
        return self._last_sequence_id

    def is_connected(self) -> bool:
        return self._state == _READY and self._call is not None

    @property
    def pending_messages(self) -> int:
        return self._pending_messages

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
        metadata = make_metadata(properties, partition_key, event_timestamp, ordering_key)
        deliver_at_ms = delivery_time_ms(deliver_at, deliver_after)
        if self._pending_messages >= self._max_pending_messages and self._block_if_queue_full:
            await self.wait_for_space()
        future: asyncio.Future[MessageId] = asyncio.get_running_loop().create_future()
        alone = sequence_id is not None and self._use_sequence_id(sequence_id)
        if self._needs_chunks(content, metadata):
            chunks = self._chunk_count(content, metadata)
            while (
                self._block_if_queue_full
                and self._pending_messages + chunks > self._max_pending_messages
                and self._pending_messages
            ):
                await self.wait_for_space()
            self._send_chunked(content, metadata, future)
            return future
        if deliver_at_ms:
            # A batch of its own: the broker holds back whole entries.
            if self._batch is not None:
                self._seal()
            self._batch_deliver_at_ms = deliver_at_ms  # taken by the next _seal()
            try:
                self._enqueue(content, metadata, future)
                if self._batch is not None:
                    self._seal()
            finally:
                self._batch_deliver_at_ms = 0
        else:
            self._enqueue(content, metadata, future)
            if alone and self._batch is not None:
                self._seal()
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
        metadata = (
            None
            if properties is None and partition_key is None and event_timestamp is None
            else make_metadata(properties, partition_key, event_timestamp)
        )
        alone = sequence_id is not None and self._use_sequence_id(sequence_id)
        if self._needs_chunks(content, metadata):
            self._send_chunked(content, metadata, callback)
            return
        self._enqueue(content, metadata, callback)
        if alone and self._batch is not None:
            self._seal()

    # ------------------------------------------------------------------ chunking

    def _chunk_size(self, metadata: messaging_pb2.SingleMessageMetadata | None) -> int:
        overhead = CHUNK_OVERHEAD_BYTES + (metadata.ByteSize() if metadata is not None else 0)
        return max(1, self._max_message_size_bytes - overhead)

    def _needs_chunks(
        self, content: bytes, metadata: messaging_pb2.SingleMessageMetadata | None
    ) -> bool:
        return (
            self._chunking
            and isinstance(content, bytes | bytearray | memoryview)
            and len(content) > self._chunk_size(metadata)
        )

    def _chunk_count(
        self, content: bytes, metadata: messaging_pb2.SingleMessageMetadata | None
    ) -> int:
        size = self._chunk_size(metadata)
        return -(-len(content) // size)

    def _send_chunked(
        self,
        content: bytes,
        metadata: messaging_pb2.SingleMessageMetadata | None,
        waiter: _Waiter | None,
    ) -> None:
        """Send a message over the broker's size limit as chunks: each a batch of one
        message with its ``ChunkInfo``; the waiter resolves with the last chunk's receipt."""
        content = bytes(content)
        size = self._chunk_size(metadata)
        count = self._chunk_count(content, metadata)
        if count > MAX_CHUNKS:
            raise MessageTooBig(
                f"message of {len(content)} bytes needs {count} chunks; at most {MAX_CHUNKS}"
            )
        if self._pending_messages + count > self._max_pending_messages:
            raise ProducerQueueIsFull(
                f"a message of {count} chunks does not fit in max_pending_messages"
            )
        if self._batch is not None:
            self._seal()
        self._chunked_messages += 1
        uuid = f"{self._producer_name}-{self._chunked_messages}-{time.time_ns()}"
        for index in range(count):
            self._batch_chunk = messaging_pb2.ChunkInfo(
                uuid=uuid, chunk_id=index, num_chunks=count, total_size=len(content)
            )
            self._enqueue(
                content[index * size : (index + 1) * size],
                metadata,
                waiter if index == count - 1 else None,
            )
            if self._batch is not None:
                self._seal()

    def _use_sequence_id(self, sequence_id: int) -> bool:
        """The next message gets ``sequence_id``; an open batch not ending just before it is
        sealed first (a batch holds consecutive ids). Returns True when the message must go
        as a batch of its own: an id at or below the last one the broker persisted for this
        producer name may be a duplicate, and a batch must not mix those with new ids (the
        broker refuses such a batch; Pulsar's Java client isolates them the same way)."""
        if type(sequence_id) is not int or not 0 <= sequence_id <= MAX_SEQUENCE_ID:
            raise InvalidArgument(f"sequence_id must be an int within 0..{MAX_SEQUENCE_ID}")
        if self._state != _READY:
            self._check_usable()
        alone = sequence_id <= self._last_sequence_id
        if self._batch is not None and (alone or sequence_id != self._next_sequence_id):
            self._seal()
        self._next_sequence_id = sequence_id
        return alone

    async def wait_for_space(self) -> None:
        await wait_for_room(
            lambda: self._pending_messages < self._max_pending_messages,
            self._space_waiters,
            self._check_usable,
        )

    async def flush(self) -> None:
        if self._state == _FAILED:
            assert self._failure is not None
            raise self._failure
        if self._batch is not None:
            self._seal()
        if not self._pending:
            return
        last = self._pending[-1]
        if last.completion is None:
            last.completion = asyncio.get_running_loop().create_future()
        error = await asyncio.shield(last.completion)
        if error is not None:
            raise error

    async def close(self) -> None:
        if self._state in (_CLOSING, _CLOSED):
            return
        was_failed = self._state == _FAILED
        self._state = _CLOSING
        if not was_failed:
            try:
                timeout_s = self._send_timeout_s or self._pool.operation_timeout_s
                async with asyncio.timeout(timeout_s):
                    await self.flush()
            except (StrataException, TimeoutError) as exc:
                log.warning(
                    "producer %s on %s closed with unsent messages: %s",
                    self._producer_name,
                    self._topic,
                    exc,
                )
        self._state = _CLOSED
        call = self._call
        if call is not None:
            # A half-close tells the broker we are done; the stream is cancelled right after.
            with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError, TimeoutError):
                async with asyncio.timeout(HALF_CLOSE_TIMEOUT_S):
                    await call.done_writing()
        await self._stop_tasks()
        self._fail_everything(AlreadyClosed(f"producer on {self._topic} was closed"))
        if self._on_close is not None:
            self._on_close(self)

    # ------------------------------------------------------------ lifecycle internals

    async def _start(self) -> None:
        """Open the stream; return when the broker answered ``opened`` or raise why not."""
        loop = asyncio.get_running_loop()
        run = loop.create_task(self._run(), name=f"strata-producer-stream {self._topic}")
        expire = loop.create_task(
            self._expire_loop(), name=f"strata-producer-timeout {self._topic}"
        )
        for task in (run, expire):
            task.add_done_callback(self._on_task_done)
            self._tasks.append(task)
        try:
            async with asyncio.timeout(self._pool.operation_timeout_s):
                error = await asyncio.shield(self._opened)
        except TimeoutError:
            error = Timeout(
                f"could not open a producer on {self._topic} within "
                f"{self._pool.operation_timeout_s:g} s{self._reconnector.describe_last_error()}"
            )
        except BaseException:
            await self._abort(AlreadyClosed("create_producer was cancelled"))
            raise
        if error is not None:
            await self._abort(error)
            raise error

    async def _abort(self, error: StrataException) -> None:
        self._state = _CLOSED
        await self._stop_tasks()
        self._fail_everything(error)

    async def _stop_tasks(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self._batch_timer is not None:
            self._batch_timer.cancel()
            self._batch_timer = None

    def _on_task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        error = task.exception()
        if error is None:
            return
        # The owner's promise: a dead loop fails its waiters instead of hanging them.
        log.error("producer task %s died", task.get_name(), exc_info=error)
        failure = InternalError(f"producer task died: {error!r}")
        self._fail_producer(failure)
        if self._call is not None:
            self._call.cancel()

    def _check_usable(self) -> None:
        if self._state == _READY or self._state == _CONNECTING:
            return
        if self._state == _FAILED:
            assert self._failure is not None
            raise self._failure
        raise AlreadyClosed(f"producer on {self._topic} is closed")

    # --------------------------------------------------------------------- batching

    def _enqueue(
        self,
        content: bytes,
        metadata: messaging_pb2.SingleMessageMetadata | None,
        waiter: _Waiter | None,
    ) -> None:
        if self._state != _READY:
            self._check_usable()
        if type(content) is not bytes:
            if isinstance(content, (bytearray, memoryview)):
                content = bytes(content)
            else:
                raise TypeError(f"message content must be bytes, not {type(content).__name__}")
        size = len(content) + PAYLOAD_OVERHEAD_BYTES
        if metadata is not None:
            size += metadata.ByteSize() + PAYLOAD_OVERHEAD_BYTES
        if size > self._max_message_size_bytes:
            raise MessageTooBig(
                f"message of {len(content)} bytes exceeds the broker's limit of "
                f"{self._max_message_size_bytes} bytes"
            )
        if self._pending_messages >= self._max_pending_messages:
            raise ProducerQueueIsFull(
                f"{self._pending_messages} messages are pending (max_pending_messages)"
            )
        batch = self._batch
        key = sticky_key(metadata) if self._key_based else ""
        if batch is not None and (
            batch.size_bytes + size > self._batch_max_bytes
            or (self._key_based and key != self._batch_key)
        ):
            self._seal()
            batch = None
        if batch is None:
            batch = self._batch = BatchBuilder()
            self._batch_key = key if self._key_based else sticky_key(metadata)
            self._batch_sequence_id = self._next_sequence_id
            if self._batch_max_messages > 1:
                loop = asyncio.get_running_loop()
                if len(self._pending) >= HOLD_AFTER_BATCHES_IN_FLIGHT:
                    self._batch_timer = loop.call_later(self._batch_delay_s, self._on_batch_timer)
                else:
                    # Room in the window: the batch holds what this pass of the event loop
                    # adds and goes at its end, rather than idling for the delay.
                    self._batch_timer = loop.call_soon(self._on_batch_timer)
        payloads = batch.payloads
        if waiter is not None:
            waiters = self._batch_waiters
            if waiters is None:
                waiters = self._batch_waiters = []
            waiters.append((len(payloads), waiter))
        if metadata is None and batch.metadata is None:
            # The common case, inlined: this runs once per message at 200k+ msg/s.
            payloads.append(content)
            batch.size_bytes += size
        else:
            batch.add(content, metadata)
        self._next_sequence_id += 1
        self._pending_messages += 1
        if len(payloads) >= self._batch_max_messages or batch.size_bytes >= self._batch_max_bytes:
            self._seal()

    def _on_batch_timer(self) -> None:
        self._batch_timer = None
        if self._batch is not None:
            self._seal()

    def _seal(self) -> None:
        """Encode the open batch and queue it for the writer."""
        batch = self._batch
        assert batch is not None
        waiters = self._batch_waiters
        self._batch = None
        self._batch_waiters = None
        if self._batch_timer is not None:
            self._batch_timer.cancel()
            self._batch_timer = None
        num_messages = len(batch.payloads)
        payload, uncompressed_size = batch.encode(self._compression)
        if len(payload) > self._max_message_size_bytes:
            # Only reachable through metadata or compression overhead: the per-message check
            # keeps the uncompressed payloads under the limit.
            error = MessageTooBig(
                f"batch of {len(payload)} bytes exceeds the broker's limit of "
                f"{self._max_message_size_bytes} bytes"
            )
            for _, waiter in waiters or ():
                _reject(waiter, error)
            self._release(num_messages)
            return
        request = messaging_pb2.ProducerBatch(
            sequence_id=self._batch_sequence_id,
            num_messages=num_messages,
            compression=self._compression,
            uncompressed_size=uncompressed_size,
            publish_time_ms=time.time_ns() // 1_000_000,
            payload=payload,
            deliver_at_time_ms=self._batch_deliver_at_ms,
            sticky_key=self._batch_key,
            chunk=self._batch_chunk,
        )
        self._batch_deliver_at_ms = 0
        self._batch_chunk = None
        deadline = time.monotonic() + self._send_timeout_s if self._send_timeout_s else float("inf")
        pending = _PendingBatch(request, waiters, deadline)
        self._pending.append(pending)
        self._unsent.append(pending)
        self._writer_wakeup.set()

    # ---------------------------------------------------------------- completion

    def _release(self, num_messages: int) -> None:
        self._pending_messages -= num_messages
        while self._space_waiters:
            space_waiter = self._space_waiters.popleft()
            if not space_waiter.done():
                space_waiter.set_result(None)
        if self._on_space_freed is not None:
            self._on_space_freed(num_messages)

    def _complete(
        self, batch: _PendingBatch, ledger_id: int, entry_id: int, duplicate: bool = False
    ) -> None:
        num_messages = batch.num_messages
        last = batch.sequence_id + num_messages - 1
        if last > self._last_sequence_id:  # explicit ids may resend lower ones (duplicates)
            self._last_sequence_id = last
        if batch.waiters:
            partition = self._partition
            if duplicate:
                for _, waiter in batch.waiters:
                    _resolve(waiter, MessageId(-1, -1, -1, partition))
            elif num_messages == 1:
                _resolve(batch.waiters[0][1], MessageId(ledger_id, entry_id, -1, partition, 1))
            else:
                for index, waiter in batch.waiters:
                    _resolve(waiter, MessageId(ledger_id, entry_id, index, partition, num_messages))
        if batch.completion is not None and not batch.completion.done():
            batch.completion.set_result(None)
        self._release(num_messages)

    def _fail_batch(self, batch: _PendingBatch, error: StrataException) -> None:
        for _, waiter in batch.waiters or ():
            _reject(waiter, error)
        if batch.completion is not None and not batch.completion.done():
            batch.completion.set_result(error)
        self._release(batch.num_messages)

    def _fail_pending(self, error: StrataException) -> None:
        """Fail every sealed batch without a receipt (pulsar fails them all on timeout)."""
        pending = self._pending
        self._pending = deque()
        self._unsent.clear()
        for batch in pending:
            self._fail_batch(batch, error)

    def _fail_everything(self, error: StrataException) -> None:
        if self._batch is not None:
            batch = self._batch
            waiters = self._batch_waiters
            self._batch = None
            self._batch_waiters = None
            if self._batch_timer is not None:
                self._batch_timer.cancel()
                self._batch_timer = None
            for _, waiter in waiters or ():
                _reject(waiter, error)
            self._release(len(batch.payloads))
        self._fail_pending(error)
        if not self._opened.done():
            self._opened.set_result(error)
        for space_waiter in self._space_waiters:
            if not space_waiter.done():
                space_waiter.set_result(None)

    def _fail_producer(self, error: StrataException) -> None:
        if self._state in (_CLOSED, _FAILED):
            return
        self._state = _FAILED
        self._failure = error
        self._fail_everything(error)

    # ----------------------------------------------------------------- the stream

    async def _run(self) -> None:
        """Keep the stream open (``Reconnector``); fail the producer when retrying ends."""
        error = await self._reconnector.run(self._attempt)
        if self._state in (_CLOSED, _FAILED):
            return
        if self._opened.done():
            self._fail_producer(error)
        else:
            self._opened.set_result(error)

    async def _attempt(self, broker: BrokerChannel) -> None:
        """Open the stream on ``broker`` and serve it until it fails (never returns)."""
        call = broker.messaging.Produce()
        try:
            request = messaging_pb2.ProduceRequest(
                open=messaging_pb2.OpenProducer(
                    topic=self._topic, producer_name=self._requested_name
                )
            )
            opened = await open_stream(call, request, "opened", "produce")
            self._on_opened(opened, call)
            self._reconnector.opened()
            await run_until_first_error(self._read_loop(call), self._write_loop(call))
        finally:
            self._call = None
            call.cancel()

    def _may_retry(self, error: StrataException) -> bool:
        if self._state in (_CLOSED, _FAILED):
            return False
        # While closing, reconnecting goes on so that close() can flush; close() bounds it.
        # After a reconnect the broker may not yet have noticed that our old stream is gone,
        # and refuses our own name as busy: that clears up, so it is retried.
        return error.retriable or (self._opened.done() and isinstance(error, ProducerBusy))

    def _retry_deadline_s(self, down_since: float) -> float | None:
        """Reconnecting goes on while a pending message may still make its send timeout,
        and for at least ``send_timeout_millis`` after the stream went down. The first
        open is bounded by ``create_producer``'s operation timeout instead."""
        if not self._opened.done() or not self._send_timeout_s:
            return None
        deadline_s = down_since + self._send_timeout_s
        if self._pending:
            deadline_s = max(deadline_s, self._pending[-1].deadline)
        return deadline_s

    def _on_opened(
        self,
        opened: messaging_pb2.ProducerOpened,
        call: grpc.aio.StreamStreamCall[
            messaging_pb2.ProduceRequest, messaging_pb2.ProduceResponse
        ],
    ) -> None:
        if opened.max_message_size_bytes:
            self._max_message_size_bytes = opened.max_message_size_bytes
            self._batch_max_bytes = min(
                self._batch_max_bytes_setting, opened.max_message_size_bytes
            )
        if not self._opened.done():
            self._topic = opened.topic or self._topic
            self._partition = TopicName.parse(self._topic).partition_index
            self._producer_name = opened.producer_name
            self._requested_name = opened.producer_name
            self._last_sequence_id = opened.last_sequence_id
            self._next_sequence_id = max(0, opened.last_sequence_id + 1)
            self._state = _READY
            self._opened.set_result(None)
        # Everything without a receipt goes again, in order, on the new stream.
        self._unsent = deque(self._pending)
        self._call = call
        self._writer_wakeup.set()
        log.debug("producer %s opened on %s", self._producer_name, self._topic)

    async def _write_loop(
        self,
        call: grpc.aio.StreamStreamCall[
            messaging_pb2.ProduceRequest, messaging_pb2.ProduceResponse
        ],
    ) -> None:
        wakeup = self._writer_wakeup
        while True:
            await wakeup.wait()
            wakeup.clear()
            unsent = self._unsent
            while unsent:
                batches = [unsent.popleft().request]
                size = len(batches[0].payload)
                while unsent and size + len(unsent[0].request.payload) <= MAX_PUBLISH_REQUEST_BYTES:
                    request = unsent.popleft().request
                    size += len(request.payload)
                    batches.append(request)
                await write_request(
                    call,
                    messaging_pb2.ProduceRequest(
                        publish=messaging_pb2.PublishBatches(batches=batches)
                    ),
                )

    async def _read_loop(
        self,
        call: grpc.aio.StreamStreamCall[
            messaging_pb2.ProduceRequest, messaging_pb2.ProduceResponse
        ],
    ) -> None:
        while (response := await call.read()) is not grpc.aio.EOF:
            assert isinstance(response, messaging_pb2.ProduceResponse)
            if response.WhichOneof("response") != "receipts":
                raise ProtocolError("the broker sent something other than receipts")
            self._on_receipts(response.receipts.receipts)
        raise ServiceUnavailable("the broker ended the produce stream")

    def _on_receipts(self, receipts: Iterable[messaging_pb2.SendReceipt]) -> None:
        pending = self._pending
        for receipt in receipts:
            if not pending or receipt.sequence_id < pending[0].sequence_id:
                # A receipt for a batch already failed by the send timeout.
                continue
            head = pending[0]
            if receipt.sequence_id != head.sequence_id or receipt.num_messages != head.num_messages:
                raise ProtocolError(
                    f"receipt for sequence id {receipt.sequence_id} ({receipt.num_messages} "
                    f"messages) does not match the oldest pending batch {head.sequence_id} "
                    f"({head.num_messages} messages)"
                )
            pending.popleft()
            if self._unsent and self._unsent[0] is head:
                self._unsent.popleft()
            if receipt.ledger_id == DUPLICATE_RECEIPT_ID:
                # Deduplication: stored before, not again; its id is Pulsar's -1:-1.
                self._complete(head, -1, -1, duplicate=True)
            else:
                self._complete(head, receipt.ledger_id, receipt.entry_id)
        if len(pending) < HOLD_AFTER_BATCHES_IN_FLIGHT and self._batch is not None:
            # Room in the window again: the open batch need not wait out its delay.
            self._seal()

    async def _expire_loop(self) -> None:
        """Fail batches without a receipt after the send timeout (off when it is 0)."""
        if not self._send_timeout_s:
            return
        while True:
            if self._pending:
                wait_s = self._pending[0].deadline - time.monotonic()
                if wait_s <= 0:
                    self._fail_pending(
                        Timeout(
                            f"no receipt within send_timeout_millis={self._send_timeout_s * 1000:g}"
                        )
                    )
                    continue
            else:
                wait_s = self._send_timeout_s
            await asyncio.sleep(wait_s)


def delivery_time_ms(
    deliver_at: datetime.datetime | None, deliver_after: datetime.timedelta | None
) -> int:
    """Delayed delivery's time in ms since the epoch (0: at once) from pulsar-client's
    ``deliver_at`` (a naive datetime is local time) or ``deliver_after``."""
    if deliver_at is not None and deliver_after is not None:
        raise InvalidArgument("give deliver_at or deliver_after, not both")
    if deliver_at is not None:
        return max(1, int(deliver_at.timestamp() * 1000))
    if deliver_after is not None:
        if deliver_after < datetime.timedelta(0):
            raise InvalidArgument("deliver_after must not be negative")
        return time.time_ns() // 1_000_000 + int(deliver_after.total_seconds() * 1000)
    return 0


# The broker takes a batch's key of at most this many bytes (a longer key is cut: keys that
# share their first 256 bytes then go to one Key_Shared consumer, still in order).
MAX_STICKY_KEY_BYTES = 256


def sticky_key(metadata: messaging_pb2.SingleMessageMetadata | None) -> str:
    """The key a Key_Shared subscription dispatches a message by: its ordering key, else its
    partition key."""
    if metadata is None:
        return ""
    if metadata.HasField("ordering_key"):
        key = metadata.ordering_key
    elif metadata.HasField("partition_key"):
        key = metadata.partition_key
    else:
        return ""
    if len(key) * 4 > MAX_STICKY_KEY_BYTES and len(key.encode()) > MAX_STICKY_KEY_BYTES:
        return key.encode()[:MAX_STICKY_KEY_BYTES].decode(errors="ignore")
    return key
