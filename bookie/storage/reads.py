"""The bookie's read path: entry ranges (tail cache first, then the segments) and LAC long polls.

``Reads.read_entries`` serves the run of entries the tail cache holds without leaving the event
loop, then reads the rest from the journal segments in the read thread pool
(``bookie.storage.reader``, which checks every record's CRC32C, type and ids before a byte is
returned). Garbage collection may remove a segment between the index lookup and the read; the
read then looks the locations up again once (they point at the compacted copies by then).

``Reads.read_last_add_confirmed`` answers a ledger's tail at once or, as a long poll, parks a
waiter on the ledger that ``bookie.storage.admission`` wakes when a durable entry raises the
LAC (a delete fails it with LedgerDeletedError).

Lifecycle: one per open bookie, on its event loop; it owns the read thread pool
(``read_threads`` threads). ``close()`` fails the long polls still waiting with
BookieUnavailableError and shuts the pool down after the reads in it returned.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bookie.api import LedgerEntry, LedgerState
from bookie.errors import (
    BadRequestError,
    BookieIOError,
    BookieUnavailableError,
    NoSuchEntryError,
    SegmentGoneError,
)
from bookie.storage.config import BookieStorageConfig
from bookie.storage.index import Ledger, LedgerIndex
from bookie.storage.reader import DiskRead, read_entries_from_segments
from bookie.storage.stats import BookieStats

_log = logging.getLogger(__name__)


class Reads:
    """Entry reads and LAC long polls of one bookie; see the module docstring."""

    def __init__(
        self,
        config: BookieStorageConfig,
        index: LedgerIndex,
        journal_dir: Path,
        stats: BookieStats,
    ) -> None:
        self._config = config
        self._index = index
        self._journal_dir = journal_dir
        self._stats = stats
        self._loop = asyncio.get_running_loop()
        self._executor = ThreadPoolExecutor(
            max_workers=config.read_threads, thread_name_prefix="bookie-read"
        )

    def close(self) -> None:
        unavailable = BookieUnavailableError("the bookie is shutting down")
        for ledger in self._index.ledgers.values():
            ledger.fail_waiters(unavailable)
        self._executor.shutdown(wait=True)

    async def read_entries(
        self, ledger_id: int, first_entry_id: int, last_entry_id: int, max_bytes: int
    ) -> list[LedgerEntry]:
        """See ``Bookie.read_entries``."""
        if first_entry_id < 0 or last_entry_id < first_entry_id:
            raise BadRequestError(f"invalid entry range {first_entry_id}..{last_entry_id}")
        if max_bytes < 0:
            raise BadRequestError(f"invalid max_bytes {max_bytes}")
        limit = self._config.max_read_bytes
        budget = min(max_bytes, limit) if max_bytes > 0 else limit
        last = min(last_entry_id, first_entry_id + self._config.max_read_entries - 1)
        for attempt in (1, 2):
            ledger = self._index.ledger_for_read(ledger_id)
            result, total, full = _read_cached(ledger, first_entry_id, last, budget)
            if full:
                return result
            locations = _locations(ledger, first_entry_id + len(result), last)
            if not locations:
                if not result:
                    raise NoSuchEntryError(
                        f"ledger {ledger_id} entry {first_entry_id} is not stored on this bookie"
                    )
                return result
            disk = await self._read_disk(
                ledger_id, locations, budget - total, bool(result), last_attempt=attempt == 2
            )
            if disk is None:
                continue  # compaction moved the entries: look them up again
            result.extend(disk.entries)
            if disk.corruption is not None:
                self._stats.corrupt_reads += 1
                _log.error("corrupt record: %s", disk.corruption)
                if not result:
                    raise disk.corruption
            return result
        raise AssertionError("unreachable")  # pragma: no cover

    async def _read_disk(
        self,
        ledger_id: int,
        locations: list[tuple[int, int]],
        budget_bytes: int,
        have_entries: bool,
        *,
        last_attempt: bool,
    ) -> DiskRead | None:
        """Read ``locations`` in the read pool; None when a segment is gone (look again)."""
        try:
            return await self._loop.run_in_executor(
                self._executor,
                read_entries_from_segments,
                self._journal_dir,
                ledger_id,
                locations,
                budget_bytes,
                have_entries,
            )
        except SegmentGoneError:
            if last_attempt:
                raise BookieIOError(
                    f"ledger {ledger_id}: journal segment removed during the read"
                ) from None
            return None
        except OSError as exc:
            raise BookieIOError(f"reading ledger {ledger_id} failed: {exc}") from exc

    async def read_last_add_confirmed(
        self, ledger_id: int, previous_last_add_confirmed: int, timeout_ms: int
    ) -> LedgerState:
        """See ``Bookie.read_last_add_confirmed``."""
        if timeout_ms < 0:
            raise BadRequestError(f"invalid timeout_ms {timeout_ms}")
        ledger = self._index.ledger_for_read(ledger_id)
        if (
            timeout_ms == 0
            or ledger.last_add_confirmed > previous_last_add_confirmed
            or len(ledger.waiters) >= self._config.max_lac_waiters_per_ledger
        ):
            return ledger.tail_state()
        waiter: asyncio.Future[None] = self._loop.create_future()
        item = (previous_last_add_confirmed, waiter)
        ledger.waiters.append(item)
        try:
            async with asyncio.timeout(min(timeout_ms, self._config.max_long_poll_ms) / 1000):
                await waiter
        except TimeoutError:
            pass
        finally:
            with contextlib.suppress(ValueError):
                ledger.waiters.remove(item)
        return self._index.ledger_for_read(ledger_id).tail_state()


def _read_cached(
    ledger: Ledger, first_entry_id: int, last_entry_id: int, budget_bytes: int
) -> tuple[list[LedgerEntry], int, bool]:
    """The entries from ``first_entry_id`` on that the tail cache holds, in a row, within the
    budget (at least one); their payload bytes; and whether the budget ends the read."""
    entries = ledger.entries
    cached = ledger.cached
    result: list[LedgerEntry] = []
    total = 0
    entry_id = first_entry_id
    while entry_id <= last_entry_id:
        item = cached.get(entry_id)
        if item is None or entry_id not in entries:
            break
        size = len(item[1])
        if result and total + size > budget_bytes:
            return result, total, True
        result.append(LedgerEntry(entry_id, item[0], item[1]))
        total += size
        entry_id += 1
        if total >= budget_bytes:
            return result, total, True
    return result, total, False


def _locations(ledger: Ledger, first_entry_id: int, last_entry_id: int) -> list[tuple[int, int]]:
    """(entry id, location) of the indexed entries from ``first_entry_id`` on, in a row."""
    entries = ledger.entries
    locations: list[tuple[int, int]] = []
    entry_id = first_entry_id
    while entry_id <= last_entry_id:
        location = entries.get(entry_id)
        if location is None:
            break
        locations.append((entry_id, location))
        entry_id += 1
    return locations
