"""The bookie's tail cache: the most recently added entries, so that tailing reads stay in memory.

``TailCache`` remembers entries as they become durable (``put``, called by
``bookie.storage.admission`` for every client add, never for compaction copies) and evicts the
oldest first (FIFO), bounded by ``read_cache_max_bytes`` and ``read_cache_max_entries``. The
entries live in each ledger's ``Ledger.cached`` dict, where ``bookie.storage.reads`` looks
them up without leaving the event loop; this class keeps the order and the byte count. Disk
reads do not fill it, so a catch-up reader cannot evict what the tailing readers need.

Lifecycle: one per open bookie, on its event loop; a deleted ledger's entries are dropped with
the ledger (the order list forgets them as they come up for eviction).
"""

from __future__ import annotations

from collections import deque

from bookie.storage.config import BookieStorageConfig
from bookie.storage.index import Ledger


class TailCache:
    """Recently added entries in FIFO order; see the module docstring."""

    def __init__(self, config: BookieStorageConfig) -> None:
        self._max_bytes = config.read_cache_max_bytes
        self._max_entries = config.read_cache_max_entries
        self._order: deque[tuple[Ledger, int, tuple[int, bytes]]] = deque()
        self._bytes = 0

    def put(self, ledger: Ledger, entry_id: int, lac: int, payload: bytes) -> None:
        if self._max_entries == 0 or len(payload) > self._max_bytes:
            return
        item = (lac, payload)
        ledger.cached[entry_id] = item
        order = self._order
        order.append((ledger, entry_id, item))
        self._bytes += len(payload)
        while self._bytes > self._max_bytes or len(order) > self._max_entries:
            old_ledger, old_entry_id, old_item = order.popleft()
            self._bytes -= len(old_item[1])
            if old_ledger.cached.get(old_entry_id) is old_item:
                del old_ledger.cached[old_entry_id]
