"""``AsyncClient``: the entry point of the asyncio SDK.

A client owns one gRPC channel to one broker (the service URL) and every producer and
consumer made through it. It is created outside or inside a running event loop; the
channel is opened lazily by the first ``create_producer`` or ``subscribe``, in the loop
that runs them, and all later use must come from that same loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import TracebackType
from typing import Any

from strata.client._connection import DEFAULT_SERVICE_URL, Connection, parse_service_url
from strata.client._consumer import AsyncConsumer
from strata.client._enums import CompressionType, ConsumerType, InitialPosition
from strata.client._errors import AlreadyClosed, InvalidArgument, InvalidTopicName
from strata.client._producer import AsyncProducer
from strata.naming import InvalidNameError, TopicName


def _check_topic(topic: str) -> None:
    try:
        TopicName.parse(topic)
    except InvalidNameError as exc:
        raise InvalidTopicName(str(exc)) from None


class AsyncClient:
    """The asyncio Strata client, shaped like ``pulsar.asyncio.Client``.

    ``service_url`` is ``host:port``, ``grpc://host:port`` or ``pulsar://host:port``
    (default ``localhost:6650``). ``operation_timeout_seconds`` bounds creating producers
    and consumers, ack receipts and closing.

    Lifecycle: ``create_producer``/``subscribe`` as often as needed, then ``close``, which
    closes every producer (flushing it) and consumer still open, then the channel. Also an
    async context manager.
    """

    def __init__(
        self,
        service_url: str = DEFAULT_SERVICE_URL,
        operation_timeout_seconds: float = 30,
    ) -> None:
        if operation_timeout_seconds <= 0:
            raise InvalidArgument("operation_timeout_seconds must be positive")
        self._target = parse_service_url(service_url)
        self._operation_timeout_s = float(operation_timeout_seconds)
        self._connection: Connection | None = None
        self._producers: set[AsyncProducer] = set()
        self._consumers: set[AsyncConsumer] = set()
        self._closed = False

    @property
    def service_target(self) -> str:
        """The ``host:port`` the client connects to."""
        return self._target

    def _get_connection(self) -> Connection:
        if self._closed:
            raise AlreadyClosed("the client was closed")
        if self._connection is None:
            self._connection = Connection(self._target, self._operation_timeout_s)
        return self._connection

    async def create_producer(
        self,
        topic: str,
        producer_name: str | None = None,
        send_timeout_millis: int = 30_000,
        compression_type: CompressionType = CompressionType.NONE,
        max_pending_messages: int = 1000,
        block_if_queue_full: bool = False,
        batching_enabled: bool = True,
        batching_max_messages: int = 1000,
        batching_max_allowed_size_in_bytes: int = 128 * 1024,
        batching_max_publish_delay_ms: float = 1,
    ) -> AsyncProducer:
        """Open a producer on ``topic``; returns once the broker accepted it.

        Defaults are pulsar-client's except ``batching_max_publish_delay_ms`` (1, not 10):
        a 1 ms window already fills batches at high rates and keeps latency low at low ones.
        ``send_timeout_millis=0`` disables the send timeout.
        """
        return await self._open_producer(
            topic,
            None,
            producer_name=producer_name,
            send_timeout_millis=send_timeout_millis,
            compression_type=compression_type,
            max_pending_messages=max_pending_messages,
            block_if_queue_full=block_if_queue_full,
            batching_enabled=batching_enabled,
            batching_max_messages=batching_max_messages,
            batching_max_allowed_size_in_bytes=batching_max_allowed_size_in_bytes,
            batching_max_publish_delay_ms=batching_max_publish_delay_ms,
        )

    async def _open_producer(
        self, topic: str, on_space_freed: Callable[[int], None] | None, **options: Any
    ) -> AsyncProducer:
        # The sync wrapper passes on_space_freed to keep its own pending-message count.
        _check_topic(topic)
        connection = self._get_connection()
        producer = AsyncProducer(
            connection,
            topic,
            on_space_freed=on_space_freed,
            on_close=self._producers.discard,
            **options,
        )
        await producer._start()
        self._producers.add(producer)
        return producer

    async def subscribe(
        self,
        topic: str,
        subscription_name: str,
        consumer_type: ConsumerType = ConsumerType.Exclusive,
        receiver_queue_size: int = 1000,
        consumer_name: str | None = None,
        initial_position: InitialPosition = InitialPosition.Latest,
        negative_ack_redelivery_delay_ms: int = 60_000,
    ) -> AsyncConsumer:
        """Subscribe to ``topic``; returns once the broker accepted the consumer.

        Raises ``ConsumerBusy`` when an exclusive subscription already has a consumer.
        """
        _check_topic(topic)
        connection = self._get_connection()
        consumer = AsyncConsumer(
            connection,
            topic,
            subscription_name,
            consumer_type=consumer_type,
            initial_position=initial_position,
            receiver_queue_size=receiver_queue_size,
            consumer_name=consumer_name,
            negative_ack_redelivery_delay_ms=negative_ack_redelivery_delay_ms,
            on_close=self._consumers.discard,
        )
        await consumer._start()
        self._consumers.add(consumer)
        return consumer

    async def close(self) -> None:
        """Close every producer and consumer of this client, then the channel. Idempotent."""
        if self._closed:
            return
        self._closed = True
        await asyncio.gather(
            *(producer.close() for producer in list(self._producers)),
            *(consumer.close() for consumer in list(self._consumers)),
            return_exceptions=True,
        )
        if self._connection is not None:
            await self._connection.close()
            self._connection = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()
