"""The asyncio consumer: the consume stream, flow permits, grouped acks, redelivery.

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
6. After a retriable failure the stream is reopened with backoff (indefinitely, as pulsar
   does); messages received but not yet taken are dropped, since the broker redelivers
   what is unacknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from itertools import repeat
from typing import TYPE_CHECKING

import grpc
import grpc.aio

from strata.client._batch import BatchDecodeError, acked_flags, decode_entry
from strata.client._connection import backoff_delay_s, run_until_first_error
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
    from_rpc_error,
)
from strata.client._message import EntryInfo, Message, MessageId
from strata.naming import TopicName
from strata.v1 import messaging_pb2

if TYPE_CHECKING:
    from strata.client._connection import Connection

log = logging.getLogger("strata.client.consumer")

_Call = grpc.aio.StreamStreamCall[messaging_pb2.ConsumeRequest, messaging_pb2.ConsumeResponse]

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

# Ordered: states at or past _CLOSED refuse work.
_CONNECTING, _READY, _CLOSED, _FAILED = range(4)


class AsyncConsumer:
    """Receives the messages of one subscription. Made by ``AsyncClient.subscribe``.

    Lifecycle: ``subscribe`` opens the stream and returns once the broker answered;
    ``receive``/``receive_many`` then take messages, ``acknowledge`` and
    ``negative_acknowledge`` settle them; ``close`` makes the pending acks durable (bounded
    by the operation timeout) and ends the stream, the ack timer, the negative-ack timer
    and the stream loop. If the stream loop dies unexpectedly, waiting receives fail with
    ``InternalError``.
    """

    def __init__(
        self,
        connection: Connection,
        topic: str,
        subscription_name: str,
        *,
        consumer_type: ConsumerType = ConsumerType.Exclusive,
        initial_position: InitialPosition = InitialPosition.Latest,
        receiver_queue_size: int = 1000,
        consumer_name: str | None = None,
        negative_ack_redelivery_delay_ms: int = 60_000,
        ack_group_time_ms: float = DEFAULT_ACK_GROUP_TIME_MS,
        ack_group_max_ids: int = DEFAULT_ACK_GROUP_MAX_IDS,
        on_close: Callable[[AsyncConsumer], None] | None = None,
    ) -> None:
        if not subscription_name:
            raise InvalidArgument("subscription_name must not be empty")
        if receiver_queue_size < 1:
            raise InvalidArgument("receiver_queue_size must be at least 1")
        if ack_group_max_ids < 1 or ack_group_time_ms < 0 or negative_ack_redelivery_delay_ms < 0:
            raise InvalidArgument("ack grouping and negative-ack settings must be positive")
        self._connection = connection
        self._topic = str(TopicName.parse(topic))
        self._partition = -1
        self._subscription = subscription_name
        self._consumer_type = messaging_pb2.SubscriptionType.ValueType(
            int(ConsumerType(consumer_type))
        )
        self._initial_position = messaging_pb2.InitialPosition.ValueType(
            int(InitialPosition(initial_position))
        )
        self._receiver_queue_size = receiver_queue_size
        self._refill_threshold = max(1, receiver_queue_size // 2)
        self._consumer_name = consumer_name or ""
        self._nack_delay_s = negative_ack_redelivery_delay_ms / 1000
        self._ack_group_time_s = ack_group_time_ms / 1000
        self._ack_group_max_ids = ack_group_max_ids
        self._on_close = on_close

        self._state = _CONNECTING
        self._close_started = False
        self._failure: StrataException | None = None
        self._loop = asyncio.get_running_loop()
        self._subscribed: asyncio.Future[StrataException | None] = self._loop.create_future()
        self._call: _Call | None = None
        self._tasks: list[asyncio.Task[None]] = []

        # Received messages not yet taken, and receivers waiting for some.
        self._queue: deque[Message] = deque()
        self._waiters: deque[asyncio.Future[None]] = deque()
        # Permits used since the last Flow (taken or skipped messages).
        self._permits_used = 0

        # Requests for the writer, in order.
        self._outbox: deque[messaging_pb2.ConsumeRequest] = deque()
        self._writer_wakeup = asyncio.Event()

        # Acks not yet sent: entries with acked indexes, loose ids, and how many of both.
        self._ack_entries: list[EntryInfo] = []
        self._ack_loose: list[messaging_pb2.MessageIdData] = []
        self._ack_count = 0
        self._ack_timer: asyncio.TimerHandle | None = None
        # Acks sent but not yet covered by a receipt: (ack sequence number, ids).
        self._unconfirmed: deque[tuple[int, list[messaging_pb2.MessageIdData]]] = deque()
        self._unconfirmed_ids = 0
        self._ack_sequence = 0
        # Receipt requests in flight: request id → ack sequence number it covers.
        self._receipt_marks: dict[int, int] = {}
        self._receipt_waiters: dict[int, asyncio.Future[StrataException | None]] = {}
        self._next_request_id = 1

        # Negative acks waiting for their redelivery delay: (due time, id).
        self._nacks: deque[tuple[float, messaging_pb2.MessageIdData]] = deque()
        self._nack_timer: asyncio.TimerHandle | None = None

    # ----------------------------------------------------------------- public API

    def topic(self) -> str:
        return self._topic

    def subscription_name(self) -> str:
        return self._subscription

    def consumer_name(self) -> str:
        return self._consumer_name

    def is_connected(self) -> bool:
        return self._state == _READY and self._call is not None

    async def receive(self, timeout_millis: int | None = None) -> Message:
        """The next message; raises ``Timeout`` after ``timeout_millis`` (None: wait forever)."""
        if not self._queue:
            await self._wait_for_messages(timeout_millis)
        message = self._queue.popleft()
        self._use_permits(1)
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
        self._use_permits(count)
        return messages

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
                self._ack_loose.append(message.to_proto())
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

    def negative_acknowledge(self, message: Message | MessageId) -> None:
        """Ask for redelivery of this message after ``negative_ack_redelivery_delay_ms``."""
        self._check_usable()
        message_id = message.message_id() if isinstance(message, Message) else message
        self._nacks.append((time.monotonic() + self._nack_delay_s, message_id.to_proto()))
        if self._nack_timer is None:
            self._nack_timer = self._loop.call_later(self._nack_delay_s, self._send_due_nacks)

    async def flush_acknowledgements(self, wait_durable: bool = True) -> None:
        """Send the pending acks now; with ``wait_durable``, wait until the broker confirms
        that they (and every ack sent before them) are durable.

        Raises ``Timeout`` after the client's operation timeout.
        """
        self._check_usable()
        if not wait_durable:
            self._flush_acks()
            return
        request_id = self._next_request_id
        self._next_request_id += 1
        waiter: asyncio.Future[StrataException | None] = self._loop.create_future()
        self._receipt_waiters[request_id] = waiter
        self._flush_acks(request_id)
        try:
            async with asyncio.timeout(self._connection.operation_timeout_s):
                error = await waiter
        except TimeoutError:
            raise Timeout(
                f"no ack receipt within {self._connection.operation_timeout_s:g} s"
            ) from None
        finally:
            self._receipt_waiters.pop(request_id, None)
        if error is not None:
            raise error

    async def close(self) -> None:
        """Make pending acks durable (bounded by the operation timeout), then end the stream.

        Received messages not yet taken are dropped; the broker redelivers them. Idempotent.
        """
        if self._state == _CLOSED or self._close_started:
            return
        # The state stays READY while the final acks go out; this flag makes close() once.
        self._close_started = True
        if (
            self._state == _READY
            and self._call is not None
            and (self._ack_count or self._unconfirmed)
        ):
            try:
                await self.flush_acknowledgements(wait_durable=True)
            except StrataException as exc:
                log.warning(
                    "consumer on %s closed before its acks were confirmed: %s", self._topic, exc
                )
        self._state = _CLOSED
        call = self._call
        if call is not None:
            with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError, TimeoutError):
                async with asyncio.timeout(HALF_CLOSE_TIMEOUT_S):
                    await call.done_writing()
        await self._stop_tasks()
        self._wake_all(AlreadyClosed(f"consumer on {self._topic} was closed"))
        if self._on_close is not None:
            self._on_close(self)

    # ------------------------------------------------------------ lifecycle internals

    async def _start(self) -> None:
        """Open the stream; return when the broker answered ``subscribed`` or raise why not."""
        run = self._loop.create_task(self._run(), name=f"strata-consumer-stream {self._topic}")
        run.add_done_callback(self._on_task_done)
        self._tasks.append(run)
        try:
            async with asyncio.timeout(self._connection.operation_timeout_s):
                error = await asyncio.shield(self._subscribed)
        except TimeoutError:
            error = Timeout(
                f"could not subscribe to {self._topic} within "
                f"{self._connection.operation_timeout_s:g} s"
            )
        except BaseException:
            self._state = _CLOSED
            await self._stop_tasks()
            raise
        if error is not None:
            self._state = _CLOSED
            await self._stop_tasks()
            raise error

    async def _stop_tasks(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        for timer in (self._ack_timer, self._nack_timer):
            if timer is not None:
                timer.cancel()
        self._ack_timer = None
        self._nack_timer = None

    def _on_task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        error = task.exception()
        if error is None:
            return
        log.error("consumer task %s died", task.get_name(), exc_info=error)
        self._fail_consumer(InternalError(f"consumer task died: {error!r}"))

    def _fail_consumer(self, error: StrataException) -> None:
        if self._state in (_CLOSED, _FAILED):
            return
        self._state = _FAILED
        self._failure = error
        if not self._subscribed.done():
            self._subscribed.set_result(error)
        self._wake_all(error)

    def _wake_all(self, error: StrataException) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()
        for receipt in self._receipt_waiters.values():
            if not receipt.done():
                receipt.set_result(error)

    def _check_usable(self) -> None:
        if self._state <= _READY:
            return
        if self._state == _FAILED:
            assert self._failure is not None
            raise self._failure
        raise AlreadyClosed(f"consumer on {self._topic} is closed")

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

    def _use_permits(self, count: int) -> None:
        self._permits_used += count
        if self._permits_used >= self._refill_threshold:
            permits = self._permits_used
            self._permits_used = 0
            self._send(messaging_pb2.ConsumeRequest(flow=messaging_pb2.Flow(permits=permits)))

    def _on_deliveries(self, deliveries: Iterable[messaging_pb2.Delivery]) -> None:
        queue = self._queue
        topic = self._topic
        partition = self._partition
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
            self._use_permits(skipped)
        if queue and self._waiters:
            for waiter in self._waiters:
                if not waiter.done():
                    waiter.set_result(None)
            self._waiters.clear()

    # ------------------------------------------------------------------------ acks

    def _ack_added(self, count: int) -> None:
        self._ack_count += count
        if self._ack_count >= self._ack_group_max_ids:
            self._flush_acks()
        elif self._ack_timer is None:
            self._ack_timer = self._loop.call_later(self._ack_group_time_s, self._flush_acks)

    def _flush_acks(self, request_id: int = 0) -> None:
        """Turn the pending acks into one ``Ack`` request (with ``request_id`` if non-zero)."""
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
        if not ids and not request_id:
            return
        if ids:
            self._ack_sequence += 1
            self._unconfirmed.append((self._ack_sequence, ids))
            self._unconfirmed_ids += len(ids)
            if (
                not request_id
                and self._unconfirmed_ids > MAX_UNCONFIRMED_ACK_IDS
                and not self._receipt_marks
            ):
                # Ask for a receipt on our own so that the resend memory stays bounded.
                request_id = self._next_request_id
                self._next_request_id += 1
            while self._unconfirmed_ids > MAX_RETAINED_ACK_IDS and len(self._unconfirmed) > 1:
                _, dropped = self._unconfirmed.popleft()
                self._unconfirmed_ids -= len(dropped)
                log.warning(
                    "broker sends no ack receipts; %d acks may be lost on reconnect", len(dropped)
                )
        if request_id:
            self._receipt_marks[request_id] = self._ack_sequence
        self._send(
            messaging_pb2.ConsumeRequest(
                ack=messaging_pb2.Ack(message_ids=ids, request_id=request_id)
            )
        )

    def _on_ack_receipt(self, request_id: int) -> None:
        mark = self._receipt_marks.pop(request_id, None)
        if mark is None:
            return  # a receipt from before a reconnect, already re-requested
        while self._unconfirmed and self._unconfirmed[0][0] <= mark:
            _, ids = self._unconfirmed.popleft()
            self._unconfirmed_ids -= len(ids)
        # Receipts come in order, so this one covers every earlier request too.
        for earlier in [r for r, m in self._receipt_marks.items() if m <= mark and r < request_id]:
            del self._receipt_marks[earlier]
            self._resolve_receipt(earlier)
        self._resolve_receipt(request_id)

    def _resolve_receipt(self, request_id: int) -> None:
        waiter = self._receipt_waiters.get(request_id)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _send_due_nacks(self) -> None:
        self._nack_timer = None
        now = time.monotonic()
        due: list[messaging_pb2.MessageIdData] = []
        # 1 ms of slack groups the negative acks that fall due together.
        while self._nacks and self._nacks[0][0] <= now + 0.001:
            due.append(self._nacks.popleft()[1])
        if due:
            self._send(
                messaging_pb2.ConsumeRequest(
                    redeliver=messaging_pb2.RedeliverUnacknowledged(message_ids=due)
                )
            )
        if self._nacks:
            delay_s = max(0.0, self._nacks[0][0] - now)
            self._nack_timer = self._loop.call_later(delay_s, self._send_due_nacks)

    # ----------------------------------------------------------------- the stream

    def _send(self, request: messaging_pb2.ConsumeRequest) -> None:
        self._outbox.append(request)
        self._writer_wakeup.set()

    async def _run(self) -> None:
        """Subscribe, serve the stream, and resubscribe after retriable failures."""
        attempt = 0
        while True:
            call = self._connection.messaging.Consume()
            try:
                await call.write(
                    messaging_pb2.ConsumeRequest(
                        subscribe=messaging_pb2.Subscribe(
                            topic=self._topic,
                            subscription=self._subscription,
                            type=self._consumer_type,
                            initial_position=self._initial_position,
                            consumer_name=self._consumer_name,
                        )
                    )
                )
                response = await call.read()
                if response is grpc.aio.EOF:
                    raise ServiceUnavailable(
                        "the broker ended the consume stream before subscribing"
                    )
                assert isinstance(response, messaging_pb2.ConsumeResponse)
                if response.WhichOneof("response") != "subscribed":
                    raise ProtocolError("the broker's first answer was not 'subscribed'")
                self._on_subscribed(response.subscribed, call)
                attempt = 0
                await run_until_first_error(self._read_loop(call), self._write_loop(call))
            except grpc.aio.AioRpcError as exc:
                error = from_rpc_error(exc)
            except StrataException as exc:
                error = exc
            finally:
                self._call = None
                call.cancel()
            if self._state >= _CLOSED:
                return
            # After a reconnect the broker may not yet have noticed that our old stream is
            # gone, and refuses the exclusive subscription as busy: that clears up, so it is
            # retried (as pulsar-client does).
            reconnecting_busy = self._subscribed.done() and isinstance(error, ConsumerBusy)
            if not error.retriable and not reconnecting_busy:
                self._fail_consumer(error)
                return
            delay_s = backoff_delay_s(attempt)
            attempt += 1
            if self._subscribed.done():
                log.warning(
                    "consume stream of %s on %s failed (%s); reconnecting in %.2f s",
                    self._subscription,
                    self._topic,
                    error,
                    delay_s,
                )
            await asyncio.sleep(delay_s)

    def _on_subscribed(self, subscribed: messaging_pb2.Subscribed, call: _Call) -> None:
        if not self._subscribed.done():
            self._topic = subscribed.topic or self._topic
            self._partition = TopicName.parse(self._topic).partition_index
            self._consumer_name = subscribed.consumer_name or self._consumer_name
            self._state = _READY
            self._subscribed.set_result(None)
        # A new stream: the broker redelivers everything unacknowledged, so messages not yet
        # taken are dropped and the permits start afresh.
        self._queue.clear()
        self._permits_used = 0
        old_outbox = self._outbox
        self._outbox = deque()
        # Acks the old stream may have lost go again (acks are idempotent), then the
        # outstanding receipt requests, so their waiters hear from this stream; all before
        # the first Flow, so that the broker does not redeliver what they acknowledge.
        for _, ids in self._unconfirmed:
            for start in range(0, len(ids), RESEND_CHUNK_IDS):
                self._outbox.append(
                    messaging_pb2.ConsumeRequest(
                        ack=messaging_pb2.Ack(message_ids=ids[start : start + RESEND_CHUNK_IDS])
                    )
                )
        for request_id in sorted(self._receipt_marks):
            self._outbox.append(
                messaging_pb2.ConsumeRequest(ack=messaging_pb2.Ack(request_id=request_id))
            )
        self._outbox.append(
            messaging_pb2.ConsumeRequest(flow=messaging_pb2.Flow(permits=self._receiver_queue_size))
        )
        for request in old_outbox:
            if request.WhichOneof("request") == "redeliver":
                self._outbox.append(request)
        self._call = call
        self._writer_wakeup.set()

    async def _write_loop(self, call: _Call) -> None:
        wakeup = self._writer_wakeup
        while True:
            await wakeup.wait()
            wakeup.clear()
            outbox = self._outbox
            while outbox:
                await call.write(outbox.popleft())

    async def _read_loop(self, call: _Call) -> None:
        while (response := await call.read()) is not grpc.aio.EOF:
            assert isinstance(response, messaging_pb2.ConsumeResponse)
            kind = response.WhichOneof("response")
            if kind == "deliveries":
                self._on_deliveries(response.deliveries.deliveries)
            elif kind == "ack_receipt":
                self._on_ack_receipt(response.ack_receipt.request_id)
            else:
                raise ProtocolError(f"unexpected {kind!r} on an open consume stream")
        raise ServiceUnavailable("the broker ended the consume stream")
