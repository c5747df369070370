"""Journal preallocation: zeros ahead of the data while idle, cut back when a segment is sealed
or the journal closes, and released (not reported as torn) by replay after a crash."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

from bookie.storage import Bookie, BookieStorageConfig
from bookie.storage.record import SEGMENT_HEADER_SIZE, RecordHeader, scan_records
from tests.unit.bookie.support import KEY, make_config, opened, payload_for

SEGMENT_BYTES = 64 * 1024
PREALLOCATION_BYTES = 16 * 1024
WAIT_S = 10.0


def _config(
    tmp_path: Path, data: str = "bookie", preallocation: int = PREALLOCATION_BYTES
) -> BookieStorageConfig:
    return make_config(
        tmp_path,
        data_dir=tmp_path / data,
        fsync=True,
        journal_segment_size_bytes=SEGMENT_BYTES,
        journal_preallocation_bytes=preallocation,
    )


async def _add_one_by_one(bookie: Bookie, first: int, last: int, size: int = 500) -> None:
    """Adds that leave the journal idle in between, as a slow producer does."""
    for entry_id in range(first, last + 1):
        await bookie.add_entry(1, entry_id, entry_id - 1, payload_for(1, entry_id, size), KEY)


async def _wait_for_zeros_ahead(bookie: Bookie, segment: Path) -> int:
    """Wait until the newest segment has zeros after its data; returns the data's end."""
    data_end = await _data_end(bookie)
    deadline = time.monotonic() + WAIT_S
    while _size(segment) < data_end + PREALLOCATION_BYTES:
        assert time.monotonic() < deadline, "the idle journal did not preallocate"
        await asyncio.sleep(0.01)
    return data_end


def _size(path: Path) -> int:
    return path.stat().st_size


async def _data_end(bookie: Bookie) -> int:
    journal = bookie._journal
    assert journal is not None
    await journal.drain()
    return journal.durable_offset


async def _crash_with_zeros_ahead(
    tmp_path: Path, entries: int
) -> tuple[BookieStorageConfig, Path, int]:
    """Add ``entries`` entries, wait for the zeros, and copy the files as a crash leaves them.

    Returns the copy's config, its newest segment (ending in preallocated zeros) and the end
    of that segment's data.
    """
    config = _config(tmp_path)
    async with opened(config) as bookie:
        await _add_one_by_one(bookie, 0, entries - 1)
        segment = bookie.segment_file(bookie.segment_ids()[-1])
        data_end = await _wait_for_zeros_ahead(bookie, segment)
        shutil.copytree(config.data_dir, tmp_path / "crashed")
    crashed = _config(tmp_path, data="crashed")
    return crashed, crashed.data_dir / "journal" / segment.name, data_end


async def test_idle_journal_writes_zeros_ahead_and_close_cuts_them(tmp_path: Path) -> None:
    config = _config(tmp_path)
    async with opened(config) as bookie:
        await _add_one_by_one(bookie, 0, 9)
        segment = bookie.segment_file(bookie.segment_ids()[-1])
        data_end = await _wait_for_zeros_ahead(bookie, segment)
        tail = segment.read_bytes()[data_end:]
        assert len(tail) >= PREALLOCATION_BYTES and tail.count(0) == len(tail)
        # Adds overwrite the zeros; the entries are read back intact.
        await _add_one_by_one(bookie, 10, 14)
        entries = await bookie.read_entries(1, 0, 14, max_bytes=10**9)
        assert [e.payload for e in entries] == [payload_for(1, i, 500) for i in range(15)]
        data_end = await _data_end(bookie)
    assert segment.stat().st_size == data_end


async def test_sealed_segments_hold_no_zeros(tmp_path: Path) -> None:
    config = _config(tmp_path)
    async with opened(config) as bookie:
        # ~300 entries of 500 B: several 64 KiB segments, preallocated while idle.
        await _add_one_by_one(bookie, 0, 299)
        assert len(bookie.segment_ids()) >= 3
        assert bookie._journal is not None and bookie._journal.bytes_preallocated > 0
        for segment_id in bookie.segment_ids()[:-1]:
            data = bookie.segment_file(segment_id).read_bytes()
            records = list(scan_records(data, SEGMENT_HEADER_SIZE, len(data), last_segment=False))
            headers = [record for record in records if isinstance(record, RecordHeader)]
            assert headers == records, segment_id  # no damage, no torn tail
            assert len(data) == headers[-1].end


async def test_replay_after_a_crash_releases_the_zeros(tmp_path: Path) -> None:
    crashed, copied_segment, data_end = await _crash_with_zeros_ahead(tmp_path, entries=20)
    assert copied_segment.stat().st_size >= data_end + PREALLOCATION_BYTES
    async with opened(crashed) as bookie:
        assert bookie.stats.torn_tail_bytes_truncated == 0
        assert bookie.stats.corrupt_records_at_open == 0
        assert copied_segment.stat().st_size == data_end
        entries = await bookie.read_entries(1, 0, 19, max_bytes=10**9)
        assert [e.payload for e in entries] == [payload_for(1, i, 500) for i in range(20)]
        await _add_one_by_one(bookie, 20, 24)
    async with opened(crashed) as bookie:
        entries = await bookie.read_entries(1, 0, 24, max_bytes=10**9)
        assert [e.entry_id for e in entries] == list(range(25))


async def test_a_torn_write_into_the_zeros_is_still_a_torn_tail(tmp_path: Path) -> None:
    crashed, copied_segment, data_end = await _crash_with_zeros_ahead(tmp_path, entries=5)
    with copied_segment.open("r+b") as file:  # part of a record landed in the zeros
        record_bytes = file.read()[data_end - 300 : data_end - 100]
        file.seek(data_end)
        file.write(record_bytes)
    async with opened(crashed) as bookie:
        assert bookie.stats.torn_tail_bytes_truncated > 0
        assert copied_segment.stat().st_size == data_end
        assert len(await bookie.read_entries(1, 0, 4)) == 5


async def test_preallocation_off(tmp_path: Path) -> None:
    config = _config(tmp_path, preallocation=0)
    async with opened(config) as bookie:
        await _add_one_by_one(bookie, 0, 9)
        await asyncio.sleep(0.05)
        segment = bookie.segment_file(bookie.segment_ids()[-1])
        assert segment.stat().st_size == await _data_end(bookie)
        assert bookie._journal is not None and bookie._journal.bytes_preallocated == 0
