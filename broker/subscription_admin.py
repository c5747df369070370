"""Subscription administration (pulsar-admin's ``topics subscriptions``, ``create-
subscription``, ``unsubscribe``, ``reset-cursor``, ``skip``, ``clear-backlog``,
``peek-messages``), on a topic this broker owns.

Reset and forced unsubscribe disconnect the subscription's consumers, as Pulsar does: they
reconnect (the SDK drops what it had queued) and go on from the new position.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from broker.errors import (
    AlreadyExistsError,
    InvalidRequestError,
    NotFoundError,
    PreconditionError,
    ServiceUnavailableError,
)
from broker.managed_ledger import Entry, Position
from broker.stream_requests import check_subscription_name
from broker.subscription import Subscription
from broker.topic import Topic
from strata.clock import now_ms
from strata.naming import quoted

MAX_PEEK_ENTRIES = 100
# Ledger and entry ids of a LEDGER:ENTRY text: signed 64-bit, as MessageIdData's on the wire.
MAX_ID = (1 << 63) - 1
MAX_ID_DIGITS = 19
# Entries read per step while skipping or peeking.
READ_CHUNK_ENTRIES = 100


def subscription_of(topic: Topic, name: str) -> Subscription:
    check_subscription_name(name)
    subscription = topic.subscriptions.get(name)
    if subscription is None:
        raise NotFoundError(f"subscription {name[:100]!r} does not exist on {topic.name}")
    return subscription


def position_before(topic: Topic, text: str) -> Position:
    """The mark-delete position that makes ``text``'s message the next one read:
    ``earliest``, ``latest`` or ``LEDGER:ENTRY``."""
    ledger = topic.ledger
    if text == "earliest":
        first = ledger.first_position()
        return (first[0], first[1] - 1)
    if text in ("latest", ""):
        last = ledger.last_confirmed
        if last[0] < 0:
            first = ledger.first_position()
            return (first[0], first[1] - 1)
        return last
    parts = text.split(":")
    # ASCII digits only ('²'.isdigit() is true, int('²') fails), within a signed 64-bit id.
    if (
        len(parts) != 2
        or not all(p.isascii() and p.isdigit() and len(p) <= MAX_ID_DIGITS for p in parts)
        or not all(int(p) <= MAX_ID for p in parts)
    ):
        raise InvalidRequestError(
            "message id must be earliest, latest or LEDGER:ENTRY (numbers up to 2^63-1), "
            f"got {quoted(text)}"
        )
    return (int(parts[0]), int(parts[1]) - 1)


async def create_subscription(topic: Topic, name: str, message_id: str) -> None:
    check_subscription_name(name)
    if name in topic.subscriptions:
        raise AlreadyExistsError(f"subscription {name[:100]!r} already exists on {topic.name}")
    mark_delete = position_before(topic, message_id)
    subscription = await topic.get_subscription(name, None, start_at_earliest=False)
    subscription.reset_to(mark_delete)


async def delete_subscription(topic: Topic, name: str, force: bool) -> None:
    subscription = subscription_of(topic, name)
    if subscription.consumers and not force:
        raise PreconditionError(
            f"subscription {name[:100]!r} has {len(subscription.consumers)} connected "
            "consumers (force disconnects them)"
        )
    subscription.disconnect_consumers(ServiceUnavailableError("the subscription was deleted"))
    await topic.delete_subscription(name)


async def reset_cursor(topic: Topic, name: str, mark_delete: Position) -> None:
    subscription = subscription_of(topic, name)
    subscription.disconnect_consumers(
        ServiceUnavailableError("the subscription's cursor was reset")
    )
    subscription.reset_to(mark_delete, force=True)


async def position_before_time(topic: Topic, name: str, publish_time_ms: int) -> Position:
    return await subscription_of(topic, name).position_before_publish_time(publish_time_ms)


async def skip_messages(topic: Topic, name: str, count: int) -> int:
    """Acknowledge ``count`` messages from the oldest unacknowledged one (whole entries), or
    all (``count`` 0); returns how many messages were skipped."""
    if count < 0:
        raise InvalidRequestError(f"count must not be negative, got {count}")
    subscription = subscription_of(topic, name)
    skipped = 0
    async for entry in _unacknowledged(topic, subscription, None):
        if count and skipped >= count:
            break
        acked = subscription.cursor.acked_indexes(entry.position).bit_count()
        skipped += entry.num_messages - acked
        subscription.skip_entry(entry.position)
    return skipped


async def expire_messages(
    topic: Topic, name: str, expire_time_seconds: int, max_entries: int | None = None
) -> int:
    """Acknowledge what was published more than ``expire_time_seconds`` ago (at most
    ``max_entries`` entries); returns how many messages that was, also counted in the
    subscription's expired totals."""
    if expire_time_seconds < 0:
        raise InvalidRequestError(
            f"expire_time_seconds must not be negative, got {expire_time_seconds}"
        )
    subscription = subscription_of(topic, name)
    cutoff_ms = now_ms() - expire_time_seconds * 1000
    through = await subscription.position_before_publish_time(cutoff_ms)
    expired = 0
    async for entry in _unacknowledged(topic, subscription, max_entries):
        if entry.position > through:
            break
        acked = subscription.cursor.acked_indexes(entry.position).bit_count()
        expired += entry.num_messages - acked
        subscription.skip_entry(entry.position)
    subscription.messages_expired.total += expired
    return expired


async def skip_entries_until(
    topic: Topic, subscription: Subscription, ledger_id: int, max_entries: int
) -> tuple[int, int]:
    """Acknowledge the subscription's unacknowledged entries of ledger ``ledger_id`` and any
    before it (at most ``max_entries``); returns (messages, entries) skipped."""
    messages = entries = 0
    async for entry in _unacknowledged(topic, subscription, max_entries):
        if entry.ledger_id > ledger_id:
            break
        acked = subscription.cursor.acked_indexes(entry.position).bit_count()
        messages += entry.num_messages - acked
        entries += 1
        subscription.skip_entry(entry.position)
    return messages, entries


# A TTL pass expires at most this many entries per subscription (the next pass goes on).
MAX_TTL_ENTRIES_PER_PASS = 10_000


async def expire_by_ttl(topic: Topic) -> int:
    """Expire, on every subscription of the topic, what its message TTL has passed (Pulsar's
    PersistentMessageExpiryMonitor); returns how many messages expired."""
    ttl = topic.message_ttl_seconds
    if ttl <= 0:
        return 0
    expired = 0
    for name, subscription in list(topic.subscriptions.items()):
        if subscription.cursor.backlog_entries() == 0:
            continue
        expired += await expire_messages(topic, name, ttl, MAX_TTL_ENTRIES_PER_PASS)
    return expired


async def get_message(
    topic: Topic, message_id: str | None, from_earliest: int | None, from_latest: int | None
) -> Entry:
    """One stored entry: by ``LEDGER:ENTRY`` or by its place from either end (1-based)."""
    ledger = topic.ledger
    if message_id is not None:
        mark = position_before(topic, message_id)
        position: Position = (mark[0], mark[1] + 1)
    else:
        place = from_earliest if from_earliest is not None else from_latest
        assert place is not None
        counts = [(info.ledger_id, info.entries) for info in ledger.ledgers if info.entries]
        total = sum(count for _, count in counts)
        if place < 1:
            raise InvalidRequestError(f"a place from either end counts from 1, got {place}")
        if not place <= total:
            raise NotFoundError(f"the topic holds {total} entries; there is no entry {place}")
        index = place - 1 if from_earliest is not None else total - place
        for ledger_id, count in counts:
            if index < count:
                position = (ledger_id, index)
                break
            index -= count
    if not ledger.contains(position):
        raise NotFoundError(f"no entry {position[0]}:{position[1]} in {topic.name}")
    entry = await ledger.read_entry(position)
    if entry is None:
        raise NotFoundError(f"no entry {position[0]}:{position[1]} in {topic.name}")
    return entry


async def peek_messages(topic: Topic, name: str, count: int) -> list[Entry]:
    """The first ``count`` unacknowledged entries, the cursor unchanged."""
    if not 1 <= count <= MAX_PEEK_ENTRIES:
        raise InvalidRequestError(f"count must be within 1..{MAX_PEEK_ENTRIES}, got {count}")
    subscription = subscription_of(topic, name)
    return [entry async for entry in _unacknowledged(topic, subscription, count)]


async def _unacknowledged(
    topic: Topic, subscription: Subscription, limit: int | None
) -> AsyncIterator[Entry]:
    ledger = topic.ledger
    position = ledger.next_position(subscription.cursor.mark_delete)
    found = 0
    while position <= ledger.last_confirmed:
        entries = await ledger.read_entries(position, READ_CHUNK_ENTRIES)
        if not entries:
            return
        for entry in entries:
            if not subscription.cursor.is_acked(entry.position):
                yield entry
                found += 1
                if limit is not None and found >= limit:
                    return
        position = ledger.next_position(entries[-1].position)
