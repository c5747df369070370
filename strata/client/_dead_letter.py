"""Dead-letter topics: a message redelivered too often leaves its subscription for a topic of
its own (pulsar-client's ``ConsumerDeadLetterPolicy``).

A consumer with a policy checks each negative acknowledgement: a message already delivered
``max_redeliver_count`` times after the first (its redelivery count has reached the limit)
is not redelivered again but handed to its ``DeadLetterMover``. The mover publishes it to the
dead-letter topic (``<topic>-<subscription>-DLQ`` unless named) with its payload, key, event
time and properties plus ``REAL_TOPIC`` and ``ORIGIN_MESSAGE_ID``, waits for the receipt,
and only then acknowledges it on the source: a crash in between leaves it in both topics,
never in neither.

Lifecycle: the mover's task (started on the first message, owned by the mover) creates the
producer, and the first time also the ``initial_subscription_name`` subscription on the
dead-letter topic so that it keeps what arrives before anyone subscribes; ``close`` finishes
the moves queued so far (bounded by the client's operation timeout), then closes the
producer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from strata.client._errors import InvalidArgument, InvalidTopicName, StrataException
from strata.client._message import Message
from strata.client._options import ProducerOptions
from strata.client._producer import TopicProducer
from strata.naming import InvalidNameError, TopicName

if TYPE_CHECKING:
    from strata.client._connection import ConnectionPool

log = logging.getLogger(__name__)

# Messages published to the dead-letter topic before their receipts are awaited together.
DEAD_LETTER_CHUNK_MESSAGES = 100
# The properties Pulsar adds to a dead-lettered or retried message.
PROPERTY_REAL_TOPIC = "REAL_TOPIC"
PROPERTY_ORIGIN_MESSAGE_ID = "ORIGIN_MESSAGE_ID"
PROPERTY_RECONSUME_TIMES = "RECONSUMETIMES"
# Pulsar's default max_redeliver_count when retry is enabled without a policy.
DEFAULT_RETRY_MAX_REDELIVER_COUNT = 16


@dataclass(frozen=True, slots=True)
class ConsumerDeadLetterPolicy:
    """pulsar-client's ``ConsumerDeadLetterPolicy``: after ``max_redeliver_count``
    redeliveries a negatively acknowledged message goes to ``dead_letter_topic`` (default
    ``<topic>-<subscription>-DLQ``), where ``initial_subscription_name``, if given, is created
    with it so that nothing sent there is lost before a consumer subscribes."""

    max_redeliver_count: int
    dead_letter_topic: str | None = None
    initial_subscription_name: str | None = None
    # The retry topic of ``subscribe(..., retry_enable=True)`` (Pulsar's retryLetterTopic):
    # default ``<topic>-<subscription>-RETRY``.
    retry_letter_topic: str | None = None

    def __post_init__(self) -> None:
        if self.max_redeliver_count < 1:
            raise InvalidArgument("max_redeliver_count must be at least 1")
        for name in (self.dead_letter_topic, self.retry_letter_topic):
            if name is not None:
                try:
                    TopicName.parse(name)
                except InvalidNameError as exc:
                    raise InvalidTopicName(str(exc)) from None

    def retry_topic_for(self, topic: str, subscription: str) -> str:
        """The retry topic of ``subscription`` on ``topic``."""
        if self.retry_letter_topic:
            return str(TopicName.parse(self.retry_letter_topic))
        base = TopicName.parse(topic).partitioned_name
        return str(TopicName.parse(f"{base}-{subscription}-RETRY"))

    def topic_for(self, topic: str, subscription: str) -> str:
        """The dead-letter topic of ``subscription`` on ``topic`` (a partition's messages go
        to the topic's one dead-letter topic)."""
        if self.dead_letter_topic:
            return str(TopicName.parse(self.dead_letter_topic))
        base = TopicName.parse(topic).partitioned_name
        return str(TopicName.parse(f"{base}-{subscription}-DLQ"))


class DeadLetterMover:
    """Moves messages of one consumer to its dead-letter topic; see the module docstring."""

    def __init__(
        self,
        pool: ConnectionPool,
        topic: str,
        subscription: str,
        policy: ConsumerDeadLetterPolicy,
        acknowledge: Callable[[Message], None],
        subscribe_initial: Callable[[str, str], Awaitable[None]] | None = None,
    ) -> None:
        self.policy = policy
        self.topic = policy.topic_for(topic, subscription)
        self._pool = pool
        self._acknowledge = acknowledge
        self._subscribe_initial = subscribe_initial
        self._queue: deque[Message] = deque()
        self._wakeup = asyncio.Event()
        self._drained = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._producer: TopicProducer | None = None
        self.moved = 0

    def wants(self, message: Message) -> bool:
        """Whether a negative acknowledgement of ``message`` sends it here instead."""
        return message.redelivery_count() >= self.policy.max_redeliver_count

    def submit(self, message: Message) -> None:
        self._queue.append(message)
        self._drained.clear()
        self._wakeup.set()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"strata-dead-letter {self.topic}"
            )

    async def close(self) -> None:
        """Finish the queued moves (within the operation timeout), then stop."""
        if self._task is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._pool.operation_timeout_s):
                    await self._drained.wait()
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, StrataException):
                await self._task
        if self._producer is not None:
            await self._producer.close()

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                try:
                    if self._producer is None:
                        if self.policy.initial_subscription_name and self._subscribe_initial:
                            await self._subscribe_initial(
                                self.topic, self.policy.initial_subscription_name
                            )
                        producer = TopicProducer(self._pool, self.topic, ProducerOptions())
                        await producer._start()
                        self._producer = producer
                    await self._move_some(self._producer)
                    if not self._queue:
                        self._drained.set()
                except StrataException as exc:
                    # Left queued: tried again after a pause (the messages stay unacknowledged
                    # on the source, so nothing is lost meanwhile).
                    log.warning("dead-letter topic %s: %s; retrying", self.topic, exc)
                    await asyncio.sleep(1)

    async def _move_some(self, producer: TopicProducer) -> None:
        chunk = [self._queue[i] for i in range(min(DEAD_LETTER_CHUNK_MESSAGES, len(self._queue)))]
        receipts = []
        for message in chunk:
            properties = dict(message.properties())
            # A retried message keeps the topic and id it first had.
            properties.setdefault(PROPERTY_REAL_TOPIC, message.topic_name())
            properties.setdefault(PROPERTY_ORIGIN_MESSAGE_ID, str(message.message_id()))
            receipts.append(
                await producer.send_async(
                    message.data(),
                    properties=properties,
                    partition_key=message.partition_key() or None,
                    event_timestamp=message.event_timestamp() or None,
                )
            )
        await asyncio.gather(*receipts)
        for message in chunk:
            self._queue.popleft()
            self._acknowledge(message)
            self.moved += 1
