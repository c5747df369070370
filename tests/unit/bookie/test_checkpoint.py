"""Checkpoint encoding: round trip and damage detection."""

from __future__ import annotations

from pathlib import Path

import pytest

from bookie.errors import CheckpointError
from bookie.storage.checkpoint import (
    decode_checkpoint,
    encode_checkpoint,
    read_checkpoint,
    write_checkpoint,
)
from bookie.storage.index import (
    IndexSnapshot,
    LedgerIndex,
    LedgerSnapshot,
    pack_location,
    unpack_location,
)


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


def test_snapshot_copies_only_changed_ledgers() -> None:
    index = LedgerIndex(lambda location: 0)
    closed = index.ledger_for_apply(1)
    active = index.ledger_for_apply(2)
    assert closed is not None and active is not None
    index.apply_key(closed, b"k")
    index.apply_entry(closed, 0, -1, pack_location(1, 16), 40)
    index.apply_entry(active, 0, -1, pack_location(1, 56), 40)
    first = index.snapshot(1, 96)
    index.apply_entry(active, 1, 0, pack_location(1, 96), 40)
    second = index.snapshot(1, 136)
    # The unchanged ledger's copy is shared; the changed one is fresh and up to date.
    assert second.ledgers[0] is first.ledgers[0]
    assert second.ledgers[1] is not first.ledgers[1]
    assert second.ledgers[1].entries == {0: pack_location(1, 56), 1: pack_location(1, 96)}
    assert first.ledgers[1].entries == {0: pack_location(1, 56)}
    index.apply_fence(closed, b"k")
    assert index.snapshot(1, 136).ledgers[0].fenced


def test_deleted_ids_are_bounded_to_the_newest() -> None:
    index = LedgerIndex(lambda location: 0, max_deleted_ledger_ids=3)
    for ledger_id in (5, 1, 9, 7, 3):
        index.apply_delete(ledger_id)
    assert index.snapshot(0, 0).deleted_ledger_ids == [5, 7, 9]
    assert index.deleted == {5, 7, 9}
