"""An in-memory bookie for broker unit tests (unit tier only; integration tests use real ones)."""

from __future__ import annotations

import asyncio

from bookie.api import LedgerEntry, LedgerState
from bookie.errors import LedgerFencedError, NoSuchEntryError, NoSuchLedgerError


class MemoryBookieClient:
    def __init__(self) -> None:
        self.entries: dict[int, dict[int, tuple[int, bytes]]] = {}
        self.fenced: set[int] = set()
        self.fail_adds = False

    @property
    def address(self) -> str:
        return "memory"

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
        await asyncio.sleep(0)
        if ledger_id in self.fenced and not recovery_add:
            raise LedgerFencedError(f"ledger {ledger_id} fenced")
        if self.fail_adds:
            raise OSError("injected add failure")
        self.entries.setdefault(ledger_id, {})[entry_id] = (last_add_confirmed, payload)

    async def read_entries(
        self, ledger_id: int, first_entry_id: int, last_entry_id: int, max_bytes: int = 0
    ) -> list[LedgerEntry]:
        ledger = self.entries.get(ledger_id)
        if ledger is None:
            raise NoSuchLedgerError(str(ledger_id))
        if first_entry_id not in ledger:
            raise NoSuchEntryError(f"{ledger_id}:{first_entry_id}")
        result = []
        for entry_id in range(first_entry_id, last_entry_id + 1):
            if entry_id not in ledger:
                break
            lac, payload = ledger[entry_id]
            result.append(LedgerEntry(entry_id, lac, payload))
        return result

    def _state(self, ledger_id: int) -> LedgerState:
        ledger = self.entries.get(ledger_id, {})
        last = max(ledger, default=-1)
        lac = max((v[0] for v in ledger.values()), default=-1)
        return LedgerState(lac, last, ledger_id in self.fenced)

    async def read_last_add_confirmed(
        self, ledger_id: int, previous_last_add_confirmed: int = -1, timeout_ms: int = 0
    ) -> LedgerState:
        return self._state(ledger_id)

    async def fence_ledger(self, ledger_id: int, master_key: bytes) -> LedgerState:
        self.fenced.add(ledger_id)
        return self._state(ledger_id)

    async def delete_ledger(self, ledger_id: int) -> None:
        self.entries.pop(ledger_id, None)

    async def close(self) -> None:
        return None
