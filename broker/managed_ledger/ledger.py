"""``ManagedLedger``: one topic's log as a list of ledgers, and its write path.

A topic's entries are appended to its current ledger; when that ledger is full (entries, size
or age) the managed ledger rolls over to a new one (``rollover.RolloverOp``), and the list of
ledgers is stored in the metadata store by compare-and-set (``ledger_list.LedgerList``).

Lifecycle::

    open(): read the ledger list → recover (fence + close) the last ledger if it was left
            open by a previous owner → drop empty ledgers → create a new ledger → CAS the list
    add_entry() ... rollover ... add_entry()
    trim(): delete ledgers that every cursor has passed (after the list no longer names them)
    close() / delete()

What the managed ledger tells its owners goes to the ``ManagedLedgerListener`` it is
constructed with: new entries (the topic wakes its subscriptions) and fencing (the service
unloads the topic). Its offload scheduler (``broker.offload.ManagedLedgerOffloader``), when
offloading is on, is created with it from a factory, told of every closed ledger, and closed
by its ``close()``.

Architecture invariant: at most one ledger of a managed ledger is open for writing, and it is
the last one in the list; a ledger is in the list before its first entry is written.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bookie.errors import BookieError
from bookie.ledger import STATE_CLOSED, LedgerClientError, LedgerHandle, LedgerManager
from broker.errors import ServiceUnavailableError, TopicFencedError
from broker.managed_ledger.entry_cache import Entry, EntryCache
from broker.managed_ledger.ledger_list import LedgerInfo, LedgerList, Position
from broker.managed_ledger.offload_state import OffloadState
from broker.managed_ledger.reader import READ_MAX_BYTES, EntryReader
from broker.managed_ledger.rollover import RolloverOp, create_ledger
from broker.managed_ledger.trim import trim_ledgers
from tiered import Offloader

if TYPE_CHECKING:
    from broker.offload import ManagedLedgerOffloader

log = logging.getLogger(__name__)

# A write that failed is resubmitted to a new ledger at most this many times.
MAX_ADD_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class ManagedLedgerConfig:
    max_entries_per_ledger: int = 50_000
    max_size_per_ledger_bytes: int = 2048 * 1024 * 1024
    max_ledger_rollover_time_ms: int = 240 * 60 * 1000
    ensemble_size: int = 1
    write_quorum: int = 1
    ack_quorum: int = 1


def _ignore() -> None:
    pass


@dataclass(frozen=True, slots=True)
class ManagedLedgerListener:
    """What a managed ledger tells its owners, given to its constructor. Each runs on the
    event loop, must not block, and must not raise.

    ``new_entries``: entries were confirmed (once per entry, on the add path: keep it cheap).
    ``fenced``: another owner changed the ledger list or recovered the current ledger; called
    once, after which every add and list change fails with ``TopicFencedError``.
    """

    new_entries: Callable[[], None] = _ignore
    fenced: Callable[[], None] = _ignore


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
        listener: ManagedLedgerListener | None = None,
        quorums: Callable[[], Awaitable[tuple[int, int, int]]] | None = None,
        offloader: Offloader | None = None,
        offload: Callable[[ManagedLedger], ManagedLedgerOffloader] | None = None,
    ) -> None:
        self.name = name  # tenant/namespace/persistent/topic
        self.config = config
        self._manager = manager
        self._cache = cache
        listener = listener or ManagedLedgerListener()
        self._on_new_entries = listener.new_entries
        self._on_fenced = listener.fenced
        # E/Qw/Qa for each new ledger, read at creation (a namespace policy can change them);
        # None: the config's.
        self._quorums = quorums
        self.ledger_list = LedgerList(manager.store, name, self._fence)
        self._reader = EntryReader(name, manager, cache, self.ledger_list, offloader)
        self.offload_state = OffloadState(
            name,
            self.ledger_list,
            self._reader,
            offloader,
            delete_ledger=self._delete_ledger_quietly,
            rollover_in_progress=lambda: self._rolling,
        )
        # The ledger open for writing, what was issued to it, the adds waiting for a rollover.
        self._current: LedgerHandle | None = None
        self._current_created_ms = 0
        self._issued_entries = 0
        self._issued_bytes = 0
        self._queue: list[_QueuedAdd] = []
        self._resubmit: list[_QueuedAdd] = []
        self._rolling: asyncio.Task[None] | None = None
        self._fenced: BaseException | None = None
        self._closed = False
        self.last_confirmed: Position = (-1, -1)
        self.entries_added = 0
        # The offload scheduler (None: offloading is off); closed first by close().
        self.offload = offload(self) if offload is not None else None

    @property
    def manager(self) -> LedgerManager:
        return self._manager

    @property
    def ledgers(self) -> list[LedgerInfo]:
        return self.ledger_list.ledgers

    @property
    def is_fenced(self) -> bool:
        return self._fenced is not None

    # ---- open / metadata ---------------------------------------------------------------

    async def open(self) -> None:
        ledgers = self.ledger_list
        await ledgers.load()
        if ledgers.ledgers:
            last = ledgers.ledgers[-1]
            metadata = await self._manager.read_metadata(last.ledger_id)
            if metadata is not None and metadata.state != STATE_CLOSED:
                metadata = await self._manager.open_and_recover(last.ledger_id)
            if metadata is not None:
                last.entries = metadata.last_entry_id + 1
                last.size_bytes = metadata.length_bytes
                self._reader.remember(metadata)
        empty = [info for info in ledgers.ledgers if info.entries == 0]
        ledgers.ledgers = [info for info in ledgers.ledgers if info.entries > 0]
        await create_ledger(self)
        for info in empty:
            await self._delete_ledger_quietly(info.ledger_id)
        for info in reversed(ledgers.ledgers[:-1]):
            self.last_confirmed = (info.ledger_id, info.entries - 1)
            break

    def ledger_info(self, ledger_id: int) -> LedgerInfo | None:
        return self.ledger_list.info(ledger_id)

    def _fence(self, exc: BaseException) -> BaseException:
        """Record that another owner took over (the first reason wins); returns the reason."""
        if self._fenced is None:
            self._fenced = exc
            log.warning("managed ledger %s fenced: %s", self.name, exc)
            self._on_fenced()
        return self._fenced

    def _write_to(self, handle: LedgerHandle, created_ms: int) -> None:
        """Make a ledger just recorded in the list the one open for writing."""
        self._current = handle
        self._current_created_ms = created_ms
        self._issued_entries = 0
        self._issued_bytes = 0

    async def _delete_ledger_quietly(self, ledger_id: int) -> None:
        self._reader.forget(ledger_id)
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
        info = self.ledger_list.ledgers[-1]
        if info.ledger_id == handle.ledger_id:
            info.entries = entry_id + 1
            info.size_bytes += len(op.data)
        position = (handle.ledger_id, entry_id)
        self.last_confirmed = position
        self.entries_added += 1
        self._cache.put(self.name, Entry(handle.ledger_id, entry_id, op.data, op.num_messages))
        if not op.future.done():
            op.future.set_result(position)
        self._on_new_entries()

    def _ensure_rollover(self) -> None:
        if self._rolling is None and not self._closed:
            self._rolling = asyncio.get_running_loop().create_task(RolloverOp(self).run())

    def maybe_rollover_by_time(self) -> None:
        if (
            self._current is not None
            and self._rolling is None
            and self._issued_entries > 0
            and int(time.time() * 1000) - self._current_created_ms
            >= self.config.max_ledger_rollover_time_ms
        ):
            self._ensure_rollover()

    # ---- reads and positions (``LedgerList`` and ``EntryReader``) --------------------------

    def first_position(self) -> Position:
        return self.ledger_list.first_position()

    def end_position(self) -> Position:
        return self.ledger_list.end_position()

    def next_position(self, position: Position) -> Position:
        return self.ledger_list.next_position(position)

    def contains(self, position: Position) -> bool:
        return self.ledger_list.contains(position)

    def entries_between(self, start_exclusive: Position, end_inclusive: Position) -> int:
        return self.ledger_list.entries_between(start_exclusive, end_inclusive)

    @property
    def total_entries(self) -> int:
        return self.ledger_list.total_entries

    @property
    def total_size_bytes(self) -> int:
        return self.ledger_list.total_size_bytes

    async def read_entry(self, position: Position) -> Entry | None:
        entries = await self.read_entries(position, 1)
        return entries[0] if entries and entries[0].position == position else None

    async def read_entries(
        self, start: Position, max_entries: int, max_bytes: int = READ_MAX_BYTES
    ) -> list[Entry]:
        """Read up to ``max_entries`` confirmed entries of one ledger from ``start`` on."""
        return await self._reader.read(start, max_entries, max_bytes, self._current)

    # ---- trimming and shutdown -----------------------------------------------------------

    async def trim(self, slowest_mark_delete: Position | None) -> int:
        """Delete ledgers every durable cursor has fully consumed; returns how many."""
        if self._rolling is not None:
            return 0
        return await trim_ledgers(
            self.ledger_list, self.offload_state, self._delete_ledger_quietly, slowest_mark_delete
        )

    async def close(self) -> None:
        self._closed = True
        if self.offload is not None:
            try:
                await self.offload.close()
            except Exception as exc:
                log.warning("closing background work of %s: %s", self.name, exc)
        await self._reader.close()
        if self._rolling is not None:
            await asyncio.gather(self._rolling, return_exceptions=True)
        if self._current is not None and not self._current.failed:
            try:
                metadata = await self._current.close()
                info = self.ledger_list.ledgers[-1]
                info.entries = metadata.last_entry_id + 1
                info.size_bytes = metadata.length_bytes
                await self.ledger_list.store()
            except (BookieError, LedgerClientError, TopicFencedError) as exc:
                log.warning("closing %s: %s", self.name, exc)
        self._current = None

    async def delete(self) -> None:
        await self.close()
        for info in self.ledgers:
            await self._delete_ledger_quietly(info.ledger_id)
            await self.offload_state.delete_objects_quietly(info)
        await self.ledger_list.delete()
