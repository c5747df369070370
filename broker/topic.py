"""A persistent topic: its managed ledger, producers and subscriptions.

The publish path is per batch: the producer's batch bytes are wrapped once in a
``StoredEntry`` header and appended as one ledger entry; the broker never looks at single
messages. Subscriptions are woken when new entries are confirmed.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from urllib.parse import quote, unquote

from broker.backlog_quota import NO_QUOTA, BacklogQuota
from broker.compaction import TopicCompaction
from broker.cursor import CURSORS_PREFIX, ManagedCursor
from broker.deduplication import DeduplicationConfig, MessageDeduplication, snapshot_key
from broker.errors import AlreadyExistsError, ProducerBusyError
from broker.managed_ledger import (
    NO_RETENTION,
    ManagedLedger,
    ManagedLedgerListener,
    Position,
    Retention,
)
from broker.metrics import ENTRY_SIZE_BYTES
from broker.namespaces import topic_policies_key
from broker.rate_limit import NO_LIMIT, RateLimit, RateLimiter, limiter_for
from broker.rates import RateMeter
from broker.subscription import SUBSCRIPTION_EXCLUSIVE, Subscription
from strata.metadata import MetadataStore
from strata.naming import TopicName

# Pulsar's defaults (brokerDeduplicationEntriesInterval, ...MaxNumberOfProducers,
# ...ProducerInactivityTimeoutMinutes); the broker passes its configured values.
DEFAULT_DEDUPLICATION = DeduplicationConfig(
    entries_interval=1000, max_producers=10_000, inactivity_timeout_s=360 * 60
)


class Topic:
    """One loaded topic. Created and closed by ``BrokerService``.

    ``ledger`` makes the topic's (unopened) managed ledger with the listener it is given: new
    entries wake the subscriptions, and a fence calls ``on_fenced(topic)``. The service opens
    it (``ledger.open()``) before it loads the subscriptions.
    """

    def __init__(
        self,
        name: TopicName,
        ledger: Callable[[ManagedLedgerListener], ManagedLedger],
        store: MetadataStore,
        cursor_persist_interval_ms: int,
        cursor_max_persisted_ranges: int,
        on_fenced: Callable[[Topic], None],
        deduplication: DeduplicationConfig = DEFAULT_DEDUPLICATION,
    ) -> None:
        self.name = name
        self._store = store
        self._cursor_persist_interval_ms = cursor_persist_interval_ms
        self._cursor_max_persisted_ranges = cursor_max_persisted_ranges
        # producer name → sequence id of its last receipted message (kept after it leaves)
        self._last_sequence_ids: dict[str, int] = {}
        self.connected_producers: set[str] = set()
        self.subscriptions: dict[str, Subscription] = {}
        self._subscription_lock = asyncio.Lock()
        self.messages_in = RateMeter()
        self.bytes_in = RateMeter()
        # Outbound counts are the subscriptions' (a deleted one's stay counted).
        self._removed_messages_out = 0
        self._removed_bytes_out = 0
        self.messages_out = RateMeter(source=self._messages_out_total)
        self.bytes_out = RateMeter(source=self._bytes_out_total)
        self._producer_ids = itertools.count()
        # Set when the topic starts closing; its producer and consumer streams then end.
        self.closing = asyncio.Event()
        # monotonic time since when it has had no producer or consumer (None: in use)
        self.idle_since: float | None = None
        self.ledger = ledger(
            ManagedLedgerListener(new_entries=self._on_new_entries, fenced=lambda: on_fenced(self))
        )
        # Off until the service applies the topic's policy (``set_enabled``) at load.
        self.deduplication = MessageDeduplication(name, self.ledger, store, deduplication)
        self.compaction = TopicCompaction(name, self.ledger, store)
        # Namespace policies in effect, set at load and by each housekeeping pass.
        self.retention: Retention = NO_RETENTION
        self.message_ttl_seconds = 0  # 0: messages never expire
        self.compaction_threshold_bytes = 0  # 0: no automatic compaction
        self.backlog_quota: BacklogQuota = NO_QUOTA
        # The refusal text while the backlog is over its quota (``broker.backlog_quota``);
        # held producers wait for ``backlog_quota_cleared``.
        self.backlog_quota_exceeded: str | None = None
        self.backlog_quota_cleared = asyncio.Event()
        self.backlog_quota_cleared.set()
        # Rate limits (``broker.rate_limit``): publishing per topic, dispatch per subscription.
        self.publish_limiter: RateLimiter | None = None
        self.dispatch_rate: RateLimit = NO_LIMIT

    @property
    def cursor_prefix(self) -> str:
        n = self.name
        return f"{CURSORS_PREFIX}{n.tenant}/{n.namespace}/{n.local_name}/"

    def _messages_out_total(self) -> int:
        return self._removed_messages_out + sum(s.messages_out for s in self.subscriptions.values())

    def _bytes_out_total(self) -> int:
        return self._removed_bytes_out + sum(s.bytes_out for s in self.subscriptions.values())

    def _on_new_entries(self) -> None:
        for subscription in self.subscriptions.values():
            subscription.notify()

    async def load_subscriptions(self) -> None:
        """Open every durable subscription that exists in the metadata store."""
        for key in await self._store.list_keys(self.cursor_prefix):
            encoded = key[len(self.cursor_prefix) :]
            await self.get_subscription(unquote(encoded), None, start_at_earliest=False)

    # ---- producers ----------------------------------------------------------------------------

    def add_producer(self, requested_name: str, broker_name: str) -> tuple[str, int]:
        """Register a connecting producer: its name (chosen here when ``requested_name`` is
        empty) and the last sequence id receipted to that name on this topic, or -1."""
        name = requested_name or f"{broker_name}-{next(self._producer_ids)}"
        if name in self.connected_producers:
            raise ProducerBusyError(f"producer {name!r} is already connected to {self.name}")
        dedup = self.deduplication
        while not requested_name and (
            name in self._last_sequence_ids or dedup.last_sequence_id(name) >= 0
        ):
            name = f"{broker_name}-{next(self._producer_ids)}"
        self.connected_producers.add(name)
        if dedup.enabled:
            dedup.touch((name,))
            return name, dedup.last_sequence_id(name)
        return name, self._last_sequence_ids.get(name, -1)

    def remove_producer(self, name: str) -> None:
        self.connected_producers.discard(name)

    def publish(
        self, entry: bytes, num_messages: int, deliver_at_ms: int = 0
    ) -> asyncio.Future[Position]:
        """Append one stored entry (a producer batch); the future is its durable position."""
        self.messages_in.total += num_messages
        self.bytes_in.total += len(entry)
        ENTRY_SIZE_BYTES.observe(len(entry))
        return self.ledger.add_entry(entry, num_messages, deliver_at_ms)

    def record_receipt(self, producer_name: str, last_sequence_id: int) -> None:
        """The producer was receipted up to ``last_sequence_id``: a reconnect resumes after it."""
        self._last_sequence_ids[producer_name] = last_sequence_id

    def set_rate_limits(self, publish: RateLimit, dispatch: RateLimit) -> None:
        self.publish_limiter = limiter_for(self.publish_limiter, publish)
        self.dispatch_rate = dispatch
        for subscription in self.subscriptions.values():
            subscription.dispatch_limiter = limiter_for(subscription.dispatch_limiter, dispatch)

    def set_backlog_quota_exceeded(self, refusal: str | None) -> None:
        self.backlog_quota_exceeded = refusal
        if refusal is None:
            self.backlog_quota_cleared.set()
        else:
            self.backlog_quota_cleared.clear()

    # ---- subscriptions ------------------------------------------------------------------------

    async def get_subscription(
        self, name: str, sub_type: int | None, *, start_at_earliest: bool
    ) -> Subscription:
        async with self._subscription_lock:
            subscription = self.subscriptions.get(name)
            if subscription is not None:
                return subscription
            cursor = ManagedCursor(
                name,
                self.cursor_prefix + quote(name, safe=""),
                self.ledger,
                self._store,
                self._cursor_persist_interval_ms,
                self._cursor_max_persisted_ranges,
            )
            await cursor.load_or_create(start_at_earliest)
            subscription = Subscription(
                name,
                sub_type or SUBSCRIPTION_EXCLUSIVE,
                cursor,
                self.ledger,
                partition_index=self.name.partition_index,
            )
            subscription.dispatch_limiter = limiter_for(None, self.dispatch_rate)
            subscription.start()
            self.subscriptions[name] = subscription
            return subscription

    async def create_reader_subscription(
        self, name: str, mark_delete: Position, *, compacted: bool = False
    ) -> Subscription:
        """A reader's non-durable subscription, reading after ``mark_delete``: in memory
        only, removed when its consumer leaves (``release_reader_subscription``). A
        ``compacted`` reader keeps a position before the log's start (the compacted view
        may hold entries of ledgers trimmed since) and reads the view first."""
        async with self._subscription_lock:
            if name in self.subscriptions:
                raise AlreadyExistsError(f"subscription {name!r} already exists on {self.name}")
            cursor = ManagedCursor(
                name,
                "",
                self.ledger,
                self._store,
                self._cursor_persist_interval_ms,
                self._cursor_max_persisted_ranges,
                durable=False,
            )
            cursor.start_non_durable(mark_delete, clamp=not compacted)
            subscription = Subscription(
                name,
                SUBSCRIPTION_EXCLUSIVE,
                cursor,
                self.ledger,
                partition_index=self.name.partition_index,
            )
            if compacted:
                subscription.compacted = self.compaction
            subscription.start()
            self.subscriptions[name] = subscription
            return subscription

    async def release_reader_subscription(self, subscription: Subscription) -> None:
        """Remove a reader's subscription once its consumer has left."""
        if not subscription.cursor.durable and not subscription.consumers:
            if self.subscriptions.get(subscription.name) is subscription:
                await self.delete_subscription(subscription.name)

    async def delete_subscription(self, name: str) -> None:
        subscription = self.subscriptions.pop(name, None)
        if subscription is not None:
            self._removed_messages_out += subscription.messages_out
            self._removed_bytes_out += subscription.bytes_out
            await subscription.close()
            await subscription.cursor.delete()

    def slowest_mark_delete(self) -> Position | None:
        if not self.subscriptions:
            return None
        return min(s.cursor.mark_delete for s in self.subscriptions.values())

    async def trim(self) -> int:
        """Delete ledgers no subscription needs and the retention policy does not keep.
        Without subscriptions, a topic keeps its data unless its namespace sets a retention
        policy, which then applies to all of it (a Strata choice: Pulsar trims such a topic
        even with no retention, losing what was published before the first subscription)."""
        slowest = self.slowest_mark_delete()
        if slowest is None and self.retention == NO_RETENTION:
            return 0  # no subscription and no retention policy: everything is kept
        for held in (self.deduplication.hold_position(), self.compaction.hold_position()):
            if held is not None:
                # After a dedup snapshot: its replay; after the compaction horizon: the next
                # compaction's input.
                slowest = held if slowest is None else min(slowest, held)
        return await self.ledger.trim(slowest, self.retention)

    async def close(self) -> None:
        self.closing.set()
        for subscription in list(self.subscriptions.values()):
            await subscription.close()
        await self.deduplication.close()
        await self.compaction.close()
        await self.ledger.close()

    async def delete(self) -> None:
        self.closing.set()
        for name in list(self.subscriptions):
            await self.delete_subscription(name)
        for key in await self._store.list_keys(self.cursor_prefix):
            await self._store.delete(key)
        await self.deduplication.close()
        await self._store.delete(snapshot_key(self.name))
        await self._store.delete(topic_policies_key(self.name))
        await self.compaction.delete()
        await self.ledger.delete()
