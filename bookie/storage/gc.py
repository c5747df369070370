"""Garbage collection planning: pure functions over segment sizes and live bytes.

The steps that touch the disk and the index live in
``bookie.storage.maintenance.GarbageCollector.run_once``, which explains why the order of those
steps is crash-safe.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class GcPlan:
    """Sealed segments to remove (no live bytes) and to compact (sparse), in that order."""

    remove: list[int] = field(default_factory=list)
    compact: list[int] = field(default_factory=list)


@dataclass(slots=True)
class GcReport:
    """What one garbage collection run did."""

    segments_removed: list[int] = field(default_factory=list)
    segments_compacted: list[int] = field(default_factory=list)
    bytes_copied: int = 0
    bytes_freed: int = 0


def plan_gc(
    sizes: dict[int, int],
    live: dict[int, int],
    *,
    below_segment_id: int,
    live_ratio: float,
    max_copy_bytes: int,
) -> GcPlan:
    """Choose segments among those with id < ``below_segment_id`` (sealed and wholly covered
    by the durable checkpoint): remove the ones without live bytes, compact the sparsest ones
    whose live fraction is under ``live_ratio``, copying at most ``max_copy_bytes``."""
    remove: list[int] = []
    candidates: list[tuple[float, int, int]] = []
    for segment_id, size in sizes.items():
        if segment_id >= below_segment_id:
            continue
        live_bytes = live.get(segment_id, 0)
        if live_bytes <= 0:
            remove.append(segment_id)
        elif size > 0 and live_bytes < live_ratio * size:
            candidates.append((live_bytes / size, segment_id, live_bytes))
    compact: list[int] = []
    budget = max_copy_bytes
    for _, segment_id, live_bytes in sorted(candidates):
        if live_bytes > budget:
            break
        compact.append(segment_id)
        budget -= live_bytes
    return GcPlan(sorted(remove), compact)
