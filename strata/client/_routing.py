"""Which partition a message goes to: pure functions and state, no I/O.

Keyed messages: ``partition_for_key(key, n)`` is pulsar's ``Murmur3_32Hash`` scheme, exactly
(``Murmur3_32Hash.cc`` in pulsar-client-cpp, ``Murmur3_32Hash`` in the Java client):
Murmur3 x86 32-bit of the key's UTF-8 bytes with seed 0, its sign bit cleared, modulo the
partition count::

    (mmh3.hash(key, 0, signed=False) & 0x7FFFFFFF) % num_partitions

so a pulsar client set to ``HashingScheme.Murmur3_32Hash`` puts every key in the same
partition as Strata's SDK. (The Java client's default, ``JavaStringHash``, differs.)

Messages without a key: ``RoundRobinRouter``, pulsar's batch-aware round robin
(``RoundRobinMessageRouter``): without batching each message goes to the next partition;
with batching the router stays on one partition until a batch's worth of messages or bytes
went there, or the batch delay has passed, so that round robin does not cut every batch N
ways.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import mmh3

from strata.client._options import DEFAULT_BATCH_DELAY_MS

_INT32_MAX = 0x7FFF_FFFF


def partition_for_key(key: str, num_partitions: int) -> int:
    """The partition of a message with ``key`` (pulsar's Murmur3_32Hash scheme)."""
    assert num_partitions > 0
    return (int(mmh3.hash(key, 0, signed=False)) & _INT32_MAX) % num_partitions


class RoundRobinRouter:
    """Spreads key-less messages over ``num_partitions`` partitions, one batch at a time.

    ``choose(size_bytes)`` gives the partition of the next message. The first partition is
    random, so that many producers do not all start on partition 0.
    """

    __slots__ = (
        "_batching",
        "_bytes",
        "_clock",
        "_current",
        "_max_bytes",
        "_max_delay_s",
        "_max_messages",
        "_messages",
        "_num_partitions",
        "_switched_at",
    )

    def __init__(
        self,
        num_partitions: int,
        *,
        batching_enabled: bool = True,
        batching_max_messages: int = 1000,
        batching_max_bytes: int = 128 * 1024,
        batching_max_publish_delay_ms: float = DEFAULT_BATCH_DELAY_MS,
        clock: Callable[[], float] = time.monotonic,
        first_partition: int | None = None,
    ) -> None:
        assert num_partitions > 0
        self._num_partitions = num_partitions
        self._batching = batching_enabled and batching_max_messages > 1
        self._max_messages = batching_max_messages
        self._max_bytes = batching_max_bytes
        self._max_delay_s = batching_max_publish_delay_ms / 1000
        self._clock = clock
        if first_partition is None:
            first_partition = random.randrange(num_partitions)
        # Unbatched: the partition of the previous message. Batched: the current partition.
        self._current = first_partition % num_partitions
        if not self._batching:
            self._current -= 1
        self._messages = 0
        self._bytes = 0
        self._switched_at = clock()

    def choose(self, size_bytes: int) -> int:
        if not self._batching:
            self._current = (self._current + 1) % self._num_partitions
            return self._current
        if self._messages:
            full = (
                self._messages >= self._max_messages
                or self._bytes + size_bytes > self._max_bytes
                or self._clock() - self._switched_at >= self._max_delay_s
            )
            if full:
                self._current = (self._current + 1) % self._num_partitions
                self._messages = 0
                self._bytes = 0
        if not self._messages:
            self._switched_at = self._clock()
        self._messages += 1
        self._bytes += size_bytes
        return self._current
