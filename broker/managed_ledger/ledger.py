"""``ManagedLedger``: one topic's log as a list of ledgers, and its write path.

A topic's entries are appended to its current ledger by its ``writer.LedgerWriter`` (the one
owner of the write path's state); when that ledger is full (entries, size or age) the managed
ledger rolls over to a new one (``rollover.RolloverOp``), and the list of ledgers is stored in
the metadata store by compare-and-set (``ledger_list.LedgerList``).

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
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bookie.errors import BookieError
from bookie.ledger import (
    STATE_CLOSED,
    LedgerClientError,
    LedgerHandle,
    LedgerManager,
    LedgerMetadata,
)
from broker.managed_ledger.entry_cache import Entry, EntryCache
from broker.managed_ledger.ledger_list import LedgerInfo, LedgerList, Position
from broker.managed_ledger.offload_state import OffloadState
from broker.managed_ledger.reader import READ_MAX_BYTES, EntryReader
from broker.managed_ledger.rollover import RolloverOp, create_ledger
from broker.managed_ledger.trim import NO_RETENTION, Retention, trim_ledgers
from broker.managed_ledger.writer import LedgerWriter
from strata.clock import now_ms
from strata.logging_setup import log_fields
from tiered import Offloader

if TYPE_CHECKING:
    from broker.offload import ManagedLedgerOffloader

log = logging.getLogger(__name__)


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
    ``fenced``: another owner changed the ledger list, recovered the current ledger or wrote
    one of the topic's cursors (``broker.cursor``); called once, after which every add and
    list change fails with ``TopicFencedError``.
    """

    new_entries: Callable[[], None] = _ignore
    fenced: Callable[[], None] = _ignore


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
        # E/Qw/Qa for each new ledger, read at creation (a namespace policy can change them);
        # None: the config's.
        self._quorums = quorums
        self.ledger_list = LedgerList(manager.store, name, self.fence)
        self._reader = EntryReader(name, manager, cache, self.ledger_list, offloader)
        self._writer = LedgerWriter(
            name,
            config,
            self.ledger_list,
            cache,
            listener or ManagedLedgerListener(),
            self._rollover,
            lambda: len(self._manager.live_bookies()),
        )
        # The add path's entry point, bound once (``add_entry`` runs once per entry).
        self._add = self._writer.add_entry
        self.offload_state = OffloadState(
            name,
            self.ledger_list,
            self._reader,
            offloader,
            delete_ledger=self.delete_ledger_quietly,
            rollover_in_progress=lambda: self._writer.rollover,
        )
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
        return self._writer.fenced is not None

    @property
    def last_confirmed(self) -> Position:
        """The position of the last confirmed entry; (-1, -1) before any."""
        return self._writer.last_confirmed

    @property
    def entries_added(self) -> int:
        """How many adds were confirmed since this managed ledger was opened."""
        return self._writer.entries_added

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
                last.timestamp_ms = last.timestamp_ms or now_ms()  # recovered: closed now
                self.remember_closed(metadata)
        empty = [info for info in ledgers.ledgers if info.entries == 0]
        ledgers.ledgers = [info for info in ledgers.ledgers if info.entries > 0]
        await create_ledger(self, self._writer)
        for info in empty:
            await self.delete_ledger_quietly(info.ledger_id)
        for info in reversed(ledgers.ledgers[:-1]):
            self._writer.last_confirmed = (info.ledger_id, info.entries - 1)
            break

    def ledger_info(self, ledger_id: int) -> LedgerInfo | None:
        return self.ledger_list.info(ledger_id)

    def fence(self, exc: BaseException) -> BaseException:
        """Record that another owner took over (the first reason wins, the listener hears it
        once); returns the reason. Every add and list change fails with it from then on."""
        return self._writer.fence(exc)

    async def new_ledger(self) -> LedgerHandle:
        """Create a ledger for this topic in the bookies, with the namespace's E/Qw/Qa (the
        config's when there is no namespace policy). It is not in the list yet: see
        ``rollover.create_ledger``."""
        cfg = self.config
        if self._quorums is not None:
            ensemble_size, write_quorum, ack_quorum = await self._quorums()
        else:
            ensemble_size, write_quorum, ack_quorum = (
                cfg.ensemble_size,
                cfg.write_quorum,
                cfg.ack_quorum,
            )
        return await self._manager.create_ledger(
            ensemble_size, write_quorum, ack_quorum, custom={"topic": self.name}
        )

    def remember_closed(self, metadata: LedgerMetadata) -> None:
        """Keep a closed ledger's final metadata for reads (no metadata store round trip)."""
        self._reader.remember(metadata)

    async def delete_ledger_quietly(self, ledger_id: int) -> None:
        """Delete a ledger already out of the list from the bookies; a failure is logged."""
        self._reader.forget(ledger_id)
        try:
            await self._manager.delete_ledger(ledger_id)
        except (BookieError, LedgerClientError, OSError) as exc:
            # The ledger is already out of the list; a leak of bookie space, never of data.
            log.warning(
                "could not delete ledger %d of %s: %s",
                ledger_id,
                self.name,
                exc,
                extra=log_fields(topic=self.name, ledger=ledger_id),
            )

    def _rollover(self) -> Coroutine[Any, Any, None]:
        """The coroutine of one rollover, run by the writer as its rollover task."""
        return RolloverOp(self, self._writer).run()

    # ---- writes (``LedgerWriter``) ---------------------------------------------------------

    def add_entry(
        self, data: bytes, num_messages: int, deliver_at_ms: int = 0
    ) -> asyncio.Future[Position]:
        """Append one entry; the future resolves to its position once it is durable."""
        return self._add(data, num_messages, deliver_at_ms)

    def maybe_rollover_by_time(self) -> None:
        """Roll over when the ledger open for writing has entries and reached its maximum age."""
        self._writer.maybe_rollover_by_time()

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
        return await self._reader.read(start, max_entries, max_bytes, self._writer.current)

    # ---- trimming and shutdown -----------------------------------------------------------

    async def trim(
        self, slowest_mark_delete: Position | None, retention: Retention = NO_RETENTION
    ) -> int:
        """Delete ledgers every durable cursor has fully consumed and the retention policy
        does not keep (``trim``); returns how many."""
        if self._writer.rollover is not None:
            return 0
        return await trim_ledgers(
            self.ledger_list,
            self.offload_state,
            self.delete_ledger_quietly,
            slowest_mark_delete,
            retention,
            now_ms(),
        )

    async def close(self) -> None:
        self._writer.begin_close()
        if self.offload is not None:
            try:
                await self.offload.close()
            except Exception as exc:
                log.warning(
                    "closing background work of %s: %s",
                    self.name,
                    exc,
                    extra=log_fields(topic=self.name),
                )
        await self._reader.close()
        await self._writer.close()

    async def delete(self) -> None:
        await self.close()
        for info in self.ledgers:
            await self.delete_ledger_quietly(info.ledger_id)
            await self.offload_state.delete_objects_quietly(info)
        await self.ledger_list.delete()
