"""Rollover: the managed ledger moves its writes from a full ledger to a new one.

A ledger is full after ``max_entries_per_ledger`` entries, ``max_size_per_ledger_bytes`` or
``max_ledger_rollover_time_ms``; a failed add also rolls over (its entry is written again to the
new ledger). While a rollover runs, new adds queue up behind it. ``RolloverOp`` is one
rollover, run as the managed ledger's one rollover task:

1. takes the current ledger out of service and closes it (its last entry and length become
   final); a ``LedgerMetadataConflictError`` means another broker recovered it — the topic
   was taken over and the managed ledger is fenced;
2. yields once, so that the failed adds of the closed handle (they fail in entry order) reach
   the managed ledger's ``_on_added`` first and queue for resubmission in order;
3. writes the closed ledger's final entry count and length into the list; when that ledger
   has no entry at all, the list without it is stored first and the ledger deleted after;
4. creates the next ledger and stores the list with it by compare-and-set BEFORE its first
   entry is written (``create_ledger``; a failed store deletes the new ledger, and a
   ``BadVersionError`` fences the managed ledger), so a ledger holding entries is always in
   the list — and only the last ledger of the list is ever open;
5. tells the offload scheduler a ledger was closed;
6. issues the queued adds in order, resubmitted ones first. When the new ledger fills up
   meanwhile, the rest wait for the next rollover: a ledger never takes more than its maximum.

When any step fails, every queued add fails: with the fencing error when the managed ledger
was fenced, else ``ServiceUnavailableError``. The op works on its managed ledger's write state
(the current handle, the queues of adds) as the managed ledger's own code does; nothing
outside ``broker.managed_ledger`` runs it.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from bookie.ledger import LedgerHandle, LedgerMetadataConflictError
from broker.errors import ServiceUnavailableError, TopicFencedError
from broker.managed_ledger.ledger_list import LedgerInfo
from broker.metrics import ML_LEDGER_ROLLOVERS

if TYPE_CHECKING:
    from broker.managed_ledger.ledger import ManagedLedger


async def create_ledger(ledger: ManagedLedger) -> LedgerHandle:
    """Create a ledger, append it to the list and store the list (step 4); the caller makes
    it the ledger open for writing. Also the first step of every managed ledger's open."""
    cfg = ledger.config
    if ledger._quorums is not None:
        ensemble_size, write_quorum, ack_quorum = await ledger._quorums()
    else:
        ensemble_size, write_quorum, ack_quorum = (
            cfg.ensemble_size,
            cfg.write_quorum,
            cfg.ack_quorum,
        )
    handle = await ledger.manager.create_ledger(
        ensemble_size, write_quorum, ack_quorum, custom={"topic": ledger.name}
    )
    now = int(time.time() * 1000)
    ledgers = ledger.ledger_list
    ledgers.ledgers.append(LedgerInfo(handle.ledger_id, 0, 0, now))
    try:
        await ledgers.store()
    except BaseException:
        ledgers.ledgers.pop()
        await ledger._delete_ledger_quietly(handle.ledger_id)
        raise
    ledger._write_to(handle, now)
    return handle


class RolloverOp:
    """One rollover of one managed ledger; see the module docstring for its steps."""

    def __init__(self, ledger: ManagedLedger) -> None:
        self._ledger = ledger

    async def run(self) -> None:
        ledger = self._ledger
        try:
            old = await self._close_current()
            await self._replace(old)
        except BaseException as exc:
            self._fail_queued(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        finally:
            ledger._rolling = None
        self._issue_queued()

    async def _close_current(self) -> LedgerHandle | None:
        """Steps 1 to 3 up to the in-memory list: the closed handle, or None."""
        ledger = self._ledger
        old = ledger._current
        ledger._current = None
        if old is None:
            return None
        try:
            ledger._reader.remember(await old.close())
        except LedgerMetadataConflictError as exc:
            ledger._fence(TopicFencedError(f"ledger {old.ledger_id} was taken over: {exc}"))
        await asyncio.sleep(0)  # let the failed adds of `old` reach _on_added first
        ledgers = ledger.ledger_list.ledgers
        if ledgers and ledgers[-1].ledger_id == old.ledger_id:
            info = ledgers[-1]
            info.entries = old.metadata.last_entry_id + 1
            info.size_bytes = old.metadata.length_bytes
        return old

    async def _replace(self, old: LedgerHandle | None) -> None:
        """Steps 3 to 5: drop an empty last ledger, create the next, notify."""
        ledger = self._ledger
        if ledger._fenced is not None:
            raise ledger._fenced
        ledgers = ledger.ledger_list
        if ledgers.ledgers and ledgers.ledgers[-1].entries == 0:
            empty = ledgers.ledgers.pop()
            await ledgers.store()
            await ledger._delete_ledger_quietly(empty.ledger_id)
        await create_ledger(ledger)
        if old is not None:
            ML_LEDGER_ROLLOVERS.inc()
        if old is not None and ledger.offload is not None:
            ledger.offload.on_ledger_closed()

    def _fail_queued(self, exc: BaseException) -> None:
        ledger = self._ledger
        pending = ledger._resubmit + ledger._queue
        ledger._resubmit = []
        ledger._queue = []
        error = (
            exc
            if ledger._fenced is not None
            else ServiceUnavailableError(f"could not roll the ledger of {ledger.name}: {exc}")
        )
        for op in pending:
            if not op.future.done():
                op.future.set_exception(error)

    def _issue_queued(self) -> None:
        """Step 6."""
        ledger = self._ledger
        pending = ledger._resubmit + ledger._queue
        ledger._resubmit = []
        ledger._queue = []
        for index, op in enumerate(pending):
            if ledger._rolling is not None:
                # The new ledger is full already: the rest waits for the next one, in order
                # (a ledger never takes more than its maximum however many adds queued up).
                ledger._queue = pending[index:]
                break
            ledger._issue(op)
