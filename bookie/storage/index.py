"""The in-memory index: where every live entry lies, and each ledger's state.

``LedgerIndex`` maps ledger id → ``LedgerState`` (entries by id → packed location, LAC, last
entry id, fenced flag, master key, live bytes per segment) and keeps the set of deleted ledger
ids. The same ``apply_*`` methods run during journal replay at open and after every group commit,
so the index after a replay equals the index before the crash (Architecture invariant: *the index
is a function of the newest checkpoint plus the journal after its mark*).

A location packs (segment id, offset) into one int, ``segment_id << 32 | offset``, so that the
per-entry cost is one dict slot and one int, and a checkpoint can dump a ledger's locations with
``array('q', ...)`` at C speed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from bookie.api import LedgerState
from bookie.errors import BadRequestError, LedgerDeletedError, NoSuchLedgerError

_OFFSET_MASK = 0xFFFF_FFFF
# Deleted ledger ids remembered so that a late add cannot recreate a deleted ledger; 8 bytes
# each in the checkpoint.
DEFAULT_MAX_DELETED_LEDGER_IDS = 1_000_000


def pack_location(segment_id: int, offset: int) -> int:
    return (segment_id << 32) | offset


def unpack_location(location: int) -> tuple[int, int]:
    return location >> 32, location & _OFFSET_MASK


class Ledger:
    """What this bookie holds of one ledger. Owned by ``LedgerIndex``; mutated on the event loop.

    Fields set when a request is admitted (before its record is durable): ``master_key``,
    ``fence_admitted``, ``deleting``, ``pending_adds``. Fields set when a record is applied
    (after it is durable, or during replay): ``entries``, ``bytes_by_segment``,
    ``last_add_confirmed``, ``last_entry_id``, ``fenced``.
    """

    __slots__ = (
        "bytes_by_segment",
        "cached",
        "deleting",
        "entries",
        "fence_admitted",
        "fenced",
        "last_add_confirmed",
        "last_entry_id",
        "ledger_id",
        "master_key",
        "pending_adds",
        "snapshot",
        "waiters",
    )

    def __init__(self, ledger_id: int) -> None:
        self.ledger_id = ledger_id
        self.entries: dict[int, int] = {}  # entry id → packed location
        # Live record bytes (header + payload) of this ledger per segment: what garbage
        # collection frees when the ledger is deleted.
        self.bytes_by_segment: dict[int, int] = {}
        self.last_add_confirmed = -1
        self.last_entry_id = -1
        self.fenced = False
        self.fence_admitted = False
        self.deleting = False
        self.master_key: bytes | None = None
        # entry id → adds of it queued in the journal but not yet applied. Compaction does not
        # copy an entry with a pending add: the copy, journalled after the add, would win.
        self.pending_adds: dict[int, int] = {}
        # Recently added entries (entry id → (LAC, payload)); see ``bookie.storage.tail_cache``.
        self.cached: dict[int, tuple[int, bytes]] = {}
        # Long polls of read_last_add_confirmed: (previous LAC, future).
        self.waiters: list[tuple[int, asyncio.Future[None]]] = []
        # This ledger's part of the last checkpoint, reused while nothing changed: a closed
        # ledger is copied once, not at every checkpoint. Every mutation of a checkpointed
        # field sets it back to None (``LedgerIndex.apply_*`` and the admission of a key).
        self.snapshot: LedgerSnapshot | None = None

    def tail_state(self) -> LedgerState:
        return LedgerState(self.last_add_confirmed, self.last_entry_id, self.fenced)

    def wake_waiters(self) -> None:
        """Answer the long polls whose previous LAC the ledger's LAC now exceeds."""
        lac = self.last_add_confirmed
        still_waiting = []
        for previous, waiter in self.waiters:
            if lac > previous:
                if not waiter.done():
                    waiter.set_result(None)
            else:
                still_waiting.append((previous, waiter))
        self.waiters = still_waiting

    def fail_waiters(self, error: Exception) -> None:
        for _, waiter in self.waiters:
            if not waiter.done():
                waiter.set_exception(error)


@dataclass(slots=True)
class LedgerSnapshot:
    """One ledger in a checkpoint."""

    ledger_id: int
    last_add_confirmed: int
    last_entry_id: int
    fenced: bool
    master_key: bytes | None
    bytes_by_segment: dict[int, int]
    entries: dict[int, int]


@dataclass(slots=True)
class IndexSnapshot:
    """The index as of journal position (mark_segment_id, mark_offset): every record before the
    mark is reflected, none after it."""

    mark_segment_id: int
    mark_offset: int
    ledgers: list[LedgerSnapshot]
    deleted_ledger_ids: list[int]


class LedgerIndex:
    """All ledgers of one bookie plus the ids of deleted ones.

    ``record_length_at`` returns the length of the record at a location; it is only called when
    an entry is overwritten (recovery re-adds, compaction copies) to move the old record's bytes
    out of the live-byte accounting.
    """

    def __init__(
        self,
        record_length_at: Callable[[int], int],
        max_deleted_ledger_ids: int = DEFAULT_MAX_DELETED_LEDGER_IDS,
    ) -> None:
        self.ledgers: dict[int, Ledger] = {}
        self.deleted: set[int] = set()
        self.max_deleted_ledger_ids = max_deleted_ledger_ids
        self._record_length_at = record_length_at

    def ledger_for_write(self, ledger_id: int) -> Ledger:
        """The ledger about to be written or fenced, created on first use; a deleted ledger
        raises ``LedgerDeletedError``. Fencing a ledger this bookie never saw is normal during
        recovery: it is remembered so that a late add of the old writer is refused."""
        ledger = self.ledgers.get(ledger_id)
        if ledger is None:
            if ledger_id in self.deleted:
                raise LedgerDeletedError(f"ledger {ledger_id} was deleted")
            ledger = self.ledgers[ledger_id] = Ledger(ledger_id)
        elif ledger.deleting:
            raise LedgerDeletedError(f"ledger {ledger_id} was deleted")
        return ledger

    def ledger_for_read(self, ledger_id: int) -> Ledger:
        """The ledger a read asks for: ``NoSuchLedgerError`` when this bookie never stored
        it, ``LedgerDeletedError`` once it is deleted (or its delete is admitted)."""
        if ledger_id < 0:
            raise BadRequestError(f"invalid ledger id {ledger_id}")
        ledger = self.ledgers.get(ledger_id)
        if ledger is None:
            if ledger_id in self.deleted:
                raise LedgerDeletedError(f"ledger {ledger_id} was deleted")
            raise NoSuchLedgerError(f"ledger {ledger_id} is not stored on this bookie")
        if ledger.deleting:
            raise LedgerDeletedError(f"ledger {ledger_id} was deleted")
        return ledger

    def apply_entry(
        self, ledger: Ledger, entry_id: int, last_add_confirmed: int, location: int, length: int
    ) -> bool:
        """Index one durable entry record; True when it raised the ledger's LAC."""
        ledger.snapshot = None
        previous = ledger.entries.get(entry_id)
        ledger.entries[entry_id] = location
        by_segment = ledger.bytes_by_segment
        segment_id = location >> 32
        by_segment[segment_id] = by_segment.get(segment_id, 0) + length
        if previous is not None:
            # An overwrite (recovery rewrote the entry, or compaction moved it): the newest
            # record wins, as in BookKeeper, and the old one becomes garbage.
            old_segment = previous >> 32
            remaining = by_segment.get(old_segment, 0) - self._record_length_at(previous)
            if remaining > 0:
                by_segment[old_segment] = remaining
            else:
                by_segment.pop(old_segment, None)
        if entry_id > ledger.last_entry_id:
            ledger.last_entry_id = entry_id
        if last_add_confirmed > ledger.last_add_confirmed:
            ledger.last_add_confirmed = last_add_confirmed
            return True
        return False

    def ledger_for_apply(self, ledger_id: int) -> Ledger | None:
        """The ledger a durable record belongs to, created if new; None if it was deleted."""
        ledger = self.ledgers.get(ledger_id)
        if ledger is None:
            if ledger_id in self.deleted:
                return None
            ledger = self.ledgers[ledger_id] = Ledger(ledger_id)
        return ledger

    def apply_key(self, ledger: Ledger, master_key: bytes) -> None:
        if ledger.master_key is None:
            ledger.master_key = master_key
            ledger.snapshot = None

    def apply_fence(self, ledger: Ledger, master_key: bytes) -> None:
        self.apply_key(ledger, master_key)
        ledger.snapshot = None
        ledger.fenced = True
        ledger.fence_admitted = True

    def apply_delete(self, ledger_id: int) -> Ledger | None:
        """Forget the ledger; returns its state so that the caller can wake its waiters."""
        self.deleted.add(ledger_id)
        return self.ledgers.pop(ledger_id, None)

    def live_bytes_by_segment(self) -> dict[int, int]:
        live: dict[int, int] = {}
        for ledger in self.ledgers.values():
            for segment_id, size in ledger.bytes_by_segment.items():
                live[segment_id] = live.get(segment_id, 0) + size
        return live

    def snapshot(self, mark_segment_id: int, mark_offset: int) -> IndexSnapshot:
        """A consistent copy, cheap enough for the event loop: only ledgers changed since the
        last snapshot are copied (the dict copies run in C; the values are immutable ints and
        bytes), so the cost follows the writes since then, not the size of the index. Encoding
        happens later in a worker thread.

        Also bounds the deleted-ledger set to the ``max_deleted_ledger_ids`` newest ids (ids
        are allocated in increasing order): a zombie add to a ledger deleted that long ago
        creates a stray ledger, which costs space but never data."""
        ledgers = []
        for ledger in self.ledgers.values():
            saved = ledger.snapshot
            if saved is None:
                saved = ledger.snapshot = LedgerSnapshot(
                    ledger.ledger_id,
                    ledger.last_add_confirmed,
                    ledger.last_entry_id,
                    ledger.fenced,
                    ledger.master_key,
                    dict(ledger.bytes_by_segment),
                    dict(ledger.entries),
                )
            ledgers.append(saved)
        deleted = sorted(self.deleted)
        if len(deleted) > self.max_deleted_ledger_ids:
            deleted = deleted[len(deleted) - self.max_deleted_ledger_ids :]
            self.deleted = set(deleted)
        return IndexSnapshot(mark_segment_id, mark_offset, ledgers, deleted)

    def load(self, snapshot: IndexSnapshot) -> None:
        """Replace the contents with a checkpoint's."""
        self.ledgers.clear()
        for saved in snapshot.ledgers:
            ledger = Ledger(saved.ledger_id)
            ledger.last_add_confirmed = saved.last_add_confirmed
            ledger.last_entry_id = saved.last_entry_id
            ledger.fenced = ledger.fence_admitted = saved.fenced
            ledger.master_key = saved.master_key
            ledger.bytes_by_segment = saved.bytes_by_segment
            ledger.entries = saved.entries
            self.ledgers[saved.ledger_id] = ledger
        self.deleted = set(snapshot.deleted_ledger_ids)

    def referenced_segments(self) -> set[int]:
        segments: set[int] = set()
        for ledger in self.ledgers.values():
            segments.update(ledger.bytes_by_segment)
        return segments
