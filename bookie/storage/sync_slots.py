"""The journal's fdatasync slots: written batches wait here until an fdatasync covers them.

``SyncSlots`` is the durability half of ``bookie.storage.journal.Journal`` (whose docstring
gives the design and its numbers). The journal's writer hands it every batch it has written
(``written``); it starts an fdatasync for every batch written so far whenever one of its
``MAX_SYNCS_IN_FLIGHT`` slots is free, and when an fdatasync returns, every batch written before
it *started* is durable: those batches complete strictly in journal order, each handed to
``on_durable`` (which updates the index) before its records' futures resolve. An add is thus
acknowledged only after an fdatasync that started after its write returned, and never before
an earlier record (ARCHITECTURE.md's first invariant). With ``fsync=False`` a batch completes
as soon as it is written.

A failed fdatasync, or an ``on_durable`` that raises, is reported through ``on_failure``: the
journal then fails for good and calls ``fail_all``; an fdatasync returning after that changes
nothing. Every method runs on the event loop; the fdatasyncs run in an executor of
``MAX_SYNCS_IN_FLIGHT`` threads, on the segment ``SegmentWriter.fd`` held when each started (the
journal never rolls to a new segment while one is in flight).

Lifecycle: created by the journal; ``wait_idle()`` waits for the fdatasyncs in flight (the
journal closes its file only after it); ``shutdown()`` stops the executor.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from bookie.errors import BookieError
from bookie.metrics import timed_sync
from bookie.storage.record import SEGMENT_HEADER_SIZE
from bookie.storage.segment_writer import SegmentWriter
from strata.metrics import STAGE_JOURNAL_SYNC

if TYPE_CHECKING:
    from bookie.storage.journal import PendingRecord

_log = logging.getLogger(__name__)

# Overlapping fdatasyncs: on the reference machine two in flight cut the p99 of write → durable
# by a third at 2,000 batches/s (the disk's flushes overlap); a third did not help further.
MAX_SYNCS_IN_FLIGHT = 2


def fail_records(records: list[PendingRecord], error: BookieError) -> None:
    for record in records:
        if record.future is not None and not record.future.done():
            record.future.set_exception(error)


class SyncSlots:
    """Written batches awaiting durability and the fdatasyncs for them; see the module
    docstring."""

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
        self._executor = ThreadPoolExecutor(
            max_workers=MAX_SYNCS_IN_FLIGHT, thread_name_prefix="bookie-journal-sync"
        )
        # Batches written but not yet durable, oldest first; the count of batches written so
        # far, the count the newest fdatasync started for, and the fdatasyncs in flight.
        self.unsynced: deque[list[PendingRecord]] = deque()
        self.unsynced_records = 0
        self._written_batches = 0
        self._sync_started_for = 0
        self.in_flight: set[asyncio.Future[None]] = set()
        self._failed = False
        self.fsyncs = 0
        # Position just after the last durable record.
        self.durable_segment_id = first_segment_id
        self.durable_offset = SEGMENT_HEADER_SIZE

    @property
    def batches_durable(self) -> int:
        return self._written_batches - len(self.unsynced)

    @property
    def full(self) -> bool:
        """Every slot runs an fdatasync: a new batch waits in the journal's buffer."""
        return len(self.in_flight) >= MAX_SYNCS_IN_FLIGHT

    @property
    def idle(self) -> bool:
        """No batch awaits durability and no fdatasync runs."""
        return not self.unsynced and not self.in_flight

    def written(self, records: list[PendingRecord]) -> bool:
        """A batch was written; False when completing it failed the journal (no fsync)."""
        self.unsynced.append(records)
        self.unsynced_records += len(records)
        self._written_batches += 1
        if self._fsync:
            self._start_sync()
            return True
        return self._complete_through(self._written_batches)

    def _start_sync(self) -> None:
        """Start an fdatasync for every batch written so far, unless enough are in flight."""
        if len(self.in_flight) >= MAX_SYNCS_IN_FLIGHT:
            return
        if self._sync_started_for >= self._written_batches:
            return
        target = self._sync_started_for = self._written_batches
        # The write executor changes the file only at a roll, and rolls wait for no syncs.
        sync = self._loop.run_in_executor(
            self._executor, timed_sync, os.fdatasync, self._segments.fd
        )
        self.in_flight.add(sync)
        sync.add_done_callback(functools.partial(self._on_synced, target))

    def _on_synced(self, target: int, sync: asyncio.Future[None]) -> None:
        self.in_flight.discard(sync)
        self._on_sync_returned()
        if self._failed:
            return
        error = sync.exception()
        if error is not None:
            # After a failed fdatasync the page cache state is unknown: fail for good.
            self._on_failure(f"journal fdatasync failed: {error}", [])
            return
        self.fsyncs += 1
        if self._complete_through(target):
            self._start_sync()

    def _complete_through(self, target: int) -> bool:
        """Complete the batches up to written-batch number ``target``, oldest first.

        False when the index refused one (the journal has then failed)."""
        while self.batches_durable < target:
            records = self.unsynced.popleft()
            self.unsynced_records -= len(records)
            last = records[-1]
            if last.written_at:
                STAGE_JOURNAL_SYNC.observe(time.monotonic() - last.written_at)
            self.durable_segment_id = last.segment_id
            self.durable_offset = last.offset + last.length
            try:
                self._on_durable(records)
            except Exception as exc:  # a bug: the index no longer matches the journal
                _log.exception("applying a durable journal batch failed")
                self._on_failure(f"index update failed: {exc!r}", records)
                return False
            for record in records:
                future = record.future
                if future is not None and not future.done():
                    future.set_result(None)
        return True

    def fail_all(self, error: BookieError) -> None:
        """Fail every batch not yet durable; fdatasyncs returning later complete nothing."""
        self._failed = True
        for records in self.unsynced:
            fail_records(records, error)
        self.unsynced.clear()
        self.unsynced_records = 0

    async def wait_idle(self) -> None:
        """Wait until no fdatasync runs (their outcome no longer matters)."""
        await asyncio.gather(*self.in_flight, return_exceptions=True)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True)
