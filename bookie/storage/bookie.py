"""The bookie storage engine: journal (which is also the entry log), index, caches, GC.

See ``Bookie`` for the lifecycle; ``bookie.storage.journal`` for group commit,
``bookie.storage.recovery`` for what happens at open and ``Bookie.run_gc_once`` for how space
is freed without ever letting the index point at a removed file.

Architecture invariants:

* *A bookie acknowledges only what is fsynced*: an add's future completes after the group
  commit holding its record was written and fdatasync'ed (``fsync=True``).
* *No byte is served without its checksum*: records read from disk are verified (CRC32C, type,
  ledger and entry id) before they are returned; a failure raises CorruptEntryError.
* *The checkpoint never points into a removed segment* (see ``run_gc_once``).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import logging
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from bookie.api import LedgerEntry, LedgerState
from bookie.errors import (
    BadRequestError,
    BookieError,
    BookieIOError,
    BookieUnavailableError,
    LedgerDeletedError,
    LedgerFencedError,
    NoSuchEntryError,
    NoSuchLedgerError,
    SegmentGoneError,
)
from bookie.storage.checkpoint import fsync_directory, write_checkpoint
from bookie.storage.config import BookieStorageConfig
from bookie.storage.gc import GcReport, plan_gc
from bookie.storage.index import Ledger, LedgerIndex, pack_location
from bookie.storage.journal import Journal, PendingRecord
from bookie.storage.reader import (
    DiskRead,
    read_entries_from_segments,
    read_segment_entries,
    segment_sizes,
)
from bookie.storage.record import DELETE, ENTRY, FENCE, KEY, SEGMENT_HEADER_SIZE
from bookie.storage.recovery import JournalReplay
from bookie.storage.segment_writer import list_segments, segment_path

_log = logging.getLogger(__name__)

# A master key is a secret of a few dozen bytes; refuse anything absurd.
MAX_MASTER_KEY_BYTES = 1024
_MAX_ID = (1 << 63) - 1


@dataclass(slots=True)
class BookieStats:
    """Counters for tests and metrics. Journal counters are read from the journal itself."""

    records_replayed_at_open: int = 0
    corrupt_records_at_open: int = 0
    torn_tail_bytes_truncated: int = 0
    corrupt_reads: int = 0
    checkpoints_written: int = 0
    segments_removed: int = 0
    segments_compacted: int = 0
    bytes_compacted: int = 0


class Bookie:
    """One bookie's durable store of ledger entries.

    Lifecycle: ``bookie = await Bookie.open(config)`` locks ``config.data_dir``, rebuilds the
    index (newest checkpoint + journal replay, torn tail truncated), starts a new journal segment
    and three owned tasks: the journal writer, the periodic checkpoint and the periodic garbage
    collection. ``await bookie.close()`` refuses new requests, waits for queued adds to become
    durable, writes a final checkpoint (so the next open replays nothing), cancels the tasks,
    fails pending long polls with BookieUnavailableError and unlocks the directory.

    Place in the system: the storage side of ``bookie.api.BookieClient``. ``LocalBookieClient``
    calls it in-process; ``bookie.server.BookieServicer`` serves it over gRPC. All methods must
    be called from the event loop that opened it.

    Choices worth knowing:

    * An add to an existing (ledger, entry) is accepted and the newest record wins (as in
      BookKeeper): recovery rewrites entries, normally with the same payload.
    * The first add (or fence) of a ledger records its master key; every later add and fence
      must present the same key, or gets BadRequestError.
    * ``read_last_add_confirmed`` of a ledger this bookie knows nothing of raises
      NoSuchLedgerError; of a deleted ledger, LedgerDeletedError.
    """

    def __init__(self, config: BookieStorageConfig, index: LedgerIndex, lock_fd: int) -> None:
        self.config = config
        self.stats = BookieStats()
        self._journal_dir = config.data_dir / "journal"
        self._index_dir = config.data_dir / "index"
        self._index = index
        self._lock_fd = lock_fd
        self._loop = asyncio.get_running_loop()
        self._read_executor = ThreadPoolExecutor(
            max_workers=config.read_threads, thread_name_prefix="bookie-read"
        )
        # Checkpoint writes, compaction scans and segment removal: one at a time, off the loop.
        self._maintenance_executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="bookie-maintenance"
        )
        self._journal: Journal | None = None
        self._closing = False
        # Journal position up to which every record is applied to the index.
        self._mark = (1, SEGMENT_HEADER_SIZE)
        # Mark of the newest durable checkpoint: segments below it are never replayed.
        self._checkpoint_mark = (0, 0)
        self._checkpoint_lock = asyncio.Lock()
        self._checkpoint_due = asyncio.Event()
        self._journal_bytes_since_checkpoint = 0
        self._gc_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        # Tail cache: recently added entries, evicted oldest first (FIFO), bounded by bytes and
        # count. Entries are kept as received; disk reads do not fill it, so a catch-up reader
        # cannot evict what tailing readers need.
        self._cache_order: deque[tuple[Ledger, int, tuple[int, bytes]]] = deque()
        self._cache_bytes = 0

    # -- lifecycle ---------------------------------------------------------------------------

    @classmethod
    async def open(cls, config: BookieStorageConfig) -> Bookie:
        """Open (or create) the bookie in ``config.data_dir``; see the class docstring."""
        journal_dir = config.data_dir / "journal"
        index_dir = config.data_dir / "index"
        for directory in (config.data_dir, journal_dir, index_dir):
            directory.mkdir(parents=True, exist_ok=True)
        lock_fd = _lock_directory(config.data_dir)
        bookie: Bookie | None = None
        try:
            replay = JournalReplay(journal_dir, index_dir, fsync=config.fsync)
            result = await asyncio.to_thread(replay.run)
            bookie = cls(config, result.index, lock_fd)
            bookie.stats.records_replayed_at_open = result.records_replayed
            bookie.stats.corrupt_records_at_open = result.corrupt_records
            bookie.stats.torn_tail_bytes_truncated = result.torn_tail_bytes
            journal = Journal(
                journal_dir,
                result.next_segment_id,
                segment_size_bytes=config.journal_segment_size_bytes,
                preallocation_bytes=config.journal_preallocation_bytes,
                group_commit_max_bytes=config.group_commit_max_bytes,
                fsync=config.fsync,
                on_durable=bookie._on_durable,
            )
            await journal.start()
            bookie._journal = journal
            # Every record of the older segments is applied: the mark is the new segment's start.
            bookie._mark = (result.next_segment_id, SEGMENT_HEADER_SIZE)
            if (
                result.records_replayed
                or result.torn_tail_bytes
                or result.corrupt_records
                or not result.checkpoint_loaded
            ):
                # Replay (and report damage) once, not again after every crash in a row.
                await bookie.checkpoint()
            bookie._tasks = [
                asyncio.create_task(bookie._checkpoint_loop(), name="bookie-checkpoint"),
                asyncio.create_task(bookie._gc_loop(), name="bookie-gc"),
            ]
        except BaseException:
            if bookie is not None:
                if bookie._journal is not None:
                    await bookie._journal.close()
                bookie._read_executor.shutdown(wait=True)
                bookie._maintenance_executor.shutdown(wait=True)
            os.close(lock_fd)
            raise
        _log.info(
            "bookie opened at %s: %d ledgers, %d records replayed, %d corrupt, %d torn bytes",
            config.data_dir,
            len(result.index.ledgers),
            result.records_replayed,
            result.corrupt_records,
            result.torn_tail_bytes,
        )
        return bookie

    @property
    def is_open(self) -> bool:
        return not self._closing

    async def wait_failed(self) -> BookieError:
        """Wait until the journal fails for good (a failed write or fsync): from then on every
        add fails, and the process should report NOT_SERVING so that writers replace it."""
        journal = self._journal
        assert journal is not None, "the bookie is not open"
        return await journal.wait_failed()

    def _writable_ledger(self, ledger_id: int) -> Ledger:
        """The index entry of a ledger about to be written or fenced, created on first use;
        a deleted ledger raises ``LedgerDeletedError``. Fencing a ledger this bookie never saw
        is normal during recovery: it is remembered so that a late add of the old writer is
        refused."""
        index = self._index
        ledger = index.ledgers.get(ledger_id)
        if ledger is None:
            if ledger_id in index.deleted:
                raise LedgerDeletedError(f"ledger {ledger_id} was deleted")
            ledger = index.ledgers[ledger_id] = Ledger(ledger_id)
        elif ledger.deleting:
            raise LedgerDeletedError(f"ledger {ledger_id} was deleted")
        return ledger

    async def close(self, *, checkpoint: bool = True) -> None:
        """Shut down; see the class docstring. ``checkpoint=False`` skips the final checkpoint
        (tests use it to leave a journal to replay, like a crash after the last fsync)."""
        if self._closing:
            return
        self._closing = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        journal = self._journal
        assert journal is not None
        try:
            async with asyncio.timeout(self.config.close_timeout_ms / 1000):
                await journal.drain()
        except TimeoutError:
            _log.warning("closing the bookie with adds still queued in the journal")
        await journal.close()
        try:
            if checkpoint:
                await self._write_checkpoint()
        except OSError:
            _log.exception("final index checkpoint failed; the next open replays more")
        finally:
            unavailable = BookieUnavailableError("the bookie is shutting down")
            for ledger in self._index.ledgers.values():
                for _, waiter in ledger.waiters:
                    if not waiter.done():
                        waiter.set_exception(unavailable)
            self._read_executor.shutdown(wait=True)
            self._maintenance_executor.shutdown(wait=True)
            os.close(self._lock_fd)
        _log.info("bookie at %s closed", self.config.data_dir)

    def _check_open(self) -> Journal:
        if self._closing:
            raise BookieUnavailableError("the bookie is shutting down")
        journal = self._journal
        assert journal is not None
        return journal

    # -- adds --------------------------------------------------------------------------------

    @property
    def has_add_capacity(self) -> bool:
        """False while the group-commit buffer is full: ``submit_add`` callers then wait on
        ``wait_for_add_capacity`` (which is what ``add_entry`` does)."""
        journal = self._journal
        return journal is not None and journal.has_room

    async def wait_for_add_capacity(self) -> None:
        await self._check_open().wait_for_room()

    def submit_add(
        self,
        ledger_id: int,
        entry_id: int,
        last_add_confirmed: int,
        payload: bytes,
        master_key: bytes,
        *,
        recovery_add: bool = False,
    ) -> asyncio.Future[None]:
        """Admit one add and queue its journal record; the returned future completes once the
        entry is durable and indexed. Refusals raise at once (BadRequestError,
        LedgerFencedError, LedgerDeletedError, BookieUnavailableError, BookieIOError).

        This is the batch-friendly form used by the gRPC servicer (no coroutine per add);
        ``add_entry`` wraps it.
        """
        journal = self._check_open()
        if not 0 <= ledger_id <= _MAX_ID or not 0 <= entry_id <= _MAX_ID:
            raise BadRequestError(f"invalid ledger {ledger_id} / entry {entry_id}")
        if not -1 <= last_add_confirmed <= _MAX_ID:
            raise BadRequestError(f"invalid last_add_confirmed {last_add_confirmed}")
        if len(payload) > self.config.max_entry_size_bytes:
            raise BadRequestError(
                f"entry of {len(payload)} bytes exceeds the limit of "
                f"{self.config.max_entry_size_bytes} bytes"
            )
        if len(master_key) > MAX_MASTER_KEY_BYTES:
            raise BadRequestError(f"master key of {len(master_key)} bytes is too long")
        ledger = self._writable_ledger(ledger_id)
        if ledger.master_key is None:
            # The first write of a ledger journals its key, like BookKeeper's key meta-record,
            # so that fences after a restart can check it. It shares the entry's group commit.
            ledger.master_key = master_key
            ledger.snapshot = None
            journal.append_nowait(KEY, ledger_id, -1, -1, master_key, want_future=False)
        elif ledger.master_key != master_key:
            raise BadRequestError(f"wrong master key for ledger {ledger_id}")
        if ledger.fence_admitted and not recovery_add:
            raise LedgerFencedError(f"ledger {ledger_id} is fenced")
        pending = ledger.pending_adds
        pending[entry_id] = pending.get(entry_id, 0) + 1
        future = journal.append_nowait(ENTRY, ledger_id, entry_id, last_add_confirmed, payload)
        assert future.future is not None
        return future.future

    async def add_entry(
        self,
        ledger_id: int,
        entry_id: int,
        last_add_confirmed: int,
        payload: bytes,
        master_key: bytes,
        *,
        recovery_add: bool = False,
    ) -> None:
        """Store one entry; returns once it is durable. See ``BookieClient.add_entry``."""
        journal = self._check_open()
        if not journal.has_room:
            await journal.wait_for_room()
        await self.submit_add(
            ledger_id, entry_id, last_add_confirmed, payload, master_key, recovery_add=recovery_add
        )

    # -- applying durable records (called by the journal writer) -----------------------------

    def _on_durable(self, records: list[PendingRecord]) -> None:
        index = self._index
        ledgers = index.ledgers
        written = 0
        for record in records:
            written += record.length
            record_type = record.record_type
            if record_type == ENTRY:
                ledger = ledgers.get(record.ledger_id)
                if ledger is None:  # a compaction copy of a ledger deleted since
                    continue
                entry_id = record.entry_id
                if not record.is_copy:
                    pending = ledger.pending_adds
                    count = pending.pop(entry_id, 1)
                    if count > 1:
                        pending[entry_id] = count - 1
                    self._cache_put(ledger, entry_id, record.last_add_confirmed, record.payload)
                raised = index.apply_entry(
                    ledger,
                    entry_id,
                    record.last_add_confirmed,
                    pack_location(record.segment_id, record.offset),
                    record.length,
                )
                if raised and ledger.waiters:
                    self._wake_waiters(ledger)
            elif record_type == DELETE:
                deleted = index.apply_delete(record.ledger_id)
                if deleted is not None:
                    deleted.cached.clear()
                    error = LedgerDeletedError(f"ledger {record.ledger_id} was deleted")
                    for _, waiter in deleted.waiters:
                        if not waiter.done():
                            waiter.set_exception(error)
            else:
                maybe_ledger = index.ledger_for_apply(record.ledger_id)
                if maybe_ledger is not None:
                    if record_type == FENCE:
                        index.apply_fence(maybe_ledger, record.payload)
                    else:
                        assert record_type == KEY
                        index.apply_key(maybe_ledger, record.payload)
        last = records[-1]
        self._mark = (last.segment_id, last.offset + last.length)
        self._journal_bytes_since_checkpoint += written
        if self._journal_bytes_since_checkpoint >= self.config.checkpoint_journal_bytes:
            self._checkpoint_due.set()

    def _cache_put(self, ledger: Ledger, entry_id: int, lac: int, payload: bytes) -> None:
        config = self.config
        if config.read_cache_max_entries == 0 or len(payload) > config.read_cache_max_bytes:
            return
        item = (lac, payload)
        ledger.cached[entry_id] = item
        order = self._cache_order
        order.append((ledger, entry_id, item))
        self._cache_bytes += len(payload)
        while (
            self._cache_bytes > config.read_cache_max_bytes
            or len(order) > config.read_cache_max_entries
        ):
            old_ledger, old_entry_id, old_item = order.popleft()
            self._cache_bytes -= len(old_item[1])
            if old_ledger.cached.get(old_entry_id) is old_item:
                del old_ledger.cached[old_entry_id]

    def _wake_waiters(self, ledger: Ledger) -> None:
        lac = ledger.last_add_confirmed
        still_waiting = []
        for previous, waiter in ledger.waiters:
            if lac > previous:
                if not waiter.done():
                    waiter.set_result(None)
            else:
                still_waiting.append((previous, waiter))
        ledger.waiters = still_waiting

    # -- reads -------------------------------------------------------------------------------

    def _ledger_for_read(self, ledger_id: int) -> Ledger:
        if ledger_id < 0:
            raise BadRequestError(f"invalid ledger id {ledger_id}")
        ledger = self._index.ledgers.get(ledger_id)
        if ledger is None:
            if ledger_id in self._index.deleted:
                raise LedgerDeletedError(f"ledger {ledger_id} was deleted")
            raise NoSuchLedgerError(f"ledger {ledger_id} is not stored on this bookie")
        if ledger.deleting:
            raise LedgerDeletedError(f"ledger {ledger_id} was deleted")
        return ledger

    async def read_entries(
        self, ledger_id: int, first_entry_id: int, last_entry_id: int, max_bytes: int = 0
    ) -> list[LedgerEntry]:
        """Entries first..last in order, stopping at the first missing one, after ``max_bytes``
        of payload (0 or more than ``config.max_read_bytes``: that limit) or after
        ``config.max_read_entries``; at least one entry is returned. Raises NoSuchEntryError
        when the first entry is missing and CorruptEntryError when it fails its checks (a
        later corrupt entry ends the read early instead)."""
        self._check_open()
        if first_entry_id < 0 or last_entry_id < first_entry_id:
            raise BadRequestError(f"invalid entry range {first_entry_id}..{last_entry_id}")
        if max_bytes < 0:
            raise BadRequestError(f"invalid max_bytes {max_bytes}")
        limit = self.config.max_read_bytes
        budget = min(max_bytes, limit) if max_bytes > 0 else limit
        last = min(last_entry_id, first_entry_id + self.config.max_read_entries - 1)
        for attempt in (1, 2):
            ledger = self._ledger_for_read(ledger_id)
            entries = ledger.entries
            cached = ledger.cached
            result: list[LedgerEntry] = []
            total = 0
            entry_id = first_entry_id
            # Tail reads are served from memory without leaving the event loop.
            while entry_id <= last:
                item = cached.get(entry_id)
                if item is None or entry_id not in entries:
                    break
                size = len(item[1])
                if result and total + size > budget:
                    return result
                result.append(LedgerEntry(entry_id, item[0], item[1]))
                total += size
                entry_id += 1
                if total >= budget:
                    return result
            locations: list[tuple[int, int]] = []
            while entry_id <= last:
                location = entries.get(entry_id)
                if location is None:
                    break
                locations.append((entry_id, location))
                entry_id += 1
            if not locations:
                if not result:
                    raise NoSuchEntryError(
                        f"ledger {ledger_id} entry {first_entry_id} is not stored on this bookie"
                    )
                return result
            try:
                disk: DiskRead = await self._loop.run_in_executor(
                    self._read_executor,
                    read_entries_from_segments,
                    self._journal_dir,
                    ledger_id,
                    locations,
                    budget - total,
                    bool(result),
                )
            except SegmentGoneError:
                if attempt == 2:
                    raise BookieIOError(
                        f"ledger {ledger_id}: journal segment removed during the read"
                    ) from None
                continue  # compaction moved the entries: look them up again
            except OSError as exc:
                raise BookieIOError(f"reading ledger {ledger_id} failed: {exc}") from exc
            result.extend(disk.entries)
            if disk.corruption is not None:
                self.stats.corrupt_reads += 1
                _log.error("corrupt record: %s", disk.corruption)
                if not result:
                    raise disk.corruption
            return result
        raise AssertionError("unreachable")  # pragma: no cover

    def _state(self, ledger: Ledger) -> LedgerState:
        return LedgerState(ledger.last_add_confirmed, ledger.last_entry_id, ledger.fenced)

    async def read_last_add_confirmed(
        self, ledger_id: int, previous_last_add_confirmed: int = -1, timeout_ms: int = 0
    ) -> LedgerState:
        """The ledger's tail; with ``timeout_ms`` > 0 a long poll that returns as soon as the
        LAC exceeds ``previous_last_add_confirmed`` or when the timeout (capped at
        ``config.max_long_poll_ms``) passes. Beyond ``config.max_lac_waiters_per_ledger``
        concurrent polls of one ledger, a poll is answered at once."""
        self._check_open()
        if timeout_ms < 0:
            raise BadRequestError(f"invalid timeout_ms {timeout_ms}")
        ledger = self._ledger_for_read(ledger_id)
        if (
            timeout_ms == 0
            or ledger.last_add_confirmed > previous_last_add_confirmed
            or len(ledger.waiters) >= self.config.max_lac_waiters_per_ledger
        ):
            return self._state(ledger)
        waiter: asyncio.Future[None] = self._loop.create_future()
        item = (previous_last_add_confirmed, waiter)
        ledger.waiters.append(item)
        try:
            async with asyncio.timeout(min(timeout_ms, self.config.max_long_poll_ms) / 1000):
                await waiter
        except TimeoutError:
            pass
        finally:
            with contextlib.suppress(ValueError):
                ledger.waiters.remove(item)
        return self._state(self._ledger_for_read(ledger_id))

    # -- fencing and deletion ----------------------------------------------------------------

    async def fence_ledger(self, ledger_id: int, master_key: bytes) -> LedgerState:
        """Fence durably (later non-recovery adds are refused) and return the tail state once
        the fence is durable: it covers every add admitted before the fence."""
        journal = self._check_open()
        if ledger_id < 0:
            raise BadRequestError(f"invalid ledger id {ledger_id}")
        if len(master_key) > MAX_MASTER_KEY_BYTES:
            raise BadRequestError(f"master key of {len(master_key)} bytes is too long")
        if not journal.has_room:
            await journal.wait_for_room()
        ledger = self._writable_ledger(ledger_id)
        if ledger.master_key is None:
            ledger.master_key = master_key
            ledger.snapshot = None
        elif ledger.master_key != master_key:
            raise BadRequestError(f"wrong master key for ledger {ledger_id}")
        ledger.fence_admitted = True
        record = journal.append_nowait(FENCE, ledger_id, -1, -1, master_key)
        assert record.future is not None
        await record.future
        return self._state(self._ledger_for_read(ledger_id))

    async def delete_ledger(self, ledger_id: int) -> None:
        """Delete durably; the ledger's bytes are freed by a later garbage collection."""
        journal = self._check_open()
        if ledger_id < 0:
            raise BadRequestError(f"invalid ledger id {ledger_id}")
        if ledger_id in self._index.deleted:
            return
        if not journal.has_room:
            await journal.wait_for_room()
        ledger = self._index.ledgers.get(ledger_id)
        if ledger is not None:
            ledger.deleting = True
        record = journal.append_nowait(DELETE, ledger_id, -1, -1, b"")
        assert record.future is not None
        await record.future

    # -- checkpoints -------------------------------------------------------------------------

    async def checkpoint(self) -> None:
        """Write the index as of now, atomically; the next open replays only what follows."""
        self._check_open()
        await self._write_checkpoint()

    async def _write_checkpoint(self) -> None:
        async with self._checkpoint_lock:
            mark_segment_id, mark_offset = self._mark
            snapshot = self._index.snapshot(mark_segment_id, mark_offset)
            self._journal_bytes_since_checkpoint = 0
            await self._loop.run_in_executor(
                self._maintenance_executor,
                functools.partial(
                    write_checkpoint, self._index_dir, snapshot, fsync=self.config.fsync
                ),
            )
            self._checkpoint_mark = (mark_segment_id, mark_offset)
            self.stats.checkpoints_written += 1

    async def _checkpoint_loop(self) -> None:
        interval_s = self.config.checkpoint_interval_ms / 1000
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval_s):
                    await self._checkpoint_due.wait()
            self._checkpoint_due.clear()
            try:
                await self._write_checkpoint()
            except Exception:
                # Retried at the next interval; meanwhile the replay at open just grows.
                _log.exception("index checkpoint failed")

    # -- garbage collection ------------------------------------------------------------------

    async def _gc_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.gc_interval_ms / 1000)
            try:
                await self.run_gc_once()
            except Exception:
                _log.exception("garbage collection failed")

    async def run_gc_once(self) -> GcReport:
        """Free the space of deleted and overwritten entries; returns what was done.

        Steps, and why a crash at any point is safe:

        1. Checkpoint, so that the durable mark is recent. Only segments *below the durable
           checkpoint's mark* are candidates: they are sealed (appends only go to the newest
           segment) and no replay ever reads them, so their meta records (keys, fences,
           deletes) are already in the checkpoint and removing them loses nothing.
        2. Compact sparse candidates: copy each live entry record to the journal head as an
           ordinary ENTRY record and wait until the copies are durable and indexed (the index
           then points at the copies). A crash here is harmless: the old checkpoint still
           points into the old segment, which still exists, and the replay applies the copies
           again (same ledger, entry, LAC and payload; the newest record wins). An entry with
           an add queued but not yet durable is not copied, because that add would then be
           followed by the older copy in the journal.
        3. Checkpoint again. Its snapshot holds no location in the segments about to go: they
           had no live bytes when it was taken, and nothing can point into a sealed segment
           later. Only after this checkpoint is durable are the segment files unlinked, so *the
           durable checkpoint never points into a removed segment*. A crash between the
           checkpoint and the unlink leaves orphan segments without live bytes, which the next
           run removes.
        """
        self._check_open()
        async with self._gc_lock:
            report = GcReport()
            await self._write_checkpoint()
            below = self._checkpoint_mark[0]
            sizes = await self._loop.run_in_executor(
                self._maintenance_executor, segment_sizes, self._journal_dir
            )
            plan = plan_gc(
                sizes,
                self._index.live_bytes_by_segment(),
                below_segment_id=below,
                live_ratio=self.config.compaction_live_ratio,
                max_copy_bytes=self.config.compaction_max_bytes_per_run,
            )
            for segment_id in plan.compact:
                report.bytes_copied += await self._compact_segment(segment_id)
                report.segments_compacted.append(segment_id)
            live = self._index.live_bytes_by_segment()
            doomed = [s for s in (*plan.remove, *plan.compact) if live.get(s, 0) == 0]
            if not doomed:
                return report
            await self._write_checkpoint()
            # Defensive: a segment that gained a live entry is kept (cannot happen: see above).
            live = self._index.live_bytes_by_segment()
            doomed = [s for s in doomed if live.get(s, 0) == 0]
            await self._loop.run_in_executor(
                self._maintenance_executor,
                functools.partial(
                    _remove_segments, self._journal_dir, doomed, fsync=self.config.fsync
                ),
            )
            report.segments_removed = doomed
            report.bytes_freed = sum(sizes.get(s, 0) for s in doomed)
            self.stats.segments_removed += len(doomed)
            self.stats.segments_compacted += len(report.segments_compacted)
            self.stats.bytes_compacted += report.bytes_copied
            _log.info(
                "garbage collection removed %d segments (%d bytes), copied %d bytes",
                len(doomed),
                report.bytes_freed,
                report.bytes_copied,
            )
            return report

    async def _compact_segment(self, segment_id: int) -> int:
        """Copy the live entries of a sealed segment to the journal head; returns bytes copied."""
        contents = await self._loop.run_in_executor(
            self._maintenance_executor, read_segment_entries, self._journal_dir, segment_id
        )
        for damage in contents.damaged:
            # Live entries there stay indexed (reads report the corruption) and keep the
            # segment alive; re-replication from other bookies is the cure.
            self.stats.corrupt_reads += 1
            _log.error(
                "compaction: segment %d has damaged bytes at %d..%d (%s)",
                segment_id,
                damage.offset,
                damage.end,
                damage.reason,
            )
        copies: list[asyncio.Future[None]] = []
        copied = 0
        ledgers = self._index.ledgers
        for header, payload in contents.entries:
            journal = self._check_open()
            if not journal.has_room:
                await journal.wait_for_room()
            ledger = ledgers.get(header.ledger_id)
            # Re-checked after every wait: the index may have changed meanwhile.
            if (
                ledger is None
                or ledger.deleting
                or ledger.entries.get(header.entry_id) != pack_location(segment_id, header.offset)
                or header.entry_id in ledger.pending_adds
            ):
                continue
            record = journal.append_nowait(
                ENTRY,
                header.ledger_id,
                header.entry_id,
                header.last_add_confirmed,
                payload,
                is_copy=True,
            )
            assert record.future is not None
            copies.append(record.future)
            copied += record.length
        if copies:
            await asyncio.gather(*copies)
        return copied

    # -- disk usage --------------------------------------------------------------------------

    def bytes_on_disk(self) -> int:
        """Bytes of journal segments and index files."""
        total = 0
        for directory in (self._journal_dir, self._index_dir):
            with os.scandir(directory) as entries:
                for entry in entries:
                    if entry.is_file():
                        total += entry.stat().st_size
        return total

    @property
    def journal_fsyncs(self) -> int:
        journal = self._journal
        return 0 if journal is None else journal.fsyncs

    @property
    def journal_batches(self) -> int:
        journal = self._journal
        return 0 if journal is None else journal.batches_written

    def segment_ids(self) -> list[int]:
        """Ids of the journal segment files, ascending (tests and tools)."""
        return list_segments(self._journal_dir)

    def segment_file(self, segment_id: int) -> Path:
        return segment_path(self._journal_dir, segment_id)


def _lock_directory(data_dir: Path) -> int:
    """Hold an exclusive lock on ``data_dir/LOCK`` so that two bookies never share a directory.
    The kernel releases it when the process dies, even by SIGKILL."""
    fd = os.open(data_dir / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise BookieIOError(f"{data_dir} is in use by another bookie") from None
    return fd


def _remove_segments(journal_dir: Path, segment_ids: list[int], *, fsync: bool) -> None:
    for segment_id in segment_ids:
        with contextlib.suppress(FileNotFoundError):
            segment_path(journal_dir, segment_id).unlink()
    if fsync:
        fsync_directory(journal_dir)
