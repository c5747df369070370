"""Opening after crashes and damage: torn tails, flipped bytes, checkpoints."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bookie.errors import BookieIOError, CorruptEntryError, NoSuchEntryError
from bookie.storage import Bookie
from bookie.storage.index import unpack_location
from bookie.storage.record import HEADER_SIZE
from tests.unit.bookie.support import KEY, add_range, make_config, opened, payload_for


def _flip_byte(path: Path, offset: int) -> None:
    with path.open("r+b") as file:
        file.seek(offset)
        (value,) = file.read(1)
        file.seek(offset)
        file.write(bytes([value ^ 0x5A]))


def _location(bookie: Bookie, ledger_id: int, entry_id: int) -> tuple[Path, int]:
    """The segment file and offset of an entry's record (white-box: for damaging it)."""
    segment_id, offset = unpack_location(bookie._index.ledgers[ledger_id].entries[entry_id])
    return bookie.segment_file(segment_id), offset


async def test_torn_tail_is_truncated(tmp_path: Path) -> None:
    config = make_config(tmp_path, journal_segment_size_bytes=8192)
    async with opened(config, checkpoint=False) as bookie:
        await add_range(bookie, 1, 0, 99, size=300)
        last_segment, last_offset = _location(bookie, 1, 99)
    # A crash in the middle of writing entry 99: half of it, then garbage.
    size = last_segment.stat().st_size
    with last_segment.open("r+b") as file:
        file.truncate(size - 150)
        file.seek(0, os.SEEK_END)
        file.write(b"\x00\x13garbage" * 20)
    async with opened(config) as bookie:
        assert bookie.stats.torn_tail_bytes_truncated > 0
        assert bookie.stats.corrupt_records_at_open == 0
        assert last_segment.stat().st_size == last_offset
        entries = await bookie.read_entries(1, 0, 99, max_bytes=10**9)
        assert [e.payload for e in entries] == [payload_for(1, i, 300) for i in range(99)]
        with pytest.raises(NoSuchEntryError):
            await bookie.read_entries(1, 99, 99)
        # The bookie goes on: the entry can be written again and survives another restart.
        await bookie.add_entry(1, 99, 98, b"rewritten", KEY)
    async with opened(config) as bookie:
        assert (await bookie.read_entries(1, 99, 99))[0].payload == b"rewritten"
        assert bookie.stats.torn_tail_bytes_truncated == 0


async def test_flipped_payload_byte_is_detected_on_read(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with opened(config) as bookie:
        await add_range(bookie, 1, 0, 9)
        segment, offset = _location(bookie, 1, 4)
    _flip_byte(segment, offset + HEADER_SIZE + 10)
    async with opened(config) as bookie:
        with pytest.raises(CorruptEntryError):
            await bookie.read_entries(1, 4, 4)
        assert bookie.stats.corrupt_reads == 1
        # A range read stops before the corrupt entry; the others are served.
        assert [e.entry_id for e in await bookie.read_entries(1, 0, 9)] == [0, 1, 2, 3]
        assert [e.entry_id for e in await bookie.read_entries(1, 5, 9)] == [5, 6, 7, 8, 9]


async def test_damage_in_a_sealed_segment_is_reported_not_truncated(tmp_path: Path) -> None:
    config = make_config(tmp_path, journal_segment_size_bytes=8192)
    async with opened(config, checkpoint=False) as bookie:
        await add_range(bookie, 1, 0, 99, size=300)
        segment, offset = _location(bookie, 1, 3)
        assert segment != bookie.segment_file(bookie.segment_ids()[-1])
    size_before = segment.stat().st_size
    _flip_byte(segment, offset + HEADER_SIZE + 1)
    async with opened(config) as bookie:
        assert bookie.stats.records_replayed_at_open > 0
        assert bookie.stats.corrupt_records_at_open == 1
        assert bookie.stats.torn_tail_bytes_truncated == 0
        assert segment.stat().st_size == size_before
        with pytest.raises(CorruptEntryError):
            await bookie.read_entries(1, 3, 3)
        entries = await bookie.read_entries(1, 4, 99, max_bytes=10**9)
        assert [e.payload for e in entries] == [payload_for(1, i, 300) for i in range(4, 100)]


async def test_damage_mid_newest_segment_is_not_taken_for_a_torn_tail(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with opened(config, checkpoint=False) as bookie:
        await add_range(bookie, 1, 0, 9)
        segment, offset = _location(bookie, 1, 2)
    _flip_byte(segment, offset + 4)  # the length field: the framing is lost here
    async with opened(config) as bookie:
        assert bookie.stats.corrupt_records_at_open == 1
        assert bookie.stats.torn_tail_bytes_truncated == 0
        entries = await bookie.read_entries(1, 3, 9)
        assert [e.entry_id for e in entries] == list(range(3, 10))


async def test_restart_replays_only_after_the_checkpoint(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with opened(config, checkpoint=False) as bookie:
        await add_range(bookie, 1, 0, 299)
        await bookie.checkpoint()
        await add_range(bookie, 1, 300, 304)
    async with opened(config, checkpoint=False) as bookie:
        assert bookie.stats.records_replayed_at_open == 5
        assert len(await bookie.read_entries(1, 0, 304, max_bytes=10**9)) == 305
    # Opening writes a checkpoint after a replay, so the next open replays nothing.
    async with opened(config) as bookie:
        assert bookie.stats.records_replayed_at_open == 0
        assert (await bookie.read_last_add_confirmed(1)).last_add_confirmed == 303


async def test_without_checkpoint_the_whole_journal_is_replayed(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with opened(config, checkpoint=False) as bookie:
        await add_range(bookie, 1, 0, 99)
    (config.data_dir / "index" / "checkpoint").unlink()
    async with opened(config) as bookie:
        assert bookie.stats.records_replayed_at_open == 101  # the key record and 100 entries
        assert len(await bookie.read_entries(1, 0, 99)) == 100


async def test_damaged_checkpoint_falls_back_to_a_full_replay(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with opened(config) as bookie:
        await add_range(bookie, 1, 0, 49)
    _flip_byte(config.data_dir / "index" / "checkpoint", 30)
    async with opened(config) as bookie:
        assert bookie.stats.records_replayed_at_open == 51
        assert len(await bookie.read_entries(1, 0, 49)) == 50


async def test_missing_checkpoint_after_gc_refuses_to_open(tmp_path: Path) -> None:
    config = make_config(tmp_path, journal_segment_size_bytes=8192)
    async with opened(config) as bookie:
        await add_range(bookie, 1, 0, 99, size=300)
        await bookie.delete_ledger(1)
        assert (await bookie.run_gc_once()).segments_removed
    (config.data_dir / "index" / "checkpoint").unlink()
    with pytest.raises(BookieIOError, match="cannot rebuild"):
        await Bookie.open(config)
