"""Key_Shared subscriptions: which consumer a key's entries go to.

An entry's key is its ``sticky_key`` (its first message's partition key); its hash is
Murmur3 x86 32 of the key's UTF-8 bytes (seed 0, sign bit cleared) modulo 65536, Pulsar's
``StickyKeyConsumerSelector`` range. Two selectors, as Pulsar's:

- ``ConsistentHashSelector`` (AUTO_SPLIT): each consumer owns ``POINTS_PER_CONSUMER`` points
  of a ring over the range; a hash goes to the consumer of the first point at or after it, so
  a joining or leaving consumer moves only the keys next to its points.
- ``StickySelector`` (STICKY): each consumer names the ranges it owns; ranges may not overlap,
  and a hash nobody owns waits.

The ordering rule for joining consumers (Pulsar's "recently joined consumers") lives in the
subscription, which knows the cursor.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence
from typing import Generic, Protocol, TypeVar

import mmh3

from broker.errors import InvalidRequestError, PreconditionError

HASH_RANGE_SIZE = 65_536
# Pulsar's subscriptionKeySharedConsistentHashingReplicaPoints.
POINTS_PER_CONSUMER = 100
MAX_STICKY_RANGES = 64
_INT32_MAX = 0x7FFF_FFFF


def key_hash(key: str) -> int:
    """The key's place in the 0..65535 hash range."""
    return (int(mmh3.hash(key.encode(), 0, signed=False)) & _INT32_MAX) % HASH_RANGE_SIZE


class Named(Protocol):
    name: str


C = TypeVar("C", bound=Named)


class ConsistentHashSelector(Generic[C]):
    """AUTO_SPLIT: consistent hashing over the connected consumers."""

    def __init__(self) -> None:
        self._points: list[int] = []
        self._owners: list[C] = []
        self._serial = 0  # makes the points of two consumers of one name distinct

    def add(self, consumer: C) -> None:
        self._serial += 1
        for i in range(POINTS_PER_CONSUMER):
            point = key_hash(f"{consumer.name}#{self._serial}#{i}")
            index = bisect.bisect_left(self._points, point)
            self._points.insert(index, point)
            self._owners.insert(index, consumer)

    def remove(self, consumer: C) -> None:
        kept = [
            (p, c) for p, c in zip(self._points, self._owners, strict=True) if c is not consumer
        ]
        self._points = [p for p, _ in kept]
        self._owners = [c for _, c in kept]

    def select(self, hash_value: int) -> C | None:
        if not self._points:
            return None
        index = bisect.bisect_left(self._points, hash_value)
        return self._owners[index % len(self._owners)]


class StickySelector(Generic[C]):
    """STICKY: each consumer owns the ranges it named."""

    def __init__(self) -> None:
        self._ranges: list[tuple[int, int, C]] = []  # sorted by start

    def add(self, consumer: C, ranges: Sequence[tuple[int, int]]) -> None:
        for start, end in ranges:
            for other_start, other_end, other in self._ranges:
                if start <= other_end and other_start <= end:
                    raise PreconditionError(
                        f"hash range {start}..{end} overlaps {other_start}..{other_end} of "
                        f"consumer {other.name!r}"
                    )
        for start, end in ranges:
            bisect.insort(self._ranges, (start, end, consumer), key=lambda r: r[0])

    def remove(self, consumer: C) -> None:
        self._ranges = [r for r in self._ranges if r[2] is not consumer]

    def select(self, hash_value: int) -> C | None:
        index = bisect.bisect_right([r[0] for r in self._ranges], hash_value) - 1
        if index >= 0:
            start, end, consumer = self._ranges[index]
            if start <= hash_value <= end:
                return consumer
        return None


def check_sticky_ranges(ranges: Sequence[tuple[int, int]]) -> None:
    """A STICKY consumer's ranges: 1..64 of them, each within 0..65535, not overlapping."""
    if not 1 <= len(ranges) <= MAX_STICKY_RANGES:
        raise InvalidRequestError(
            f"a STICKY Key_Shared consumer names 1..{MAX_STICKY_RANGES} hash ranges, "
            f"got {len(ranges)}"
        )
    ordered = sorted(ranges)
    for start, end in ordered:
        if not 0 <= start <= end < HASH_RANGE_SIZE:
            raise InvalidRequestError(
                f"hash range {start}..{end} is not within 0..{HASH_RANGE_SIZE - 1}"
            )
    for (_, end), (start, _) in itertools.pairwise(ordered):
        if start <= end:
            raise InvalidRequestError("a consumer's hash ranges overlap")
