"""The offloaded-ledger format and object keys: pure functions, checked with hypothesis."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from strata.naming import InvalidNameError, TopicName
from tiered.errors import OffloadCorruptError
from tiered.format import (
    BLOCK_HEADER,
    BlockRef,
    OffloadIndex,
    check_prefix,
    decode_block,
    encode_block,
    offload_keys,
    parse_object_name,
)

UUID = "0123456789abcdef0123456789abcdef"


def ref_for(data: bytes, checksum: int, first: int, count: int, offset: int = 0) -> BlockRef:
    return BlockRef(first, count, offset, len(data), checksum)


@given(
    first=st.integers(min_value=0, max_value=2**40),
    payloads=st.lists(st.binary(max_size=300), min_size=1, max_size=20),
)
def test_block_round_trip(first: int, payloads: list[bytes]) -> None:
    data, checksum = encode_block(first, payloads)
    entries = decode_block(data, ref_for(data, checksum, first, len(payloads)))
    assert entries == [(first + i, p) for i, p in enumerate(payloads)]


@given(
    payloads=st.lists(st.binary(min_size=1, max_size=100), min_size=1, max_size=5),
    data_strategy=st.data(),
)
def test_any_bit_flip_in_a_block_is_detected(
    payloads: list[bytes], data_strategy: st.DataObject
) -> None:
    data, checksum = encode_block(7, payloads)
    bit = data_strategy.draw(st.integers(min_value=0, max_value=len(data) * 8 - 1))
    damaged = bytearray(data)
    damaged[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(OffloadCorruptError):
        decode_block(bytes(damaged), ref_for(data, checksum, 7, len(payloads)))


def test_block_must_match_its_index_record() -> None:
    data, checksum = encode_block(10, [b"a", b"b"])
    with pytest.raises(OffloadCorruptError, match="entries"):
        decode_block(data, ref_for(data, checksum, 11, 2))
    with pytest.raises(OffloadCorruptError):
        decode_block(data[:-1], ref_for(data, checksum, 10, 2))
    with pytest.raises(OffloadCorruptError, match="CRC32C"):
        decode_block(data, ref_for(data, checksum ^ 1, 10, 2))


def make_index(sizes: list[int]) -> OffloadIndex:
    blocks = []
    offset = 0
    first = 0
    for count in sizes:
        data, checksum = encode_block(first, [b"x" * 3] * count)
        blocks.append(BlockRef(first, count, offset, len(data), checksum))
        offset += len(data)
        first += count
    return OffloadIndex(42, first - 1, offset, 1234, tuple(blocks), b'{"ledger_id": 42}')


@given(st.lists(st.integers(min_value=1, max_value=50), min_size=1, max_size=40))
def test_index_round_trip_and_lookup(sizes: list[int]) -> None:
    index = make_index(sizes)
    decoded = OffloadIndex.decode(index.encode())
    assert decoded == index
    for position, block in enumerate(index.blocks):
        assert decoded.find_block(block.first_entry_id) == position
        assert decoded.find_block(block.last_entry_id) == position


def test_index_corruption_and_inconsistency_are_detected() -> None:
    raw = bytearray(make_index([3, 4, 5]).encode())
    for position in (0, 10, len(raw) // 2, len(raw) - 1):
        damaged = bytearray(raw)
        damaged[position] ^= 0x40
        with pytest.raises(OffloadCorruptError):
            OffloadIndex.decode(bytes(damaged))
    with pytest.raises(OffloadCorruptError):
        OffloadIndex.decode(bytes(raw[:-5]))
    gap = make_index([3, 4])
    broken = OffloadIndex(
        gap.ledger_id,
        gap.last_entry_id,
        gap.data_length,
        gap.data_crc32c,
        (gap.blocks[0], BlockRef(4, 4, gap.blocks[1].offset, gap.blocks[1].length, 0)),
    )
    with pytest.raises(ValueError):
        broken.encode()


def test_windows_cover_every_block_once() -> None:
    index = make_index([1] * 10)
    block_length = index.blocks[0].length
    windows = list(index.windows(0, block_length * 3))
    assert windows == [(0, 2), (3, 5), (6, 8), (9, 9)]
    # A window is at least one block even when the block is larger than the window.
    assert list(index.windows(8, 1)) == [(8, 8), (9, 9)]
    assert BLOCK_HEADER.size == 24


def test_keys_are_built_from_validated_names_only() -> None:
    topic = TopicName.parse("persistent://acme/orders/eu-west.v1")
    keys = offload_keys("cluster-a/offload", topic, 17, UUID)
    assert keys.data_key == f"cluster-a/offload/acme/orders/eu-west.v1/17-{UUID}"
    assert keys.index_key == keys.data_key + "-index"
    assert offload_keys("", topic, 0, UUID).data_key == f"acme/orders/eu-west.v1/0-{UUID}"
    for bad_prefix in ("/abs", "a//b", "a/../b", "..", "a/", "sp ace", "a\\b"):
        with pytest.raises(ValueError):
            check_prefix(bad_prefix)
    with pytest.raises(InvalidNameError):
        offload_keys("", TopicName("acme", "orders", ".."), 1, UUID)
    with pytest.raises(InvalidNameError):
        offload_keys("", TopicName("acme", "a/b", "t"), 1, UUID)
    for bad_id in (-1, True):
        with pytest.raises(ValueError):
            offload_keys("", topic, bad_id, UUID)
    for bad_uuid in ("", "0123", UUID.upper(), UUID + "0", "../" + UUID[3:]):
        with pytest.raises(ValueError):
            offload_keys("", topic, 1, bad_uuid)


def test_object_names_parse_back() -> None:
    assert parse_object_name(f"17-{UUID}") is not None
    name = parse_object_name(f"17-{UUID}-index")
    assert name is not None and name.ledger_id == 17 and name.uuid == UUID and name.is_index
    for other in ("17", f"x-{UUID}", f"17-{UUID}-data", f"17-{UUID}.tmp-1", "README"):
        assert parse_object_name(other) is None
