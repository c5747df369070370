"""Reads of a managed ledger's confirmed entries, wherever they are.

An entry is read from the broker's entry cache when it is there; else from the bookies
(``LedgerReader`` over the ledger's metadata, cached once the ledger is closed); else, once
the ledger's bookie copy is deleted (offload state BOOKIE_DELETED), from object storage
through an ``OffloadedLedger`` reader — same positions, same bytes. A read that fails on the
bookies because the copy was deleted meanwhile goes to the offloaded copy.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

from bookie.errors import BookieError
from bookie.ledger import (
    STATE_CLOSED,
    LedgerClientError,
    LedgerHandle,
    LedgerManager,
    LedgerMetadata,
    LedgerReader,
)
from broker.entry_format import header_of
from broker.errors import CorruptDataError, ServiceUnavailableError
from broker.managed_ledger.entry_cache import Entry, EntryCache
from broker.managed_ledger.ledger_list import LedgerInfo, LedgerList, Position
from tiered import OffloadedLedger, Offloader

log = logging.getLogger(__name__)

READ_MAX_BYTES = 4 * 1024 * 1024
# Readers of offloaded ledgers kept open per managed ledger (each holds its index in memory).
MAX_OPEN_OFFLOADED_LEDGERS = 8


class EntryReader:
    """The one reader of a managed ledger: entry cache, bookies, offloaded ledgers.

    Owns the metadata of closed ledgers it has seen (``remember``) and up to
    ``MAX_OPEN_OFFLOADED_LEDGERS`` open readers of offloaded ledgers, least recently used
    closed first. ``forget`` / ``close_offloaded`` drop a ledger that left the list;
    ``close()`` closes every offloaded reader.
    """

    def __init__(
        self,
        name: str,
        manager: LedgerManager,
        cache: EntryCache,
        ledgers: LedgerList,
        offloader: Offloader | None,
    ) -> None:
        self._name = name
        self._manager = manager
        self._cache = cache
        self._list = ledgers
        self._offloader = offloader
        self._metadata_cache: dict[int, LedgerMetadata] = {}
        self._offloaded: OrderedDict[int, OffloadedLedger] = OrderedDict()

    def remember(self, metadata: LedgerMetadata) -> None:
        """Keep the metadata of a closed ledger: it no longer changes."""
        self._metadata_cache[metadata.ledger_id] = metadata

    def forget(self, ledger_id: int) -> None:
        """Drop the metadata of a ledger about to be deleted from the bookies (its entries
        age out of the entry cache: see ``EntryCache``)."""
        self._metadata_cache.pop(ledger_id, None)

    async def read(
        self,
        start: Position,
        max_entries: int,
        max_bytes: int,
        writing: LedgerHandle | None,
    ) -> list[Entry]:
        """Up to ``max_entries`` confirmed entries of one ledger from ``start`` on (``writing``
        is the ledger open for writing, whose metadata is the handle's)."""
        ledger_id, entry_id = self._list.normalize(start)
        info = self._list.info(ledger_id)
        if info is None or entry_id >= info.entries or max_entries <= 0:
            return []
        last = min(info.entries - 1, entry_id + max_entries - 1)
        result: list[Entry] = []
        size = 0
        next_id = entry_id
        while next_id <= last and size < max_bytes:
            cached = self._cache.get(self._name, ledger_id, next_id)
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
                    metadata = await self._metadata(ledger_id, writing)
                    stored = await LedgerReader(self._manager, metadata).read(next_id, last)
                except (BookieError, LedgerClientError, ServiceUnavailableError):
                    if info.offload is not None and info.offload.bookie_deleted:
                        continue  # deleted from the bookies meanwhile: read the offloaded copy
                    raise
            for item in stored:
                entry = Entry(ledger_id, item.entry_id, item.payload, *header_of(item.payload))
                result.append(entry)
                size += len(item.payload)
                next_id = item.entry_id + 1
                if size >= max_bytes:
                    break
        return result

    async def _metadata(self, ledger_id: int, writing: LedgerHandle | None) -> LedgerMetadata:
        if writing is not None and writing.ledger_id == ledger_id:
            return writing.metadata
        metadata = self._metadata_cache.get(ledger_id)
        if metadata is None:
            metadata = await self._manager.read_metadata(ledger_id)
            if metadata is None:
                raise ServiceUnavailableError(f"ledger {ledger_id} of {self._name} has no metadata")
            if metadata.state == STATE_CLOSED:
                self._metadata_cache[ledger_id] = metadata
        return metadata

    async def _offloaded_ledger(self, info: LedgerInfo) -> OffloadedLedger:
        """The open reader of an offloaded ledger (opened on first use, a few kept open)."""
        context = info.offload
        assert context is not None
        reader = self._offloaded.get(info.ledger_id)
        if reader is not None:
            self._offloaded.move_to_end(info.ledger_id)
            return reader
        offloader = self._offloader
        if offloader is None:
            raise ServiceUnavailableError(
                f"ledger {info.ledger_id} of {self._name} is offloaded ({context.driver}) and "
                "this broker has no offloader configured (--offload-driver)"
            )
        if context.driver != offloader.driver or context.location != offloader.location:
            raise ServiceUnavailableError(
                f"ledger {info.ledger_id} of {self._name} is offloaded to {context.driver} "
                f"{context.location}; this broker offloads to {offloader.driver} "
                f"{offloader.location}"
            )
        reader = await offloader.open_ledger(
            context.data_key, context.index_key, context.index_crc32c
        )
        if reader.last_entry_id != info.entries - 1:
            await reader.close()
            raise CorruptDataError(
                f"offloaded ledger {info.ledger_id} of {self._name} ends at entry "
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

    async def close_offloaded(self, ledger_id: int) -> None:
        reader = self._offloaded.pop(ledger_id, None)
        if reader is not None:
            await reader.close()

    async def close(self) -> None:
        for ledger_id in list(self._offloaded):
            await self.close_offloaded(ledger_id)
