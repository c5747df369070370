"""``FragmentReplicator``: moves one bookie's share of one fragment to another bookie
(BookKeeper's ``LedgerFragmentReplicator``), for an autorecovery worker.

1. check the fragment: it exists, ``old`` is in its ensemble and ``new`` is not, and it is not
   the current fragment of a ledger that is still OPEN or IN_RECOVERY (its end is not known
   yet: recover the ledger first);
2. copy every entry of the fragment whose write set contains ``old``'s position (striping)
   from the surviving bookies to ``new`` with ``recovery_add`` (``old`` itself is asked
   last, so a bookie being drained rather than dead still serves its copies);
3. swap ``new`` in at ``old``'s position by compare-and-set. On a conflict the change is
   applied again to the metadata as stored (the writer may have added fragments meanwhile),
   as long as the position still holds ``old``.

The copy comes before the swap, so the metadata never names a bookie that lacks its entries.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from bookie.api import BookieClient, LedgerEntry
from bookie.ledger.errors import (
    BookieTimeoutError,
    LedgerClientError,
    LedgerMetadataConflictError,
)
from bookie.ledger.metadata import STATE_CLOSED, LedgerMetadata, slot_stores_entry
from bookie.ledger.reader import LedgerReader
from strata.logging_setup import log_fields

if TYPE_CHECKING:
    from bookie.ledger.manager import LedgerManager

log = logging.getLogger(__name__)


class FragmentReplicator:
    """One bookie replacement in one fragment; ``run()`` once. See the module docstring."""

    def __init__(
        self,
        manager: LedgerManager,
        ledger_id: int,
        fragment_first_entry_id: int,
        old_bookie: str,
        new_bookie: str,
    ) -> None:
        self._manager = manager
        self._config = manager.config
        self._ledger_id = ledger_id
        self._first = fragment_first_entry_id
        self._old = old_bookie
        self._new = new_bookie

    def _check(self, metadata: LedgerMetadata) -> int | None:
        """The ensemble position to replace, or None when ``new`` already holds it."""
        ensemble = metadata.ensembles.get(self._first)
        if ensemble is None:
            raise LedgerClientError(
                f"ledger {self._ledger_id} has no fragment starting at entry {self._first}"
            )
        if self._old not in ensemble:
            if self._new in ensemble:
                return None
            raise LedgerMetadataConflictError(
                f"ledger {self._ledger_id} fragment {self._first}: {self._old} is not in "
                f"its ensemble {ensemble}",
                current=metadata,
            )
        if self._new in ensemble:
            raise LedgerClientError(
                f"ledger {self._ledger_id} fragment {self._first}: {self._new} is already in "
                f"its ensemble {ensemble}"
            )
        if self._first == metadata.last_fragment_first and metadata.state != STATE_CLOSED:
            raise LedgerClientError(
                f"ledger {self._ledger_id} is {metadata.state}: fragment {self._first} is its "
                "current one; recover the ledger before replacing a bookie there"
            )
        return ensemble.index(self._old)

    async def run(self) -> LedgerMetadata:
        manager = self._manager
        metadata = await manager.read_metadata(self._ledger_id)
        if metadata is None:
            raise LedgerClientError(f"ledger {self._ledger_id} has no metadata")
        slot = self._check(metadata)
        if slot is None:
            return metadata
        last = metadata.fragment_end(self._first)
        assert last is not None  # only the open tail has no end, and _check refused it
        copied = await self._copy(metadata, slot, last)

        def mutate(current: LedgerMetadata) -> LedgerMetadata | None:
            position = self._check(current)
            if position is None:
                return None
            ensemble = list(current.ensembles[self._first])
            ensemble[position] = self._new
            return current.with_fragment(self._first, ensemble)

        updated = await manager.update_metadata(metadata, mutate)
        log.info(
            "ledger %d fragment %d..%d: replaced %s by %s (%d entries copied)",
            self._ledger_id,
            self._first,
            last,
            self._old,
            self._new,
            copied,
            extra=log_fields(ledger=self._ledger_id),
        )
        return updated

    async def _copy(self, metadata: LedgerMetadata, slot: int, last: int) -> int:
        reader = LedgerReader(self._manager, metadata, avoid={self._old})
        target = self._manager.resolve(self._new)
        master_key = bytes.fromhex(metadata.password)
        batch = self._config.replication_batch_entries
        copied = 0
        next_id = self._first
        while next_id <= last:  # each round advances by at least one entry
            entries = await reader.read(next_id, last)
            size, quorum = metadata.ensemble_size, metadata.write_quorum
            needed = [e for e in entries if slot_stores_entry(slot, e.entry_id, size, quorum)]
            for index in range(0, len(needed), batch):
                chunk = needed[index : index + batch]
                results = await asyncio.gather(
                    *(self._write(target, master_key, e) for e in chunk), return_exceptions=True
                )
                for result in results:
                    if isinstance(result, BaseException):
                        raise result
                copied += len(chunk)
            next_id = entries[-1].entry_id + 1
        return copied

    async def _write(self, target: BookieClient, master_key: bytes, entry: LedgerEntry) -> None:
        timeout_ms = self._config.add_entry_timeout_ms
        try:
            async with asyncio.timeout(timeout_ms / 1000):
                await target.add_entry(
                    self._ledger_id,
                    entry.entry_id,
                    entry.last_add_confirmed,
                    entry.payload,
                    master_key,
                    recovery_add=True,
                )
        except TimeoutError:
            raise BookieTimeoutError(
                f"{self._new} did not store entry {entry.entry_id} within {timeout_ms} ms"
            ) from None
