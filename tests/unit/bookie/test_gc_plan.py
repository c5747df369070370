"""Garbage collection planning."""

from __future__ import annotations

from bookie.storage.gc import plan_gc


def test_only_segments_below_the_mark_are_candidates() -> None:
    plan = plan_gc(
        {1: 100, 2: 100, 3: 100, 4: 100},
        {2: 10, 4: 0},
        below_segment_id=3,
        live_ratio=0.5,
        max_copy_bytes=1000,
    )
    assert plan.remove == [1]
    assert plan.compact == [2]


def test_dense_segments_are_kept_and_copying_is_bounded() -> None:
    plan = plan_gc(
        {1: 100, 2: 100, 3: 100, 4: 100},
        {1: 90, 2: 30, 3: 10, 4: 40},
        below_segment_id=10,
        live_ratio=0.5,
        max_copy_bytes=45,
    )
    assert plan.remove == []
    assert plan.compact == [3, 2]  # sparsest first, until the copy budget is spent
