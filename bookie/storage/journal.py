"""The journal: segmented append-only files written with group commit.

The journal is also the entry log: an entry is written once, here, and read back from its
segment through the index.

Group commit. ``append_nowait`` encodes a record, assigns its position (segment, offset) at once
and queues it in an in-memory buffer. One writer task, owned by the journal, loops: whenever the
buffer is non-empty and no write is in flight it swaps the buffer out and writes it with
``os.writev`` in a dedicated one-thread executor, then starts an ``fdatasync`` in a second
executor. Up to ``MAX_SYNCS_IN_FLIGHT`` fdatasyncs overlap: a batch written while one runs starts
its own rather than queueing behind it; when all are busy, new adds gather in the buffer (so
at most ``MAX_SYNCS_IN_FLIGHT`` written batches await durability) and share the next write and
fdatasync. An fdatasync that returns makes durable every batch written before it started, so
batches complete strictly in journal order: each is handed to ``on_durable`` (which
updates the index) and its records' futures resolve. An add never waits for a timer: with an
idle disk it is written on the next loop iteration. ``group_commit_max_bytes`` bounds the
buffer; ``append`` waits for room (backpressure). A segment roll waits until no fdatasync is in
flight, so a file is never closed under one.

Segments roll when the next record would pass ``journal_segment_size_bytes``. The writer fsyncs
the old segment before it creates the new one, so only the newest segment can have a torn tail
after a crash. A new segment's directory entry is fsynced before its batch is acknowledged.

Preallocation. When the writer is idle and fewer than ``preallocation_bytes`` of zeros lie
ahead of the data in the current segment, it zero-fills (and fdatasyncs) the next
``preallocation_bytes``, as BookKeeper preallocates its journal files: a group commit that
overwrites those zeros neither grows the file nor allocates blocks, so its fdatasync skips the
file system's metadata commit (on this project's reference machine that cut the fdatasync p99
from ~1.1 to ~0.65 ms). Only idle time is used: under sustained load the writer just appends.
A segment is cut back to its data when it is sealed or the journal closes; after a crash the
zeros are the newest segment's tail, which replay truncates (``recovery``).

Lifecycle: ``await Journal.start(...)`` creates the first segment of this run and starts the
writer; ``drain()`` waits for everything queued; ``close()`` stops the writer and closes the
file. When a write or fsync fails the journal fails for good (after a failed fsync the page
cache state is unknown): every queued and later record gets ``BookieIOError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bookie.errors import BookieError, BookieIOError, BookieUnavailableError
from bookie.storage.checkpoint import fsync_directory
from bookie.storage.record import (
    HEADER_SIZE,
    SEGMENT_HEADER_SIZE,
    encode_record_header,
    encode_segment_header,
)

_log = logging.getLogger(__name__)

SEGMENT_SUFFIX = ".seg"
# os.writev takes at most IOV_MAX (1024 on Linux) buffers per call.
_MAX_WRITEV_BUFFERS = 1024
# Overlapping fdatasyncs: on the reference machine two in flight cut the p99 of write → durable
# by a third at 2,000 batches/s (the disk's flushes overlap); a third did not help further.
MAX_SYNCS_IN_FLIGHT = 2


def segment_path(journal_dir: Path, segment_id: int) -> Path:
    return journal_dir / f"{segment_id:020d}{SEGMENT_SUFFIX}"


def list_segments(journal_dir: Path) -> list[int]:
    """Ids of the segment files in ``journal_dir``, ascending."""
    ids = []
    for name in os.listdir(journal_dir):
        if name.endswith(SEGMENT_SUFFIX) and name[: -len(SEGMENT_SUFFIX)].isdigit():
            ids.append(int(name[: -len(SEGMENT_SUFFIX)]))
    return sorted(ids)


class PendingRecord:
    """A record queued in the journal: what ``on_durable`` needs to apply it to the index."""

    __slots__ = (
        "entry_id",
        "future",
        "is_copy",
        "last_add_confirmed",
        "ledger_id",
        "length",
        "offset",
        "payload",
        "record_type",
        "segment_id",
    )

    def __init__(
        self,
        record_type: int,
        ledger_id: int,
        entry_id: int,
        last_add_confirmed: int,
        payload: bytes,
        segment_id: int,
        offset: int,
        future: asyncio.Future[None] | None,
        is_copy: bool,
    ) -> None:
        self.record_type = record_type
        self.ledger_id = ledger_id
        self.entry_id = entry_id
        self.last_add_confirmed = last_add_confirmed
        self.payload = payload
        self.segment_id = segment_id
        self.offset = offset
        self.length = HEADER_SIZE + len(payload)
        self.future = future
        # A compaction copy of an existing record (not a client add).
        self.is_copy = is_copy


class _Chunk:
    """Buffers bound for one segment; ``creates`` when the writer must create that segment."""

    __slots__ = ("buffers", "creates", "segment_id")

    def __init__(self, segment_id: int, creates: bool) -> None:
        self.segment_id = segment_id
        self.creates = creates
        self.buffers: list[bytes] = []


class Journal:
    """Group-committed, segmented write-ahead log; see the module docstring for the design."""

    def __init__(
        self,
        journal_dir: Path,
        first_segment_id: int,
        *,
        segment_size_bytes: int,
        group_commit_max_bytes: int,
        fsync: bool,
        on_durable: Callable[[list[PendingRecord]], None],
        preallocation_bytes: int = 0,
    ) -> None:
        self._dir = journal_dir
        self._segment_size_bytes = segment_size_bytes
        self._preallocation_bytes = preallocation_bytes
        self._group_commit_max_bytes = group_commit_max_bytes
        self._fsync = fsync
        self._on_durable = on_durable
        self._loop = asyncio.get_running_loop()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bookie-journal")
        self._sync_executor = ThreadPoolExecutor(
            max_workers=MAX_SYNCS_IN_FLIGHT, thread_name_prefix="bookie-journal-sync"
        )
        # Event-loop side: the buffer of the next batch and the position of the next record.
        self._records: list[PendingRecord] = []
        self._chunks: list[_Chunk] = []
        self._buffered_bytes = 0
        self._segment_id = first_segment_id
        self._segment_offset = SEGMENT_HEADER_SIZE
        self._writing = False
        # Batches written but not yet durable, oldest first; the count of batches written so
        # far, the count the newest fdatasync started for, and the fdatasyncs in flight.
        self._unsynced: deque[list[PendingRecord]] = deque()
        self._written_batches = 0
        self._sync_started_for = 0
        self._syncs: set[asyncio.Future[None]] = set()
        self._closing = False
        self._closed: asyncio.Future[None] | None = None  # done once close() has finished
        self._failure: BookieError | None = None
        self._failed = asyncio.Event()
        self._writer_wakeup: asyncio.Future[None] | None = None
        self._space_waiters: list[asyncio.Future[None]] = []
        self._idle_waiters: list[asyncio.Future[None]] = []
        self._writer: asyncio.Task[None] | None = None
        # Writer-thread side: the open segment file, the end of its data, and the end of the
        # zeros written (and synced) ahead of the data; read by the event loop only between
        # two executor jobs.
        self._fd = -1
        self._fd_segment_id = -1
        self._fd_data_end = 0
        self._fd_zeroed_end = 0
        self._preallocation_failed = False
        # Statistics.
        self.fsyncs = 0
        self.bytes_written = 0
        self.bytes_preallocated = 0
        # Position just after the last durable record.
        self.durable_segment_id = first_segment_id
        self.durable_offset = SEGMENT_HEADER_SIZE

    @classmethod
    async def start(
        cls,
        journal_dir: Path,
        first_segment_id: int,
        *,
        segment_size_bytes: int,
        group_commit_max_bytes: int,
        fsync: bool,
        on_durable: Callable[[list[PendingRecord]], None],
        preallocation_bytes: int = 0,
    ) -> Journal:
        """Create segment ``first_segment_id`` (durably) and start the writer task."""
        journal = cls(
            journal_dir,
            first_segment_id,
            segment_size_bytes=segment_size_bytes,
            group_commit_max_bytes=group_commit_max_bytes,
            fsync=fsync,
            on_durable=on_durable,
            preallocation_bytes=preallocation_bytes,
        )
        try:
            await journal._loop.run_in_executor(
                journal._executor, journal._create_segment, first_segment_id, True
            )
        except BaseException:
            journal._executor.shutdown(wait=True)
            journal._sync_executor.shutdown(wait=True)
            raise
        journal._writer = asyncio.create_task(journal._run(), name="bookie-journal-writer")
        return journal

    # -- appending (event loop) ------------------------------------------------------------

    @property
    def segment_id(self) -> int:
        """The segment the next record goes to; every lower segment is sealed (or will be, once
        the batch in flight is durable)."""
        return self._segment_id

    @property
    def batches_written(self) -> int:
        """Batches written and durable so far."""
        return self._written_batches - len(self._unsynced)

    @property
    def has_room(self) -> bool:
        return self._buffered_bytes < self._group_commit_max_bytes

    async def wait_failed(self) -> BookieError:
        """Wait until the journal fails for good; returns the error it fails writes with."""
        await self._failed.wait()
        assert self._failure is not None
        return self._failure

    def check_usable(self) -> None:
        if self._failure is not None:
            raise self._failure
        if self._closing:
            raise BookieUnavailableError("the bookie is shutting down")

    async def wait_for_room(self) -> None:
        """Wait until the buffer has room (the writer swapped it out) or the journal failed."""
        while not self.has_room:
            self.check_usable()
            waiter = self._loop.create_future()
            self._space_waiters.append(waiter)
            await waiter
        self.check_usable()

    def append_nowait(
        self,
        record_type: int,
        ledger_id: int,
        entry_id: int,
        last_add_confirmed: int,
        payload: bytes,
        *,
        want_future: bool = True,
        is_copy: bool = False,
    ) -> PendingRecord:
        """Queue one record; its ``future`` completes once it is durable and applied.

        Never waits: callers that must respect the buffer bound call ``wait_for_room`` first.
        """
        self.check_usable()
        header = encode_record_header(record_type, ledger_id, entry_id, last_add_confirmed, payload)
        length = len(header) + len(payload)
        chunks = self._chunks
        if (
            self._segment_offset > SEGMENT_HEADER_SIZE
            and self._segment_offset + length > self._segment_size_bytes
        ):
            # Roll: the segment header opens the new file's first chunk.
            self._segment_id += 1
            self._segment_offset = SEGMENT_HEADER_SIZE
            chunk = _Chunk(self._segment_id, creates=True)
            chunk.buffers.append(encode_segment_header(self._segment_id))
            chunks.append(chunk)
        elif not chunks or chunks[-1].segment_id != self._segment_id:
            chunks.append(_Chunk(self._segment_id, creates=False))
        buffers = chunks[-1].buffers
        buffers.append(header)
        if payload:
            buffers.append(payload)
        future = self._loop.create_future() if want_future else None
        record = PendingRecord(
            record_type,
            ledger_id,
            entry_id,
            last_add_confirmed,
            payload,
            self._segment_id,
            self._segment_offset,
            future,
            is_copy,
        )
        self._records.append(record)
        self._segment_offset += length
        self._buffered_bytes += length
        wakeup = self._writer_wakeup
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(None)
        return record

    async def drain(self) -> None:
        """Wait until every record queued so far is durable (or the journal failed)."""
        if self._quiet():
            return
        waiter = self._loop.create_future()
        self._idle_waiters.append(waiter)
        await waiter

    async def close(self) -> None:
        """Write what is queued, stop the writer and close the segment file.

        New appends are refused from now on (BookieUnavailableError). Closing twice is a no-op.
        """
        if self._closing:
            if self._closed is not None:
                await asyncio.shield(self._closed)
            return
        self._closed = self._loop.create_future()
        try:
            await self._close()
        finally:
            self._closed.set_result(None)

    async def _close(self) -> None:
        self._closing = True
        wakeup = self._writer_wakeup
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(None)
        if self._writer is not None:
            # The writer finishes its batches in flight, then sees _closing and returns.
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
        # After a failure the writer returns at once: the file stays open until every
        # fdatasync on it has returned.
        await asyncio.gather(*self._syncs, return_exceptions=True)
        self._fail_waiting(BookieUnavailableError("the bookie is shutting down"))
        await self._loop.run_in_executor(self._executor, self._close_file)
        self._executor.shutdown(wait=True)
        self._sync_executor.shutdown(wait=True)

    # -- the writer task ---------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            if (
                not self._records
                or len(self._syncs) >= MAX_SYNCS_IN_FLIGHT
                or (self._syncs and self._rolls_next())
            ):
                if self._quiet():
                    for waiter in self._idle_waiters:
                        if not waiter.done():
                            waiter.set_result(None)
                    self._idle_waiters.clear()
                    if self._closing:
                        return
                    if self._wants_preallocation():
                        try:
                            await self._loop.run_in_executor(self._executor, self._preallocate)
                        except OSError as exc:
                            self._fail_writes(f"journal preallocation failed: {exc}", [])
                            return
                        continue
                # Woken by an append or a finished fdatasync.
                self._writer_wakeup = self._loop.create_future()
                await self._writer_wakeup
                self._writer_wakeup = None
                if self._failure is not None:
                    return
                continue
            records, chunks = self._records, self._chunks
            self._records, self._chunks, self._buffered_bytes = [], [], 0
            for waiter in self._space_waiters:
                if not waiter.done():
                    waiter.set_result(None)
            self._space_waiters.clear()
            self._writing = True
            try:
                await self._loop.run_in_executor(self._executor, self._write_batch, chunks)
            except OSError as exc:
                self._fail_writes(f"journal write failed: {exc}", records)
                return
            finally:
                self._writing = False
            if self._failure is not None:  # an fdatasync failed meanwhile
                self._fail_records(records, self._failure)
                return
            self._unsynced.append(records)
            self._written_batches += 1
            if self._fsync:
                self._start_sync()
            elif not self._complete_through(self._written_batches):
                return

    def _quiet(self) -> bool:
        """Nothing queued, being written, or written and not yet durable."""
        return not self._records and not self._writing and not self._unsynced and not self._syncs

    def _rolls_next(self) -> bool:
        return any(chunk.creates for chunk in self._chunks)

    def _wake_writer(self) -> None:
        wakeup = self._writer_wakeup
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(None)

    def _start_sync(self) -> None:
        """Start an fdatasync for every batch written so far, unless enough are in flight."""
        if len(self._syncs) >= MAX_SYNCS_IN_FLIGHT:
            return
        if self._sync_started_for >= self._written_batches:
            return
        target = self._sync_started_for = self._written_batches
        # The write executor changes the file only at a roll, and rolls wait for no syncs.
        sync = self._loop.run_in_executor(self._sync_executor, os.fdatasync, self._fd)
        self._syncs.add(sync)
        sync.add_done_callback(functools.partial(self._on_synced, target))

    def _on_synced(self, target: int, sync: asyncio.Future[None]) -> None:
        self._syncs.discard(sync)
        self._wake_writer()
        if self._failure is not None:
            return
        error = sync.exception()
        if error is not None:
            # After a failed fdatasync the page cache state is unknown: fail for good.
            self._fail_writes(f"journal fdatasync failed: {error}", [])
            return
        self.fsyncs += 1
        if self._complete_through(target):
            self._start_sync()

    def _complete_through(self, target: int) -> bool:
        """Complete the batches up to written-batch number ``target``, oldest first.

        False when the index refused one (the journal has then failed)."""
        while self.batches_written < target:
            records = self._unsynced.popleft()
            last = records[-1]
            self.durable_segment_id = last.segment_id
            self.durable_offset = last.offset + last.length
            try:
                self._on_durable(records)
            except Exception as exc:  # a bug: the index no longer matches the journal
                _log.exception("applying a durable journal batch failed")
                self._fail_writes(f"index update failed: {exc!r}", records)
                return False
            for record in records:
                future = record.future
                if future is not None and not future.done():
                    future.set_result(None)
        return True

    def _fail_records(self, records: list[PendingRecord], error: BookieError) -> None:
        for record in records:
            if record.future is not None and not record.future.done():
                record.future.set_exception(error)

    def _fail_writes(self, reason: str, records: list[PendingRecord]) -> None:
        """The disk failed: fail ``records`` (taken from the buffer) and everything not yet
        durable; the journal takes no more."""
        _log.error("%s; the bookie stops accepting writes", reason)
        self._failure = BookieIOError(reason)
        self._failed.set()
        self._fail_records(records, self._failure)
        self._fail_waiting(self._failure)
        self._wake_writer()

    def _wants_preallocation(self) -> bool:
        """Idle, and fewer than ``preallocation_bytes`` of zeros ahead of the data?"""
        return (
            self._fsync
            and self._preallocation_bytes > 0
            and not self._preallocation_failed
            and self._fd_zeroed_end - self._fd_data_end < self._preallocation_bytes
            and max(self._fd_zeroed_end, self._fd_data_end) < self._segment_size_bytes
        )

    def _fail_waiting(self, error: BookieError) -> None:
        """Fail everything still queued and wake every waiter; the journal takes no more."""
        if self._failure is None and not self._closing:
            self._failure = error
            self._failed.set()
        for records in self._unsynced:
            self._fail_records(records, error)
        self._unsynced.clear()
        self._fail_records(self._records, error)
        self._records, self._chunks, self._buffered_bytes = [], [], 0
        for waiter in (*self._space_waiters, *self._idle_waiters):
            if not waiter.done():
                waiter.set_result(None)
        self._space_waiters.clear()
        self._idle_waiters.clear()

    # -- the writer thread -------------------------------------------------------------------

    def _create_segment(self, segment_id: int, write_header: bool) -> None:
        if self._fd >= 0:
            self._cut_preallocation()
            if self._fsync:
                os.fdatasync(self._fd)
                self.fsyncs += 1
            os.close(self._fd)
            self._fd = -1
        fd = os.open(
            segment_path(self._dir, segment_id), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644
        )
        self._fd, self._fd_segment_id = fd, segment_id
        self._fd_data_end = self._fd_zeroed_end = 0
        self._preallocation_failed = False
        if write_header:
            self._fd_data_end = _write_all(fd, [encode_segment_header(segment_id)])
            if self._fsync:
                os.fdatasync(fd)
                fsync_directory(self._dir)

    def _preallocate(self) -> None:
        """Zero-fill and fdatasync the next ``preallocation_bytes`` after the data."""
        start = max(self._fd_zeroed_end, self._fd_data_end)
        end = min(start + self._preallocation_bytes, self._segment_size_bytes)
        zeros = bytes(end - start)
        try:
            written = os.pwrite(self._fd, zeros, start)
            while written < len(zeros):
                written += os.pwrite(self._fd, memoryview(zeros)[written:], start + written)
        except OSError as exc:
            # Out of space, say: the segment simply grows by appending from here on. Whatever
            # part of the zeros did land is cut off when the segment is sealed.
            _log.warning("journal preallocation stopped for this segment: %s", exc)
            self._preallocation_failed = True
            self._fd_zeroed_end = max(self._fd_zeroed_end, end)
            return
        # A failing fdatasync raises: after it the page cache is in an unknown state.
        os.fdatasync(self._fd)
        self.fsyncs += 1
        self.bytes_preallocated += end - start
        self._fd_zeroed_end = end

    def _cut_preallocation(self) -> None:
        """Cut the zeros after the data off the open segment (before it is sealed)."""
        if self._fd_zeroed_end > self._fd_data_end:
            os.ftruncate(self._fd, self._fd_data_end)
            self._fd_zeroed_end = self._fd_data_end

    def _write_batch(self, chunks: list[_Chunk]) -> None:
        created = False
        for chunk in chunks:
            if chunk.segment_id != self._fd_segment_id:
                assert chunk.creates, "the journal only ever appends to its newest segment"
                # Fsync the old segment before the new one exists: a torn tail can then only
                # be in the newest segment.
                self._create_segment(chunk.segment_id, write_header=False)
                created = True
            written = _write_all(self._fd, chunk.buffers)
            self.bytes_written += written
            self._fd_data_end += written
        if self._fsync and created:
            # The new segment's directory entry is durable before any of its batches are
            # acknowledged; their data is the fdatasync's that follows this write.
            fsync_directory(self._dir)

    def _close_file(self) -> None:
        if self._fd >= 0:
            if self._failure is None:
                self._cut_preallocation()
            if self._fsync and self._failure is None:
                os.fdatasync(self._fd)
            os.close(self._fd)
            self._fd = -1


def _write_all(fd: int, buffers: list[bytes]) -> int:
    """Write every buffer, in order; returns the byte count. Handles short writes."""
    total = 0
    for start in range(0, len(buffers), _MAX_WRITEV_BUFFERS):
        group = buffers[start : start + _MAX_WRITEV_BUFFERS]
        expected = sum(len(buffer) for buffer in group)
        written = os.writev(fd, group)
        if written < expected:
            # A short write (rare: signals, full disk): finish it buffer by buffer.
            rest = memoryview(b"".join(group))[written:]
            while rest:
                rest = rest[os.write(fd, rest) :]
        total += expected
    return total
