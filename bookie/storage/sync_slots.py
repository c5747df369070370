"""The journal's commit slots: each group commit is written and fdatasync'ed by one job.

``SyncSlots`` is the durability half of ``bookie.storage.journal.Journal`` (whose docstring
gives the design and its numbers). The journal hands it every batch it takes out of its buffer
(``commit``); a job in one of ``MAX_SYNCS_IN_FLIGHT`` slot threads writes the batch and then
runs an fdatasync, so a group commit costs one hand-off to a thread and one back to the event
loop (not one each for the write and the fdatasync). Up to ``MAX_SYNCS_IN_FLIGHT`` jobs overlap:
a batch taken while an fdatasync runs is written and synced by its own job rather than queueing
behind it. Writes stay in journal order: a job writes only after the job before it has
written (``_turn``), so when a job's fdatasync returns, every batch up to and including its
own is durable; those batches complete strictly in journal order, each handed to
``on_durable`` (which updates the index) before its records' futures resolve. An add is thus
acknowledged only after an fdatasync that started after its write returned, and never before
an earlier record (ARCHITECTURE.md's first invariant). With ``fsync=False`` a job only writes.

A failed write or fdatasync, or an ``on_durable`` that raises, is reported through
``on_failure``: the journal then fails for good and calls ``fail_all``; a job returning after
that changes nothing, and a job whose turn comes after a failed write does not write. The
segment file is touched by one slot thread at a time (the turn), never while the journal's own
thread preallocates (it does so only when no job is in flight), and a roll (a batch that
creates the next segment) starts only when no job is in flight, so a file is never closed
under an fdatasync.

The ``MAX_SYNCS_IN_FLIGHT`` slot threads take jobs from a queue and hand each outcome back with
``call_soon_threadsafe`` (an executor's futures cost a tenth of the bookie's CPU at 500
group commits/s).

Lifecycle: created by the journal, which starts its slot threads; ``wait_idle()`` waits for the
jobs in flight (the journal closes its file only after it); ``shutdown()`` stops the threads.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from bookie.errors import BookieError
from bookie.metrics import JOURNAL_SYNC_LATENCY_SECONDS
from bookie.storage.record import SEGMENT_HEADER_SIZE
from bookie.storage.segment_writer import Chunk, SegmentWriter
from strata.metrics import STAGE_JOURNAL_SYNC, STAGE_JOURNAL_WAIT, STAGE_JOURNAL_WRITE

if TYPE_CHECKING:
    from bookie.storage.journal import PendingRecord

_log = logging.getLogger(__name__)

# Overlapping group commits: on the reference machine two in flight cut the p99 of write →
# durable by a third at 2,000 batches/s (the disk's flushes overlap); a third did not help.
MAX_SYNCS_IN_FLIGHT = 2


def fail_records(records: list[PendingRecord], error: BookieError) -> None:
    for record in records:
        if record.future is not None and not record.future.done():
            record.future.set_exception(error)


class _WriteFailed(Exception):
    """A job's write failed (as opposed to its fdatasync)."""


class _Batch:
    __slots__ = ("number", "records")

    def __init__(self, number: int, records: list[PendingRecord]) -> None:
        self.number = number
        self.records = records


class SyncSlots:
    """Group commits in flight and those awaiting completion; see the module docstring."""

    def __init__(
        self,
        segments: SegmentWriter,
        first_segment_id: int,
        *,
        fsync: bool,
        on_durable: Callable[[list[PendingRecord]], None],
        on_failure: Callable[[str, list[PendingRecord]], None],
        on_sync_returned: Callable[[], None],
    ) -> None:
        self._segments = segments
        self._fsync = fsync
        self._on_durable = on_durable
        self._on_failure = on_failure
        self._on_sync_returned = on_sync_returned
        self._loop = asyncio.get_running_loop()
        # Batches taken but not yet durable, oldest first; the count of batches taken so far,
        # and the jobs in flight (queued for or running in a slot thread).
        self.unsynced: deque[_Batch] = deque()
        self.unsynced_records = 0
        self._taken_batches = 0
        self.in_flight = 0
        self._idle_waiters: list[asyncio.Future[None]] = []
        self._failed = False
        self.fsyncs = 0
        # Slot-thread side: the number of the batch whose turn it is to write; set once a
        # write failed (no later job writes after it).
        self._turn = threading.Condition()
        self._next_write = 1
        self._write_failed = False
        # The slot threads and their job queue (a SimpleQueue and call_soon_threadsafe: one
        # wake-up each way, none of an executor's futures); None stops a thread.
        self._jobs: queue.SimpleQueue[tuple[int, list[Chunk], list[PendingRecord]] | None] = (
            queue.SimpleQueue()
        )
        self._threads = [
            threading.Thread(
                target=self._run_slot, name=f"bookie-journal-slot-{index}", daemon=True
            )
            for index in range(MAX_SYNCS_IN_FLIGHT)
        ]
        for thread in self._threads:
            thread.start()
        # Position just after the last durable record.
        self.durable_segment_id = first_segment_id
        self.durable_offset = SEGMENT_HEADER_SIZE

    @property
    def batches_durable(self) -> int:
        return self._taken_batches - len(self.unsynced)

    @property
    def full(self) -> bool:
        """Every slot runs a job: a new batch waits in the journal's buffer."""
        return self.in_flight >= MAX_SYNCS_IN_FLIGHT

    @property
    def idle(self) -> bool:
        """No batch awaits durability and no job runs."""
        return not self.unsynced and not self.in_flight

    def commit(self, records: list[PendingRecord], chunks: list[Chunk]) -> None:
        """Start the job that writes ``chunks`` (holding ``records``) and fdatasyncs them.

        The journal calls it only when a slot is free (``not full``), and for a batch that
        rolls to a new segment only when no job is in flight."""
        self._taken_batches += 1
        number = self._taken_batches
        self.unsynced.append(_Batch(number, records))
        self.unsynced_records += len(records)
        self.in_flight += 1
        self._jobs.put((number, chunks, records))

    # -- in a slot thread ----------------------------------------------------------------------

    def _run_slot(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            number, chunks, records = job
            times: tuple[float, float] | None = None
            error: BaseException | None = None
            try:
                times = self._write_and_sync(number, chunks)
            except BaseException as exc:  # reported to the loop, which fails the journal
                error = exc
            try:
                self._loop.call_soon_threadsafe(self._on_job_done, number, records, times, error)
            except RuntimeError:  # the loop is closed: nobody waits any more
                return

    def _write_and_sync(self, number: int, chunks: list[Chunk]) -> tuple[float, float]:
        """Write batch ``number`` after the one before it, then fdatasync; returns when the
        write started and when it returned."""
        with self._turn:
            while self._next_write != number and not self._write_failed:
                self._turn.wait()
            try:
                if self._write_failed:
                    raise _WriteFailed("an earlier journal write failed")
                started = time.monotonic()
                self._segments.write_batch(chunks)
                written = time.monotonic()
                fd = self._segments.fd
            except _WriteFailed:
                raise
            except Exception as exc:
                self._write_failed = True
                raise _WriteFailed(str(exc)) from exc
            finally:
                self._next_write = number + 1
                self._turn.notify_all()
        if self._fsync:
            sync_started = time.monotonic()
            os.fdatasync(fd)
            JOURNAL_SYNC_LATENCY_SECONDS.observe(time.monotonic() - sync_started)
        return started, written

    # -- on the event loop ---------------------------------------------------------------------

    def _on_job_done(
        self,
        number: int,
        records: list[PendingRecord],
        times: tuple[float, float] | None,
        error: BaseException | None,
    ) -> None:
        self.in_flight -= 1
        if not self.in_flight:
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
        self._on_sync_returned()
        if self._failed:
            return
        if isinstance(error, _WriteFailed):
            self._on_failure(f"journal write failed: {error}", [])
            return
        if error is not None:
            # After a failed fdatasync the page cache state is unknown: fail for good.
            self._on_failure(f"journal fdatasync failed: {error}", [])
            return
        assert times is not None
        started, written = times
        now = time.monotonic()
        if records:
            STAGE_JOURNAL_WAIT.observe(started - records[0].queued_at)
        STAGE_JOURNAL_WRITE.observe(written - started)
        STAGE_JOURNAL_SYNC.observe(now - written)
        if self._fsync:
            self.fsyncs += 1
        self._complete_through(number)

    def _complete_through(self, number: int) -> None:
        """Complete the batches up to batch ``number``, oldest first (stops if the index
        refused one: the journal has then failed)."""
        unsynced = self.unsynced
        while unsynced and unsynced[0].number <= number:
            records = unsynced.popleft().records
            self.unsynced_records -= len(records)
            if not records:
                continue
            last = records[-1]
            self.durable_segment_id = last.segment_id
            self.durable_offset = last.offset + last.length
            try:
                self._on_durable(records)
            except Exception as exc:  # a bug: the index no longer matches the journal
                _log.exception("applying a durable journal batch failed")
                self._on_failure(f"index update failed: {exc!r}", records)
                return
            for record in records:
                future = record.future
                if future is not None and not future.done():
                    future.set_result(None)

    def fail_all(self, error: BookieError) -> None:
        """Fail every batch not yet durable; jobs returning later complete nothing."""
        self._failed = True
        for batch in self.unsynced:
            fail_records(batch.records, error)
        self.unsynced.clear()
        self.unsynced_records = 0

    async def wait_idle(self) -> None:
        """Wait until no job runs (their outcome no longer matters)."""
        while self.in_flight:
            waiter = self._loop.create_future()
            self._idle_waiters.append(waiter)
            await waiter

    def shutdown(self) -> None:
        """Stop the slot threads (after ``wait_idle``: they are idle, so this is quick)."""
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join()
