"""Rollover: the managed ledger moves its writes from a full ledger to a new one.

A ledger is full after ``max_entries_per_ledger`` entries, ``max_size_per_ledger_bytes`` or
``max_ledger_rollover_time_ms``; a failed add also rolls over (its entry is written again to the
new ledger). While a rollover runs, new adds queue up behind it. ``RolloverOp`` is one
rollover, run as the managed ledger's one rollover task:

1. takes the current ledger out of service (``LedgerWriter.take_current``) and closes it (its
   last entry and length become final); a ``LedgerMetadataConflictError`` means another
   broker recovered it — the topic was taken over and the managed ledger is fenced;
2. yields once, so that the failed adds of the closed handle (they fail in entry order) reach
   the writer first and queue for resubmission in order;
3. writes the closed ledger's final entry count and length into the list; when that ledger
   has no entry at all, the list without it is stored first and the ledger deleted after;
4. creates the next ledger and stores the list with it by compare-and-set BEFORE its first
   entry is written (``create_ledger``; a failed store deletes the new ledger, and a
   ``BadVersionError`` fences the managed ledger), so a ledger holding entries is always in
   the list — and only the last ledger of the list is ever open; then makes it the writer's
   ledger open for writing (``write_to``);
5. tells the offload scheduler a ledger was closed;
6. issues the queued adds in order, resubmitted ones first (``issue_pending``). When the new
   ledger fills up meanwhile, the rest wait for the next rollover: a ledger never takes more
   than its maximum (unless no new ledger could be placed: ``LedgerWriter`` then postpones
   the rollover and the full ledger keeps the writes).

When any step fails, every queued add fails (``fail_pending``): with the fencing error when
the managed ledger was fenced, else ``ServiceUnavailableError``. The op changes the write
state (the current handle, the queues of adds, the rollover task) only through its
``LedgerWriter``'s rollover methods, and the managed ledger only through its public methods
and its list; nothing outside ``broker.managed_ledger`` runs it.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from bookie.ledger import LedgerHandle, LedgerMetadataConflictError
from broker.errors import ServiceUnavailableError, TopicFencedError
from broker.managed_ledger.ledger_list import LedgerInfo
from broker.managed_ledger.writer import LedgerWriter
from broker.metrics import ML_LEDGER_ROLLOVERS
from strata.clock import now_ms

if TYPE_CHECKING:
    from broker.managed_ledger.ledger import ManagedLedger


async def create_ledger(ledger: ManagedLedger, writer: LedgerWriter) -> LedgerHandle:
    """Create a ledger, append it to the list and store the list (step 4), then make it the
    writer's ledger open for writing. Also the first step of every managed ledger's open."""
    handle = await ledger.new_ledger()
    now = int(time.time() * 1000)
    ledgers = ledger.ledger_list
    ledgers.ledgers.append(LedgerInfo(handle.ledger_id, 0, 0, now))
    try:
        await ledgers.store()
    except BaseException:
        ledgers.ledgers.pop()
        await ledger.delete_ledger_quietly(handle.ledger_id)
        raise
    writer.write_to(handle, now)
    return handle


class RolloverOp:
    """One rollover of one managed ledger, through its writer; see the module docstring for
    its steps."""

    def __init__(self, ledger: ManagedLedger, writer: LedgerWriter) -> None:
        self._ledger = ledger
        self._writer = writer

    async def run(self) -> None:
        try:
            old = await self._close_current()
            await self._replace(old)
        except BaseException as exc:
            self._fail_queued(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        finally:
            self._writer.rollover_finished()
        self._writer.issue_pending()  # step 6

    async def _close_current(self) -> LedgerHandle | None:
        """Steps 1 to 3 up to the in-memory list: the closed handle, or None."""
        ledger = self._ledger
        old = self._writer.take_current()
        if old is None:
            return None
        try:
            ledger.remember_closed(await old.close())
        except LedgerMetadataConflictError as exc:
            ledger.fence(TopicFencedError(f"ledger {old.ledger_id} was taken over: {exc}"))
        await asyncio.sleep(0)  # let the failed adds of `old` reach the writer first
        ledgers = ledger.ledger_list.ledgers
        if ledgers and ledgers[-1].ledger_id == old.ledger_id:
            info = ledgers[-1]
            info.entries = old.metadata.last_entry_id + 1
            info.size_bytes = old.metadata.length_bytes
            info.timestamp_ms = now_ms()  # closed now: retention by time counts from here
        return old

    async def _replace(self, old: LedgerHandle | None) -> None:
        """Steps 3 to 5: drop an empty last ledger, create the next, notify."""
        ledger = self._ledger
        fenced = self._writer.fenced
        if fenced is not None:
            raise fenced
        ledgers = ledger.ledger_list
        if ledgers.ledgers and ledgers.ledgers[-1].entries == 0:
            empty = ledgers.ledgers.pop()
            await ledgers.store()
            await ledger.delete_ledger_quietly(empty.ledger_id)
        await create_ledger(ledger, self._writer)
        if old is not None:
            ML_LEDGER_ROLLOVERS.inc()
        if old is not None and ledger.offload is not None:
            ledger.offload.on_ledger_closed()

    def _fail_queued(self, exc: BaseException) -> None:
        error = (
            exc
            if self._writer.fenced is not None
            else ServiceUnavailableError(f"could not roll the ledger of {self._ledger.name}: {exc}")
        )
        self._writer.fail_pending(error)
