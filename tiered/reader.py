"""Reading an offloaded ledger: ranged GETs of whole blocks, a bounded block cache, read-ahead.

``OffloadedLedger`` is opened from its index object (checked against the CRC32C the managed
ledger recorded) and serves ``read(first, last, max_bytes)`` like a bookie ``LedgerReader``:
a run of consecutive entries as ``LedgerEntry`` values. A missing block is fetched together
with the blocks after it, up to ``read_window_bytes``, in one ranged GET; each block's
checksum and entry ids are checked before it enters the cache, so nothing unverified is ever
served. After a read, the next window is fetched in the background (read-ahead) by a task the
ledger owns; ``close()`` cancels it.

``BlockCache`` is shared by every offloaded ledger of a broker and bounded in bytes (least
recently used blocks are evicted first).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict

from bookie.api import LedgerEntry
from bookie.errors import NoSuchEntryError
from tiered.format import OffloadIndex, decode_block
from tiered.store import ObjectStore

log = logging.getLogger(__name__)

BlockEntries = list[tuple[int, bytes]]


class BlockCache:
    """Decoded, verified blocks by ``(data key, block position)``; LRU, bounded in bytes."""

    def __init__(self, max_size_bytes: int) -> None:
        self.max_size_bytes = max_size_bytes
        self.size_bytes = 0
        self._blocks: OrderedDict[tuple[str, int], tuple[BlockEntries, int]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, data_key: str, block: int) -> BlockEntries | None:
        item = self._blocks.get((data_key, block))
        if item is None:
            self.misses += 1
            return None
        self.hits += 1
        self._blocks.move_to_end((data_key, block))
        return item[0]

    def contains(self, data_key: str, block: int) -> bool:
        return (data_key, block) in self._blocks

    def put(self, data_key: str, block: int, entries: BlockEntries, size_bytes: int) -> None:
        if size_bytes > self.max_size_bytes or (data_key, block) in self._blocks:
            return
        self._blocks[(data_key, block)] = (entries, size_bytes)
        self.size_bytes += size_bytes
        while self.size_bytes > self.max_size_bytes:
            _, (_, evicted) = self._blocks.popitem(last=False)
            self.size_bytes -= evicted

    def invalidate(self, data_key: str) -> None:
        for key in [k for k in self._blocks if k[0] == data_key]:
            self.size_bytes -= self._blocks.pop(key)[1]


class OffloadedLedger:
    """A reader of one offloaded ledger. Lifecycle: ``Offloader.open_ledger()`` → ``read()``
    any number of times, from any number of coroutines → ``close()``."""

    def __init__(
        self,
        store: ObjectStore,
        cache: BlockCache,
        index: OffloadIndex,
        data_key: str,
        read_window_bytes: int,
    ) -> None:
        self._store = store
        self._cache = cache
        self.index = index
        self.data_key = data_key
        self._window_bytes = read_window_bytes
        # The read-ahead in flight: the block positions it covers and its task.
        self._prefetch: tuple[int, int, asyncio.Task[None]] | None = None
        self._closed = False
        self.fetches = 0  # ranged GETs issued (reads and read-ahead)

    @property
    def ledger_id(self) -> int:
        return self.index.ledger_id

    @property
    def last_entry_id(self) -> int:
        return self.index.last_entry_id

    async def read(
        self, first_entry_id: int, last_entry_id: int, max_bytes: int = 0
    ) -> list[LedgerEntry]:
        """Entries ``first_entry_id``.. at most ``last_entry_id``, consecutive, at least one;
        the run ends early after ``max_bytes`` of payload (0: no limit)."""
        if self._closed:
            raise RuntimeError(f"offloaded ledger {self.ledger_id} reader is closed")
        if first_entry_id < 0 or last_entry_id < first_entry_id:
            raise ValueError(f"invalid entry range {first_entry_id}..{last_entry_id}")
        if first_entry_id > self.last_entry_id:
            raise NoSuchEntryError(
                f"offloaded ledger {self.ledger_id} ends at entry {self.last_entry_id}"
            )
        last_entry_id = min(last_entry_id, self.last_entry_id)
        result: list[LedgerEntry] = []
        size = 0
        position = self.index.find_block(first_entry_id)
        touched = position
        next_id = first_entry_id
        while next_id <= last_entry_id and position < len(self.index.blocks):
            touched = position
            for entry_id, payload in await self._block(position):
                if entry_id < next_id:
                    continue
                if entry_id > last_entry_id:
                    break
                assert entry_id == next_id, (entry_id, next_id)
                result.append(LedgerEntry(entry_id, self.last_entry_id, payload))
                size += len(payload)
                next_id += 1
                if max_bytes and size >= max_bytes:
                    break
            if max_bytes and size >= max_bytes:
                break
            position += 1
        # A sequential reader needs the block after the last one it touched next.
        self._read_ahead(touched + 1)
        return result

    async def _block(self, position: int) -> BlockEntries:
        entries = self._cache.get(self.data_key, position)
        if entries is not None:
            return entries
        prefetch = self._prefetch
        if prefetch is not None and prefetch[0] <= position <= prefetch[1]:
            # Wait for the read-ahead instead of asking for the same bytes twice; if it
            # failed, fetch again below (with the store's retries).
            await asyncio.wait([prefetch[2]])
            entries = self._cache.get(self.data_key, position)
            if entries is not None:
                return entries
        fetched = await self._fetch_window(position)
        return fetched[position]

    def _window(self, position: int) -> tuple[int, int]:
        return next(self.index.windows(position, self._window_bytes))

    async def _fetch_window(self, position: int) -> dict[int, BlockEntries]:
        first, last = self._window(position)
        blocks = self.index.blocks
        start = blocks[first].offset
        length = blocks[last].offset + blocks[last].length - start
        self.fetches += 1
        data = await self._store.get_range(self.data_key, start, length)
        view = memoryview(data)
        result: dict[int, BlockEntries] = {}
        for index in range(first, last + 1):
            ref = blocks[index]
            relative = ref.offset - start
            entries = decode_block(view[relative : relative + ref.length], ref)
            result[index] = entries
            self._cache.put(self.data_key, index, entries, ref.length)
        return result

    def _read_ahead(self, position: int) -> None:
        """Start fetching the window at ``position`` unless it is cached or being fetched."""
        if self._closed or not 0 <= position < len(self.index.blocks):
            return
        if self._prefetch is not None and not self._prefetch[2].done():
            return
        if self._cache.contains(self.data_key, position):
            return
        first, last = self._window(position)
        task = asyncio.get_running_loop().create_task(self._prefetch_window(first))
        self._prefetch = (first, last, task)

    async def _prefetch_window(self, position: int) -> None:
        try:
            await self._fetch_window(position)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # The read that needs these blocks fetches them again and reports the error.
            log.debug("read-ahead of ledger %d failed: %s", self.ledger_id, exc)

    async def close(self) -> None:
        self._closed = True
        if self._prefetch is not None:
            task = self._prefetch[2]
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self._prefetch = None
