"""The ledger client: ledger metadata, the single writer (``LedgerHandle``) and readers.

A ledger is an append-only sequence of entries written by exactly one writer to an ensemble of
E bookies; entry *e* goes to the Qw bookies starting at ``e mod E`` and is confirmed once Qa of
them have it durably. Its metadata (state, ensemble, quorums, last entry, length) lives in the
metadata store under ``/ledgers/<id>`` and changes only by compare-and-set, so that the writer,
a recovering new owner and readers agree on one history.

This module is the issue-2 form of BookKeeper's client: striping and quorum completion work for
any E/Qw/Qa, but ensemble changes and autorecovery (issue 3) are not here yet; a bookie error
fails the write and the managed ledger above rolls to a new ledger.

Lifecycle of a ledger::

    create (OPEN, in metadata) → adds → close (CLOSED with last_entry_id and length, by CAS)
    a new owner: fence on the bookies → read the tail → close (recovery)
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from bookie.api import BookieClient, StoredEntry
from bookie.errors import BookieError, BookieUnavailableError, LedgerFencedError, NoSuchEntryError
from strata.metadata import BadVersionError, MetadataStore

log = logging.getLogger(__name__)

LEDGERS_PREFIX = "/ledgers/"
LEDGER_ID_COUNTER_KEY = "/counters/ledger-id"
STATE_OPEN = "OPEN"
STATE_IN_RECOVERY = "IN_RECOVERY"
STATE_CLOSED = "CLOSED"
# Enough pipelined adds per ledger to keep the bookie's group commit busy; more only costs memory.
MAX_PENDING_ADDS = 10_000
ID_ALLOCATION_MAX_ATTEMPTS = 100


class LedgerClientError(Exception):
    """Base of the ledger client's own errors (``bookie.errors`` covers the bookies')."""

    retriable = False


class LedgerClosedError(LedgerClientError):
    """The ledger is closed or its writer failed; no more adds."""


class NotEnoughBookiesError(LedgerClientError):
    """Fewer bookies are available than the ensemble size asks for."""

    retriable = True


class LedgerMetadataConflictError(LedgerClientError):
    """Someone else changed the ledger's metadata: another writer or a recovery took it over."""


def ledger_key(ledger_id: int) -> str:
    return f"{LEDGERS_PREFIX}{ledger_id:020d}"


@dataclass(frozen=True, slots=True)
class LedgerMetadata:
    ledger_id: int
    ensemble_size: int
    write_quorum: int
    ack_quorum: int
    # First entry id → bookie addresses; issue 2 has exactly one ensemble, at entry 0.
    ensembles: dict[int, list[str]]
    state: str = STATE_OPEN
    last_entry_id: int = -1
    length_bytes: int = 0
    created_ms: int = 0
    password: str = ""  # hex master key shared by the writer and recovery
    custom: dict[str, str] = field(default_factory=dict)
    version: int = 0  # metadata-store version this was read at; not stored

    def to_json(self) -> bytes:
        body: dict[str, Any] = {
            "ledger_id": self.ledger_id,
            "ensemble_size": self.ensemble_size,
            "write_quorum": self.write_quorum,
            "ack_quorum": self.ack_quorum,
            "ensembles": {str(k): v for k, v in self.ensembles.items()},
            "state": self.state,
            "last_entry_id": self.last_entry_id,
            "length_bytes": self.length_bytes,
            "created_ms": self.created_ms,
            "password": self.password,
            "custom": self.custom,
        }
        return json.dumps(body, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes, version: int) -> LedgerMetadata:
        body = json.loads(data)
        return cls(
            ledger_id=int(body["ledger_id"]),
            ensemble_size=int(body["ensemble_size"]),
            write_quorum=int(body["write_quorum"]),
            ack_quorum=int(body["ack_quorum"]),
            ensembles={int(k): list(v) for k, v in body["ensembles"].items()},
            state=str(body["state"]),
            last_entry_id=int(body["last_entry_id"]),
            length_bytes=int(body["length_bytes"]),
            created_ms=int(body["created_ms"]),
            password=str(body.get("password", "")),
            custom=dict(body.get("custom", {})),
            version=version,
        )

    def ensemble_for(self, entry_id: int) -> list[str]:
        first = max(k for k in self.ensembles if k <= max(entry_id, 0))
        return self.ensembles[first]

    def write_set(self, entry_id: int) -> list[str]:
        """The Qw bookies that store ``entry_id``: round-robin striping from ``entry_id mod E``."""
        ensemble = self.ensemble_for(entry_id)
        start = entry_id % self.ensemble_size
        return [ensemble[(start + i) % self.ensemble_size] for i in range(self.write_quorum)]


BookieResolver = Callable[[str], BookieClient]


class LedgerManager:
    """Creates, opens, recovers and deletes ledgers; owns nothing but references.

    ``bookies`` lists the addresses a new ensemble may use; ``resolve`` turns an address into a
    client. Both are given by the process role (standalone: one local bookie).
    """

    def __init__(
        self,
        store: MetadataStore,
        bookies: Callable[[], Sequence[str]],
        resolve: BookieResolver,
    ) -> None:
        self._store = store
        self._bookies = bookies
        self._resolve = resolve

    @property
    def store(self) -> MetadataStore:
        return self._store

    def resolve(self, address: str) -> BookieClient:
        return self._resolve(address)

    async def _allocate_ledger_id(self) -> int:
        for _ in range(ID_ALLOCATION_MAX_ATTEMPTS):
            record = await self._store.get(LEDGER_ID_COUNTER_KEY)
            current = int(record.value) if record else 0
            try:
                await self._store.put(
                    LEDGER_ID_COUNTER_KEY,
                    str(current + 1).encode(),
                    expected_version=record.version if record else 0,
                )
            except BadVersionError:
                continue
            return current + 1
        raise LedgerClientError("could not allocate a ledger id: too much contention")

    async def create_ledger(
        self,
        ensemble_size: int,
        write_quorum: int,
        ack_quorum: int,
        custom: dict[str, str] | None = None,
    ) -> LedgerHandle:
        if not 1 <= ack_quorum <= write_quorum <= ensemble_size:
            raise ValueError(
                f"need 1 <= ack quorum ({ack_quorum}) <= write quorum ({write_quorum}) "
                f"<= ensemble size ({ensemble_size})"
            )
        available = list(self._bookies())
        if len(available) < ensemble_size:
            raise NotEnoughBookiesError(
                f"ensemble size {ensemble_size} needs that many bookies; {len(available)} available"
            )
        ledger_id = await self._allocate_ledger_id()
        start = ledger_id % len(available)
        ensemble = [available[(start + i) % len(available)] for i in range(ensemble_size)]
        metadata = LedgerMetadata(
            ledger_id=ledger_id,
            ensemble_size=ensemble_size,
            write_quorum=write_quorum,
            ack_quorum=ack_quorum,
            ensembles={0: ensemble},
            created_ms=int(time.time() * 1000),
            password=os.urandom(16).hex(),
            custom=dict(custom or {}),
        )
        record = await self._store.put(
            ledger_key(ledger_id), metadata.to_json(), expected_version=0
        )
        return LedgerHandle(self, replace(metadata, version=record.version))

    async def read_metadata(self, ledger_id: int) -> LedgerMetadata | None:
        record = await self._store.get(ledger_key(ledger_id))
        if record is None:
            return None
        return LedgerMetadata.from_json(record.value, record.version)

    async def write_metadata(self, metadata: LedgerMetadata) -> LedgerMetadata:
        """Compare-and-set the metadata at the version it was read; raise on a conflict."""
        try:
            record = await self._store.put(
                ledger_key(metadata.ledger_id),
                metadata.to_json(),
                expected_version=metadata.version,
            )
        except BadVersionError as exc:
            raise LedgerMetadataConflictError(
                f"ledger {metadata.ledger_id} metadata changed concurrently"
            ) from exc
        return replace(metadata, version=record.version)

    async def open_and_recover(self, ledger_id: int) -> LedgerMetadata:
        """Fence the ledger and close it at its recovered end (``LedgerRecoveryOp``).

        Fencing a quorum makes the old writer's later adds fail, so nothing it adds after
        this point can be confirmed; then the tail is read and the ledger is closed at the last
        entry stored on the bookies. An error or a timeout is never read as "entry absent":
        recovery fails instead and the caller retries.
        """
        metadata = await self.read_metadata(ledger_id)
        if metadata is None:
            raise LedgerClientError(f"ledger {ledger_id} has no metadata")
        if metadata.state == STATE_CLOSED:
            return metadata
        if metadata.state == STATE_OPEN:
            metadata = await self.write_metadata(replace(metadata, state=STATE_IN_RECOVERY))
        master_key = bytes.fromhex(metadata.password)
        ensemble = metadata.ensemble_for(max(metadata.last_entry_id, 0))
        states = await asyncio.gather(
            *(self._resolve(a).fence_ledger(ledger_id, master_key) for a in ensemble)
        )
        # Issue 2 writes with Qw = E, so every bookie of the ensemble holds every confirmed
        # entry; the recovered end is the highest entry any of them stored.
        last_entry_id = max(s.last_entry_id for s in states)
        length = 0
        if last_entry_id >= 0:
            reader = LedgerReader(self, metadata)
            next_id = 0
            while next_id <= last_entry_id:
                entries = await reader.read(next_id, last_entry_id)
                for entry in entries:
                    length += len(entry.payload)
                next_id = entries[-1].entry_id + 1
        closed = replace(
            metadata, state=STATE_CLOSED, last_entry_id=last_entry_id, length_bytes=length
        )
        return await self.write_metadata(closed)

    async def delete_ledger(self, ledger_id: int) -> None:
        """Delete the ledger on its bookies, then its metadata (a crash between leaks space
        on the bookies, never loses data another ledger needs)."""
        metadata = await self.read_metadata(ledger_id)
        if metadata is None:
            return
        addresses = {a for ensemble in metadata.ensembles.values() for a in ensemble}
        for address in addresses:
            await self._resolve(address).delete_ledger(ledger_id)
        await self._store.delete(ledger_key(ledger_id))


class LedgerReader:
    """Reads entries of one ledger, trying each bookie of the write set in turn."""

    def __init__(self, manager: LedgerManager, metadata: LedgerMetadata) -> None:
        self._manager = manager
        self.metadata = metadata

    async def read(self, first_entry_id: int, last_entry_id: int) -> list[StoredEntry]:
        write_set = self.metadata.write_set(first_entry_id)
        failure: BaseException | None = None
        for address in write_set:
            try:
                entries = await self._manager.resolve(address).read_entries(
                    self.metadata.ledger_id, first_entry_id, last_entry_id
                )
            except BookieError as exc:
                failure = exc
                continue
            if self.metadata.write_quorum < self.metadata.ensemble_size:
                # With striping a bookie holds only every few entries; keep the run it holds.
                entries = _contiguous_prefix(entries, first_entry_id)
            return entries
        assert failure is not None
        raise failure


def _contiguous_prefix(entries: list[StoredEntry], first_entry_id: int) -> list[StoredEntry]:
    result: list[StoredEntry] = []
    expected = first_entry_id
    for entry in entries:
        if entry.entry_id != expected:
            break
        result.append(entry)
        expected += 1
    if not result:
        raise NoSuchEntryError(f"entry {first_entry_id} not found")
    return result


class _PendingAdd:
    """One entry on its way to Qw bookies (BookKeeper's ``PendingAddOp``)."""

    __slots__ = ("acks", "entry_id", "failures", "future", "payload")

    def __init__(self, entry_id: int, payload: bytes, future: asyncio.Future[int]) -> None:
        self.entry_id = entry_id
        self.payload = payload
        self.future = future
        self.acks = 0
        self.failures = 0


class LedgerHandle:
    """The single writer of one ledger: pipelined adds completed in entry order.

    ``add_entry`` returns the entry id once Qa bookies of the entry's write set have it
    durably and every earlier entry is confirmed too; the LastAddConfirmed (LAC) advances in
    that order and is piggybacked on each later add. After any failure the handle is broken:
    pending and later adds fail with ``LedgerClosedError`` and the owner rolls to a new ledger.
    """

    def __init__(self, manager: LedgerManager, metadata: LedgerMetadata) -> None:
        self._manager = manager
        self.metadata = metadata
        self._master_key = bytes.fromhex(metadata.password)
        self._next_entry_id = 0
        self.last_add_confirmed = -1
        self.length_bytes = 0
        self._pending: deque[_PendingAdd] = deque()
        self._failure: BaseException | None = None
        self._closed = False
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def ledger_id(self) -> int:
        return self.metadata.ledger_id

    @property
    def pending_adds(self) -> int:
        return len(self._pending)

    def add_entry(self, payload: bytes) -> asyncio.Future[int]:
        """Start adding one entry; the future resolves to its entry id once confirmed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        if self._closed or self._failure is not None:
            future.set_exception(
                LedgerClosedError(f"ledger {self.ledger_id} is closed for writing")
            )
            return future
        if len(self._pending) >= MAX_PENDING_ADDS:
            future.set_exception(
                LedgerClosedError(f"ledger {self.ledger_id}: too many pending adds")
            )
            return future
        op = _PendingAdd(self._next_entry_id, payload, future)
        self._next_entry_id += 1
        self._pending.append(op)
        for address in self.metadata.write_set(op.entry_id):
            task = loop.create_task(self._send(address, op))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return future

    async def _send(self, address: str, op: _PendingAdd) -> None:
        try:
            await self._manager.resolve(address).add_entry(
                self.ledger_id,
                op.entry_id,
                self.last_add_confirmed,
                op.payload,
                self._master_key,
            )
        except (BookieError, OSError) as exc:
            op.failures += 1
            if op.failures > self.metadata.write_quorum - self.metadata.ack_quorum:
                self._fail(exc)
            return
        op.acks += 1
        self._complete_in_order()

    def _complete_in_order(self) -> None:
        pending = self._pending
        while pending and pending[0].acks >= self.metadata.ack_quorum:
            op = pending.popleft()
            self.last_add_confirmed = op.entry_id
            self.length_bytes += len(op.payload)
            if not op.future.done():
                op.future.set_result(op.entry_id)

    def _fail(self, exc: BaseException) -> None:
        if self._failure is not None:
            return
        if isinstance(exc, LedgerFencedError):
            error: BaseException = LedgerClosedError(
                f"ledger {self.ledger_id} was fenced by a new owner"
            )
        elif isinstance(exc, BookieUnavailableError):
            error = LedgerClosedError(f"ledger {self.ledger_id}: bookie unavailable: {exc}")
        else:
            error = LedgerClosedError(f"ledger {self.ledger_id}: write failed: {exc}")
        error.__cause__ = exc
        self._failure = error
        log.warning("ledger %d write failed: %s", self.ledger_id, exc)
        while self._pending:
            op = self._pending.popleft()
            if not op.future.done():
                op.future.set_exception(error)

    @property
    def failed(self) -> bool:
        return self._failure is not None

    async def close(self) -> LedgerMetadata:
        """Wait for pending adds, then record the ledger CLOSED at its LAC (compare-and-set)."""
        self._closed = True
        if self._pending:
            await asyncio.gather(*(op.future for op in list(self._pending)), return_exceptions=True)
        closed = replace(
            self.metadata,
            state=STATE_CLOSED,
            last_entry_id=self.last_add_confirmed,
            length_bytes=self.length_bytes,
        )
        self.metadata = await self._manager.write_metadata(closed)
        return self.metadata
