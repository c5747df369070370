"""Subscriptions and their dispatchers: which consumer gets which entry, and when.

A subscription owns a durable cursor and a dispatch task. Consumers grant permits (counted in
messages); the dispatcher sends whole entries — a producer batch is one entry — to a consumer
while it has permits, charging it the entry's message count (a consumer may go briefly
negative, as in Pulsar, so that a batch larger than the receiver queue still flows).

- Exclusive: one consumer; a second one is refused.
- Shared: entries go round-robin over the consumers, passing by those without permits.
- Failover: one active consumer, the others stand by (``_elect_active``, Pulsar's rule): the
  first by (priority level, name), or on partition N of a partitioned topic the (N mod k)-th
  of the k consumers at the best priority level, so that partitions spread over consumers.
  When another consumer becomes active, the previous one's pending entries go back to the
  replay set, so the new one receives them first, in order; each consumer is told whether it
  is active (``ConsumerSession.on_active_change``).

Entries sent and not yet acknowledged are *pending* on their consumer. When the consumer
closes, or asks for redelivery (a negative ack), its pending entries go to the replay set,
which the dispatcher serves before reading new entries; each replay raises the entry's
redelivery count.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from broker.compaction import TopicCompaction
from broker.cursor import ManagedCursor
from broker.delayed_delivery import DelayedDeliveryTracker
from broker.entry_format import publish_time_of, sticky_key_of
from broker.errors import ConsumerBusyError, InvalidRequestError, PreconditionError, to_status
from broker.key_shared import ConsistentHashSelector, StickySelector, key_hash
from broker.managed_ledger import Entry, ManagedLedger, Position
from broker.rate_limit import RateLimiter
from broker.rates import RateMeter
from strata.clock import now_ms
from strata.v1 import messaging_pb2

log = logging.getLogger(__name__)

SUBSCRIPTION_EXCLUSIVE: int = messaging_pb2.SUBSCRIPTION_TYPE_EXCLUSIVE
SUBSCRIPTION_SHARED: int = messaging_pb2.SUBSCRIPTION_TYPE_SHARED
SUBSCRIPTION_FAILOVER: int = messaging_pb2.SUBSCRIPTION_TYPE_FAILOVER
SUBSCRIPTION_KEY_SHARED: int = messaging_pb2.SUBSCRIPTION_TYPE_KEY_SHARED
TYPE_NAMES: dict[int, str] = {
    SUBSCRIPTION_EXCLUSIVE: "Exclusive",
    SUBSCRIPTION_SHARED: "Shared",
    SUBSCRIPTION_FAILOVER: "Failover",
    SUBSCRIPTION_KEY_SHARED: "Key_Shared",
}
# The types that spread entries over several consumers (and honour delayed delivery).
_MULTI_CONSUMER_TYPES = (SUBSCRIPTION_SHARED, SUBSCRIPTION_KEY_SHARED)
KEY_SHARED_STICKY: int = messaging_pb2.KeySharedMeta.STICKY

# The dispatcher reads at most this many entries per round (Pulsar's dispatcherMaxReadBatchSize).
DISPATCH_MAX_READ_ENTRIES = 100
DISPATCH_MAX_READ_BYTES = 4 * 1024 * 1024
# Pulsar's maxUnackedMessagesPerConsumer: a consumer this far behind on acks gets nothing more.
MAX_UNACKED_MESSAGES_PER_CONSUMER = 50_000
# The largest batch an acknowledgement may name (a bound on the bitsets it builds).
MAX_BATCH_SIZE = 1_000_000
# Pause after a failed read before the dispatcher tries again.
DISPATCH_ERROR_BACKOFF_MS = 200


def bitset_words(bits: int) -> list[int]:
    words: list[int] = []
    while bits:
        words.append(bits & 0xFFFFFFFFFFFFFFFF)
        bits >>= 64
    return words


def popcount(bits: int) -> int:
    return bin(bits).count("1")


@dataclass(eq=False)
class ConsumerSession:
    """One connected consumer: its permits, pending entries and outgoing deliveries."""

    name: str
    send: Callable[[list[messaging_pb2.Delivery]], None]
    # False while the stream cannot queue another send: the dispatcher passes the consumer by
    # (as Pulsar's passes a consumer whose channel is not writable) until it is notified.
    writable: Callable[[], bool] = lambda: True
    permits: int = 0
    unacked_messages: int = 0
    pending: dict[Position, int] = field(default_factory=dict)  # position → message count
    messages_out: int = 0
    bytes_out: int = 0
    # Failover: the lower, the sooner chosen active; told of each change of its state.
    priority_level: int = 0
    on_active_change: Callable[[bool], None] = lambda _active: None
    # Key_Shared: STICKY (KeySharedMeta.STICKY) with the hash ranges it owns, else AUTO_SPLIT.
    key_shared_mode: int = 0
    hash_ranges: tuple[tuple[int, int], ...] = ()
    # The namespace's max_unacked_messages_per_consumer (0 = no limit).
    max_unacked_messages: int = MAX_UNACKED_MESSAGES_PER_CONSUMER
    # Ends the consumer's stream with UNAVAILABLE (an admin reset or forced unsubscribe).
    disconnect: Callable[[Exception], None] = lambda _error: None

    def can_receive(self) -> bool:
        return (
            self.permits > 0
            and (not self.max_unacked_messages or self.unacked_messages < self.max_unacked_messages)
            and self.writable()
        )


class Subscription:
    """A named durable subscription of one topic, with its dispatcher task."""

    def __init__(
        self,
        name: str,
        sub_type: int,
        cursor: ManagedCursor,
        ledger: ManagedLedger,
        *,
        partition_index: int = -1,
    ) -> None:
        self.name = name
        self.partition_index = partition_index  # of the topic; -1 when not a partition
        self._active: ConsumerSession | None = None  # Failover
        # Key_Shared: the selector of the subscription's mode (the first consumer's); the hash
        # of each pending entry, and per hash the consumer holding pending entries of it and
        # how many (a hash held by one consumer goes to no other until they are settled).
        self._key_mode: int | None = None
        self._selector: (
            ConsistentHashSelector[ConsumerSession] | StickySelector[ConsumerSession] | None
        ) = None
        self._pending_hash: dict[Position, int] = {}
        self._hash_holder: dict[int, tuple[ConsumerSession, int]] = {}
        self.type = sub_type
        self.cursor = cursor
        self._ledger = ledger
        self.consumers: list[ConsumerSession] = []
        self._rotation = 0  # index in ``consumers`` whose turn is next (Shared)
        self._replay: list[Position] = []  # heap
        self._replay_set: set[Position] = set()
        self._owner: dict[Position, ConsumerSession] = {}
        self.redelivery_counts: dict[Position, int] = {}
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.messages_out = 0
        self.bytes_out = 0
        # Per-second rates of the two counts above, read by the topic's stats.
        self.messages_out_rate = RateMeter(source=lambda: self.messages_out)
        self.bytes_out_rate = RateMeter(source=lambda: self.bytes_out)
        self.messages_redelivered = RateMeter()
        # Acknowledged by the message TTL or expire-messages (Pulsar's msgRateExpired).
        self.messages_expired = RateMeter()
        # The namespace's dispatch rate (``broker.rate_limit``); None: not limited.
        self.dispatch_limiter: RateLimiter | None = None
        # Set for a read_compacted consumer: the topic's compaction (``broker.compaction``).
        self.compacted: TopicCompaction | None = None
        self._compacted_horizon: Position | None = None
        self._view_next: Position | None = None
        self._view_outstanding: set[Position] = set()
        self._view_done: Position | None = None  # the horizon of the view read to its end
        # Shared: entries held back until their delivery time, and the timer that wakes the
        # dispatcher when the first of them falls due (owned here, cancelled by close()).
        self.delayed = DelayedDeliveryTracker()
        self._delay_timer: asyncio.TimerHandle | None = None
        # The namespace's max_unacked_messages_per_subscription (0 = no limit): at it, the
        # subscription dispatches nothing until acknowledgements come (as Pulsar).
        self.max_unacked_messages = 0
        # Raised by every seek: a dispatch round that awaited a read across one drops what it
        # read (it belongs to the position before the seek).
        self._epoch = 0

    @property
    def type_name(self) -> str:
        return TYPE_NAMES.get(self.type, "Exclusive")

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._dispatch_loop())

    def notify(self) -> None:
        self._wakeup.set()

    # ---- consumers ----------------------------------------------------------------------

    def add_consumer(self, consumer: ConsumerSession, sub_type: int) -> None:
        if sub_type != self.type:
            if self.consumers:
                raise PreconditionError(
                    f"subscription {self.name!r} is {self.type_name} with connected "
                    f"consumers; cannot attach a {TYPE_NAMES.get(sub_type, '?')} consumer"
                )
            self.type = sub_type
            self._key_mode = None
            self._selector = None
            if sub_type not in _MULTI_CONSUMER_TYPES:
                # Delayed delivery is a Shared feature: the others get held entries at once.
                self._replay_now(self.delayed.pop_all())
        if self.type == SUBSCRIPTION_EXCLUSIVE and self.consumers:
            raise ConsumerBusyError(
                f"exclusive subscription {self.name!r} already has a consumer "
                f"({self.consumers[0].name})"
            )
        if self.type == SUBSCRIPTION_KEY_SHARED:
            self._add_key_consumer(consumer)
        self.consumers.append(consumer)
        if self.type == SUBSCRIPTION_FAILOVER:
            self._elect_active()
            if consumer is not self._active:
                consumer.on_active_change(False)
        self.notify()

    def remove_consumer(self, consumer: ConsumerSession) -> None:
        if consumer in self.consumers:
            index = self.consumers.index(consumer)
            del self.consumers[index]
            if index < self._rotation:
                self._rotation -= 1  # the same consumer keeps the next turn
        self._replay_positions(list(consumer.pending), consumer)
        if self._selector is not None:
            self._selector.remove(consumer)
        if consumer is self._active:
            self._active = None
        if self.type == SUBSCRIPTION_FAILOVER:
            self._elect_active()
        self.notify()

    def _add_key_consumer(self, consumer: ConsumerSession) -> None:
        """Key_Shared: take the consumer into the selector (the first consumer sets the
        mode). Keys that move to it come once their pending entries elsewhere are settled
        (``_key_consumer``)."""
        mode = consumer.key_shared_mode
        if self._key_mode is None or not self.consumers:
            self._key_mode = mode
            self._selector = (
                StickySelector() if mode == KEY_SHARED_STICKY else ConsistentHashSelector()
            )
        elif mode != self._key_mode:
            raise PreconditionError(
                f"Key_Shared subscription {self.name!r} is "
                f"{'STICKY' if self._key_mode == KEY_SHARED_STICKY else 'AUTO_SPLIT'}; "
                "a consumer of the other mode cannot join"
            )
        selector = self._selector
        if isinstance(selector, StickySelector):
            selector.add(consumer, consumer.hash_ranges)
        elif selector is not None:
            selector.add(consumer)

    def _key_consumer(self, entry: Entry, blocked: set[int]) -> ConsumerSession | None:
        """Key_Shared: the consumer ``entry`` goes to now, or None (its hash is added to
        ``blocked``, so that later entries of the key wait too and keep their order).

        A key's entries go to another consumer only once the consumer that holds pending
        entries of its hash has settled them (acknowledged, or given back): Pulsar 4's
        draining hashes (PIP-379). It also gives a joining consumer a key's messages only
        after every earlier one was acknowledged (the older "recently joined" rule)."""
        hash_value = key_hash(sticky_key_of(entry.data))
        if hash_value in blocked or self._selector is None:
            blocked.add(hash_value)
            return None
        consumer = self._selector.select(hash_value)
        holder = self._hash_holder.get(hash_value)
        if (
            consumer is None
            or not consumer.can_receive()
            or (holder is not None and holder[0] is not consumer)
        ):
            blocked.add(hash_value)
            return None
        self._pending_hash[entry.position] = hash_value
        self._hash_holder[hash_value] = (consumer, holder[1] + 1 if holder else 1)
        return consumer

    def _settle_hash(self, position: Position) -> None:
        """A Key_Shared entry left its consumer (acknowledged, or given back)."""
        hash_value = self._pending_hash.pop(position, None)
        if hash_value is None:
            return
        consumer, count = self._hash_holder[hash_value]
        if count <= 1:
            del self._hash_holder[hash_value]
            self.notify()  # the hash may go to its new consumer now
        else:
            self._hash_holder[hash_value] = (consumer, count - 1)

    @property
    def active_consumer(self) -> ConsumerSession | None:
        """Failover: the consumer entries go to (None for the other types)."""
        return self._active

    def _elect_active(self) -> None:
        """Failover: choose the active consumer (see the module docstring) and, when it
        changes, hand the previous one's pending entries to the replay set and tell both."""
        ranked = sorted(self.consumers, key=lambda c: (c.priority_level, c.name))
        chosen: ConsumerSession | None = None
        if ranked:
            best = [c for c in ranked if c.priority_level == ranked[0].priority_level]
            chosen = (
                best[self.partition_index % len(best)] if self.partition_index >= 0 else best[0]
            )
        previous = self._active
        if chosen is previous:
            return
        self._active = chosen
        if previous is not None:
            self._replay_positions(list(previous.pending), previous)
            previous.on_active_change(False)
        if chosen is not None:
            chosen.on_active_change(True)

    def add_permits(self, consumer: ConsumerSession, permits: int) -> None:
        consumer.permits += permits
        self.notify()

    def redeliver(self, consumer: ConsumerSession, positions: list[Position] | None) -> None:
        """A negative acknowledgement: send these pending entries again (all when None)."""
        wanted = list(consumer.pending) if positions is None else positions
        self._replay_positions([p for p in wanted if p in consumer.pending], consumer)
        self.notify()

    def _replay_positions(self, positions: list[Position], consumer: ConsumerSession) -> None:
        for position in positions:
            count = consumer.pending.pop(position, 0)
            consumer.unacked_messages -= count
            self._owner.pop(position, None)
            self._settle_hash(position)
            if self.cursor.is_acked(position) or position in self._replay_set:
                continue
            self._replay_set.add(position)
            self.messages_redelivered.total += count
            heapq.heappush(self._replay, position)
            self.redelivery_counts[position] = self.redelivery_counts.get(position, 0) + 1

    # ---- acknowledgements ------------------------------------------------------------------

    def check_known(self, position: Position) -> None:
        if self.cursor.is_acked(position):
            return
        if not self._ledger.contains(position):
            raise InvalidRequestError(
                f"acknowledgement of unknown message id {position[0]}:{position[1]}: "
                "no such entry in this topic"
            )

    def acknowledge(
        self, consumer: ConsumerSession, position: Position, batch_index: int, batch_size: int
    ) -> None:
        self.check_known(position)
        if batch_index < 0:
            completed = self.cursor.ack_entry(position)
        else:
            _check_batch_index(position, batch_index, batch_size)
            completed = self.cursor.ack_batch_index(position, batch_index, batch_size)
        if completed or self.cursor.is_acked(position):
            self._forget(position)

    def acknowledge_cumulative(
        self, position: Position, batch_index: int = -1, batch_size: int = 0
    ) -> None:
        """Acknowledge every message up to and including this one. Inside a batch (not its
        last message) that is every entry before it, and the batch's messages up to it."""
        self.check_known(position)
        if 0 <= batch_index < batch_size - 1:
            _check_batch_index(position, batch_index, batch_size)
            through: Position = (position[0], position[1] - 1)
            self.cursor.ack_cumulative(through)
            self.cursor.ack_batch_indexes(position, (1 << (batch_index + 1)) - 1, batch_size)
        else:
            through = position
            self.cursor.ack_cumulative(position)
        for pos in [p for p in self._owner if p <= through or self.cursor.is_acked(p)]:
            self._forget(pos)

    def _forget(self, position: Position) -> None:
        self._settle_hash(position)
        owner = self._owner.pop(position, None)
        if owner is not None:
            owner.unacked_messages -= owner.pending.pop(position, 0)
            if owner.can_receive():
                self.notify()
        self.redelivery_counts.pop(position, None)
        if position in self._replay_set:
            self._replay_set.discard(position)
        if self._view_outstanding:
            self._view_outstanding.discard(position)
            if not self._view_outstanding and self._compacted_horizon is not None:
                self._settle_compacted_horizon()

    # ---- dispatch ---------------------------------------------------------------------------

    def _any_ready(self) -> bool:
        if self.type == SUBSCRIPTION_FAILOVER:
            return self._active is not None and self._active.can_receive()
        return any(c.can_receive() for c in self.consumers)

    def _next_consumer(self) -> ConsumerSession | None:
        """The consumer the next entry goes to: Pulsar's round robin over every connected
        consumer, passing by those that cannot receive now (no permits, too many unacked, a
        full stream) without losing their turn in the rotation."""
        consumers = self.consumers
        if self.type == SUBSCRIPTION_FAILOVER:
            active = self._active
            return active if active is not None and active.can_receive() else None
        if self.type == SUBSCRIPTION_EXCLUSIVE:
            return next((c for c in consumers if c.can_receive()), None)
        count = len(consumers)
        for step in range(count):
            index = (self._rotation + step) % count
            if consumers[index].can_receive():
                self._rotation = index + 1
                return consumers[index]
        return None

    async def _dispatch_loop(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            try:
                # Yield between rounds so producers and acks are served too.
                while await self._dispatch_round():  # noqa: ASYNC110
                    await asyncio.sleep(0)
                if self.delayed and self._delay_timer is None:
                    self._schedule_delayed()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a read failed: retry later, never give up the loop
                status = to_status(exc)
                if status is not None and status[0] == grpc.StatusCode.DATA_LOSS:
                    # Damaged data is not read again and again for nobody: the consumers
                    # learn it (DATA_LOSS) and the loop waits for the next of them.
                    log.error("subscription %s: %s; disconnecting its consumers", self.name, exc)
                    self.disconnect_consumers(exc)
                    continue
                log.warning("subscription %s: dispatch failed: %s", self.name, exc)
                await asyncio.sleep(DISPATCH_ERROR_BACKOFF_MS / 1000)
                self._wakeup.set()

    # ---- seek -----------------------------------------------------------------------------

    @property
    def ledger(self) -> ManagedLedger:
        return self._ledger

    def cursor_ledger_last(self) -> Position:
        """The topic's last stored entry ((-1, -1) when none)."""
        return self._ledger.last_confirmed

    def disconnect_consumers(self, error: Exception) -> None:
        """End every consumer's stream (they reconnect): Pulsar's reset-cursor and forced
        unsubscribe."""
        for consumer in list(self.consumers):
            consumer.disconnect(error)

    def skip_entry(self, position: Position) -> None:
        """Acknowledge a whole entry on no consumer's behalf (admin skip)."""
        self.cursor.ack_entry(position)
        self._forget(position)

    def reset_to(self, mark_delete: Position, *, force: bool = False) -> None:
        """Seek: continue after ``mark_delete``, forgetting every acknowledgement after it
        and what the consumer has not acknowledged (Pulsar's seek / reset-cursor). Only a
        subscription with at most one consumer may seek: other consumers would keep, and
        acknowledge, messages from before it."""
        if len(self.consumers) > 1 and not force:
            raise PreconditionError(
                f"subscription {self.name!r} has {len(self.consumers)} consumers; only a "
                "subscription's single consumer may seek"
            )
        for consumer in self.consumers:
            consumer.pending.clear()
            consumer.unacked_messages = 0
        self._owner.clear()
        self._replay.clear()
        self._replay_set.clear()
        self.redelivery_counts.clear()
        self.delayed = DelayedDeliveryTracker()
        if self._delay_timer is not None:
            self._delay_timer.cancel()
            self._delay_timer = None
        self._epoch += 1
        self._pending_hash.clear()
        self._hash_holder.clear()
        self._view_next = None
        self._compacted_horizon = None
        self._view_outstanding.clear()
        self._view_done = None
        self.cursor.reset(mark_delete)
        self.notify()

    async def position_before_publish_time(self, publish_time_ms: int) -> Position:
        """The position before the first entry published at or after ``publish_time_ms``
        (a binary search over the log, one entry read per step)."""
        ledgers = [(info.ledger_id, info.entries) for info in self._ledger.ledgers if info.entries]
        total = sum(count for _, count in ledgers)

        def position_at(index: int) -> Position:
            for ledger_id, count in ledgers:
                if index < count:
                    return (ledger_id, index)
                index -= count
            raise IndexError(index)

        low, high = 0, total  # the answer's index is in [low, high]
        while low < high:
            middle = (low + high) // 2
            entry = await self._ledger.read_entry(position_at(middle))
            published = publish_time_of(entry.data) if entry is not None else 0
            if published >= publish_time_ms:
                high = middle
            else:
                low = middle + 1
        if low >= total:
            return self._ledger.last_confirmed
        found = position_at(low)
        return (found[0], found[1] - 1)

    def _replay_now(self, positions: list[Position]) -> None:
        """Serve these first, without counting a redelivery (they were never delivered)."""
        for position in positions:
            if position not in self._replay_set:
                self._replay_set.add(position)
                heapq.heappush(self._replay, position)

    def _hold_back(self, entry: Entry, now: int) -> bool:
        """Delayed delivery (Shared and Key_Shared): keep an entry whose time has not come."""
        if entry.deliver_at_ms <= now or self.type not in _MULTI_CONSUMER_TYPES:
            return False
        self.delayed.add(entry.position, entry.deliver_at_ms)
        return True

    def _schedule_delayed(self) -> None:
        """Wake the dispatcher when the first held-back entry falls due."""
        due_ms = self.delayed.next_due_ms()
        if self._delay_timer is not None:
            self._delay_timer.cancel()
            self._delay_timer = None
        if due_ms is not None:
            delay_s = max(0.0, (due_ms - now_ms()) / 1000)
            self._delay_timer = asyncio.get_running_loop().call_later(delay_s, self._on_delay_timer)

    def _on_delay_timer(self) -> None:
        self._delay_timer = None
        self.notify()

    async def _dispatch_round(self) -> bool:
        """Send one round of entries; True if anything was sent (try again at once)."""
        if self._compacted_horizon is not None and not self._view_outstanding:
            self._settle_compacted_horizon()
        if not self._any_ready():
            return False
        if self.max_unacked_messages and self.unacked_messages() >= self.max_unacked_messages:
            return False
        limiter = self.dispatch_limiter
        if limiter is not None:
            await limiter.wait()
            messages_before, bytes_before = self.messages_out, self.bytes_out
        now = now_ms()
        if self.delayed:
            self._replay_now(self.delayed.pop_due(now))
        epoch = self._epoch
        key_shared = self.type == SUBSCRIPTION_KEY_SHARED
        entries = await self._read_replay()
        read_view = False  # read from the compacted view this round
        # Key_Shared reads on past entries waiting for their key's consumer, once all of the
        # replay set is in hand (its hashes block the keys' later entries in this round).
        if (
            (not entries or (key_shared and not self._replay_set))
            and not self.delayed.is_full
            and epoch == self._epoch
        ):
            new = None
            if self.compacted is not None:
                # read_compacted: the compacted view up to its horizon, then the topic.
                view = await self.compacted.view()
                if (
                    view is not None
                    and self._view_done != view.state.horizon
                    and (
                        self._view_next is not None
                        or self.cursor.mark_delete < view.state.horizon
                        # Before the log's start (trimmed since): the view still holds it.
                        or self.cursor.mark_delete < self._ledger.first_position()
                    )
                ):
                    # Where the view goes on: its own position (the topic's normalizes away
                    # ledgers trimmed since, whose entries the view may hold).
                    start = self._view_next
                    if start is None:
                        mark_delete = self.cursor.mark_delete
                        start = (mark_delete[0], mark_delete[1] + 1)
                        if mark_delete < self._ledger.first_position():
                            start = (-1, -1)  # the view may hold entries of trimmed ledgers
                    new = await view.read(start, DISPATCH_MAX_READ_ENTRIES)
                    read_view = bool(new)
                    if new:
                        last = new[-1].position
                        self._view_next = (last[0], last[1] + 1)
                        # Delivered from the view, not yet acknowledged (see _forget).
                        self._view_outstanding.update(e.position for e in new)
                    if not new and epoch == self._epoch:  # the view is read to its end
                        self.cursor.read_position = self._ledger.next_position(view.state.horizon)
                        # What the view left out is compacted away: once every entry it
                        # delivered is acknowledged, everything up to the horizon is.
                        self._compacted_horizon = view.state.horizon
                        self._view_done = view.state.horizon
                        self._view_next = None
                        return True  # read the topic after the horizon next
            if new is None:
                new = await self._ledger.read_entries(
                    self.cursor.read_position, DISPATCH_MAX_READ_ENTRIES, DISPATCH_MAX_READ_BYTES
                )
            if new and epoch == self._epoch:
                self.cursor.read_position = self._ledger.next_position(new[-1].position)
            entries = entries + new
        if epoch != self._epoch:
            return True  # a seek came in meanwhile: read again from its position
        if not entries:
            return False
        batches: dict[int, tuple[ConsumerSession, list[messaging_pb2.Delivery]]] = {}
        leftover: list[Position] = []
        held = False
        blocked: set[int] = set()
        for entry in entries:
            position = entry.position
            acked = self._settled(position)
            if acked or position in self._owner:
                if acked:
                    self._view_outstanding.discard(position)
                continue
            if self._hold_back(entry, now):
                held = True
                continue
            if key_shared:
                consumer = self._key_consumer(entry, blocked)
            else:
                consumer = self._next_consumer()
            if consumer is None:
                leftover.append(position)
                continue
            acked_bits = self.cursor.acked_indexes(position) | entry.dropped
            count = entry.num_messages - popcount(acked_bits)
            consumer.permits -= count
            consumer.unacked_messages += count
            consumer.pending[position] = count
            self._owner[position] = consumer
            delivery = messaging_pb2.Delivery(
                ledger_id=entry.ledger_id,
                entry_id=entry.entry_id,
                entry=entry.data,
                redelivery_count=self.redelivery_counts.get(position, 0),
                acked_batch_indexes=bitset_words(acked_bits),
            )
            consumer.messages_out += count
            consumer.bytes_out += len(entry.data)
            self.messages_out += count
            self.bytes_out += len(entry.data)
            batches.setdefault(id(consumer), (consumer, []))[1].append(delivery)
        for position in leftover:
            # No consumer had permits left: serve these first next time, without counting
            # a redelivery (they were never delivered).
            if position not in self._replay_set:
                self._replay_set.add(position)
                heapq.heappush(self._replay, position)
        for consumer, deliveries in batches.values():
            consumer.send(deliveries)
        if limiter is not None:
            limiter.charge(self.messages_out - messages_before, self.bytes_out - bytes_before)
        if held:
            self._schedule_delayed()  # the new entries may fall due before the timer
        # Entries held back count as progress: read on past them; so does a view read whose
        # entries were all settled or in flight (the view's own position moved on).
        return bool(batches) or held or read_view

    def _settle_compacted_horizon(self) -> None:
        """After a compacted view was read: acknowledge up to its horizon (the entries it
        left out) once nothing it delivered is still unacknowledged (``_view_outstanding``
        empty)."""
        horizon = self._compacted_horizon
        assert horizon is not None
        self._compacted_horizon = None
        self.cursor.ack_cumulative(horizon)

    def _settled(self, position: Position) -> bool:
        """Acknowledged, as dispatch sees it. A compacted view entry of a trimmed ledger is
        settled only by its own ack: the cursor's start, clamped to the log, says nothing of
        it (the replay set must not drop such an entry either — found by the compaction soak,
        where a consumer out of permits lost the view entries it was to get again)."""
        if not self.cursor.is_acked(position):
            return False
        if self.compacted is not None and position < self._ledger.first_position():
            return position in self.cursor.individually_acked
        return True

    async def _read_replay(self) -> list[Entry]:
        entries: list[Entry] = []
        while self._replay and len(entries) < DISPATCH_MAX_READ_ENTRIES:
            position = heapq.heappop(self._replay)
            if position not in self._replay_set:
                continue
            self._replay_set.discard(position)
            if self._settled(position):
                continue
            entry = await self._replay_entry(position)
            if entry is not None:
                entries.append(entry)
        return entries

    async def _replay_entry(self, position: Position) -> Entry | None:
        """The entry to deliver again: a read_compacted subscription takes an entry up to
        the compaction horizon from the compacted view (its compacted-away indexes dropped;
        None when all of it was compacted away)."""
        if self.compacted is not None:
            view = await self.compacted.view()
            if view is not None and position <= view.state.horizon:
                return await view.entry_at(position)
        return await self._ledger.read_entry(position)

    def unacked_messages(self) -> int:
        return sum(c.unacked_messages for c in self.consumers)

    async def close(self) -> None:
        if self._delay_timer is not None:
            self._delay_timer.cancel()
            self._delay_timer = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.cursor.close()


def _check_batch_index(position: Position, batch_index: int, batch_size: int) -> None:
    if batch_size <= 0 or batch_index >= batch_size or batch_size > MAX_BATCH_SIZE:
        raise InvalidRequestError(
            f"acknowledgement of {position[0]}:{position[1]}: batch index "
            f"{batch_index} out of range for batch size {batch_size}"
        )
