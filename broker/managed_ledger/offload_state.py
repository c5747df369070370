"""What a managed ledger knows of offloading, in one object.

Each ledger's offload state (``tiered.OffloadContext``) is recorded in the ledger list beside
it and changes only by the list's compare-and-set (``update``). ``OffloadState`` also holds
the object store (``offloader``; None when offloading is off), the ledgers this process is
uploading right now (trimming skips them, the orphan sweep keeps their objects), and the
deletions that follow from the recorded states: the bookie copy of a ledger recorded
BOOKIE_DELETED, and the objects of a ledger that left the list. When to offload is
``broker.offload``'s business (``LedgerOffloadOp``, ``ManagedLedgerOffloader``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping

from broker.managed_ledger.ledger_list import LedgerInfo, LedgerList
from broker.managed_ledger.reader import EntryReader
from strata.logging_setup import log_fields
from tiered import OffloadContext, Offloader, TieredError
from tiered.format import OffloadKeys

log = logging.getLogger(__name__)

# How often a metadata write waits for a rollover in progress before it goes ahead.
MAX_ROLLOVER_WAITS = 100


class OffloadState:
    """The offload state of one managed ledger's ledgers; see the module docstring."""

    def __init__(
        self,
        name: str,
        ledgers: LedgerList,
        reader: EntryReader,
        offloader: Offloader | None,
        *,
        delete_ledger: Callable[[int], Awaitable[None]],
        rollover_in_progress: Callable[[], asyncio.Task[None] | None],
    ) -> None:
        self.offloader = offloader
        # Ledgers being offloaded right now by this process (``LedgerOffloadOp``).
        self.offloading: set[int] = set()
        self._name = name
        self._list = ledgers
        self._reader = reader
        self._delete_ledger = delete_ledger
        self._rollover_in_progress = rollover_in_progress

    async def update(self, changes: Mapping[int, OffloadContext | None]) -> set[int]:
        """Record ledgers' offload states by compare-and-set of the ledger list; returns the
        ids recorded (a ledger no longer in the list is skipped). The list is stored even when
        nothing changes: success then proves this broker still owns it."""
        for _ in range(MAX_ROLLOVER_WAITS):
            rolling = self._rollover_in_progress()
            if rolling is None:
                break
            await asyncio.wait([rolling])
        async with self._list.lock:
            previous: dict[int, OffloadContext | None] = {}
            for ledger_id, context in changes.items():
                info = self._list.info(ledger_id)
                if info is not None:
                    previous[ledger_id] = info.offload
                    info.offload = context
            try:
                await self._list.put()
            except BaseException:
                for ledger_id, context in previous.items():
                    info = self._list.info(ledger_id)
                    if info is not None:
                        info.offload = context
                raise
        return set(previous)

    async def delete_bookie_copy(self, ledger_id: int) -> None:
        """Delete the bookie copy of a ledger recorded BOOKIE_DELETED (reads now go to the
        object store). A failure leaks bookie space; the offload sweep retries it."""
        info = self._list.info(ledger_id)
        if info is None:
            # Trimmed meanwhile (retention, compaction's settling): the trim deleted the
            # ledger's bookie copy and objects itself.
            return
        assert info.offload is not None and info.offload.bookie_deleted
        await self._delete_ledger(ledger_id)

    async def delete_objects_quietly(self, info: LedgerInfo) -> None:
        """Delete the objects of a ledger that left the list (any offload state)."""
        await self._reader.close_offloaded(info.ledger_id)
        context = info.offload
        if context is None or self.offloader is None or not context.data_key:
            return
        try:
            await self.offloader.delete(OffloadKeys(context.data_key, context.index_key))
        except (TieredError, ValueError) as exc:
            # Out of the list already: a leak of object storage the sweep may clean up.
            log.warning(
                "could not delete offloaded ledger %d of %s: %s",
                info.ledger_id,
                self._name,
                exc,
                extra=log_fields(topic=self._name, ledger=info.ledger_id),
            )
