"""The blocking SDK: ``Client``, ``Producer`` and ``Consumer``, shaped like pulsar-client.

A thin layer over the asyncio SDK. Each ``Client`` owns an event loop running on a daemon
thread (``strata-client-io``); blocking calls hand a coroutine to that loop and wait for
it. Calls made per message (``Producer.send_async``, ``Consumer.acknowledge``) do not wait:
they append to an inbox that the loop drains in bulk, one wake-up per burst, so their cost
stays well under a microsecond. Callbacks run on the I/O thread and must not block.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime
import re
import threading
from collections import deque
from collections.abc import Callable, Coroutine, Mapping
from types import TracebackType
from typing import Any, TypeVar, Unpack

from strata.client._auth import AuthenticationToken
from strata.client._client import AsyncClient
from strata.client._connection import DEFAULT_SERVICE_URL
from strata.client._consumer import AsyncConsumer, ConsumerEventListener
from strata.client._dead_letter import ConsumerDeadLetterPolicy
from strata.client._enums import ConsumerType, InitialPosition
from strata.client._errors import (
    AlreadyClosed,
    InvalidArgument,
    ProducerQueueIsFull,
    Result,
    StrataException,
    Timeout,
)
from strata.client._message import Message, MessageId
from strata.client._multi_topics import (
    DEFAULT_PATTERN_AUTO_DISCOVERY_PERIOD_S,
    MultiTopicsConsumer,
)
from strata.client._options import ConsumerKeySharedPolicy, ProducerKeywords, producer_options
from strata.client._producer import AsyncProducer, SendCallback
from strata.client._reader import AsyncReader

_T = TypeVar("_T")

_STOP_TIMEOUT_S = 10.0


class _LoopThread:
    """An event loop on a daemon thread. Owned by one ``Client``; ``stop`` ends both."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._main, name="strata-client-io", daemon=True)
        self._thread.start()
        self._started.wait()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._started.set)
        try:
            self.loop.run_forever()
        finally:
            # Whatever is still running belongs to this client: cancel it, then close.
            leftovers = asyncio.all_tasks(self.loop)
            for task in leftovers:
                task.cancel()
            self.loop.run_until_complete(asyncio.gather(*leftovers, return_exceptions=True))
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    def on_io_thread(self) -> bool:
        return threading.get_ident() == self._thread.ident

    def run(self, coroutine: Coroutine[Any, Any, _T], timeout_s: float | None = None) -> _T:
        """Run ``coroutine`` on the loop and wait for its result.

        An interrupted wait (Ctrl-C, a timeout) cancels the coroutine, so nothing it would
        have taken (a message, say) is lost in between.
        """
        if self.on_io_thread():
            coroutine.close()
            raise RuntimeError("a blocking Strata call from a callback would deadlock the client")
        if not self._thread.is_alive():
            coroutine.close()
            raise AlreadyClosed("the client was closed")
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        try:
            return future.result(timeout_s)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise Timeout(f"no answer within {timeout_s:g} s") from None
        except BaseException:
            future.cancel()
            raise

    def call_soon(self, callback: Callable[[], None]) -> None:
        self.loop.call_soon_threadsafe(callback)

    def stop(self) -> None:
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(_STOP_TIMEOUT_S)


class Client:
    """The blocking Strata client (``pulsar.Client``'s shape).

    Lifecycle: construct, ``create_producer``/``subscribe``, and ``close`` (also a context
    manager), which closes every producer and consumer, then stops the I/O thread.
    """

    def __init__(
        self,
        service_url: str = DEFAULT_SERVICE_URL,
        operation_timeout_seconds: float = 30,
        keep_alive_interval_seconds: float = 30,
        authentication: AuthenticationToken | None = None,
        tls_trust_certs_file_path: str | None = None,
        tls_certificate_file_path: str | None = None,
        tls_private_key_file_path: str | None = None,
    ) -> None:
        # Validates the URL in the caller's thread, before any thread starts.
        self._client = AsyncClient(
            service_url,
            operation_timeout_seconds,
            keep_alive_interval_seconds,
            authentication,
            tls_trust_certs_file_path=tls_trust_certs_file_path,
            tls_certificate_file_path=tls_certificate_file_path,
            tls_private_key_file_path=tls_private_key_file_path,
        )
        self._io = _LoopThread()
        self._closed = False

    def create_producer(self, topic: str, **options: Unpack[ProducerKeywords]) -> Producer:
        """Open a producer on ``topic``; see ``AsyncClient.create_producer``."""
        self._check_open()
        settings = producer_options(options)
        space = threading.Semaphore(settings.max_pending_messages)
        producer = self._io.run(self._client._open_producer(topic, space.release, settings))
        return Producer(self._io, producer, space, settings.block_if_queue_full)

    def subscribe(
        self,
        topic: str | list[str] | tuple[str, ...] | re.Pattern[str] | None = None,
        subscription_name: str = "",
        consumer_type: ConsumerType = ConsumerType.Exclusive,
        receiver_queue_size: int = 1000,
        consumer_name: str | None = None,
        initial_position: InitialPosition = InitialPosition.Latest,
        negative_ack_redelivery_delay_ms: int = 60_000,
        priority_level: int = 0,
        consumer_event_listener: ConsumerEventListener | None = None,
        unacked_messages_timeout_ms: int | None = None,
        dead_letter_policy: ConsumerDeadLetterPolicy | None = None,
        key_shared_policy: ConsumerKeySharedPolicy | None = None,
        max_pending_chunked_message: int = 10,
        is_read_compacted: bool = False,
        auto_ack_oldest_chunked_message_on_queue_full: bool = False,
        expire_time_of_incomplete_chunked_message_ms: int = 60_000,
        pattern_auto_discovery_period_s: float = DEFAULT_PATTERN_AUTO_DISCOVERY_PERIOD_S,
        retry_enable: bool = False,
        *,
        topics: list[str] | None = None,
        topic_pattern: re.Pattern[str] | str | None = None,
    ) -> Consumer:
        """Subscribe to ``topic`` (or ``topics``, or a ``topic_pattern``); see
        ``AsyncClient.subscribe`` (the listener is called on the client's I/O thread, with
        the ``AsyncConsumer``)."""
        self._check_open()
        subscribing: Coroutine[Any, Any, AsyncConsumer | MultiTopicsConsumer] = (
            self._client.subscribe(  # type: ignore[call-overload]
                topic,
                subscription_name,
                pattern_auto_discovery_period_s=pattern_auto_discovery_period_s,
                retry_enable=retry_enable,
                topics=topics,
                topic_pattern=topic_pattern,
                consumer_type=consumer_type,
                receiver_queue_size=receiver_queue_size,
                consumer_name=consumer_name,
                initial_position=initial_position,
                negative_ack_redelivery_delay_ms=negative_ack_redelivery_delay_ms,
                priority_level=priority_level,
                consumer_event_listener=consumer_event_listener,
                unacked_messages_timeout_ms=unacked_messages_timeout_ms,
                dead_letter_policy=dead_letter_policy,
                key_shared_policy=key_shared_policy,
                max_pending_chunked_message=max_pending_chunked_message,
                is_read_compacted=is_read_compacted,
                auto_ack_oldest_chunked_message_on_queue_full=auto_ack_oldest_chunked_message_on_queue_full,
                expire_time_of_incomplete_chunked_message_ms=expire_time_of_incomplete_chunked_message_ms,
            )
        )
        consumer = self._io.run(subscribing)
        return Consumer(self._io, consumer, max(1, min(1000, receiver_queue_size // 2)))

    def create_reader(
        self,
        topic: str,
        start_message_id: MessageId,
        start_message_id_inclusive: bool = False,
        reader_name: str | None = None,
        receiver_queue_size: int = 1000,
        is_read_compacted: bool = False,
    ) -> Reader:
        """A reader of ``topic``; see ``AsyncClient.create_reader``."""
        self._check_open()
        reader = self._io.run(
            self._client.create_reader(
                topic,
                start_message_id,
                start_message_id_inclusive=start_message_id_inclusive,
                reader_name=reader_name,
                receiver_queue_size=receiver_queue_size,
                is_read_compacted=is_read_compacted,
            )
        )
        return Reader(self._io, reader)

    def get_topic_partitions(self, topic: str) -> list[str]:
        """The partitions of ``topic``, or ``[topic]``; see ``AsyncClient.get_topic_partitions``."""
        self._check_open()
        return self._io.run(self._client.get_topic_partitions(topic))

    def lookup_topic(self, topic: str) -> str:
        """The ``host:port`` serving ``topic``; see ``AsyncClient.lookup_topic``."""
        self._check_open()
        return self._io.run(self._client.lookup_topic(topic))

    def close(self) -> None:
        """Close every producer and consumer, the channel, and the I/O thread. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._io.run(self._client.close())
        finally:
            self._io.stop()

    def _check_open(self) -> None:
        if self._closed:
            raise AlreadyClosed("the client was closed")

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


_SendItem = tuple[bytes, Mapping[str, str] | None, str | None, int | None, SendCallback, int | None]


class Producer:
    """The blocking producer. Made by ``Client.create_producer``.

    ``send`` blocks until the receipt; ``send_async`` queues the message and returns at
    once, calling ``callback(result, message_id)`` on the I/O thread later. A
    ``max_pending_messages`` semaphore, taken here and given back as receipts arrive, makes
    ``block_if_queue_full`` block the caller (or fail with ``ProducerQueueIsFull``).
    """

    def __init__(
        self,
        io: _LoopThread,
        producer: AsyncProducer,
        space: threading.Semaphore,
        block_if_queue_full: bool,
    ) -> None:
        self._io = io
        self._producer = producer
        self._space = space
        self._block = block_if_queue_full
        self._inbox: deque[_SendItem] = deque()
        self._drain_scheduled = False
        self._closed = False

    def topic(self) -> str:
        return self._producer.topic()

    def producer_name(self) -> str:
        return self._producer.producer_name()

    def last_sequence_id(self) -> int:
        return self._producer.last_sequence_id()

    def is_connected(self) -> bool:
        return self._producer.is_connected()

    def send(
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
        """Publish one message; return its id once the broker has it durably (see
        ``AsyncProducer.send_async`` for ``deliver_at``/``deliver_after`` and
        ``sequence_id``)."""
        self._take_space()
        return self._io.run(
            self._send(
                content,
                properties,
                partition_key,
                event_timestamp,
                deliver_at,
                deliver_after,
                ordering_key,
                sequence_id,
            )
        )

    async def _send(
        self,
        content: bytes,
        properties: Mapping[str, str] | None,
        partition_key: str | None,
        event_timestamp: int | None,
        deliver_at: datetime.datetime | None = None,
        deliver_after: datetime.timedelta | None = None,
        ordering_key: str | None = None,
        sequence_id: int | None = None,
    ) -> MessageId:
        self._drain()  # messages queued by send_async go first
        try:
            future = await self._producer.send_async(
                content,
                properties,
                partition_key,
                event_timestamp,
                deliver_at=deliver_at,
                deliver_after=deliver_after,
                ordering_key=ordering_key,
                sequence_id=sequence_id,
            )
        except BaseException:
            self._space.release()
            raise
        return await future

    def send_async(
        self,
        content: bytes,
        callback: SendCallback,
        properties: Mapping[str, str] | None = None,
        partition_key: str | None = None,
        event_timestamp: int | None = None,
        sequence_id: int | None = None,
    ) -> None:
        """Queue one message; ``callback(result, message_id)`` runs when it is settled.

        With the queue full: blocks when ``block_if_queue_full`` is set, else calls
        ``callback(Result.ProducerQueueIsFull, None)`` at once, as pulsar-client does.
        """
        if self._closed:
            raise AlreadyClosed("the producer was closed")
        if type(content) is not bytes:
            if not isinstance(content, (bytearray, memoryview)):
                raise TypeError(f"message content must be bytes, not {type(content).__name__}")
            content = bytes(content)
        try:
            self._take_space()
        except ProducerQueueIsFull:
            callback(Result.ProducerQueueIsFull, None)
            return
        self._inbox.append(
            (content, properties, partition_key, event_timestamp, callback, sequence_id)
        )
        if not self._drain_scheduled:
            self._drain_scheduled = True
            self._io.call_soon(self._drain)

    def flush(self) -> None:
        """Block until every message sent so far has a receipt."""
        self._io.run(self._flush())

    async def _flush(self) -> None:
        self._drain()
        await self._producer.flush()

    def close(self) -> None:
        """Flush, then close the producer. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._io.run(self._close())

    async def _close(self) -> None:
        self._drain()
        await self._producer.close()

    def _take_space(self) -> None:
        # The I/O thread must never block on the semaphore: only it can give space back.
        blocking = self._block and not self._io.on_io_thread()
        if not self._space.acquire(blocking=blocking):
            raise ProducerQueueIsFull("max_pending_messages messages are pending")

    def _drain(self) -> None:
        """Hand the queued messages to the asyncio producer (runs on the I/O thread)."""
        # Cleared before draining: a message appended after the last pop schedules a new drain.
        self._drain_scheduled = False
        inbox = self._inbox
        producer = self._producer
        while inbox:
            content, properties, partition_key, event_timestamp, callback, sequence_id = (
                inbox.popleft()
            )
            try:
                producer.send_nowait(
                    content,
                    properties,
                    partition_key,
                    event_timestamp,
                    callback,
                    sequence_id=sequence_id,
                )
            except StrataException as exc:
                self._space.release()
                callback(exc.result, None)


_AckItem = tuple[bool, Message | MessageId]  # (negative, message)


class Consumer:
    """The blocking consumer. Made by ``Client.subscribe``.

    ``receive`` takes messages from a local buffer refilled in bulk from the asyncio
    consumer (at most half the receiver queue at a time); ``acknowledge`` and
    ``negative_acknowledge`` queue and return at once.
    """

    def __init__(
        self,
        io: _LoopThread,
        consumer: AsyncConsumer | MultiTopicsConsumer,
        fetch_max_messages: int,
    ) -> None:
        self._io = io
        self._consumer = consumer
        self._fetch_max_messages = fetch_max_messages
        self._buffer: deque[Message] = deque()
        self._inbox: deque[_AckItem] = deque()
        self._drain_scheduled = False
        self._closed = False

    def topic(self) -> str:
        return self._consumer.topic()

    def subscription_name(self) -> str:
        return self._consumer.subscription_name()

    def consumer_name(self) -> str:
        return self._consumer.consumer_name()

    def is_connected(self) -> bool:
        return self._consumer.is_connected()

    def receive(self, timeout_millis: int | None = None) -> Message:
        """The next message; raises ``Timeout`` after ``timeout_millis`` (None: forever)."""
        try:
            return self._buffer.popleft()
        except IndexError:
            pass
        self._check_open()
        messages = self._io.run(
            self._consumer.receive_many(self._fetch_max_messages, timeout_millis)
        )
        self._buffer.extend(messages[1:])
        return messages[0]

    def receive_many(
        self, max_messages: int = 1000, timeout_millis: int | None = None
    ) -> list[Message]:
        """Up to ``max_messages`` messages, waiting only for the first one."""
        if not self._buffer:
            self._check_open()
            self._buffer.extend(
                self._io.run(self._consumer.receive_many(max_messages, timeout_millis))
            )
        messages: list[Message] = []
        while self._buffer and len(messages) < max_messages:
            messages.append(self._buffer.popleft())
        return messages

    def acknowledge(self, message: Message | MessageId) -> None:
        """Acknowledge a message; sent grouped with others within a few ms."""
        self._queue_ack(False, message)

    def seek(self, target: MessageId | int) -> None:
        """Reset the subscription to a message id or a publish time in ms; see
        ``AsyncConsumer.seek``. Messages buffered here are dropped."""
        self._check_open()
        self._buffer.clear()
        self._io.run(self._consumer.seek(target))

    def reconsume_later(self, message: Message, delay: datetime.timedelta) -> None:
        """See ``MultiTopicsConsumer.reconsume_later`` (``subscribe(..., retry_enable=True)``)."""
        self._check_open()
        consumer = self._consumer
        if not isinstance(consumer, MultiTopicsConsumer):
            raise InvalidArgument("reconsume_later needs subscribe(..., retry_enable=True)")
        self._io.run(consumer.reconsume_later(message, delay))

    def acknowledge_cumulative(self, message: Message | MessageId) -> None:
        """Acknowledge this message and every earlier one; see
        ``AsyncConsumer.acknowledge_cumulative``."""
        self._check_open()
        self._io.run(self._consumer.acknowledge_cumulative(message))

    def negative_acknowledge(self, message: Message | MessageId) -> None:
        """Have the message redelivered after ``negative_ack_redelivery_delay_ms``."""
        self._queue_ack(True, message)

    def flush_acknowledgements(self, wait_durable: bool = True) -> None:
        """Send pending acks now; with ``wait_durable``, block until the broker confirms them."""
        self._check_open()
        self._io.run(self._flush(wait_durable))

    async def _flush(self, wait_durable: bool) -> None:
        self._drain()
        await self._consumer.flush_acknowledgements(wait_durable)

    def close(self) -> None:
        """Make pending acks durable, then close. Buffered messages are redelivered later."""
        if self._closed:
            return
        self._closed = True
        self._buffer.clear()
        self._io.run(self._close())

    async def _close(self) -> None:
        self._drain()
        await self._consumer.close()

    def _check_open(self) -> None:
        if self._closed:
            raise AlreadyClosed("the consumer was closed")

    def _queue_ack(self, negative: bool, message: Message | MessageId) -> None:
        self._check_open()
        if not isinstance(message, (Message, MessageId)):
            raise TypeError(f"cannot acknowledge {type(message).__name__}")
        self._inbox.append((negative, message))
        if not self._drain_scheduled:
            self._drain_scheduled = True
            self._io.call_soon(self._drain)

    def _drain(self) -> None:
        self._drain_scheduled = False
        inbox = self._inbox
        consumer = self._consumer
        acks: list[Message | MessageId] = []
        try:
            while inbox:
                negative, message = inbox.popleft()
                if negative:
                    consumer.negative_acknowledge(message)
                else:
                    acks.append(message)
            consumer.acknowledge_many(acks)
        except StrataException:
            # Closed or failed: the broker redelivers what was not acknowledged.
            inbox.clear()


class Reader:
    """The blocking reader. Made by ``Client.create_reader``; see ``AsyncReader``."""

    def __init__(self, io: _LoopThread, reader: AsyncReader) -> None:
        self._io = io
        self._reader = reader
        self._closed = False

    def topic(self) -> str:
        return self._reader.topic()

    def read_next(self, timeout_millis: int | None = None) -> Message:
        """The next message; raises ``Timeout`` after ``timeout_millis`` (None: forever)."""
        self._check_open()
        return self._io.run(self._reader.read_next(timeout_millis))

    def has_message_available(self) -> bool:
        self._check_open()
        return self._io.run(self._reader.has_message_available())

    def seek(self, target: MessageId | int) -> None:
        """To a message id or a publish time in ms; see ``AsyncConsumer.seek``."""
        self._check_open()
        self._io.run(self._reader.seek(target))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._io.run(self._reader.close())

    def _check_open(self) -> None:
        if self._closed:
            raise AlreadyClosed("the reader was closed")
