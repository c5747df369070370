"""The bookie's add path: admission of an add into the journal, and what happens once it is durable.

``Admission`` owns the bookie's ``Journal``. ``submit_add`` checks an add against the ledger's
state *when it is admitted* (ids, sizes, the master key, the fence, a delete) and queues its
record; the journal's group commit writes and fdatasyncs it; ``_on_durable``, called by the
journal for every durable batch in journal order, then applies the batch to the index
(``LedgerIndex.apply_*``), puts client adds in the tail cache, wakes the long polls whose LAC
was passed, fails those of deleted ledgers and advances the checkpoint mark. Only then do the
records' futures resolve: *a bookie acknowledges only what is fsynced*.

Backpressure: the journal's buffer is bounded by ``group_commit_max_bytes``; ``submit_add``
never waits, so callers wait for room first (``Bookie.add_entry`` and the gRPC servicer do).

Choices worth knowing (BookKeeper's):

* An add to an existing (ledger, entry) is accepted and the newest record wins: recovery
  rewrites entries, normally with the same payload.
* The first add (or fence) of a ledger records its master key, journalled as a KEY record in
  the same group commit so that fences after a restart can check it; every later add and
  fence must present the same key, or gets BadRequestError.

Lifecycle: created by ``Bookie.open`` with the journal not yet started; ``start()`` creates
the journal's first segment and its writer; ``close()`` waits (bounded) for queued adds to
become durable and closes the journal. Runs on the bookie's event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from bookie.errors import BadRequestError, LedgerDeletedError, LedgerFencedError
from bookie.metrics import ADD_ENTRY_LATENCY_SECONDS
from bookie.storage.config import BookieStorageConfig
from bookie.storage.index import LedgerIndex, pack_location
from bookie.storage.journal import Journal, PendingRecord
from bookie.storage.maintenance import Checkpointer
from bookie.storage.record import DELETE, ENTRY, FENCE, KEY
from bookie.storage.tail_cache import TailCache

_log = logging.getLogger(__name__)

# A master key is a secret of a few dozen bytes; refuse anything absurd.
MAX_MASTER_KEY_BYTES = 1024
_MAX_ID = (1 << 63) - 1


class Admission:
    """Admits adds into the journal and applies durable batches; see the module docstring."""

    def __init__(
        self,
        config: BookieStorageConfig,
        index: LedgerIndex,
        journal_dir: Path,
        first_segment_id: int,
        cache: TailCache,
        checkpoints: Checkpointer,
    ) -> None:
        self._config = config
        self._index = index
        self._cache = cache
        self._checkpoints = checkpoints
        self.journal = Journal(
            journal_dir,
            first_segment_id,
            segment_size_bytes=config.journal_segment_size_bytes,
            preallocation_bytes=config.journal_preallocation_bytes,
            group_commit_max_bytes=config.group_commit_max_bytes,
            fsync=config.fsync,
            on_durable=self._on_durable,
        )

    async def start(self) -> None:
        await self.journal.start()

    async def close(self) -> None:
        """Wait up to ``close_timeout_ms`` for queued adds to become durable; close the journal."""
        try:
            async with asyncio.timeout(self._config.close_timeout_ms / 1000):
                await self.journal.drain()
        except TimeoutError:
            _log.warning("closing the bookie with adds still queued in the journal")
        await self.journal.close()

    def submit_add(
        self,
        ledger_id: int,
        entry_id: int,
        last_add_confirmed: int,
        payload: bytes,
        master_key: bytes,
        recovery_add: bool,
    ) -> asyncio.Future[None]:
        """Admit one add and queue its record; see ``Bookie.submit_add``."""
        journal = self.journal
        if not 0 <= ledger_id <= _MAX_ID or not 0 <= entry_id <= _MAX_ID:
            raise BadRequestError(f"invalid ledger {ledger_id} / entry {entry_id}")
        if not -1 <= last_add_confirmed <= _MAX_ID:
            raise BadRequestError(f"invalid last_add_confirmed {last_add_confirmed}")
        if len(payload) > self._config.max_entry_size_bytes:
            raise BadRequestError(
                f"entry of {len(payload)} bytes exceeds the limit of "
                f"{self._config.max_entry_size_bytes} bytes"
            )
        if len(master_key) > MAX_MASTER_KEY_BYTES:
            raise BadRequestError(f"master key of {len(master_key)} bytes is too long")
        ledger = self._index.ledger_for_write(ledger_id)
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
        record = journal.append_nowait(ENTRY, ledger_id, entry_id, last_add_confirmed, payload)
        assert record.future is not None
        return record.future

    def _on_durable(self, records: list[PendingRecord]) -> None:
        """Apply one durable batch to the index (called by the journal, in journal order)."""
        index = self._index
        ledgers = index.ledgers
        written = 0
        now = time.monotonic()
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
                    self._cache.put(ledger, entry_id, record.last_add_confirmed, record.payload)
                    ADD_ENTRY_LATENCY_SECONDS.observe(now - record.queued_at)
                raised = index.apply_entry(
                    ledger,
                    entry_id,
                    record.last_add_confirmed,
                    pack_location(record.segment_id, record.offset),
                    record.length,
                )
                if raised and ledger.waiters:
                    ledger.wake_waiters()
            elif record_type == DELETE:
                deleted = index.apply_delete(record.ledger_id)
                if deleted is not None:
                    deleted.cached.clear()
                    deleted.fail_waiters(
                        LedgerDeletedError(f"ledger {record.ledger_id} was deleted")
                    )
            else:
                maybe_ledger = index.ledger_for_apply(record.ledger_id)
                if maybe_ledger is not None:
                    if record_type == FENCE:
                        index.apply_fence(maybe_ledger, record.payload)
                    else:
                        assert record_type == KEY
                        index.apply_key(maybe_ledger, record.payload)
        last = records[-1]
        self._checkpoints.advance(last.segment_id, last.offset + last.length, written)
