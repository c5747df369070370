"""Readers: reading a topic from a chosen message, without a durable subscription
(pulsar-client's ``Reader``).

A reader is a consumer on a non-durable subscription (``reader-<random>``, Exclusive) that
the broker keeps in memory while the reader is connected and forgets when it leaves: nothing
is left behind in the metadata store. It starts at ``start_message_id`` (``MessageId.earliest``,
``MessageId.latest`` or an id; the message itself is included only with
``start_message_id_inclusive``). The reader acknowledges what it reads, so that the broker's
in-memory cursor moves on, and after a reconnect it goes on after the last message it read.
"""

from __future__ import annotations

import secrets

from strata.client._consumer import AsyncConsumer
from strata.client._message import Message, MessageId

READER_NAME_PREFIX = "reader-"


def reader_subscription_name(reader_name: str | None) -> str:
    """The non-durable subscription's name: ``reader_name`` or ``reader-<10 hex digits>``."""
    return reader_name or READER_NAME_PREFIX + secrets.token_hex(5)


class AsyncReader:
    """Reads a topic in order from a start message. Made by ``AsyncClient.create_reader``."""

    def __init__(self, consumer: AsyncConsumer, start: MessageId, inclusive: bool) -> None:
        self._consumer = consumer
        self._start = start
        self._inclusive = inclusive
        # Messages of the start entry before the start's batch index are skipped (the broker
        # starts at the entry; a batch's messages are filtered here, as pulsar-client does).
        self._skip_start_batch = start.batch_index() >= 0
        self._last: MessageId | None = None

    def topic(self) -> str:
        return self._consumer.topic()

    def subscription_name(self) -> str:
        return self._consumer.subscription_name()

    async def read_next(self, timeout_millis: int | None = None) -> Message:
        """The next message; raises ``Timeout`` after ``timeout_millis`` (None: forever)."""
        while True:
            message = await self._consumer.receive(timeout_millis)
            self._consumer.acknowledge_nowait(message)
            if self._skip_start_batch and self._before_start(message.message_id()):
                continue
            self._skip_start_batch = False
            self._last = message.message_id()
            self._consumer._reader_start = (self._last, False)
            return message

    def _before_start(self, message_id: MessageId) -> bool:
        start = self._start
        if (message_id.ledger_id(), message_id.entry_id()) != (
            start.ledger_id(),
            start.entry_id(),
        ):
            return False
        if self._inclusive:
            return message_id.batch_index() < start.batch_index()
        return message_id.batch_index() <= start.batch_index()

    async def has_message_available(self) -> bool:
        """Whether ``read_next`` would return a message now: one is received already, or the
        topic holds an entry after the last message read (pulsar-client's check)."""
        if self._consumer._queue:
            return True
        last = await self._consumer.get_last_message_id()
        if last.ledger_id() < 0:
            return False  # the topic holds nothing
        if self._last is None:
            start = self._start
            if start == MessageId.earliest:
                return True
            if start == MessageId.latest:
                return False
            position = (start.ledger_id(), start.entry_id())
            last_position = (last.ledger_id(), last.entry_id())
            return position < last_position or (position == last_position and self._inclusive)
        read = (self._last.ledger_id(), self._last.entry_id())
        return read < (last.ledger_id(), last.entry_id())

    async def seek(self, target: MessageId | int) -> None:
        """Move the reader to a message id (read next) or a publish time in ms; see
        ``AsyncConsumer.seek``."""
        await self._consumer.seek(target)
        self._skip_start_batch = False
        self._last = None
        if isinstance(target, MessageId):
            self._start, self._inclusive = target, True

    async def close(self) -> None:
        """End the reader; the broker forgets its subscription. Idempotent."""
        await self._consumer.close()

    def is_connected(self) -> bool:
        return self._consumer.is_connected()
