"""Durable cursors: what a subscription has acknowledged, persisted in batches.

State (as Pulsar's ``ManagedCursorImpl``): the mark-delete position (everything at or before
it is acknowledged), the set of entries acknowledged individually above it (the gaps between
them are "ack holes"), and per-entry bitsets of acknowledged batch indexes for entries only
partly acknowledged. The read position is where the dispatcher reads next; it lives in memory
and restarts at the first unacknowledged entry.

Persistence: changes mark the cursor dirty; an owned task writes the state to the metadata
store at most every ``persist_interval_ms``, and ``flush()`` forces a write and returns once
everything acknowledged before the call is durable (what an ack receipt waits for). At most
``max_persisted_ranges`` individually acknowledged ranges are stored: acknowledgements beyond
that bound are redelivered after a restart (at-least-once, never loss).

Every write is a compare-and-set against the version this cursor last read or wrote. A
``BadVersionError`` means another broker wrote the cursor since: an owner that lost its
session and wrote once more before it noticed (a paused process), or a new owner. As Pulsar
fences a managed ledger whose metadata changed under it, the cursor then stops writing, fails
its flushes with UNAVAILABLE and fences the managed ledger: the topic is unloaded and its
clients look it up again, so the broker that owns the bundle reloads the cursor from the
store (acknowledgements made since the last write come again: at-least-once). Writing on
with the stored version instead would keep a stale owner writing too; failing forever
without a reload left the owner unable to persist an ack until the topic moved.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from broker.errors import ServiceUnavailableError, TopicFencedError
from broker.managed_ledger import ManagedLedger, Position
from strata.metadata import BadVersionError, MetadataError, MetadataStore

log = logging.getLogger(__name__)

CURSORS_PREFIX = "/cursors/"


def _to_ranges(positions: set[Position]) -> list[list[int]]:
    """Sorted positions → [[ledger, first_entry, last_entry], ...] runs."""
    ranges: list[list[int]] = []
    for ledger_id, entry_id in sorted(positions):
        if ranges and ranges[-1][0] == ledger_id and ranges[-1][2] == entry_id - 1:
            ranges[-1][2] = entry_id
        else:
            ranges.append([ledger_id, entry_id, entry_id])
    return ranges


class ManagedCursor:
    """One subscription's position in one managed ledger: durable (persisted in the metadata
    store), or, for a reader, ``durable=False``: in memory only, gone with its subscription."""

    def __init__(
        self,
        name: str,
        key: str,
        ledger: ManagedLedger,
        store: MetadataStore,
        persist_interval_ms: int,
        max_persisted_ranges: int,
        *,
        durable: bool = True,
    ) -> None:
        self.name = name
        self.durable = durable
        self.key = key
        self._ledger = ledger
        self._store = store
        self.persist_interval_ms = persist_interval_ms
        self.max_persisted_ranges = max_persisted_ranges
        self.mark_delete: Position = (-1, -1)
        self.read_position: Position = (-1, 0)
        self.individually_acked: set[Position] = set()
        # position → (batch size, bitset of acknowledged indexes)
        self.partially_acked: dict[Position, tuple[int, int]] = {}
        self._version = 0
        self._dirty_generation = 0
        self._persisted_generation = 0
        self._dirty = asyncio.Event()
        self._flush_now = asyncio.Event()
        self._persisted = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        # Store writes that failed so far, and the last one's error. A flush compares the
        # count with the one it started at: a flag reset after notify_all() would already be
        # clear when the woken waiters run, and they would wait on (for the retry).
        self._failed_rounds = 0
        self._failure: BaseException | None = None
        # Set once another broker wrote the cursor: nothing more is written, flushes fail.
        self._fenced: ServiceUnavailableError | None = None

    # ---- load / create ------------------------------------------------------------------

    async def load_or_create(self, start_at_earliest: bool) -> bool:
        """Load the persisted state, or create the cursor at the earliest or latest entry.

        Returns True when the cursor was created.
        """
        record = await self._store.get(self.key)
        created = record is None
        if record is not None:
            body = json.loads(record.value)
            self._version = record.version
            self.mark_delete = (int(body["mark_delete"][0]), int(body["mark_delete"][1]))
            for ledger_id, first, last in body.get("acked_ranges", []):
                for entry_id in range(first, last + 1):
                    self.individually_acked.add((ledger_id, entry_id))
            for key, (size, bits) in body.get("partial", {}).items():
                ledger_text, entry_text = key.split(":")
                self.partially_acked[(int(ledger_text), int(entry_text))] = (int(size), int(bits))
        else:
            if start_at_earliest:
                first = self._ledger.first_position()
                self.mark_delete = (first[0], first[1] - 1)
            else:
                self.mark_delete = self._ledger.last_confirmed
                if self.mark_delete[0] < 0:
                    first = self._ledger.first_position()
                    self.mark_delete = (first[0], -1)
            record = await self._store.put(self.key, self._state_json(), expected_version=0)
            self._version = record.version
        first = self._ledger.first_position()
        if self.mark_delete < (first[0], first[1] - 1):
            # Ledgers before the mark were trimmed away; nothing there can be read any more.
            self.mark_delete = (first[0], first[1] - 1)
        self._advance_mark_delete()
        self.rewind()
        self._task = asyncio.get_running_loop().create_task(self._persist_loop())
        return created

    def start_non_durable(self, mark_delete: Position, *, clamp: bool = True) -> None:
        """A reader's cursor: start after ``mark_delete`` (clamped to what the log holds,
        unless a compacted reader starts before it)."""
        assert not self.durable
        first = self._ledger.first_position()
        self.mark_delete = max(mark_delete, (first[0], first[1] - 1)) if clamp else mark_delete
        self._advance_mark_delete()
        self.rewind()

    def reset(self, mark_delete: Position) -> None:
        """Seek: forget every acknowledgement and continue after ``mark_delete`` (clamped to
        what the log holds); persisted like an acknowledgement."""
        first = self._ledger.first_position()
        self.mark_delete = max(mark_delete, (first[0], first[1] - 1))
        self.individually_acked.clear()
        self.partially_acked.clear()
        self.rewind()
        self._mark_dirty()

    def rewind(self) -> None:
        """Restart reading at the first entry after the mark-delete position."""
        self.read_position = self._ledger.next_position(self.mark_delete)

    # ---- acknowledgements ------------------------------------------------------------------

    def is_acked(self, position: Position) -> bool:
        return position <= self.mark_delete or position in self.individually_acked

    def acked_indexes(self, position: Position) -> int:
        """Bitset of already acknowledged batch indexes of a partly acknowledged entry."""
        partial = self.partially_acked.get(position)
        return partial[1] if partial else 0

    def ack_entry(self, position: Position) -> bool:
        """Acknowledge a whole entry; True if this changed anything."""
        if self.is_acked(position):
            return False
        self.partially_acked.pop(position, None)
        self.individually_acked.add(position)
        self._advance_mark_delete()
        self._mark_dirty()
        return True

    def ack_batch_index(self, position: Position, index: int, batch_size: int) -> bool:
        """Acknowledge one message of a batch; the entry is acknowledged once all are.

        Returns True when this completed the entry.
        """
        return self.ack_batch_indexes(position, 1 << index, batch_size)

    def ack_batch_indexes(self, position: Position, mask: int, batch_size: int) -> bool:
        """Acknowledge the messages of a batch whose bits ``mask`` sets; the entry is
        acknowledged once all are. Returns True when this completed the entry."""
        if self.is_acked(position):
            return False
        size, bits = self.partially_acked.get(position, (batch_size, 0))
        bits |= mask
        if bits == (1 << size) - 1:
            return self.ack_entry(position)
        self.partially_acked[position] = (size, bits)
        self._mark_dirty()
        return False

    def ack_cumulative(self, position: Position) -> None:
        if position <= self.mark_delete:
            return
        self.mark_delete = position
        self.individually_acked = {p for p in self.individually_acked if p > position}
        self.partially_acked = {p: v for p, v in self.partially_acked.items() if p > position}
        self._advance_mark_delete()
        self._mark_dirty()

    def _advance_mark_delete(self) -> None:
        acked = self.individually_acked
        while acked:
            following = self._ledger.next_position(self.mark_delete)
            if following not in acked:
                break
            acked.discard(following)
            self.mark_delete = following
        if self.read_position < self._ledger.next_position(self.mark_delete):
            self.read_position = self._ledger.next_position(self.mark_delete)

    def backlog_entries(self) -> int:
        end = self._ledger.last_confirmed
        if end < self.mark_delete:
            return 0
        total = self._ledger.entries_between(self.mark_delete, end)
        return max(0, total - len(self.individually_acked))

    # ---- persistence -------------------------------------------------------------------------

    def _state_json(self) -> bytes:
        ranges = _to_ranges(self.individually_acked)[: self.max_persisted_ranges]
        partial = {f"{p[0]}:{p[1]}": [s, b] for p, (s, b) in self.partially_acked.items()}
        body: dict[str, Any] = {
            "mark_delete": list(self.mark_delete),
            "acked_ranges": ranges,
            "partial": partial,
        }
        return json.dumps(body).encode()

    def _mark_dirty(self) -> None:
        if not self.durable:
            return
        self._dirty_generation += 1
        self._dirty.set()

    async def flush(self) -> None:
        """Return once every acknowledgement made before this call is durable; raise the
        store's error when a write fails first (the state stays in memory, and the persistence
        task writes it again after a back-off of one persist interval)."""
        target = self._dirty_generation
        if self._persisted_generation >= target:
            return
        if self._fenced is not None:
            raise self._fenced
        failed_before = self._failed_rounds
        self._flush_now.set()
        self._dirty.set()
        async with self._persisted:
            await self._persisted.wait_for(
                lambda: self._persisted_generation >= target or self._failed_rounds > failed_before
            )
        if self._persisted_generation < target:
            assert self._failure is not None
            raise self._failure

    async def _persist_loop(self) -> None:
        while True:
            await self._dirty.wait()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._flush_now.wait(), self.persist_interval_ms / 1000)
            self._dirty.clear()
            self._flush_now.clear()
            generation = self._dirty_generation
            try:
                record = await self._store.put(
                    self.key, self._state_json(), expected_version=self._version
                )
            except BadVersionError as exc:
                self._fence(exc)
                async with self._persisted:
                    self._persisted.notify_all()
                return
            except MetadataError as exc:
                # A cursor whose store write fails keeps its state in memory; the next ack
                # retries. Waiters of this round learn it failed.
                log.warning("cursor %s: persisting failed: %s", self.key, exc)
                self._failure = exc
                self._failed_rounds += 1
                async with self._persisted:
                    self._persisted.notify_all()
                self._dirty.set()
                await asyncio.sleep(self.persist_interval_ms / 1000)
                continue
            self._version = record.version
            self._persisted_generation = generation
            async with self._persisted:
                self._persisted.notify_all()

    def _fence(self, cause: BadVersionError) -> None:
        """Another broker wrote this cursor: stop writing, fail the waiting and later flushes,
        and fence the managed ledger (the topic is unloaded and loaded again)."""
        log.warning(
            "cursor %s: written by another broker (%s); reloading the topic", self.key, cause
        )
        self._fenced = ServiceUnavailableError(
            f"subscription {self.name}: its cursor was written by another broker; "
            "the topic is being reloaded"
        )
        self._failure = self._fenced
        self._failed_rounds += 1
        self._ledger.fence(TopicFencedError(f"cursor {self.key} changed by another owner"))

    async def close(self) -> None:
        """Persist what is pending, then stop the persistence task."""
        if self._task is None:
            return
        if self._persisted_generation < self._dirty_generation:
            try:
                await asyncio.wait_for(self.flush(), 10)
            except (TimeoutError, MetadataError, ServiceUnavailableError) as exc:
                log.warning("cursor %s: final flush failed: %s", self.key, exc)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def delete(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.durable:
            await self._store.delete(self.key)
