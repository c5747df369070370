"""Garbage collection: deleted ledgers free their space, sparse segments are compacted."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest

from bookie.errors import LedgerDeletedError
from bookie.storage import Bookie, maintenance, reader
from bookie.storage.index import unpack_location
from bookie.storage.journal import Journal, PendingRecord
from bookie.storage.record import HEADER_SIZE
from tests.unit.bookie.support import KEY, add_range, make_config, opened, payload_for


async def add_two_ledgers_interleaved(bookie: Bookie, entries: int, *, size: int) -> None:
    """Ledgers 1 and 2 added entry by entry side by side, so that every segment holds both."""
    for entry_id in range(entries):
        await asyncio.gather(
            bookie.add_entry(1, entry_id, entry_id - 1, payload_for(1, entry_id, size), KEY),
            bookie.add_entry(2, entry_id, entry_id - 1, payload_for(2, entry_id, size), KEY),
        )


async def test_space_is_freed_after_delete(tmp_path: Path) -> None:
    config = make_config(tmp_path, journal_segment_size_bytes=16 * 1024)
    async with opened(config) as bookie:
        await add_range(bookie, 1, 0, 199, size=1000)
        await add_range(bookie, 2, 0, 9, size=1000)
        before = bookie.bytes_on_disk()
        assert before > 200_000
        await bookie.delete_ledger(1)
        report = await bookie.run_gc_once()
        assert len(report.segments_removed) >= 10
        after = bookie.bytes_on_disk()
        assert after < before - 150_000, (before, after)
        assert len(await bookie.read_entries(2, 0, 9)) == 10
    async with opened(config) as bookie:
        with pytest.raises(LedgerDeletedError):
            await bookie.read_entries(1, 0, 0)
        entries = await bookie.read_entries(2, 0, 9)
        assert [e.payload for e in entries] == [payload_for(2, i, 1000) for i in range(10)]


async def test_sparse_segments_are_compacted(tmp_path: Path) -> None:
    config = make_config(
        tmp_path,
        journal_segment_size_bytes=16 * 1024,
        compaction_live_ratio=0.6,
        read_cache_max_entries=0,
    )
    async with opened(config, checkpoint=False) as bookie:
        await add_two_ledgers_interleaved(bookie, 100, size=1000)
        old_segments = set(bookie.segment_ids()[:-1])
        await bookie.delete_ledger(1)
        before = bookie.bytes_on_disk()
        report = await bookie.run_gc_once()
        assert report.segments_compacted and report.bytes_copied > 50_000
        assert old_segments.isdisjoint(bookie.segment_ids())
        assert bookie.bytes_on_disk() < before * 0.75
        entries = await bookie.read_entries(2, 0, 99, max_bytes=10**9)
        assert [e.payload for e in entries] == [payload_for(2, i, 1000) for i in range(100)]
        assert [e.last_add_confirmed for e in entries] == list(range(-1, 99))
    # Closed without a final checkpoint: the GC's own checkpoint must be enough.
    async with opened(config) as bookie:
        entries = await bookie.read_entries(2, 0, 99, max_bytes=10**9)
        assert [e.payload for e in entries] == [payload_for(2, i, 1000) for i in range(100)]
        assert (await bookie.read_last_add_confirmed(2)).last_add_confirmed == 98


async def test_overwritten_entries_become_garbage(tmp_path: Path) -> None:
    config = make_config(tmp_path, journal_segment_size_bytes=16 * 1024)
    async with opened(config) as bookie:
        await add_range(bookie, 1, 0, 49, size=1000)
        await add_range(bookie, 1, 0, 49, size=1000)  # recovery rewrote everything
        first_segments = bookie.segment_ids()[:2]
        await bookie.run_gc_once()
        assert set(first_segments).isdisjoint(bookie.segment_ids())
        assert len(await bookie.read_entries(1, 0, 49, max_bytes=10**9)) == 50


async def test_adds_during_gc_are_kept(tmp_path: Path) -> None:
    config = make_config(tmp_path, journal_segment_size_bytes=16 * 1024, compaction_live_ratio=0.9)
    async with opened(config) as bookie:
        await add_two_ledgers_interleaved(bookie, 60, size=500)
        await bookie.delete_ledger(1)
        # Rewrite ledger 2 while the collector copies it: the rewrite must win.
        gc = asyncio.ensure_future(bookie.run_gc_once())
        await add_range(bookie, 2, 0, 59, size=700)
        await gc
        await bookie.run_gc_once()
        entries = await bookie.read_entries(2, 0, 59, max_bytes=10**9)
        assert [e.payload for e in entries] == [payload_for(2, i, 700) for i in range(60)]
    async with opened(config) as bookie:
        entries = await bookie.read_entries(2, 0, 59, max_bytes=10**9)
        assert [e.payload for e in entries] == [payload_for(2, i, 700) for i in range(60)]


async def test_compaction_copies_at_the_configured_pace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(maintenance, "COMPACTION_CHUNK_BYTES", 8 * 1024)
    monkeypatch.setattr(maintenance, "COMPACTION_CHUNK_ENTRIES", 5)  # windows end reads too
    bytes_per_second = 100_000
    config = make_config(
        tmp_path,
        journal_segment_size_bytes=16 * 1024,
        compaction_live_ratio=0.6,
        compaction_max_bytes_per_second=bytes_per_second,
    )
    async with opened(config) as bookie:
        await add_two_ledgers_interleaved(bookie, 60, size=1000)
        await bookie.delete_ledger(1)
        queued_copies: list[int] = []
        append = Journal.append_nowait

        def counting_append(journal: Journal, *args: Any, **kwargs: Any) -> PendingRecord:
            record = append(journal, *args, **kwargs)
            if record.is_copy:
                queued_copies.append(record.length)
            return record

        monkeypatch.setattr(Journal, "append_nowait", counting_append)
        started = time.monotonic()
        report = await bookie.run_gc_once()
        took = time.monotonic() - started
        assert report.bytes_copied == sum(queued_copies) > 40_000
        # A lower bound only: the run sleeps to keep its pace, however fast the disk.
        assert took >= report.bytes_copied / bytes_per_second * 0.95, took
        entries = await bookie.read_entries(2, 0, 59, max_bytes=10**9)
        assert [e.payload for e in entries] == [payload_for(2, i, 1000) for i in range(60)]


@pytest.mark.parametrize(("first", "low", "high"), [(True, 0.5, 1.0), (False, 0.9, 1.1)])
def test_bookies_collect_at_different_moments(first: bool, low: float, high: float) -> None:
    delays = {maintenance.gc_delay_seconds(300_000, first=first) for _ in range(200)}
    assert all(300 * low <= delay <= 300 * high for delay in delays)
    assert max(delays) - min(delays) > 300 * (high - low) / 2  # spread, not one moment


async def test_a_damaged_live_entry_is_left_in_place_and_the_rest_copied(tmp_path: Path) -> None:
    config = make_config(tmp_path, journal_segment_size_bytes=256 * 1024, compaction_live_ratio=0.6)
    async with opened(config) as bookie:
        await add_two_ledgers_interleaved(bookie, 400, size=1000)
        await bookie.delete_ledger(1)
        damaged_segment, damaged_offset = unpack_location(bookie._index.ledgers[2].entries[3])
        with bookie.segment_file(damaged_segment).open("r+b") as file:
            file.seek(damaged_offset + HEADER_SIZE + 10)
            file.write(b"\xff\x00")
        read_bytes: list[int] = []
        pread = os.pread

        def counting_pread(fd: int, length: int, offset: int) -> bytes:
            data = pread(fd, length, offset)
            read_bytes.append(len(data))
            return data

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(os, "pread", counting_pread)
            report = await bookie.run_gc_once()
        assert bookie.stats.corrupt_reads == 1
        assert damaged_segment in bookie.segment_ids()  # its damaged live entry keeps it
        assert damaged_segment not in report.segments_removed
        # The live records were read a window at a time, not as whole (256 KiB) segments.
        assert report.bytes_copied > 300_000
        assert read_bytes and max(read_bytes) <= reader.READ_CHUNK_BYTES
        entries = await bookie.read_entries(2, 0, 2, max_bytes=10**9)
        assert [e.payload for e in entries] == [payload_for(2, i, 1000) for i in range(3)]
        entries = await bookie.read_entries(2, 4, 399, max_bytes=10**9)
        assert [e.payload for e in entries] == [payload_for(2, i, 1000) for i in range(4, 400)]


async def test_removed_segments_are_released_a_step_at_a_time_at_the_configured_pace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(maintenance, "RELEASE_STEP_BYTES", 4 * 1024)
    bytes_per_second = 400_000
    config = make_config(
        tmp_path,
        journal_segment_size_bytes=16 * 1024,
        segment_release_bytes_per_second=bytes_per_second,
    )
    async with opened(config) as bookie:
        await add_range(bookie, 1, 0, 199, size=1000)
        await add_range(bookie, 2, 0, 9, size=1000)
        await bookie.delete_ledger(1)
        sizes_cut: list[int] = []
        truncate = os.truncate

        def counting_truncate(path: Any, length: int) -> None:
            sizes_cut.append(os.stat(path).st_size - length)
            truncate(path, length)

        monkeypatch.setattr(os, "truncate", counting_truncate)
        started = time.monotonic()
        report = await bookie.run_gc_once()
        took = time.monotonic() - started
        assert len(report.segments_removed) >= 10
        assert not set(report.segments_removed) & set(bookie.segment_ids())
        # Every removed (16 KiB) segment lost 4 KiB steps before its unlink, none more at once.
        assert len(sizes_cut) >= 3 * len(report.segments_removed)
        assert set(sizes_cut) == {4 * 1024}
        # A lower bound only: the run sleeps to keep its pace, however fast the disk.
        assert took >= report.bytes_freed / bytes_per_second * 0.95, took
        assert len(await bookie.read_entries(2, 0, 9)) == 10


async def test_a_release_cut_short_is_finished_by_the_next_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(maintenance, "RELEASE_STEP_BYTES", 4 * 1024)
    config = make_config(
        tmp_path,
        journal_segment_size_bytes=16 * 1024,
        segment_release_bytes_per_second=40_000,  # ~0.1 s per step
    )
    async with opened(config) as bookie:
        await add_range(bookie, 1, 0, 199, size=1000)
        await add_range(bookie, 2, 0, 9, size=1000)
        segments = bookie.segment_ids()
        await bookie.delete_ledger(1)
        run = asyncio.ensure_future(bookie.run_gc_once())
        deadline = time.monotonic() + 10
        while not any(
            0 < bookie.segment_file(s).stat().st_size < 16 * 1024 for s in bookie.segment_ids()[:-1]
        ):
            assert time.monotonic() < deadline, "no segment was ever part released"
            await asyncio.sleep(0.01)
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
        left = set(bookie.segment_ids())
        assert len(set(segments) - left) < 10  # cut short: most of the garbage is still there
    # A part released segment lies below the durable mark: the open never reads it.
    async with opened(config) as bookie:
        entries = await bookie.read_entries(2, 0, 9)
        assert [e.payload for e in entries] == [payload_for(2, i, 1000) for i in range(10)]
        monkeypatch.setattr(maintenance, "RELEASE_STEP_BYTES", 1024 * 1024)
        report = await bookie.run_gc_once()
        assert report.segments_removed
        assert all(bookie.segment_file(s).stat().st_size > 0 for s in bookie.segment_ids())
        assert len(bookie.segment_ids()) <= 3
        entries = await bookie.read_entries(2, 0, 9)
        assert [e.payload for e in entries] == [payload_for(2, i, 1000) for i in range(10)]


def test_a_release_never_takes_longer_than_half_the_gc_interval() -> None:
    mib = 1024 * 1024
    # 100 MiB at 16 MiB/s: 6.25 s, well within half of a 300 s interval.
    assert maintenance.release_bytes_per_second(100 * mib, 16 * mib, 300_000) == 16 * mib
    # 20 GiB written between two runs: released in 150 s, not in 21 minutes.
    pace = maintenance.release_bytes_per_second(20 * 1024 * mib, 16 * mib, 300_000)
    assert 20 * 1024 * mib / pace == pytest.approx(150)
