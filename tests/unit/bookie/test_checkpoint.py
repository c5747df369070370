"""Checkpoint encoding: round trip and damage detection."""

from __future__ import annotations

from pathlib import Path

import pytest

from bookie.storage.checkpoint import (
    CheckpointError,
    decode_checkpoint,
    encode_checkpoint,
    read_checkpoint,
    write_checkpoint,
)
from bookie.storage.index import IndexSnapshot, LedgerSnapshot, pack_location, unpack_location


def _snapshot() -> IndexSnapshot:
    return IndexSnapshot(
        mark_segment_id=12,
        mark_offset=4096,
        ledgers=[
            LedgerSnapshot(
                1,
                5,
                6,
                True,
                b"key",
                {3: 700, 4: 80},
                {i: pack_location(3, 16 + i) for i in range(7)},
            ),
            LedgerSnapshot(2, -1, -1, False, None, {}, {}),
            LedgerSnapshot(3, 0, 0, False, b"", {9: 36}, {0: pack_location(9, 16)}),
        ],
        deleted_ledger_ids=[7, 8],
    )


def test_location_packing() -> None:
    assert unpack_location(pack_location(2**31 - 1, 2**32 - 1)) == (2**31 - 1, 2**32 - 1)


def test_round_trip(tmp_path: Path) -> None:
    snapshot = _snapshot()
    assert decode_checkpoint(encode_checkpoint(snapshot)) == snapshot
    write_checkpoint(tmp_path, snapshot, fsync=True)
    assert read_checkpoint(tmp_path) == snapshot
    assert not list(tmp_path.glob("*.tmp"))


def test_missing_checkpoint_reads_as_none(tmp_path: Path) -> None:
    assert read_checkpoint(tmp_path) is None


@pytest.mark.parametrize("position", [0, 9, 20, 40, -1])
def test_damage_is_detected(position: int) -> None:
    data = bytearray(encode_checkpoint(_snapshot()))
    data[position] ^= 0x10
    with pytest.raises(CheckpointError):
        decode_checkpoint(bytes(data))


def test_truncation_is_detected() -> None:
    data = encode_checkpoint(_snapshot())
    with pytest.raises(CheckpointError):
        decode_checkpoint(data[:-3])
