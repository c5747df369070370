"""The bookie's background work: index checkpoints and garbage collection (with compaction).

``Checkpointer`` follows the journal position up to which every record is applied to the index
(``advance``, called by ``bookie.storage.admission`` after every durable batch) and writes the
index as of that mark, atomically (``bookie.storage.checkpoint``), every
``checkpoint_interval_ms`` or as soon as ``checkpoint_journal_bytes`` were journalled since the
last one, so that an open replays only the journal after the mark.

``GarbageCollector`` frees the space of deleted and overwritten entries every
``gc_interval_ms``; ``run_once`` explains why the order of its steps is crash-safe
(*the durable checkpoint never points into a removed segment*).

Both run their blocking steps in the bookie's one-thread maintenance executor (one at a time,
off the event loop). Lifecycle: each owns its loop task: ``start()`` creates it, ``stop()``
cancels and awaits it (the bookie stops both before it closes the journal, then writes a final
checkpoint with ``write()``). A failed pass is logged and retried at the next interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bookie.api import LedgerEntry
from bookie.storage.checkpoint import fsync_directory, write_checkpoint
from bookie.storage.config import BookieStorageConfig
from bookie.storage.gc import GcPlan, GcReport, plan_gc
from bookie.storage.index import LedgerIndex, pack_location
from bookie.storage.journal import Journal
from bookie.storage.reader import read_entries_from_segments, segment_sizes
from bookie.storage.record import ENTRY, SEGMENT_HEADER_SIZE
from bookie.storage.segment_writer import segment_path
from bookie.storage.stats import BookieStats

_log = logging.getLogger(__name__)

# Compaction copies queued in the journal at once (the next chunk waits until these are durable).
COMPACTION_CHUNK_BYTES = 256 * 1024
# Live records one compaction read considers at most (the byte budget usually ends it first).
COMPACTION_CHUNK_ENTRIES = 1024
# A removed segment is truncated by this much per step before its unlink (``_release_segment``).
RELEASE_STEP_BYTES = 1024 * 1024


class Checkpointer:
    """Index checkpoints: the mark they are taken at, the periodic loop, the atomic write."""

    def __init__(
        self,
        config: BookieStorageConfig,
        index: LedgerIndex,
        index_dir: Path,
        first_segment_id: int,
        executor: ThreadPoolExecutor,
        stats: BookieStats,
    ) -> None:
        self._config = config
        self._index = index
        self._index_dir = index_dir
        self._executor = executor
        self._stats = stats
        self._loop = asyncio.get_running_loop()
        # Journal position up to which every record is applied to the index: the older
        # segments were replayed at open, so it starts at the new segment's first record.
        self.mark = (first_segment_id, SEGMENT_HEADER_SIZE)
        # Mark of the newest durable checkpoint: segments below it are never replayed.
        self.durable_mark = (0, 0)
        self._lock = asyncio.Lock()
        self._due = asyncio.Event()
        self._journal_bytes_since_checkpoint = 0
        self._task: asyncio.Task[None] | None = None

    def advance(self, segment_id: int, offset: int, journal_bytes: int) -> None:
        """A durable batch ending at (segment_id, offset) was applied to the index."""
        self.mark = (segment_id, offset)
        self._journal_bytes_since_checkpoint += journal_bytes
        if self._journal_bytes_since_checkpoint >= self._config.checkpoint_journal_bytes:
            self._due.set()

    async def write(self) -> None:
        """Write the index as of the mark, atomically; the next open replays what follows."""
        async with self._lock:
            mark_segment_id, mark_offset = self.mark
            snapshot = self._index.snapshot(mark_segment_id, mark_offset)
            self._journal_bytes_since_checkpoint = 0
            await self._loop.run_in_executor(
                self._executor,
                functools.partial(
                    write_checkpoint, self._index_dir, snapshot, fsync=self._config.fsync
                ),
            )
            self.durable_mark = (mark_segment_id, mark_offset)
            self._stats.checkpoints_written += 1

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="bookie-checkpoint")

    async def stop(self) -> None:
        await _cancel(self._task)

    async def _run(self) -> None:
        interval_s = self._config.checkpoint_interval_ms / 1000
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval_s):
                    await self._due.wait()
            self._due.clear()
            try:
                await self.write()
            except Exception:
                # Retried at the next interval; meanwhile the replay at open just grows.
                _log.exception("index checkpoint failed")


class GarbageCollector:
    """Removes segments without live entries and compacts sparse ones; see ``run_once``.

    ``check_open`` returns the journal while the bookie is open and raises
    ``BookieUnavailableError`` once it is closing; compaction asks it before every copy.
    """

    def __init__(
        self,
        config: BookieStorageConfig,
        index: LedgerIndex,
        journal_dir: Path,
        checkpoints: Checkpointer,
        check_open: Callable[[], Journal],
        executor: ThreadPoolExecutor,
        stats: BookieStats,
    ) -> None:
        self._config = config
        self._index = index
        self._journal_dir = journal_dir
        self._checkpoints = checkpoints
        self._check_open = check_open
        self._executor = executor
        self._stats = stats
        self._loop = asyncio.get_running_loop()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="bookie-gc")

    async def stop(self) -> None:
        await _cancel(self._task)

    async def _run(self) -> None:
        delay_s = gc_delay_seconds(self._config.gc_interval_ms, first=True)
        while True:
            await asyncio.sleep(delay_s)
            try:
                await self.run_once()
            except Exception:
                _log.exception("garbage collection failed")
            delay_s = gc_delay_seconds(self._config.gc_interval_ms, first=False)

    async def run_once(self) -> GcReport:
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
        3. Checkpoint again (``_remove_empty``). Its snapshot holds no location in the segments
           about to go: they had no live bytes when it was taken, and nothing can point into a
           sealed segment later. Only after this checkpoint is durable are the segment files
           unlinked, so *the durable checkpoint never points into a removed segment*. A crash
           between the checkpoint and the unlink leaves orphan segments without live bytes,
           which the next run removes.
        """
        async with self._lock:
            report = GcReport()
            started = time.monotonic()
            await self._checkpoints.write()
            sizes = await self._loop.run_in_executor(
                self._executor, segment_sizes, self._journal_dir
            )
            plan = plan_gc(
                sizes,
                self._index.live_bytes_by_segment(),
                below_segment_id=self._checkpoints.durable_mark[0],
                live_ratio=self._config.compaction_live_ratio,
                max_copy_bytes=self._config.compaction_max_bytes_per_run,
            )
            planned = time.monotonic()
            pacer = _Pacer(self._config.compaction_max_bytes_per_second)
            for segment_id in plan.compact:
                report.bytes_copied += await self._compact_segment(segment_id, pacer)
                report.segments_compacted.append(segment_id)
            compacted = time.monotonic()
            await self._remove_empty(plan, sizes, report)
            _log.info(
                "garbage collection took %.3f s (checkpoint and plan %.3f s, compaction %.3f s "
                "of %d segments / %d bytes, removal %.3f s of %d segments)",
                time.monotonic() - started,
                planned - started,
                compacted - planned,
                len(report.segments_compacted),
                report.bytes_copied,
                time.monotonic() - compacted,
                len(report.segments_removed),
            )
            return report

    async def _remove_empty(self, plan: GcPlan, sizes: dict[int, int], report: GcReport) -> None:
        """Step 3 of ``run_once``: checkpoint, then unlink the planned segments left empty."""
        live = self._index.live_bytes_by_segment()
        doomed = [s for s in (*plan.remove, *plan.compact) if live.get(s, 0) == 0]
        if not doomed:
            return
        await self._checkpoints.write()
        # Defensive: a segment that gained a live entry is kept (cannot happen: see above).
        live = self._index.live_bytes_by_segment()
        doomed = [s for s in doomed if live.get(s, 0) == 0]
        freed = sum(sizes.get(s, 0) for s in doomed)
        pacer = _Pacer(
            release_bytes_per_second(
                freed, self._config.segment_release_bytes_per_second, self._config.gc_interval_ms
            )
        )
        for segment_id in doomed:
            await self._release_segment(segment_id, pacer)
        if self._config.fsync:
            await self._loop.run_in_executor(self._executor, fsync_directory, self._journal_dir)
        report.segments_removed = doomed
        report.bytes_freed = freed
        self._stats.segments_removed += len(doomed)
        self._stats.segments_compacted += len(report.segments_compacted)
        self._stats.bytes_compacted += report.bytes_copied
        _log.info(
            "garbage collection removed %d segments (%d bytes), copied %d bytes",
            len(doomed),
            report.bytes_freed,
            report.bytes_copied,
        )

    async def _release_segment(self, segment_id: int, pacer: _Pacer) -> None:
        """Give a removed segment's space back a step at a time, then unlink it: truncated by
        ``RELEASE_STEP_BYTES`` per step at ``release_bytes_per_second``, so that
        the filesystem frees (and, mounted with ``discard``, trims) a little per commit of its
        own journal instead of a run's gigabyte in one, which stalled the fdatasyncs of every
        journal on the disk. Safe to interrupt: the segment lies below the durable mark and
        has no live bytes, so no replay or read opens it, and the next run removes what is left.
        """
        path = segment_path(self._journal_dir, segment_id)
        gone = False
        while not gone:
            released, gone = await self._loop.run_in_executor(self._executor, _shrink_segment, path)
            await pacer.pace(released)

    async def _compact_segment(self, segment_id: int, pacer: _Pacer) -> int:
        """Copy the live entries of a sealed segment to the journal head; returns bytes copied.

        The live records are read where the index says they are, a chunk of
        ``COMPACTION_CHUNK_BYTES`` at a time in the maintenance thread, each checked like any
        read (CRC32C, type, ledger and entry): memory holds one chunk, not the segment (until
        session 12 a run read each segment whole, and a bookie's RSS jumped by ~65 MiB). The
        copies share the journal's group commits with the client adds, so each chunk's copies
        are durable before the next chunk is read, at the pace of ``pacer``
        (``compaction_max_bytes_per_second``): a commit carries at most one chunk of copies
        however much a run copies. A live record that fails its checks is counted, logged and
        left where it is (it stays indexed, so reads report it and the segment stays); the
        cure is re-replication from the other bookies."""
        copied = 0
        for ledger_id, locations in self._live_locations(segment_id):
            position = 0
            while position < len(locations):
                # A window, not the rest of the list: a segment can hold tens of thousands of
                # a ledger's entries, and this loop runs once per chunk.
                window = locations[position : position + COMPACTION_CHUNK_ENTRIES]
                read = await self._loop.run_in_executor(
                    self._executor,
                    functools.partial(
                        read_entries_from_segments,
                        self._journal_dir,
                        ledger_id,
                        window,
                        COMPACTION_CHUNK_BYTES,
                        False,
                    ),
                )
                if not read.entries and read.corruption is None:
                    break  # cannot happen: a read returns its first entry or the error
                chunk = list(zip(window, read.entries, strict=False))
                position += len(read.entries)
                if read.corruption is not None:
                    self._stats.corrupt_reads += 1
                    _log.error("compaction: %s", read.corruption)
                    position += 1  # left in place, see above
                chunk_bytes = await self._copy(ledger_id, chunk)
                await pacer.pace(chunk_bytes)
                copied += chunk_bytes
        return copied

    def _live_locations(self, segment_id: int) -> list[tuple[int, list[tuple[int, int]]]]:
        """(ledger id, [(entry id, location)] in segment order) of the entries indexed in
        ``segment_id``: a pass over the entries of the ledgers with bytes there."""
        live = []
        low, high = pack_location(segment_id, 0), pack_location(segment_id + 1, 0)
        for ledger in self._index.ledgers.values():
            if ledger.deleting or not ledger.bytes_by_segment.get(segment_id):
                continue
            locations = sorted(
                (
                    (entry_id, location)
                    for entry_id, location in ledger.entries.items()
                    if low <= location < high
                ),
                key=lambda item: item[1],
            )
            if locations:
                live.append((ledger.ledger_id, locations))
        return live

    async def _copy(self, ledger_id: int, chunk: list[tuple[tuple[int, int], LedgerEntry]]) -> int:
        """Append copies of ``chunk``'s entries that are still live where they were read, and
        wait until they are durable (and indexed); returns the bytes appended."""
        copies: list[asyncio.Future[None]] = []
        copied = 0
        for (entry_id, location), entry in chunk:
            journal = self._check_open()
            if not journal.has_room:
                await journal.wait_for_room()
            ledger = self._index.ledgers.get(ledger_id)
            # Re-checked after every wait: the index may have changed meanwhile. An entry with
            # an add queued but not yet durable is not copied: that add would then be followed
            # by the older copy in the journal.
            if (
                ledger is None
                or ledger.deleting
                or ledger.entries.get(entry_id) != location
                or entry_id in ledger.pending_adds
            ):
                continue
            record = journal.append_nowait(
                ENTRY,
                ledger_id,
                entry_id,
                entry.last_add_confirmed,
                entry.payload,
                is_copy=True,
            )
            assert record.future is not None
            copies.append(record.future)
            copied += record.length
        if copies:
            await asyncio.gather(*copies)
        return copied


def gc_delay_seconds(interval_ms: int, *, first: bool) -> float:
    """The wait before a garbage-collection run. Bookies started together (a cluster, a
    deployment) would otherwise collect at the same moments, and a run slows its bookie's
    adds: with different moments the ack quorum completes adds on the other bookies. The
    first run comes after a random 50-100 % of the interval, every later one after 90-110 %."""
    low, high = (0.5, 1.0) if first else (0.9, 1.1)
    return interval_ms / 1000 * random.uniform(low, high)


def release_bytes_per_second(doomed_bytes: int, configured: int, gc_interval_ms: int) -> float:
    """The pace of one run's segment release: ``segment_release_bytes_per_second``, or faster
    when that would not free ``doomed_bytes`` within half of ``gc_interval_ms`` — a paced
    release must never let the garbage grow faster than it is freed."""
    return max(float(configured), doomed_bytes / (gc_interval_ms / 1000 / 2))


class _Pacer:
    """Paces one garbage-collection run's copies (or releases) at ``bytes_per_second``."""

    def __init__(self, bytes_per_second: float) -> None:
        self._bytes_per_second = bytes_per_second
        self._started = time.monotonic()
        self._copied = 0

    async def pace(self, copied: int) -> None:
        """``copied`` more bytes were copied: sleep until the run's total is within the pace."""
        self._copied += copied
        delay = self._started + self._copied / self._bytes_per_second - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)


async def _cancel(task: asyncio.Task[None] | None) -> None:
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _shrink_segment(path: Path) -> tuple[int, bool]:
    """One step of ``_release_segment``: cut ``RELEASE_STEP_BYTES`` off the end of the file,
    or unlink it once that would leave nothing. Returns (bytes released, whether it is gone)."""
    try:
        size = path.stat().st_size
        if size > RELEASE_STEP_BYTES:
            os.truncate(path, size - RELEASE_STEP_BYTES)
            return RELEASE_STEP_BYTES, False
        path.unlink()
    except FileNotFoundError:
        return 0, True
    return size, True
