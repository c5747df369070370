"""The managed ledger: one topic's log as a list of ledgers, plus the broker's entry cache.

A topic's entries are appended to its current ledger; when that ledger is full (entries, size
or age) it is closed and a new one is created, and the list of ledgers is stored in the
metadata store under ``/managed-ledgers/<tenant>/<namespace>/persistent/<topic>`` by
compare-and-set. Positions are ``(ledger_id, entry_id)`` pairs, ordered as tuples because ledger
ids only grow.

Lifecycle::

    open(): read the ledger list → recover (fence + close) the last ledger if it was left
            open by a previous owner → drop empty ledgers → create a new ledger → CAS the list
    add_entry() ... rollover ... add_entry()
    trim(): delete ledgers that every cursor has passed (after the list no longer names them)
    close() / delete()

Offloaded ledgers (``broker.offload``, ``tiered``): each ledger's offload state lives in the
ledger list beside it (``LedgerInfo.offload``) and changes by the same compare-and-set. Once
its bookie copy is deleted (BOOKIE_DELETED), reads of a ledger go to the object store through
an ``OffloadedLedger`` reader, transparently: same positions, same bytes. Trimming skips a
ledger while it is being offloaded and deletes the objects of the ledgers it removes.

Architecture invariant: at most one ledger of a managed ledger is open for writing, and it is
the last one in the list; a ledger is in the list before its first entry is written.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bookie.errors import BookieError
from bookie.ledger import (
    STATE_CLOSED,
    LedgerClientError,
    LedgerHandle,
    LedgerManager,
    LedgerMetadata,
    LedgerMetadataConflictError,
    LedgerReader,
)
from broker.entry_format import num_messages_of
from broker.errors import CorruptDataError, ServiceUnavailableError, TopicFencedError
from strata.metadata import BadVersionError
from tiered import OffloadContext, OffloadedLedger, Offloader, TieredError
from tiered.format import OffloadKeys

if TYPE_CHECKING:
    from broker.offload import ManagedLedgerOffloader

log = logging.getLogger(__name__)

Position = tuple[int, int]
MANAGED_LEDGERS_PREFIX = "/managed-ledgers/"
# A write that failed is resubmitted to a new ledger at most this many times.
MAX_ADD_ATTEMPTS = 3
READ_MAX_BYTES = 4 * 1024 * 1024
# Readers of offloaded ledgers kept open per managed ledger (each holds its index in memory).
MAX_OPEN_OFFLOADED_LEDGERS = 8
# How often a metadata write waits for a rollover in progress before it goes ahead.
MAX_ROLLOVER_WAITS = 100


@dataclass(frozen=True, slots=True)
class ManagedLedgerConfig:
    max_entries_per_ledger: int = 50_000
    max_size_per_ledger_bytes: int = 2048 * 1024 * 1024
    max_ledger_rollover_time_ms: int = 240 * 60 * 1000
    ensemble_size: int = 1
    write_quorum: int = 1
    ack_quorum: int = 1


@dataclass(slots=True)
class LedgerInfo:
    ledger_id: int
    entries: int = 0
    size_bytes: int = 0
    timestamp_ms: int = 0
    offload: OffloadContext | None = None  # tiered storage state (``tiered.state``)

    @classmethod
    def from_dict(cls, body: dict[str, Any]) -> LedgerInfo:
        offload = body.get("offload")
        return cls(
            ledger_id=int(body["ledger_id"]),
            entries=int(body.get("entries", 0)),
            size_bytes=int(body.get("size_bytes", 0)),
            timestamp_ms=int(body.get("timestamp_ms", 0)),
            offload=OffloadContext.from_dict(offload) if offload else None,
        )

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "ledger_id": self.ledger_id,
            "entries": self.entries,
            "size_bytes": self.size_bytes,
            "timestamp_ms": self.timestamp_ms,
        }
        if self.offload is not None:
            body["offload"] = self.offload.to_dict()
        return body


@dataclass(frozen=True, slots=True)
class Entry:
    """One entry as the dispatcher handles it: its position, stored bytes and message count."""

    ledger_id: int
    entry_id: int
    data: bytes
    num_messages: int

    @property
    def position(self) -> Position:
        return (self.ledger_id, self.entry_id)


class EntryCache:
    """Broker-wide cache of recently written entries, bounded in bytes, oldest evicted first.

    Tailing consumers read from here and never touch the bookies; entries are inserted in
    write order, so evicting the oldest insert evicts the entries readers are least likely to
    need. Catch-up reads of evicted entries go to the bookies.
    """

    def __init__(self, max_size_bytes: int) -> None:
        self.max_size_bytes = max_size_bytes
        self.size_bytes = 0
        self._entries: OrderedDict[tuple[str, int, int], Entry] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def put(self, ledger_name: str, entry: Entry) -> None:
        if len(entry.data) > self.max_size_bytes:
            return
        key = (ledger_name, entry.ledger_id, entry.entry_id)
        if key in self._entries:
            return
        self._entries[key] = entry
        self.size_bytes += len(entry.data)
        while self.size_bytes > self.max_size_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.size_bytes -= len(evicted.data)

    def get(self, ledger_name: str, ledger_id: int, entry_id: int) -> Entry | None:
        entry = self._entries.get((ledger_name, ledger_id, entry_id))
        if entry is None:
            self.misses += 1
        else:
            self.hits += 1
        return entry

    def invalidate_ledger(self, ledger_name: str, ledger_id: int) -> None:
        doomed = [k for k in self._entries if k[0] == ledger_name and k[1] == ledger_id]
        for key in doomed:
            self.size_bytes -= len(self._entries.pop(key).data)


class _QueuedAdd:
    __slots__ = ("attempts", "data", "future", "num_messages")

    def __init__(self, data: bytes, num_messages: int, future: asyncio.Future[Position]) -> None:
        self.data = data
        self.num_messages = num_messages
        self.future = future
        self.attempts = 0


class ManagedLedger:
    """The log of one topic. Not thread-safe; every method runs on the broker's event loop."""

    def __init__(
        self,
        name: str,
        manager: LedgerManager,
        config: ManagedLedgerConfig,
        cache: EntryCache,
        *,
        quorums: Callable[[], Awaitable[tuple[int, int, int]]] | None = None,
        offloader: Offloader | None = None,
    ) -> None:
        self.name = name  # tenant/namespace/persistent/topic
        # E/Qw/Qa for each new ledger, read at creation (a namespace policy can change them);
        # None: the config's.
        self._quorums = quorums
        self._manager = manager
        self._store = manager.store
        self.config = config
        self._cache = cache
        self.ledgers: list[LedgerInfo] = []
        self._info_version = 0
        self._current: LedgerHandle | None = None
        self._current_created_ms = 0
        self._issued_entries = 0
        self._issued_bytes = 0
        self._queue: list[_QueuedAdd] = []
        self._resubmit: list[_QueuedAdd] = []
        self._rolling: asyncio.Task[None] | None = None
        self._fenced: BaseException | None = None
        self._closed = False
        self._metadata_cache: dict[int, LedgerMetadata] = {}
        self.last_confirmed: Position = (-1, -1)
        self.entries_added = 0
        self.on_new_entries: Callable[[], None] = lambda: None
        # Called once when another owner took the ledger over (a compare-and-set failed).
        self.on_fenced: Callable[[], None] = lambda: None
        # Tiered storage: the object store (None: offloading is off), the per-topic offload
        # task's owner (set by ``broker.offload``), the ledgers being offloaded right now
        # (trimming skips them) and open readers of offloaded ledgers.
        self.offloader = offloader
        self.offload: ManagedLedgerOffloader | None = None
        self.offloading: set[int] = set()
        self._offloaded: OrderedDict[int, OffloadedLedger] = OrderedDict()
        self.on_ledger_closed: Callable[[], None] = lambda: None
        # Run first by close(): owners of background work tied to this managed ledger.
        self.on_close: list[Callable[[], Awaitable[None]]] = []
        # Every write of the ledger list goes through this lock, so two writers (a rollover
        # and an offload state change) never race with the same expected version.
        self._info_lock = asyncio.Lock()

    @property
    def key(self) -> str:
        return MANAGED_LEDGERS_PREFIX + self.name

    @property
    def manager(self) -> LedgerManager:
        return self._manager

    @property
    def is_fenced(self) -> bool:
        return self._fenced is not None

    # ---- open / metadata ---------------------------------------------------------------

    async def open(self) -> None:
        record = await self._store.get(self.key)
        if record is not None:
            body = json.loads(record.value)
            self.ledgers = [LedgerInfo.from_dict(info) for info in body["ledgers"]]
            self._info_version = record.version
        else:
            record = await self._store.put(self.key, self._info_json(), expected_version=0)
            self._info_version = record.version
        if self.ledgers:
            last = self.ledgers[-1]
            metadata = await self._manager.read_metadata(last.ledger_id)
            if metadata is not None and metadata.state != STATE_CLOSED:
                metadata = await self._manager.open_and_recover(last.ledger_id)
            if metadata is not None:
                last.entries = metadata.last_entry_id + 1
                last.size_bytes = metadata.length_bytes
                self._metadata_cache[last.ledger_id] = metadata
        empty = [info for info in self.ledgers if info.entries == 0]
        self.ledgers = [info for info in self.ledgers if info.entries > 0]
        await self._create_ledger()
        for info in empty:
            await self._delete_ledger_quietly(info.ledger_id)
        for info in reversed(self.ledgers[:-1]):
            self.last_confirmed = (info.ledger_id, info.entries - 1)
            break

    def _info_json(self) -> bytes:
        body: dict[str, Any] = {"ledgers": [i.to_dict() for i in self.ledgers]}
        return json.dumps(body).encode()

    async def _store_info(self) -> None:
        async with self._info_lock:
            await self._put_info()

    async def _put_info(self) -> None:
        assert self._info_lock.locked()
        try:
            record = await self._store.put(
                self.key, self._info_json(), expected_version=self._info_version
            )
        except BadVersionError as exc:
            self._fence(TopicFencedError(f"managed ledger {self.name} changed by another owner"))
            raise self._fenced from exc  # type: ignore[misc]
        self._info_version = record.version

    async def update_ledger_offloads(
        self, changes: Mapping[int, OffloadContext | None]
    ) -> set[int]:
        """Record ledgers' offload states by compare-and-set of the ledger list; returns the
        ids recorded (a ledger no longer in the list is skipped). The list is stored even when
        nothing changes: success then proves this broker still owns it."""
        for _ in range(MAX_ROLLOVER_WAITS):
            rolling = self._rolling
            if rolling is None:
                break
            await asyncio.wait([rolling])
        async with self._info_lock:
            previous: dict[int, OffloadContext | None] = {}
            for ledger_id, context in changes.items():
                info = self._info(ledger_id)
                if info is not None:
                    previous[ledger_id] = info.offload
                    info.offload = context
            try:
                await self._put_info()
            except BaseException:
                for ledger_id, context in previous.items():
                    info = self._info(ledger_id)
                    if info is not None:
                        info.offload = context
                raise
        return set(previous)

    def ledger_info(self, ledger_id: int) -> LedgerInfo | None:
        return self._info(ledger_id)

    async def delete_bookie_copy(self, ledger_id: int) -> None:
        """Delete the bookie copy of a ledger recorded BOOKIE_DELETED (reads now go to the
        object store). A failure leaks bookie space; the offload sweep retries it."""
        info = self._info(ledger_id)
        assert info is not None and info.offload is not None and info.offload.bookie_deleted
        await self._delete_ledger_quietly(ledger_id)

    def _fence(self, exc: BaseException) -> None:
        if self._fenced is None:
            self._fenced = exc
            log.warning("managed ledger %s fenced: %s", self.name, exc)
            self.on_fenced()

    async def _create_ledger(self) -> None:
        cfg = self.config
        if self._quorums is not None:
            ensemble_size, write_quorum, ack_quorum = await self._quorums()
        else:
            ensemble_size, write_quorum, ack_quorum = (
                cfg.ensemble_size,
                cfg.write_quorum,
                cfg.ack_quorum,
            )
        handle = await self._manager.create_ledger(
            ensemble_size, write_quorum, ack_quorum, custom={"topic": self.name}
        )
        now = int(time.time() * 1000)
        self.ledgers.append(LedgerInfo(handle.ledger_id, 0, 0, now))
        try:
            await self._store_info()
        except BaseException:
            self.ledgers.pop()
            await self._delete_ledger_quietly(handle.ledger_id)
            raise
        self._current = handle
        self._current_created_ms = now
        self._issued_entries = 0
        self._issued_bytes = 0

    async def _delete_ledger_quietly(self, ledger_id: int) -> None:
        self._cache.invalidate_ledger(self.name, ledger_id)
        self._metadata_cache.pop(ledger_id, None)
        try:
            await self._manager.delete_ledger(ledger_id)
        except (BookieError, LedgerClientError, OSError) as exc:
            # The ledger is already out of the list; a leak of bookie space, never of data.
            log.warning("could not delete ledger %d of %s: %s", ledger_id, self.name, exc)

    # ---- writes ------------------------------------------------------------------------

    def add_entry(self, data: bytes, num_messages: int) -> asyncio.Future[Position]:
        """Append one entry; the future resolves to its position once it is durable."""
        future: asyncio.Future[Position] = asyncio.get_running_loop().create_future()
        if self._fenced is not None:
            future.set_exception(self._fenced)
            return future
        if self._closed:
            future.set_exception(ServiceUnavailableError(f"topic {self.name} is closing"))
            return future
        op = _QueuedAdd(data, num_messages, future)
        if self._rolling is not None or self._current is None or self._queue:
            self._queue.append(op)
            self._ensure_rollover()
        else:
            self._issue(op)
        return future

    def _issue(self, op: _QueuedAdd) -> None:
        handle = self._current
        assert handle is not None
        op.attempts += 1
        added = handle.add_entry(op.data)
        self._issued_entries += 1
        self._issued_bytes += len(op.data)
        added.add_done_callback(lambda f: self._on_added(handle, op, f))
        if self._is_full():
            self._ensure_rollover()

    def _is_full(self) -> bool:
        cfg = self.config
        return (
            self._issued_entries >= cfg.max_entries_per_ledger
            or self._issued_bytes >= cfg.max_size_per_ledger_bytes
            or int(time.time() * 1000) - self._current_created_ms >= cfg.max_ledger_rollover_time_ms
        )

    def _on_added(self, handle: LedgerHandle, op: _QueuedAdd, added: asyncio.Future[int]) -> None:
        if added.cancelled() or added.exception() is not None:
            error = added.exception() if not added.cancelled() else None
            if op.attempts < MAX_ADD_ATTEMPTS and self._fenced is None and not self._closed:
                # Resubmit to a new ledger, in order: failures of one handle arrive in entry
                # order, and they go to the front of the queue ahead of later adds.
                self._resubmit.append(op)
                self._ensure_rollover()
            elif not op.future.done():
                op.future.set_exception(
                    ServiceUnavailableError(f"could not write to {self.name}: {error}")
                )
            return
        entry_id = added.result()
        info = self.ledgers[-1]
        if info.ledger_id == handle.ledger_id:
            info.entries = entry_id + 1
            info.size_bytes += len(op.data)
        position = (handle.ledger_id, entry_id)
        self.last_confirmed = position
        self.entries_added += 1
        self._cache.put(self.name, Entry(handle.ledger_id, entry_id, op.data, op.num_messages))
        if not op.future.done():
            op.future.set_result(position)
        self.on_new_entries()

    def _ensure_rollover(self) -> None:
        if self._rolling is None and not self._closed:
            self._rolling = asyncio.get_running_loop().create_task(self._rollover())

    async def _rollover(self) -> None:
        """Close the current ledger (if any), create the next one, then issue queued adds."""
        try:
            old = self._current
            self._current = None
            if old is not None:
                try:
                    metadata = await old.close()
                    self._metadata_cache[old.ledger_id] = metadata
                except LedgerMetadataConflictError as exc:
                    self._fence(TopicFencedError(f"ledger {old.ledger_id} was taken over: {exc}"))
                await asyncio.sleep(0)  # let the failed adds of `old` reach _on_added first
                if self.ledgers and self.ledgers[-1].ledger_id == old.ledger_id:
                    info = self.ledgers[-1]
                    info.entries = old.metadata.last_entry_id + 1
                    info.size_bytes = old.metadata.length_bytes
            if self._fenced is not None:
                raise self._fenced
            if self.ledgers and self.ledgers[-1].entries == 0:
                empty = self.ledgers.pop()
                await self._store_info()
                await self._delete_ledger_quietly(empty.ledger_id)
            await self._create_ledger()
            if old is not None:
                self.on_ledger_closed()
        except BaseException as exc:
            pending = self._resubmit + self._queue
            self._resubmit = []
            self._queue = []
            error = (
                exc
                if self._fenced is not None
                else ServiceUnavailableError(f"could not roll the ledger of {self.name}: {exc}")
            )
            for op in pending:
                if not op.future.done():
                    op.future.set_exception(error)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        finally:
            self._rolling = None
        pending = self._resubmit + self._queue
        self._resubmit = []
        self._queue = []
        for index, op in enumerate(pending):
            if self._rolling is not None:
                # The new ledger is full already: the rest waits for the next one, in order
                # (a ledger never takes more than its maximum however many adds queued up).
                self._queue = pending[index:]
                break
            self._issue(op)

    def maybe_rollover_by_time(self) -> None:
        if (
            self._current is not None
            and self._rolling is None
            and self._issued_entries > 0
            and int(time.time() * 1000) - self._current_created_ms
            >= self.config.max_ledger_rollover_time_ms
        ):
            self._ensure_rollover()

    # ---- reads -------------------------------------------------------------------------

    def _info(self, ledger_id: int) -> LedgerInfo | None:
        for info in self.ledgers:
            if info.ledger_id == ledger_id:
                return info
        return None

    def first_position(self) -> Position:
        """The position of the oldest entry still in the log (or where the next will go)."""
        for info in self.ledgers:
            if info.entries > 0:
                return (info.ledger_id, 0)
        return (self.ledgers[-1].ledger_id, 0) if self.ledgers else (-1, 0)

    def end_position(self) -> Position:
        """The position the next add will get, as far as readers are concerned."""
        last = self.ledgers[-1]
        return (last.ledger_id, last.entries)

    def normalize(self, position: Position) -> Position:
        """Move a position past the end of a closed ledger to the start of the next one."""
        ledger_id, entry_id = position
        for index, info in enumerate(self.ledgers):
            if info.ledger_id < ledger_id:
                continue
            if info.ledger_id > ledger_id:
                return (info.ledger_id, 0)
            if entry_id < info.entries or index == len(self.ledgers) - 1:
                return (ledger_id, entry_id)
            ledger_id, entry_id = self.ledgers[index + 1].ledger_id, 0
        return (ledger_id, entry_id)

    def next_position(self, position: Position) -> Position:
        return self.normalize((position[0], position[1] + 1))

    def contains(self, position: Position) -> bool:
        info = self._info(position[0])
        return info is not None and 0 <= position[1] < info.entries

    def entries_between(self, start_exclusive: Position, end_inclusive: Position) -> int:
        """Number of entries after ``start_exclusive`` up to ``end_inclusive``."""
        count = 0
        for info in self.ledgers:
            lo = 0
            hi = info.entries - 1
            if info.ledger_id < start_exclusive[0] or info.ledger_id > end_inclusive[0]:
                continue
            if info.ledger_id == start_exclusive[0]:
                lo = start_exclusive[1] + 1
            if info.ledger_id == end_inclusive[0]:
                hi = min(hi, end_inclusive[1])
            if hi >= lo:
                count += hi - lo + 1
        return count

    @property
    def total_entries(self) -> int:
        return sum(i.entries for i in self.ledgers)

    @property
    def total_size_bytes(self) -> int:
        return sum(i.size_bytes for i in self.ledgers)

    async def _metadata(self, ledger_id: int) -> LedgerMetadata:
        if self._current is not None and self._current.ledger_id == ledger_id:
            return self._current.metadata
        metadata = self._metadata_cache.get(ledger_id)
        if metadata is None:
            metadata = await self._manager.read_metadata(ledger_id)
            if metadata is None:
                raise ServiceUnavailableError(f"ledger {ledger_id} of {self.name} has no metadata")
            if metadata.state == STATE_CLOSED:
                self._metadata_cache[ledger_id] = metadata
        return metadata

    async def read_entry(self, position: Position) -> Entry | None:
        entries = await self.read_entries(position, 1)
        return entries[0] if entries and entries[0].position == position else None

    async def read_entries(
        self, start: Position, max_entries: int, max_bytes: int = READ_MAX_BYTES
    ) -> list[Entry]:
        """Read up to ``max_entries`` confirmed entries of one ledger from ``start`` on."""
        ledger_id, entry_id = self.normalize(start)
        info = self._info(ledger_id)
        if info is None or entry_id >= info.entries or max_entries <= 0:
            return []
        last = min(info.entries - 1, entry_id + max_entries - 1)
        result: list[Entry] = []
        size = 0
        next_id = entry_id
        while next_id <= last and size < max_bytes:
            cached = self._cache.get(self.name, ledger_id, next_id)
            if cached is not None:
                result.append(cached)
                size += len(cached.data)
                next_id += 1
                continue
            if info.offload is not None and info.offload.bookie_deleted:
                offloaded = await self._offloaded_ledger(info)
                stored = await offloaded.read(next_id, last, max_bytes - size)
            else:
                try:
                    reader = LedgerReader(self._manager, await self._metadata(ledger_id))
                    stored = await reader.read(next_id, last)
                except (BookieError, LedgerClientError, ServiceUnavailableError):
                    if info.offload is not None and info.offload.bookie_deleted:
                        continue  # deleted from the bookies meanwhile: read the offloaded copy
                    raise
            for item in stored:
                entry = Entry(ledger_id, item.entry_id, item.payload, num_messages_of(item.payload))
                result.append(entry)
                size += len(item.payload)
                next_id = item.entry_id + 1
                if size >= max_bytes:
                    break
        return result

    async def _offloaded_ledger(self, info: LedgerInfo) -> OffloadedLedger:
        """The open reader of an offloaded ledger (opened on first use, a few kept open)."""
        context = info.offload
        assert context is not None
        reader = self._offloaded.get(info.ledger_id)
        if reader is not None:
            self._offloaded.move_to_end(info.ledger_id)
            return reader
        offloader = self.offloader
        if offloader is None:
            raise ServiceUnavailableError(
                f"ledger {info.ledger_id} of {self.name} is offloaded ({context.driver}) and "
                "this broker has no offloader configured (--offload-driver)"
            )
        if context.driver != offloader.driver or context.location != offloader.location:
            raise ServiceUnavailableError(
                f"ledger {info.ledger_id} of {self.name} is offloaded to {context.driver} "
                f"{context.location}; this broker offloads to {offloader.driver} "
                f"{offloader.location}"
            )
        reader = await offloader.open_ledger(
            context.data_key, context.index_key, context.index_crc32c
        )
        if reader.last_entry_id != info.entries - 1:
            await reader.close()
            raise CorruptDataError(
                f"offloaded ledger {info.ledger_id} of {self.name} ends at entry "
                f"{reader.last_entry_id}; the ledger list says {info.entries - 1}"
            )
        if info.ledger_id in self._offloaded:  # opened concurrently: keep the first
            await reader.close()
            return self._offloaded[info.ledger_id]
        self._offloaded[info.ledger_id] = reader
        while len(self._offloaded) > MAX_OPEN_OFFLOADED_LEDGERS:
            _, evicted = self._offloaded.popitem(last=False)
            await evicted.close()
        return reader

    async def _close_offloaded(self, ledger_id: int) -> None:
        reader = self._offloaded.pop(ledger_id, None)
        if reader is not None:
            await reader.close()

    async def _delete_offloaded_quietly(self, info: LedgerInfo) -> None:
        """Delete the objects of a ledger that left the list (any offload state)."""
        await self._close_offloaded(info.ledger_id)
        context = info.offload
        if context is None or self.offloader is None or not context.data_key:
            return
        try:
            await self.offloader.delete(OffloadKeys(context.data_key, context.index_key))
        except (TieredError, ValueError) as exc:
            # Out of the list already: a leak of object storage the sweep may clean up.
            log.warning(
                "could not delete offloaded ledger %d of %s: %s", info.ledger_id, self.name, exc
            )

    # ---- trimming and shutdown -----------------------------------------------------------

    async def trim(self, slowest_mark_delete: Position | None) -> int:
        """Delete ledgers every durable cursor has fully consumed; returns how many.

        The shortened list is stored first and the ledgers deleted after, so a crash in
        between leaks bookie space and never loses an entry a cursor still needs.
        """
        if self._rolling is not None or len(self.ledgers) <= 1:
            return 0
        doomed: list[LedgerInfo] = []
        for info in self.ledgers[:-1]:
            if info.ledger_id in self.offloading:
                break  # never delete a ledger mid-offload (Pulsar #13219)
            if slowest_mark_delete is not None and not (
                info.ledger_id < slowest_mark_delete[0]
                or (
                    info.ledger_id == slowest_mark_delete[0]
                    and slowest_mark_delete[1] >= info.entries - 1
                )
            ):
                break
            doomed.append(info)
        if not doomed:
            return 0
        kept = self.ledgers[len(doomed) :]
        previous = self.ledgers
        self.ledgers = kept
        try:
            await self._store_info()
        except BaseException:
            self.ledgers = previous
            raise
        for info in doomed:
            await self._delete_ledger_quietly(info.ledger_id)
            await self._delete_offloaded_quietly(info)
        return len(doomed)

    async def close(self) -> None:
        self._closed = True
        for close_hook in self.on_close:
            try:
                await close_hook()
            except Exception as exc:
                log.warning("closing background work of %s: %s", self.name, exc)
        for ledger_id in list(self._offloaded):
            await self._close_offloaded(ledger_id)
        if self._rolling is not None:
            await asyncio.gather(self._rolling, return_exceptions=True)
        if self._current is not None and not self._current.failed:
            try:
                metadata = await self._current.close()
                info = self.ledgers[-1]
                info.entries = metadata.last_entry_id + 1
                info.size_bytes = metadata.length_bytes
                await self._store_info()
            except (BookieError, LedgerClientError, TopicFencedError) as exc:
                log.warning("closing %s: %s", self.name, exc)
        self._current = None

    async def delete(self) -> None:
        await self.close()
        for info in self.ledgers:
            await self._delete_ledger_quietly(info.ledger_id)
            await self._delete_offloaded_quietly(info)
        self.ledgers = []
        await self._store.delete(self.key)
