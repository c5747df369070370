"""The bookie storage engine: a façade over the parts that each own one concern.

``Bookie`` is what ``bookie.api.BookieClient`` implementations call (``LocalBookieClient``
in-process, ``bookie.server.BookieServicer`` over gRPC). Its parts, each in its own module:

* ``bookie.storage.admission.Admission`` — the add path into the ``Journal`` (group commit,
  ``bookie.storage.journal``), backpressure, and the application of every durable batch to the
  index (tail cache, LAC long polls, checkpoint mark);
* ``bookie.storage.reads.Reads`` — entry reads (tail cache, then segments in the read thread
  pool) and LAC long polls;
* ``bookie.storage.fencing.Fencing`` — durable fence and delete;
* ``bookie.storage.maintenance`` — ``Checkpointer`` (the index checkpoint and its loop) and
  ``GarbageCollector`` (its loop, compaction, segment removal);
* ``bookie.storage.recovery`` — what happens at open (checkpoint + journal replay).

They share the in-memory index (``bookie.storage.index``) and the counters (``BookieStats``).

Architecture invariants:

* *A bookie acknowledges only what is fsynced*: an add's future completes after the group
  commit holding its record was written and fdatasync'ed (``fsync=True``).
* *No byte is served without its checksum*: records read from disk are verified (CRC32C, type,
  ledger and entry id) before they are returned; a failure raises CorruptEntryError.
* *The checkpoint never points into a removed segment* (see ``GarbageCollector.run_once``).
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bookie.api import BookieInfo, LedgerEntry, LedgerState
from bookie.errors import BookieError, BookieIOError, BookieUnavailableError
from bookie.metrics import READ_ENTRY_LATENCY_SECONDS
from bookie.storage.admission import Admission
from bookie.storage.config import BookieStorageConfig
from bookie.storage.fencing import Fencing
from bookie.storage.gc import GcReport
from bookie.storage.journal import Journal
from bookie.storage.maintenance import Checkpointer, GarbageCollector
from bookie.storage.reads import Reads
from bookie.storage.recovery import JournalReplay, RecoveryResult
from bookie.storage.segment_writer import list_segments, segment_path
from bookie.storage.stats import BookieStats
from bookie.storage.tail_cache import TailCache

_log = logging.getLogger(__name__)


class Bookie:
    """One bookie's durable store of ledger entries.

    Lifecycle: ``bookie = await Bookie.open(config)`` locks its directories, rebuilds the
    index (newest checkpoint + journal replay, torn tail truncated), starts a new journal segment
    and three owned tasks: the journal writer (owned by the journal), the periodic checkpoint
    and the periodic garbage collection (owned by ``Checkpointer`` and ``GarbageCollector``).
    ``await bookie.close()`` refuses new requests, stops those two loops, waits for queued adds
    to become durable, writes a final checkpoint (so the next open replays nothing), fails
    pending long polls with BookieUnavailableError and unlocks the directory.

    Every public method checks that the bookie is open and hands the request to the part that
    owns it (see the module docstring). All methods must be called from the event loop that
    opened it. ``read_last_add_confirmed`` of a ledger this bookie knows nothing of raises
    NoSuchLedgerError; of a deleted ledger, LedgerDeletedError.
    """

    def __init__(
        self, config: BookieStorageConfig, replayed: RecoveryResult, lock_fds: list[int]
    ) -> None:
        self.config = config
        self.stats = BookieStats(
            records_replayed_at_open=replayed.records_replayed,
            corrupt_records_at_open=replayed.corrupt_records,
            torn_tail_bytes_truncated=replayed.torn_tail_bytes,
        )
        self._journal_dir = config.journal_path
        self._index_dir = config.data_dir / "index"
        self._index = index = replayed.index
        self._lock_fds = lock_fds
        self._closing = False
        # Checkpoint writes, compaction scans and segment removal: one at a time, off the loop.
        self._maintenance_executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="bookie-maintenance"
        )
        next_segment_id = replayed.next_segment_id
        self._checkpoints = Checkpointer(
            config, index, self._index_dir, next_segment_id, self._maintenance_executor, self.stats
        )
        self._admission = Admission(
            config, index, self._journal_dir, next_segment_id, TailCache(config), self._checkpoints
        )
        self._journal: Journal = self._admission.journal
        self._reads = Reads(config, index, self._journal_dir, self.stats)
        self._fencing = Fencing(index, self._journal)
        self._gc = GarbageCollector(
            config,
            index,
            self._journal_dir,
            self._checkpoints,
            self._check_open,
            self._maintenance_executor,
            self.stats,
        )

    # -- lifecycle ---------------------------------------------------------------------------

    @classmethod
    async def open(cls, config: BookieStorageConfig) -> Bookie:
        """Open (or create) the bookie in ``config.data_dir``; see the class docstring."""
        journal_dir = config.journal_path
        index_dir = config.data_dir / "index"
        for directory in (config.data_dir, journal_dir, index_dir):
            directory.mkdir(parents=True, exist_ok=True)
        locked = [config.data_dir, journal_dir] if config.journal_is_separate else [config.data_dir]
        lock_fds: list[int] = []
        try:
            for directory in locked:
                lock_fds.append(_lock_directory(directory))
        except BaseException:
            for fd in lock_fds:
                os.close(fd)
            raise
        bookie: Bookie | None = None
        started = False
        try:
            replay = JournalReplay(journal_dir, index_dir, fsync=config.fsync)
            result = await asyncio.to_thread(replay.run)
            bookie = cls(config, result, lock_fds)
            await bookie._admission.start()
            started = True
            if (
                result.records_replayed
                or result.torn_tail_bytes
                or result.corrupt_records
                or not result.checkpoint_loaded
            ):
                # Replay (and report damage) once, not again after every crash in a row.
                await bookie.checkpoint()
            bookie._checkpoints.start()
            bookie._gc.start()
        except BaseException:
            if bookie is not None:
                if started:
                    await bookie._journal.close()
                bookie._reads.close()
                bookie._maintenance_executor.shutdown(wait=True)
            for fd in lock_fds:
                os.close(fd)
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

    @property
    def is_writable(self) -> bool:
        """Whether adds can succeed: open, and its journal has not failed."""
        return not self._closing and not self._journal.failed

    async def wait_failed(self) -> BookieError:
        """Wait until the journal fails for good (a failed write or fsync): from then on every
        add fails, and the process should report NOT_SERVING so that writers replace it."""
        return await self._journal.wait_failed()

    async def close(self, *, checkpoint: bool = True) -> None:
        """Shut down; see the class docstring. ``checkpoint=False`` skips the final checkpoint
        (tests use it to leave a journal to replay, like a crash after the last fsync)."""
        if self._closing:
            return
        self._closing = True
        await self._checkpoints.stop()
        await self._gc.stop()
        await self._admission.close()
        try:
            if checkpoint:
                await self._checkpoints.write()
        except OSError:
            _log.exception("final index checkpoint failed; the next open replays more")
        finally:
            self._reads.close()
            self._maintenance_executor.shutdown(wait=True)
            for fd in self._lock_fds:
                os.close(fd)
        _log.info("bookie at %s closed", self.config.data_dir)

    def _check_open(self) -> Journal:
        if self._closing:
            raise BookieUnavailableError("the bookie is shutting down")
        return self._journal

    # -- adds --------------------------------------------------------------------------------

    @property
    def has_add_capacity(self) -> bool:
        """False while the group-commit buffer is full: ``submit_add`` callers then wait on
        ``wait_for_add_capacity`` (which is what ``add_entry`` does)."""
        return self._journal.has_room

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
        if self._closing:
            raise BookieUnavailableError("the bookie is shutting down")
        return self._admission.submit_add(
            ledger_id, entry_id, last_add_confirmed, payload, master_key, recovery_add
        )

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

    # -- reads -------------------------------------------------------------------------------

    async def read_entries(
        self, ledger_id: int, first_entry_id: int, last_entry_id: int, max_bytes: int = 0
    ) -> list[LedgerEntry]:
        """Entries first..last in order, stopping at the first missing one, after ``max_bytes``
        of payload (0 or more than ``config.max_read_bytes``: that limit) or after
        ``config.max_read_entries``; at least one entry is returned. Raises NoSuchEntryError
        when the first entry is missing and CorruptEntryError when it fails its checks (a
        later corrupt entry ends the read early instead)."""
        self._check_open()
        started = time.monotonic()
        entries = await self._reads.read_entries(
            ledger_id, first_entry_id, last_entry_id, max_bytes
        )
        READ_ENTRY_LATENCY_SECONDS.observe(time.monotonic() - started)
        return entries

    async def read_last_add_confirmed(
        self, ledger_id: int, previous_last_add_confirmed: int = -1, timeout_ms: int = 0
    ) -> LedgerState:
        """The ledger's tail; with ``timeout_ms`` > 0 a long poll that returns as soon as the
        LAC exceeds ``previous_last_add_confirmed`` or when the timeout (capped at
        ``config.max_long_poll_ms``) passes. Beyond ``config.max_lac_waiters_per_ledger``
        concurrent polls of one ledger, a poll is answered at once."""
        self._check_open()
        return await self._reads.read_last_add_confirmed(
            ledger_id, previous_last_add_confirmed, timeout_ms
        )

    # -- fencing and deletion ----------------------------------------------------------------

    async def fence_ledger(self, ledger_id: int, master_key: bytes) -> LedgerState:
        """Fence durably (later non-recovery adds are refused) and return the tail state once
        the fence is durable: it covers every add admitted before the fence."""
        self._check_open()
        return await self._fencing.fence_ledger(ledger_id, master_key)

    async def delete_ledger(self, ledger_id: int) -> None:
        """Delete durably; the ledger's bytes are freed by a later garbage collection."""
        self._check_open()
        await self._fencing.delete_ledger(ledger_id)

    # -- maintenance -------------------------------------------------------------------------

    async def checkpoint(self) -> None:
        """Write the index as of now, atomically; the next open replays only what follows."""
        self._check_open()
        await self._checkpoints.write()

    async def run_gc_once(self) -> GcReport:
        """Free the space of deleted and overwritten entries now; see
        ``GarbageCollector.run_once``."""
        self._check_open()
        return await self._gc.run_once()

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

    def info(self) -> BookieInfo:
        """Disk use (blocking: it lists the journal and index directories and stats the
        journal's file system)."""
        usage = shutil.disk_usage(self._journal_dir)
        return BookieInfo(self.bytes_on_disk(), usage.free, usage.total, self.ledgers_count)

    @property
    def journal_queue_size(self) -> int:
        return self._journal.queue_size

    @property
    def ledgers_count(self) -> int:
        return len(self._index.ledgers)

    @property
    def journal_fsyncs(self) -> int:
        return self._journal.fsyncs

    @property
    def journal_batches(self) -> int:
        return self._journal.batches_written

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
