"""``AsyncClient``: the entry point of the asyncio SDK.

A client owns its connections (``ConnectionPool``: one gRPC channel per broker it talks to)
and every producer and consumer made through it. It is created outside or inside a running
event loop; the channels are opened lazily by the first call that needs one, in the loop
that runs it, and all later use must come from that same loop.

Creating a producer or consumer first asks a broker of the service URL for the topic's
partition count (unless the name is a partition's, ``t-partition-i``); each stream then
looks up the broker that serves its topic (or partition) and opens there.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import Callable
from types import TracebackType
from typing import Any, Unpack, overload

import grpc

from strata.client._auth import AuthenticationToken
from strata.client._connection import (
    DEFAULT_SERVICE_URL,
    ConnectionPool,
    parse_service_urls,
    retry_until,
    uses_tls,
)
from strata.client._consumer import AsyncConsumer, ConsumerEventListener
from strata.client._dead_letter import (
    DEFAULT_RETRY_MAX_REDELIVER_COUNT,
    ConsumerDeadLetterPolicy,
)
from strata.client._enums import ConsumerType, InitialPosition
from strata.client._errors import AlreadyClosed, InvalidArgument, InvalidTopicName
from strata.client._message import MessageId
from strata.client._multi_topics import (
    DEFAULT_PATTERN_AUTO_DISCOVERY_PERIOD_S,
    MultiTopicsConsumer,
)
from strata.client._options import (
    ConsumerKeySharedPolicy,
    ProducerKeywords,
    ProducerOptions,
    producer_options,
)
from strata.client._partitioned import PartitionedProducer
from strata.client._producer import AsyncProducer, TopicProducer
from strata.client._reader import AsyncReader, reader_subscription_name
from strata.naming import InvalidNameError, TopicName
from strata.tls import channel_credentials

# gRPC pings an open connection at most this often; brokers permit it.
MIN_KEEP_ALIVE_INTERVAL_S = 1


def _check_topic(topic: str) -> TopicName:
    try:
        return TopicName.parse(topic)
    except InvalidNameError as exc:
        raise InvalidTopicName(str(exc)) from None


class AsyncClient:
    """The asyncio Strata client, shaped like ``pulsar.asyncio.Client``.

    ``service_url`` names one or more brokers: ``host:port[,host:port...]``, optionally
    with ``grpc://`` or ``pulsar://`` in front (default ``localhost:6650``). Lookups ask
    them in turn (the next one when a broker cannot be reached); any broker of a cluster
    tells where a topic is served. ``operation_timeout_seconds`` bounds creating producers
    and consumers, lookups, ack receipts and closing. ``keep_alive_interval_seconds`` is how
    often open connections are pinged (pulsar-client's name and default): a broker that
    stops answering (paused, cut off) is left within about that time plus 10 s.
    ``authentication`` (an ``AuthenticationToken``) is presented on every call. A
    ``grpcs://`` or ``pulsar+ssl://`` URL connects over TLS, trusting
    ``tls_trust_certs_file_path`` (default: the system's roots) and presenting
    ``tls_certificate_file_path``/``tls_private_key_file_path`` to a mutual-TLS broker
    (pulsar-client's names). The broker's certificate must name the host dialled: the
    hostname is always verified (pulsar-client's ``tls_validate_hostname`` defaults to
    False; here there is deliberately no option to skip it).

    Lifecycle: ``create_producer``/``subscribe`` as often as needed, then ``close``, which
    closes every producer (flushing it) and consumer still open, then the channel. Also an
    async context manager.
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
        if operation_timeout_seconds <= 0:
            raise InvalidArgument("operation_timeout_seconds must be positive")
        if not MIN_KEEP_ALIVE_INTERVAL_S <= keep_alive_interval_seconds <= 3600:
            raise InvalidArgument(
                f"keep_alive_interval_seconds must be within {MIN_KEEP_ALIVE_INTERVAL_S}..3600"
            )
        self._keepalive_time_ms = int(keep_alive_interval_seconds * 1000)
        if authentication is not None and not isinstance(authentication, AuthenticationToken):
            raise InvalidArgument("authentication must be a strata.AuthenticationToken")
        self._authentication = authentication
        self._targets = parse_service_urls(service_url)
        self._credentials: grpc.ChannelCredentials | None = None
        if uses_tls(service_url):
            if bool(tls_certificate_file_path) != bool(tls_private_key_file_path):
                raise InvalidArgument(
                    "tls_certificate_file_path and tls_private_key_file_path go together"
                )
            try:
                self._credentials = channel_credentials(
                    tls_trust_certs_file_path or "",
                    tls_certificate_file_path or "",
                    tls_private_key_file_path or "",
                )
            except ValueError as exc:
                raise InvalidArgument(str(exc)) from None
        elif tls_trust_certs_file_path or tls_certificate_file_path:
            raise InvalidArgument("TLS files need a grpcs:// or pulsar+ssl:// service URL")
        self._operation_timeout_s = float(operation_timeout_seconds)
        self._pool: ConnectionPool | None = None
        self._producers: set[AsyncProducer] = set()
        self._consumers: set[AsyncConsumer] = set()
        self._multi_consumers: set[MultiTopicsConsumer] = set()
        self._closed = False

    @property
    def service_target(self) -> str:
        """The ``host:port`` of the first broker of the service URL."""
        return self._targets[0]

    @property
    def service_targets(self) -> tuple[str, ...]:
        """The ``host:port`` of every broker of the service URL, in order."""
        return self._targets

    def _get_pool(self) -> ConnectionPool:
        if self._closed:
            raise AlreadyClosed("the client was closed")
        if self._pool is None:
            self._pool = ConnectionPool(
                self._targets,
                self._operation_timeout_s,
                keepalive_time_ms=self._keepalive_time_ms,
                token=None if self._authentication is None else self._authentication.token,
                credentials=self._credentials,
            )
        return self._pool

    async def _partitions_of(self, name: TopicName) -> int:
        """The partition count of ``name``; 0 for a plain topic or a partition's own name."""
        if name.partition_index >= 0:
            return 0
        pool = self._get_pool()
        # Retried while brokers are unreachable or the topic is moving, like the opens.
        return await retry_until(self._operation_timeout_s, pool.partition_count, str(name))

    async def get_topic_partitions(self, topic: str) -> list[str]:
        """The partitions of ``topic`` (``persistent://.../t-partition-i``), or the topic
        itself when it is not partitioned (pulsar-client's ``get_topic_partitions``)."""
        name = _check_topic(topic)
        partitions = await self._partitions_of(name)
        if not partitions:
            return [str(name)]
        return [str(name.partition(i)) for i in range(partitions)]

    async def lookup_topic(self, topic: str) -> str:
        """The ``host:port`` of the broker that serves ``topic`` (following redirects).

        Of a partitioned topic's partitions, ask for each ``t-partition-i``
        (``get_topic_partitions`` lists them).
        """
        name = _check_topic(topic)
        return await self._get_pool().lookup(str(name))

    async def create_producer(
        self, topic: str, **options: Unpack[ProducerKeywords]
    ) -> AsyncProducer:
        """Open a producer on ``topic``; returns once the broker accepted it.

        The keyword arguments are pulsar-client's (``producer_name``, ``send_timeout_millis``,
        ``compression_type``, ``max_pending_messages``, ``block_if_queue_full``,
        ``batching_enabled``, ``batching_max_messages``, ``batching_max_allowed_size_in_bytes``,
        ``batching_max_publish_delay_ms``); ``ProducerOptions`` has their defaults.
        ``send_timeout_millis=0`` disables the send timeout.
        """
        return await self._open_producer(topic, None, producer_options(options))

    async def _open_producer(
        self,
        topic: str,
        on_space_freed: Callable[[int], None] | None,
        options: ProducerOptions,
    ) -> AsyncProducer:
        # The sync wrapper passes on_space_freed to keep its own pending-message count.
        name = _check_topic(topic)
        pool = self._get_pool()
        partitions = await self._partitions_of(name)
        producer: TopicProducer | PartitionedProducer
        if partitions:
            producer = PartitionedProducer(
                pool,
                str(name),
                partitions,
                options,
                on_space_freed=on_space_freed,
                on_close=self._producers.discard,
            )
        else:
            producer = TopicProducer(
                pool,
                str(name),
                options,
                on_space_freed=on_space_freed,
                on_close=self._producers.discard,
            )
        await producer._start()
        self._producers.add(producer)
        return producer

    @overload
    async def subscribe(
        self, topic: str, subscription_name: str, *args: Any, **kwargs: Any
    ) -> AsyncConsumer: ...

    @overload
    async def subscribe(
        self,
        topic: list[str] | tuple[str, ...] | re.Pattern[str],
        subscription_name: str,
        *args: Any,
        **kwargs: Any,
    ) -> MultiTopicsConsumer: ...

    @overload
    async def subscribe(
        self,
        topic: None = None,
        subscription_name: str = "",
        *,
        topics: list[str] | None = None,
        topic_pattern: re.Pattern[str] | str | None = None,
        **kwargs: Any,
    ) -> MultiTopicsConsumer: ...

    async def subscribe(  # type: ignore[misc]  # overload 3 names keywords; they are here
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
    ) -> AsyncConsumer | MultiTopicsConsumer:
        """Subscribe to ``topic``; returns once the broker accepted the consumer.

        ``topic`` may also be a list of topics or a compiled regular expression over full
        topic names of one namespace (``re.compile("persistent://public/default/orders-.*")``),
        as in pulsar-client, or be given as ``topics=[...]`` or ``topic_pattern=...``: the
        result is then a ``MultiTopicsConsumer`` over them, and a pattern's topics are listed
        again every ``pattern_auto_discovery_period_s``.

        ``ConsumerType.Failover``: one consumer of the subscription receives (per partition),
        the others stand by; ``priority_level`` (0 first) and then the consumer name choose
        it, and ``consumer_event_listener`` is told when this consumer becomes active or a
        standby. ``unacked_messages_timeout_ms`` (None: off; at least 1,000): a message taken
        and not acknowledged within it is redelivered (its whole entry, to any consumer).
        ``dead_letter_policy``: see ``ConsumerDeadLetterPolicy``. ``retry_enable``: the
        subscription also covers the retry topic (``<topic>-<subscription>-RETRY``) and the
        result is a ``MultiTopicsConsumer`` with ``reconsume_later(message, delay)``;
        without a policy, ``max_redeliver_count`` is 16 (Pulsar's).

        On a partitioned topic the consumer subscribes to every partition and merges them
        (each partition's stream has ``receiver_queue_size`` permits, 50,000 at most over
        all partitions). Raises ``ConsumerBusy`` when an exclusive subscription already has
        a consumer.
        """

        if topics is not None or topic_pattern is not None:
            if topic is not None or (topics is not None and topic_pattern is not None):
                raise InvalidArgument("give one of topic, topics and topic_pattern")
            if topics is not None:
                topic = list(topics)
            else:
                try:
                    topic = (
                        re.compile(topic_pattern)
                        if isinstance(topic_pattern, str)
                        else topic_pattern
                    )
                except re.error as exc:
                    raise InvalidArgument(
                        f"topic_pattern is not a regular expression: {exc}"
                    ) from None
        if topic is None:
            raise InvalidArgument("subscribe needs a topic, topics=[...] or topic_pattern=...")
        if not subscription_name:
            raise InvalidArgument("subscription_name must not be empty")
        letter_policy = dead_letter_policy
        retry: tuple[str, ConsumerDeadLetterPolicy] | None = None
        if retry_enable:
            if not isinstance(topic, str):
                raise InvalidArgument("retry_enable takes one topic")
            policy = dead_letter_policy or ConsumerDeadLetterPolicy(
                DEFAULT_RETRY_MAX_REDELIVER_COUNT
            )
            # The topic and its retry topic share one dead-letter topic.
            letter_policy = dataclasses.replace(
                policy, dead_letter_topic=policy.topic_for(topic, subscription_name)
            )
            retry = (policy.retry_topic_for(topic, subscription_name), letter_policy)
            topic = [topic, retry[0]]

        async def subscribe_one(name: str) -> AsyncConsumer:
            return await self._subscribe_one(
                name,
                subscription_name,
                consumer_type=consumer_type,
                receiver_queue_size=receiver_queue_size,
                consumer_name=consumer_name,
                initial_position=initial_position,
                negative_ack_redelivery_delay_ms=negative_ack_redelivery_delay_ms,
                priority_level=priority_level,
                consumer_event_listener=consumer_event_listener,
                unacked_messages_timeout_ms=unacked_messages_timeout_ms,
                dead_letter_policy=letter_policy,
                key_shared_policy=key_shared_policy,
                max_pending_chunked_message=max_pending_chunked_message,
                is_read_compacted=is_read_compacted,
                auto_ack_oldest_chunked_message_on_queue_full=auto_ack_oldest_chunked_message_on_queue_full,
                expire_time_of_incomplete_chunked_message_ms=expire_time_of_incomplete_chunked_message_ms,
            )

        if isinstance(topic, str):
            return await subscribe_one(topic)
        if isinstance(topic, re.Pattern):
            names: list[str] = []
            pattern: re.Pattern[str] | None = topic
        elif isinstance(topic, (list, tuple)) and topic and all(isinstance(t, str) for t in topic):
            names, pattern = list(topic), None
        else:
            raise InvalidArgument("topic must be a name, a non-empty list of names or a pattern")
        multi = MultiTopicsConsumer(
            self._get_pool(),
            subscription_name,
            subscribe_one,
            topics=names,
            pattern=pattern,
            receiver_queue_size=receiver_queue_size,
            pattern_auto_discovery_period_s=pattern_auto_discovery_period_s,
            retry=retry,
        )
        await multi._start()
        self._multi_consumers.add(multi)
        return multi

    async def _subscribe_one(
        self,
        topic: str,
        subscription_name: str,
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
    ) -> AsyncConsumer:
        """One topic's consumer (see ``subscribe``)."""
        name = _check_topic(topic)
        pool = self._get_pool()
        partitions = await self._partitions_of(name)
        consumer = AsyncConsumer(
            pool,
            str(name),
            subscription_name,
            num_partitions=partitions,
            consumer_type=consumer_type,
            initial_position=initial_position,
            receiver_queue_size=receiver_queue_size,
            consumer_name=consumer_name,
            negative_ack_redelivery_delay_ms=negative_ack_redelivery_delay_ms,
            priority_level=priority_level,
            consumer_event_listener=consumer_event_listener,
            unacked_messages_timeout_ms=unacked_messages_timeout_ms,
            dead_letter_policy=dead_letter_policy,
            key_shared_policy=key_shared_policy,
            max_pending_chunked_message=max_pending_chunked_message,
            read_compacted=is_read_compacted,
            auto_ack_oldest_chunked_message_on_queue_full=auto_ack_oldest_chunked_message_on_queue_full,
            expire_time_of_incomplete_chunked_message_ms=expire_time_of_incomplete_chunked_message_ms,
            on_close=self._consumers.discard,
        )
        await consumer._start()
        self._consumers.add(consumer)
        return consumer

    async def create_reader(
        self,
        topic: str,
        start_message_id: MessageId,
        start_message_id_inclusive: bool = False,
        reader_name: str | None = None,
        receiver_queue_size: int = 1000,
        is_read_compacted: bool = False,
    ) -> AsyncReader:
        """A reader of ``topic`` from ``start_message_id`` (``MessageId.earliest``,
        ``MessageId.latest`` or an id), on a non-durable subscription: nothing is left behind
        when it closes. Not for partitioned topics: read each partition (``t-partition-N``)."""
        name = _check_topic(topic)
        if not isinstance(start_message_id, MessageId):
            raise InvalidArgument("start_message_id must be a MessageId")
        pool = self._get_pool()
        if await self._partitions_of(name):
            raise InvalidArgument(
                f"{name} is partitioned: create a reader per partition ({name}-partition-N)"
            )
        consumer = AsyncConsumer(
            pool,
            str(name),
            reader_subscription_name(reader_name),
            consumer_type=ConsumerType.Exclusive,
            receiver_queue_size=receiver_queue_size,
            reader_start=(start_message_id, start_message_id_inclusive),
            on_close=self._consumers.discard,
            read_compacted=is_read_compacted,
        )
        await consumer._start()
        self._consumers.add(consumer)
        return AsyncReader(consumer, start_message_id, start_message_id_inclusive)

    async def close(self) -> None:
        """Close every producer and consumer of this client, then the channels. Idempotent."""
        if self._closed:
            return
        self._closed = True
        await asyncio.gather(
            *(multi.close() for multi in list(self._multi_consumers)), return_exceptions=True
        )
        await asyncio.gather(
            *(producer.close() for producer in list(self._producers)),
            *(consumer.close() for consumer in list(self._consumers)),
            return_exceptions=True,
        )
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()
