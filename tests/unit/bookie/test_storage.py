"""The storage engine's add, read, fence, delete and long-poll paths."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bookie.api import LedgerState
from bookie.errors import (
    BadRequestError,
    BookieIOError,
    BookieUnavailableError,
    LedgerDeletedError,
    LedgerFencedError,
    NoSuchEntryError,
    NoSuchLedgerError,
)
from bookie.storage import Bookie, BookieStorageConfig
from bookie.storage.index import Ledger
from bookie.storage.tail_cache import TailCache
from tests.unit.bookie.support import KEY, add_range, make_config, opened, payload_for


async def test_add_and_read_round_trip(tmp_path: Path) -> None:
    async with opened(make_config(tmp_path)) as bookie:
        await add_range(bookie, 1, 0, 9)
        entries = await bookie.read_entries(1, 0, 9)
        assert [e.entry_id for e in entries] == list(range(10))
        assert [e.last_add_confirmed for e in entries] == list(range(-1, 9))
        assert all(e.payload == payload_for(1, e.entry_id) for e in entries)
        assert await bookie.read_last_add_confirmed(1) == LedgerState(8, 9, False)
    # The same from disk (the tail cache is empty after a reopen).
    async with opened(make_config(tmp_path)) as bookie:
        entries = await bookie.read_entries(1, 3, 5)
        assert [(e.entry_id, e.payload) for e in entries] == [
            (i, payload_for(1, i)) for i in (3, 4, 5)
        ]
        assert bookie.stats.records_replayed_at_open == 0  # close() checkpointed


async def test_reads_from_disk_when_the_cache_is_disabled(tmp_path: Path) -> None:
    config = make_config(tmp_path, read_cache_max_entries=0)
    async with opened(config) as bookie:
        await add_range(bookie, 1, 0, 49, size=3000)
        entries = await bookie.read_entries(1, 0, 49, max_bytes=10**9)
        assert [e.payload for e in entries] == [payload_for(1, i, 3000) for i in range(50)]


async def test_large_entries_cross_segments(tmp_path: Path) -> None:
    config = make_config(tmp_path, journal_segment_size_bytes=8192, max_entry_size_bytes=100_000)
    async with opened(config) as bookie:
        await add_range(bookie, 4, 0, 5, size=70_000)
        assert len(bookie.segment_ids()) >= 6
    async with opened(config) as bookie:
        for entry_id in range(6):
            (entry,) = await bookie.read_entries(4, entry_id, entry_id)
            assert entry.payload == payload_for(4, entry_id, 70_000)


async def test_group_commit_shares_fsyncs(tmp_path: Path) -> None:
    config = make_config(tmp_path, fsync=True, journal_segment_size_bytes=64 * 1024 * 1024)
    async with opened(config) as bookie:
        fsyncs_before = bookie.journal_fsyncs
        await add_range(bookie, 1, 0, 199)
        fsyncs = bookie.journal_fsyncs - fsyncs_before
        assert 1 <= fsyncs < 50, fsyncs
        assert bookie.journal_batches <= fsyncs


async def test_group_commit_buffer_applies_backpressure(tmp_path: Path) -> None:
    config = make_config(tmp_path, group_commit_max_bytes=4096)
    async with opened(config) as bookie:
        await add_range(bookie, 1, 0, 99, size=1000)
        # Each batch holds at most about the buffer limit, so 100 KB took many batches.
        assert bookie.journal_batches >= 20
        assert len(await bookie.read_entries(1, 0, 99, max_bytes=10**9)) == 100


async def test_read_limits_and_gaps(tmp_path: Path) -> None:
    async with opened(make_config(tmp_path, max_read_entries=5)) as bookie:
        await add_range(bookie, 1, 0, 9)
        await bookie.add_entry(1, 12, 9, b"after a gap", KEY)
        assert [e.entry_id for e in await bookie.read_entries(1, 0, 100)] == [0, 1, 2, 3, 4]
        assert [e.entry_id for e in await bookie.read_entries(1, 8, 100)] == [8, 9]
        # max_bytes stops early but always returns at least one entry.
        assert len(await bookie.read_entries(1, 0, 4, max_bytes=250)) == 2
        assert len(await bookie.read_entries(1, 0, 4, max_bytes=1)) == 1
        with pytest.raises(NoSuchEntryError):
            await bookie.read_entries(1, 10, 12)
        with pytest.raises(NoSuchLedgerError):
            await bookie.read_entries(2, 0, 0)
        with pytest.raises(BadRequestError):
            await bookie.read_entries(1, 5, 4)
        with pytest.raises(NoSuchLedgerError):
            await bookie.read_last_add_confirmed(2)


async def test_add_validation(tmp_path: Path) -> None:
    async with opened(make_config(tmp_path, max_entry_size_bytes=1000)) as bookie:
        with pytest.raises(BadRequestError):
            await bookie.add_entry(1, 0, -1, b"x" * 1001, KEY)
        with pytest.raises(BadRequestError):
            await bookie.add_entry(-1, 0, -1, b"x", KEY)
        with pytest.raises(BadRequestError):
            await bookie.add_entry(1, -5, -1, b"x", KEY)
        with pytest.raises(BadRequestError):
            await bookie.add_entry(1, 0, -2, b"x", KEY)
        await bookie.add_entry(1, 0, -1, b"x" * 1000, KEY)
        with pytest.raises(BadRequestError):
            await bookie.add_entry(1, 1, 0, b"x", b"another key")


async def test_rewriting_an_entry_keeps_the_newest(tmp_path: Path) -> None:
    async with opened(make_config(tmp_path)) as bookie:
        await bookie.add_entry(1, 0, -1, b"first", KEY)
        await bookie.add_entry(1, 0, -1, b"first", KEY)  # idempotent
        await bookie.add_entry(1, 0, -1, b"second", KEY)
        assert (await bookie.read_entries(1, 0, 0))[0].payload == b"second"
    async with opened(make_config(tmp_path)) as bookie:
        assert (await bookie.read_entries(1, 0, 0))[0].payload == b"second"


async def test_fencing_refuses_adds_but_not_recovery_adds(tmp_path: Path) -> None:
    async with opened(make_config(tmp_path)) as bookie:
        await add_range(bookie, 1, 0, 4)
        state = await bookie.fence_ledger(1, KEY)
        assert state == LedgerState(3, 4, True)
        with pytest.raises(LedgerFencedError):
            await bookie.add_entry(1, 5, 4, b"late", KEY)
        await bookie.add_entry(1, 5, 4, b"recovered", KEY, recovery_add=True)
        with pytest.raises(BadRequestError):
            await bookie.fence_ledger(1, b"wrong key")
        assert (await bookie.read_last_add_confirmed(1)).fenced


async def test_fence_covers_adds_admitted_before_it(tmp_path: Path) -> None:
    async with opened(make_config(tmp_path)) as bookie:
        adds = [asyncio.ensure_future(bookie.add_entry(1, i, i - 1, b"x", KEY)) for i in range(20)]
        await asyncio.sleep(0)  # the adds are admitted
        state = await bookie.fence_ledger(1, KEY)
        await asyncio.gather(*adds)
        assert state.last_entry_id == 19


async def test_fencing_survives_restart(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with opened(config, checkpoint=False) as bookie:
        await add_range(bookie, 1, 0, 2)
        await bookie.fence_ledger(1, KEY)
        # A ledger this bookie never saw can be fenced too (recovery does that).
        assert await bookie.fence_ledger(2, b"other") == LedgerState(-1, -1, True)
    for _ in range(2):  # once from the journal replay, once from the checkpoint written then
        async with opened(config) as bookie:
            assert await bookie.read_last_add_confirmed(1) == LedgerState(1, 2, True)
            with pytest.raises(LedgerFencedError):
                await bookie.add_entry(1, 3, 2, b"late", KEY)
            with pytest.raises(LedgerFencedError):
                await bookie.add_entry(2, 0, -1, b"late", b"other")
            with pytest.raises(BadRequestError):
                await bookie.fence_ledger(1, b"wrong key")


async def test_delete_ledger(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with opened(config, checkpoint=False) as bookie:
        await add_range(bookie, 1, 0, 2)
        await add_range(bookie, 2, 0, 2)
        await bookie.delete_ledger(1)
        await bookie.delete_ledger(1)  # idempotent
        await bookie.delete_ledger(3)  # never seen here: remembered as deleted
        with pytest.raises(LedgerDeletedError):
            await bookie.read_entries(1, 0, 0)
        with pytest.raises(LedgerDeletedError):
            await bookie.add_entry(1, 3, 2, b"x", KEY)
        with pytest.raises(LedgerDeletedError):
            await bookie.add_entry(3, 0, -1, b"x", KEY)
    async with opened(config) as bookie:
        with pytest.raises(LedgerDeletedError):
            await bookie.read_last_add_confirmed(1)
        assert len(await bookie.read_entries(2, 0, 2)) == 3


async def test_long_poll_wakes_on_a_higher_lac(tmp_path: Path) -> None:
    async with opened(make_config(tmp_path)) as bookie:
        await add_range(bookie, 1, 0, 2)  # LAC 1
        assert (await bookie.read_last_add_confirmed(1, 0, timeout_ms=5000)).last_add_confirmed == 1
        poll = asyncio.ensure_future(bookie.read_last_add_confirmed(1, 1, timeout_ms=5000))
        await asyncio.sleep(0.01)
        assert not poll.done()
        await bookie.add_entry(1, 3, 1, b"same lac", KEY)  # LAC unchanged: keeps waiting
        await asyncio.sleep(0.01)
        assert not poll.done()
        loop = asyncio.get_running_loop()
        started = loop.time()
        await bookie.add_entry(1, 4, 3, b"raises lac", KEY)
        state = await asyncio.wait_for(poll, 1)
        assert state == LedgerState(3, 4, False)
        assert loop.time() - started < 1


async def test_long_poll_times_out_and_is_bounded(tmp_path: Path) -> None:
    config = make_config(tmp_path, max_lac_waiters_per_ledger=2)
    async with opened(config) as bookie:
        await add_range(bookie, 1, 0, 1)
        loop = asyncio.get_running_loop()
        started = loop.time()
        polls = [
            asyncio.ensure_future(bookie.read_last_add_confirmed(1, 0, timeout_ms=100))
            for _ in range(3)
        ]
        done, _ = await asyncio.wait(polls, timeout=0.05)
        assert len(done) == 1  # the third poll exceeded the bound and was answered at once
        states = await asyncio.gather(*polls)
        assert all(s.last_add_confirmed == 0 for s in states)
        assert 0.09 <= loop.time() - started < 2


async def test_long_poll_fails_when_the_ledger_is_deleted_or_the_bookie_closes(
    tmp_path: Path,
) -> None:
    bookie = await Bookie.open(make_config(tmp_path))
    try:
        await add_range(bookie, 1, 0, 1)
        await add_range(bookie, 2, 0, 1)
        deleted = asyncio.ensure_future(bookie.read_last_add_confirmed(1, 5, timeout_ms=5000))
        closing = asyncio.ensure_future(bookie.read_last_add_confirmed(2, 5, timeout_ms=5000))
        await asyncio.sleep(0.01)
        await bookie.delete_ledger(1)
        with pytest.raises(LedgerDeletedError):
            await deleted
    finally:
        await bookie.close()
    with pytest.raises(BookieUnavailableError):
        await closing
    with pytest.raises(BookieUnavailableError):
        await bookie.add_entry(1, 0, -1, b"x", KEY)
    with pytest.raises(BookieUnavailableError):
        await bookie.read_entries(2, 0, 0)


async def test_close_stops_every_task_the_bookie_started(tmp_path: Path) -> None:
    before = asyncio.all_tasks()
    bookie = await Bookie.open(make_config(tmp_path))
    started = {task.get_name() for task in asyncio.all_tasks() - before}
    assert started == {"bookie-journal-writer", "bookie-checkpoint", "bookie-gc"}
    await add_range(bookie, 1, 0, 3)
    await bookie.close()
    assert asyncio.all_tasks() - before == set()


def test_tail_cache_evicts_the_oldest_first(tmp_path: Path) -> None:
    cache = TailCache(make_config(tmp_path, read_cache_max_entries=3, read_cache_max_bytes=10))
    first, second = Ledger(1), Ledger(2)
    for entry_id in range(3):
        cache.put(first, entry_id, entry_id - 1, b"ab")
    cache.put(second, 0, -1, b"cd")  # a fourth entry: the oldest goes
    assert sorted(first.cached) == [1, 2] and sorted(second.cached) == [0]
    cache.put(second, 1, 0, b"efghijkl")  # 14 bytes over 10: the two oldest go
    assert first.cached == {} and sorted(second.cached) == [0, 1]
    cache.put(second, 2, 1, b"x" * 11)  # larger than the whole cache: never kept
    assert sorted(second.cached) == [0, 1]


async def test_a_data_directory_has_one_owner(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with opened(config):
        with pytest.raises(BookieIOError):
            await Bookie.open(config)


def test_config_validation(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        BookieStorageConfig(data_dir=tmp_path, journal_segment_size_bytes=100)
    with pytest.raises(ValueError):
        BookieStorageConfig(data_dir=tmp_path, compaction_live_ratio=1.5)
    with pytest.raises(ValueError):
        BookieStorageConfig(data_dir=tmp_path, group_commit_max_bytes=0)


def test_config_from_arguments_and_environment(tmp_path: Path) -> None:
    import argparse

    from strata.config_binding import ConfigBinding

    parser = argparse.ArgumentParser()
    binding = ConfigBinding(BookieStorageConfig)
    binding.add_to(parser, {"STRATA_JOURNAL_FSYNC": "false"})
    arguments = parser.parse_args(
        ["--data-dir", str(tmp_path), "--journal-segment-size-bytes", "8192"]
    )
    config = binding.build(parser, arguments)
    assert config.data_dir == tmp_path
    assert config.journal_segment_size_bytes == 8192
    assert config.fsync is False
    assert config.max_entry_size_bytes == 8 * 1024 * 1024


async def test_a_separate_journal_directory_holds_the_segments(tmp_path: Path) -> None:
    journal = tmp_path / "journal-volume"
    config = make_config(tmp_path, journal_dir=str(journal), read_cache_max_entries=0)
    async with opened(config, checkpoint=False) as bookie:
        await add_range(bookie, 1, 0, 9)
        assert bookie.segment_file(bookie.segment_ids()[0]).parent == journal
    assert not (config.data_dir / "journal").exists()
    assert (config.data_dir / "index").is_dir()
    # Reopened without a checkpoint: the entries come back from the journal volume.
    async with opened(config) as bookie:
        assert bookie.stats.records_replayed_at_open >= 10
        entries = await bookie.read_entries(1, 0, 9)
        assert [e.payload for e in entries] == [payload_for(1, i) for i in range(10)]
        with pytest.raises(BookieIOError, match="in use"):
            await Bookie.open(make_config(tmp_path / "other", journal_dir=str(journal)))


def test_the_journal_directory_must_not_be_the_data_directory(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="journal_dir must not be data_dir"):
        make_config(tmp_path, journal_dir=str(tmp_path / "bookie"))
