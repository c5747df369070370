"""The one interface a ledger writer or reader uses to talk to one bookie.

Two implementations satisfy it: ``bookie.local.LocalBookieClient`` calls a ``Bookie`` object in
the same process (standalone), and ``bookie.grpc_client.GrpcBookieClient`` speaks
``strata.storage.v1.BookieService`` to a bookie process. The ledger client above it never
knows which one it holds.

Errors are those of ``bookie.errors``; both implementations raise the same classes for the
same conditions (the gRPC client maps statuses back).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One entry of a ledger as a bookie returns it (BookKeeper's ``LedgerEntry``): not to be
    confused with ``strata.v1.messaging_pb2.StoredEntry``, the broker's header around a batch,
    which is what ``payload`` holds for a topic's ledgers."""

    entry_id: int
    last_add_confirmed: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class BookieInfo:
    """A bookie's disk use (BookKeeper's ``GET_BOOKIE_INFO``), for the admin API."""

    disk_used_bytes: int  # journal segments and index files
    disk_free_bytes: int  # free bytes of the journal's file system
    disk_total_bytes: int  # size of the journal's file system
    ledgers_count: int


@dataclass(frozen=True, slots=True)
class LedgerState:
    """What one bookie knows of one ledger's tail."""

    last_add_confirmed: int  # highest LAC piggybacked on any stored entry, or -1
    last_entry_id: int  # highest entry id stored, or -1
    fenced: bool


def refused_add(error: BaseException) -> asyncio.Future[None]:
    """A ``send_add`` future that has already failed with ``error`` (an add refused before it
    was sent: ``send_add`` fails its future, it never raises)."""
    refused: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    refused.set_exception(error)
    return refused


class BookieClient(Protocol):
    """Asynchronous access to one bookie. Every method may raise ``bookie.errors.BookieError``."""

    @property
    def address(self) -> str:
        """The bookie's identity, e.g. ``local`` or ``127.0.0.1:3181``."""
        ...

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
        """Store one entry; returns only once it is durable (fsynced).

        Raises ``LedgerFencedError`` when the ledger is fenced and this is not a recovery add.
        """
        ...

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
        """``add_entry`` as a future, started now, for the ledger writer's pipelined sends:
        it resolves or fails as ``add_entry`` would, has no timeout of its own (the writer's
        monitor bounds it) and cancelling it abandons the add (a late answer is ignored)."""
        ...

    async def read_entries(
        self, ledger_id: int, first_entry_id: int, last_entry_id: int, max_bytes: int = 0
    ) -> list[LedgerEntry]:
        """Read entries first..last (inclusive), in order, stopping early after ``max_bytes``
        of payload (at least one entry is returned). Raises ``NoSuchEntryError`` when the first
        entry is missing and ``CorruptEntryError`` when a record fails its checksum."""
        ...

    async def read_last_add_confirmed(
        self, ledger_id: int, previous_last_add_confirmed: int = -1, timeout_ms: int = 0
    ) -> LedgerState:
        """The ledger's tail state; with ``timeout_ms`` > 0, wait until the LAC exceeds
        ``previous_last_add_confirmed`` or the timeout passes (a long poll for tailing readers)."""
        ...

    async def fence_ledger(self, ledger_id: int, master_key: bytes) -> LedgerState:
        """Fence the ledger durably and return its tail state at the moment of fencing."""
        ...

    async def delete_ledger(self, ledger_id: int) -> None:
        """Delete the ledger; the space is freed later by garbage collection."""
        ...

    async def get_bookie_info(self) -> BookieInfo:
        """The bookie's disk use now."""
        ...

    async def close(self) -> None:
        """Release connections; later calls raise ``BookieUnavailableError``."""
        ...
