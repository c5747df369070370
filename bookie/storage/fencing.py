"""Fence and delete: the two requests that change a ledger's state instead of adding to it.

Each is admitted at once (the ledger's ``fence_admitted`` or ``deleting`` flag is set before
its record is durable, so every later add is refused from that moment) and answered only once
its FENCE or DELETE record is durable in the journal: a fence then covers every add admitted
before it (the journal completes records in order), which is what ledger recovery relies on
(``bookie.ledger.recovery``); a deleted ledger stays deleted across a crash. The records are
applied to the index by ``bookie.storage.admission`` like every other durable record; the
space of a deleted ledger is freed by a later garbage collection.

A fence of a ledger this bookie never stored is normal during recovery: the ledger is created
fenced, so that a late add of the old writer is refused. Like an add, the first fence of a
ledger records its master key; a different key gets BadRequestError.

Lifecycle: one per open bookie, on its event loop, stateless beyond the index and the journal.
"""

from __future__ import annotations

from bookie.api import LedgerState
from bookie.errors import BadRequestError
from bookie.storage.admission import MAX_MASTER_KEY_BYTES
from bookie.storage.index import LedgerIndex
from bookie.storage.journal import Journal
from bookie.storage.record import DELETE, FENCE


class Fencing:
    """Durable fence and delete of ledgers; see the module docstring."""

    def __init__(self, index: LedgerIndex, journal: Journal) -> None:
        self._index = index
        self._journal = journal

    async def fence_ledger(self, ledger_id: int, master_key: bytes) -> LedgerState:
        """Fence durably and return the tail state once the fence is durable."""
        journal = self._journal
        if ledger_id < 0:
            raise BadRequestError(f"invalid ledger id {ledger_id}")
        if len(master_key) > MAX_MASTER_KEY_BYTES:
            raise BadRequestError(f"master key of {len(master_key)} bytes is too long")
        if not journal.has_room:
            await journal.wait_for_room()
        ledger = self._index.ledger_for_write(ledger_id)
        if ledger.master_key is None:
            ledger.master_key = master_key
            ledger.snapshot = None
        elif ledger.master_key != master_key:
            raise BadRequestError(f"wrong master key for ledger {ledger_id}")
        ledger.fence_admitted = True
        record = journal.append_nowait(FENCE, ledger_id, -1, -1, master_key)
        assert record.future is not None
        await record.future
        return self._index.ledger_for_read(ledger_id).tail_state()

    async def delete_ledger(self, ledger_id: int) -> None:
        """Delete durably; the ledger's bytes are freed by a later garbage collection."""
        journal = self._journal
        if ledger_id < 0:
            raise BadRequestError(f"invalid ledger id {ledger_id}")
        if ledger_id in self._index.deleted:
            return
        if not journal.has_room:
            await journal.wait_for_room()
        ledger = self._index.ledgers.get(ledger_id)
        if ledger is not None:
            ledger.deleting = True
        record = journal.append_nowait(DELETE, ledger_id, -1, -1, b"")
        assert record.future is not None
        await record.future
