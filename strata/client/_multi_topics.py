"""Multi-topic and pattern subscriptions (pulsar-client's ``subscribe([...])`` and
``subscribe(re.compile(...))``): one subscription name over several topics, the wildcard
routing of RabbitMQ's topic exchanges.

A ``MultiTopicsConsumer`` holds one ``AsyncConsumer`` per topic (a partitioned topic's is
itself one per partition) and merges what they receive into one queue: a fetch task per
topic takes messages from its consumer while the merged queue has room
(``receiver_queue_size`` messages), so prefetching stays bounded. Each message names its
topic (``Message.topic_name()``), and acknowledgements go back to the consumer of that topic.

With a pattern, the topics are those of the pattern's namespace (``GetTopicsOfNamespace``)
whose full names match it; a discovery task lists them again every
``pattern_auto_discovery_period_s`` (60 s, as Pulsar), subscribes to new ones and closes the
consumers of topics gone. All tasks are owned by the consumer and ended by ``close``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import re
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from strata.client._dead_letter import (
    PROPERTY_ORIGIN_MESSAGE_ID,
    PROPERTY_REAL_TOPIC,
    PROPERTY_RECONSUME_TIMES,
    ConsumerDeadLetterPolicy,
)
from strata.client._errors import AlreadyClosed, InvalidArgument, StrataException, Timeout
from strata.client._lookup import topics_of_namespace
from strata.client._message import Message, MessageId
from strata.client._options import ProducerOptions
from strata.client._producer import TopicProducer
from strata.naming import TopicName

if TYPE_CHECKING:
    from strata.client._connection import ConnectionPool
    from strata.client._consumer import AsyncConsumer

log = logging.getLogger(__name__)

DEFAULT_PATTERN_AUTO_DISCOVERY_PERIOD_S = 60.0
# A multi-topic subscription covers at most this many topics.
MAX_TOPICS_PER_MULTI_TOPIC_CONSUMER = 1000
# How long a fetch task waits in one receive before it checks for room and closing again.
FETCH_WAIT_MS = 500


def pattern_namespace(pattern: re.Pattern[str]) -> str:
    """The namespace a pattern's topics live in: ``persistent://tenant/namespace/...`` (a
    pattern without the domain is taken as ``public/default``, as a bare topic name is)."""
    text = pattern.pattern
    match = re.match(r"^persistent://([A-Za-z0-9_.=:%-]+)/([A-Za-z0-9_.=:%-]+)/", text)
    if match is not None:
        return f"{match.group(1)}/{match.group(2)}"
    if "://" in text:
        raise InvalidArgument(
            "a topic pattern names its namespace literally: persistent://tenant/namespace/..."
        )
    return "public/default"


class MultiTopicsConsumer:
    """One subscription over several topics; see the module docstring."""

    def __init__(
        self,
        pool: ConnectionPool,
        subscription_name: str,
        make_consumer: Callable[[str], Awaitable[AsyncConsumer]],
        *,
        topics: Sequence[str] = (),
        pattern: re.Pattern[str] | None = None,
        receiver_queue_size: int = 1000,
        pattern_auto_discovery_period_s: float = DEFAULT_PATTERN_AUTO_DISCOVERY_PERIOD_S,
        retry: tuple[str, ConsumerDeadLetterPolicy] | None = None,
    ) -> None:
        if pattern_auto_discovery_period_s <= 0:
            raise InvalidArgument("pattern_auto_discovery_period_s must be positive")
        self._pool = pool
        self._subscription = subscription_name
        self._make_consumer = make_consumer
        self._wanted = [str(TopicName.parse(t)) for t in topics]
        self._pattern = pattern
        self._namespace = pattern_namespace(pattern) if pattern is not None else ""
        self._period_s = pattern_auto_discovery_period_s
        self._max_queued = max(1, receiver_queue_size)
        self._consumers: dict[str, AsyncConsumer] = {}
        self._fetchers: dict[str, asyncio.Task[None]] = {}
        self._queue: deque[Message] = deque()
        self._arrived = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._discovery: asyncio.Task[None] | None = None
        self._closed = False
        # reconsume_later: the retry topic, the policy, and its producer (made on first use).
        self._retry = retry
        self._retry_producer: TopicProducer | None = None
        self._retry_lock = asyncio.Lock()

    # ---- lifecycle -------------------------------------------------------------------------

    async def _start(self) -> None:
        topics = self._wanted if self._pattern is None else await self._matching_topics()
        if len(set(topics)) > MAX_TOPICS_PER_MULTI_TOPIC_CONSUMER:
            limit = MAX_TOPICS_PER_MULTI_TOPIC_CONSUMER
            raise InvalidArgument(f"a multi-topic consumer covers at most {limit} topics")
        try:
            for topic in dict.fromkeys(topics):
                await self._add_topic(topic)
        except BaseException:
            await self.close()
            raise
        if self._pattern is not None:
            self._discovery = asyncio.get_running_loop().create_task(
                self._discover_loop(), name=f"strata-pattern-discovery {self._pattern.pattern}"
            )

    async def _matching_topics(self) -> list[str]:
        assert self._pattern is not None
        names = await topics_of_namespace(self._pool, self._namespace)
        return [name for name in names if self._pattern.fullmatch(name)]

    async def _add_topic(self, topic: str) -> None:
        consumer = await self._make_consumer(topic)
        self._consumers[topic] = consumer
        self._fetchers[topic] = asyncio.get_running_loop().create_task(
            self._fetch(consumer), name=f"strata-multi-topic-fetch {topic}"
        )

    async def _remove_topic(self, topic: str) -> None:
        fetcher = self._fetchers.pop(topic, None)
        if fetcher is not None:
            fetcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await fetcher
        consumer = self._consumers.pop(topic, None)
        if consumer is not None:
            self._queue = deque(m for m in self._queue if m.topic_name() != topic)
            await consumer.close()

    async def _discover_loop(self) -> None:
        while True:
            await asyncio.sleep(self._period_s)
            try:
                found = set(await self._matching_topics())
            except StrataException as exc:
                log.warning("pattern %s: listing topics failed: %s", self._pattern, exc)
                continue
            current = set(self._consumers)
            for topic in sorted(found - current):
                if len(self._consumers) >= MAX_TOPICS_PER_MULTI_TOPIC_CONSUMER:
                    log.warning("pattern %s: topic limit reached", self._pattern)
                    break
                try:
                    await self._add_topic(topic)
                    log.info("pattern %s: subscribed to new topic %s", self._pattern, topic)
                except StrataException as exc:
                    log.warning(
                        "pattern %s: subscribing to %s failed: %s", self._pattern, topic, exc
                    )
            for topic in sorted(current - found):
                await self._remove_topic(topic)
                log.info("pattern %s: topic %s is gone", self._pattern, topic)

    async def _fetch(self, consumer: AsyncConsumer) -> None:
        while True:
            await self._room.wait()
            try:
                messages = await consumer.receive_many(
                    max(1, self._max_queued - len(self._queue)), timeout_millis=FETCH_WAIT_MS
                )
            except Timeout:
                continue
            except AlreadyClosed:
                return
            self._queue.extend(messages)
            self._arrived.set()
            if len(self._queue) >= self._max_queued:
                self._room.clear()

    async def close(self) -> None:
        """Close every topic's consumer (their acknowledgements made durable) and the tasks.
        Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._discovery is not None:
            self._discovery.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._discovery
        for topic in list(self._consumers):
            await self._remove_topic(topic)
        if self._retry_producer is not None:
            await self._retry_producer.close()
        self._arrived.set()

    # ---- the consumer API --------------------------------------------------------------------

    def topic(self) -> str:
        """The pattern, or the topics joined by commas."""
        return self._pattern.pattern if self._pattern is not None else ",".join(self._wanted)

    def topics(self) -> list[str]:
        """The topics consumed now."""
        return sorted(self._consumers)

    def subscription_name(self) -> str:
        return self._subscription

    def consumer_name(self) -> str:
        return ""

    def is_connected(self) -> bool:
        return all(c.is_connected() for c in self._consumers.values())

    async def receive(self, timeout_millis: int | None = None) -> Message:
        return (await self.receive_many(1, timeout_millis))[0]

    async def receive_many(
        self, max_messages: int = 1000, timeout_millis: int | None = None
    ) -> list[Message]:
        """Up to ``max_messages`` messages of any of the topics, waiting only for the first."""
        self._check_open()
        if not self._queue:
            timeout_s = None if timeout_millis is None else timeout_millis / 1000
            try:
                async with asyncio.timeout(timeout_s):
                    while not self._queue:
                        self._arrived.clear()
                        await self._arrived.wait()
                        self._check_open()
            except TimeoutError:
                raise Timeout(f"no message within {timeout_millis} ms") from None
        count = min(max_messages, len(self._queue))
        messages = [self._queue.popleft() for _ in range(count)]
        if len(self._queue) < self._max_queued:
            self._room.set()
        return messages

    def _consumer_of(self, message: Message | MessageId) -> AsyncConsumer:
        topic = message.topic_name()
        if topic is None:
            raise InvalidArgument(
                "a multi-topic consumer acknowledges received messages or their ids (an id "
                "made by hand does not name its topic)"
            )
        consumer = self._consumers.get(topic) or self._consumers.get(
            str(TopicName.parse(topic).partitioned_name)
        )
        if consumer is None:
            raise InvalidArgument(f"{topic} is not consumed by this consumer (any more)")
        return consumer

    async def acknowledge(self, message: Message | MessageId) -> None:
        self.acknowledge_nowait(message)

    def acknowledge_nowait(self, message: Message | MessageId) -> None:
        self._consumer_of(message).acknowledge_nowait(message)

    def acknowledge_many(self, messages: Iterable[Message | MessageId]) -> None:
        for message in messages:
            self.acknowledge_nowait(message)

    def negative_acknowledge(self, message: Message | MessageId) -> None:
        self._consumer_of(message).negative_acknowledge(message)

    async def reconsume_later(self, message: Message, delay: datetime.timedelta) -> None:
        """Consume ``message`` again after ``delay`` (Pulsar's retry topic): it is published
        to the retry topic with the delay and its retry count (``RECONSUMETIMES``), then
        acknowledged here; after ``max_redeliver_count`` retries it goes to the dead-letter
        topic instead. Needs ``subscribe(..., retry_enable=True)``."""
        if self._retry is None:
            raise InvalidArgument("reconsume_later needs subscribe(..., retry_enable=True)")
        retry_topic, policy = self._retry
        consumer = self._consumer_of(message)
        properties = dict(message.properties())
        times = int(properties.get(PROPERTY_RECONSUME_TIMES, "0") or 0) + 1
        if times > policy.max_redeliver_count:
            consumer._dead_letter(message)
            return
        properties[PROPERTY_RECONSUME_TIMES] = str(times)
        properties.setdefault(PROPERTY_REAL_TOPIC, message.topic_name())
        properties.setdefault(PROPERTY_ORIGIN_MESSAGE_ID, str(message.message_id()))
        async with self._retry_lock:
            if self._retry_producer is None:
                producer = TopicProducer(self._pool, retry_topic, ProducerOptions())
                await producer._start()
                self._retry_producer = producer
        await self._retry_producer.send(
            message.data(),
            properties=properties,
            partition_key=message.partition_key() or None,
            deliver_after=delay,
        )
        consumer.acknowledge_nowait(message)

    async def acknowledge_cumulative(self, message: Message | MessageId) -> None:
        """This message and every earlier one of its topic (pulsar's multi-topic consumer)."""
        await self._consumer_of(message).acknowledge_cumulative(message)

    async def seek(self, target: MessageId | int) -> None:
        """Every topic to a publish time (ms), or a received message's topic to its id."""
        if isinstance(target, MessageId):
            await self._consumer_of(target).seek(target)
            return
        for consumer in list(self._consumers.values()):
            await consumer.seek(target)
        self._queue = deque()

    async def flush_acknowledgements(self, wait_durable: bool = True) -> None:
        await asyncio.gather(
            *(c.flush_acknowledgements(wait_durable) for c in self._consumers.values())
        )

    def _check_open(self) -> None:
        if self._closed:
            raise AlreadyClosed("the consumer was closed")
