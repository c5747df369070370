"""``LocalBookieClient``: the ``BookieClient`` protocol over a ``Bookie`` in the same process.

Used by the standalone mode, where the broker and one bookie share an event loop: no
serialization, no copies, the same errors as the gRPC client.
"""

from __future__ import annotations

import asyncio

from bookie.api import BookieInfo, LedgerEntry, LedgerState, refused_add
from bookie.errors import BookieError, BookieUnavailableError
from bookie.storage import Bookie


class LocalBookieClient:
    """Calls an open ``Bookie`` directly; address ``local``.

    Lifecycle: wraps a bookie owned by someone else; ``close()`` only makes this client refuse
    later calls (BookieUnavailableError) and leaves the bookie open.
    """

    def __init__(self, bookie: Bookie, address: str = "local") -> None:
        self._bookie = bookie
        self._address = address
        self._closed = False

    @property
    def address(self) -> str:
        return self._address

    def _open_bookie(self) -> Bookie:
        if self._closed:
            raise BookieUnavailableError(f"client for {self._address} is closed")
        return self._bookie

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
        await self._open_bookie().add_entry(
            ledger_id, entry_id, last_add_confirmed, payload, master_key, recovery_add=recovery_add
        )

    def send_add(
        self,
        ledger_id: int,
        entry_id: int,
        last_add_confirmed: int,
        payload: bytes,
        master_key: bytes,
        *,
        recovery_add: bool = False,
    ) -> asyncio.Future[None]:
        """The journal record's own future (``Bookie.submit_add``, no task per add); a task
        runs ``add_entry`` only while the group-commit buffer is full (it waits for room)."""
        try:
            bookie = self._open_bookie()
            if bookie.has_add_capacity:
                return bookie.submit_add(
                    ledger_id,
                    entry_id,
                    last_add_confirmed,
                    payload,
                    master_key,
                    recovery_add=recovery_add,
                )
        except BookieError as exc:
            return refused_add(exc)
        return asyncio.ensure_future(
            self.add_entry(
                ledger_id,
                entry_id,
                last_add_confirmed,
                payload,
                master_key,
                recovery_add=recovery_add,
            )
        )

    async def read_entries(
        self, ledger_id: int, first_entry_id: int, last_entry_id: int, max_bytes: int = 0
    ) -> list[LedgerEntry]:
        return await self._open_bookie().read_entries(
            ledger_id, first_entry_id, last_entry_id, max_bytes
        )

    async def read_last_add_confirmed(
        self, ledger_id: int, previous_last_add_confirmed: int = -1, timeout_ms: int = 0
    ) -> LedgerState:
        return await self._open_bookie().read_last_add_confirmed(
            ledger_id, previous_last_add_confirmed, timeout_ms
        )

    async def fence_ledger(self, ledger_id: int, master_key: bytes) -> LedgerState:
        return await self._open_bookie().fence_ledger(ledger_id, master_key)

    async def delete_ledger(self, ledger_id: int) -> None:
        await self._open_bookie().delete_ledger(ledger_id)

    async def get_bookie_info(self) -> BookieInfo:
        return await asyncio.to_thread(self._open_bookie().info)

    async def close(self) -> None:
        self._closed = True
