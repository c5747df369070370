"""The broker's entry cache on its own: bounded in bytes, oldest evicted first."""

from __future__ import annotations

from broker.managed_ledger import Entry, EntryCache


def entry(ledger_id: int, entry_id: int, size: int) -> Entry:
    return Entry(ledger_id, entry_id, bytes(size), 1)


def test_bound_in_bytes_evicts_the_oldest_first() -> None:
    cache = EntryCache(100)
    for entry_id in range(5):
        cache.put("t", entry(1, entry_id, 30))
    assert cache.size_bytes == 90 <= cache.max_size_bytes
    assert cache.get("t", 1, 0) is None and cache.get("t", 1, 1) is None
    assert cache.get("t", 1, 2) == entry(1, 2, 30)
    assert (cache.hits, cache.misses) == (1, 2)


def test_an_entry_larger_than_the_cache_is_not_kept() -> None:
    cache = EntryCache(100)
    cache.put("t", entry(1, 0, 60))
    cache.put("t", entry(1, 1, 101))
    assert cache.size_bytes == 60 and cache.get("t", 1, 1) is None
    assert EntryCache(0).size_bytes == 0


def test_a_second_put_of_a_position_is_ignored() -> None:
    cache = EntryCache(100)
    cache.put("t", entry(1, 0, 10))
    cache.put("t", Entry(1, 0, b"other", 1))
    assert cache.size_bytes == 10 and cache.get("t", 1, 0) == entry(1, 0, 10)
