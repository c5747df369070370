"""Delayed delivery: the entries of one subscription held back until their time.

A producer marks a batch (a delayed message travels as a batch of its own) with
``deliver_at_time_ms``; the broker stores it in the entry's header. A Shared subscription's
dispatcher puts an entry whose time has not come into its tracker instead of sending it, and
takes it back out when the time comes (``pop_due``), to be sent before new entries. Nothing
is persisted: after a restart or a failover the cursor's unacknowledged range is read again
and each delayed entry met is tracked again, so an entry is never delivered early and never
lost. The tracker holds positions only, at most ``max_entries``; when it is full the
dispatcher stops reading new entries until some fall due.
"""

from __future__ import annotations

import heapq

from broker.managed_ledger import Position

# Delayed entries one subscription tracks at most (~100 bytes each in memory).
MAX_DELAYED_ENTRIES_PER_SUBSCRIPTION = 1_000_000


class DelayedDeliveryTracker:
    """A heap of (delivery time, position), each position at most once."""

    def __init__(self, max_entries: int = MAX_DELAYED_ENTRIES_PER_SUBSCRIPTION) -> None:
        self.max_entries = max_entries
        self._heap: list[tuple[int, Position]] = []
        self._positions: set[Position] = set()

    def __len__(self) -> int:
        return len(self._positions)

    @property
    def is_full(self) -> bool:
        return len(self._positions) >= self.max_entries

    def add(self, position: Position, deliver_at_ms: int) -> None:
        if position not in self._positions:
            self._positions.add(position)
            heapq.heappush(self._heap, (deliver_at_ms, position))

    def pop_due(self, now_ms: int) -> list[Position]:
        """The positions whose time has come, in time order, removed from the tracker."""
        due = []
        heap = self._heap
        while heap and heap[0][0] <= now_ms:
            position = heapq.heappop(heap)[1]
            self._positions.discard(position)
            due.append(position)
        return due

    def pop_all(self) -> list[Position]:
        """Every tracked position (a subscription that no longer delays), in time order."""
        due = [position for _, position in sorted(self._heap)]
        self._heap.clear()
        self._positions.clear()
        return due

    def next_due_ms(self) -> int | None:
        return self._heap[0][0] if self._heap else None
