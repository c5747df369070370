"""Key_Shared selectors: consistent hashing spreads keys and moves few on a join; sticky
ranges own their hashes and may not overlap."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from broker.errors import PreconditionError
from broker.key_shared import ConsistentHashSelector, StickySelector, key_hash


@dataclass(eq=False)
class Member:
    name: str


def test_key_hash_is_in_range_and_stable() -> None:
    assert all(0 <= key_hash(f"k{i}") < 65536 for i in range(1000))
    assert key_hash("orders-1") == key_hash("orders-1")


def test_consistent_hashing_spreads_keys_and_a_join_moves_few() -> None:
    selector: ConsistentHashSelector[Member] = ConsistentHashSelector()
    members = [Member(f"c{i}") for i in range(5)]
    for member in members:
        selector.add(member)
    hashes = [key_hash(f"key-{i}") for i in range(5000)]
    before = [selector.select(h) for h in hashes]
    counts = {m.name: sum(1 for b in before if b is m) for m in members}
    assert min(counts.values()) > 5000 / 5 * 0.5, counts
    joiner = Member("c5")
    selector.add(joiner)
    after = [selector.select(h) for h in hashes]
    moved = [(b, a) for b, a in zip(before, after, strict=True) if b is not a]
    assert all(a is joiner for _, a in moved)  # keys move only to the joiner
    assert len(moved) < 5000 / 6 * 1.6
    selector.remove(joiner)
    assert [selector.select(h) for h in hashes] == before


def test_sticky_ranges() -> None:
    selector: StickySelector[Member] = StickySelector()
    low, high = Member("low"), Member("high")
    selector.add(low, [(0, 100), (200, 300)])
    selector.add(high, [(101, 199)])
    assert selector.select(50) is low
    assert selector.select(150) is high
    assert selector.select(250) is low
    assert selector.select(301) is None
    with pytest.raises(PreconditionError, match=r"overlaps 200\.\.300 of consumer 'low'"):
        selector.add(Member("x"), [(300, 400)])
    selector.remove(low)
    assert selector.select(50) is None
