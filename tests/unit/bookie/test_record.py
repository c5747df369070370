"""The journal record format: round trips, checksums, damage and torn tails."""

from __future__ import annotations

import crc32c
from hypothesis import given
from hypothesis import strategies as st

from bookie.storage.record import (
    BAD_CRC,
    BAD_FRAME,
    ENTRY,
    FENCE,
    HEADER_SIZE,
    OK,
    SEGMENT_HEADER_SIZE,
    Damage,
    RecordHeader,
    TornTail,
    check_segment_header,
    decode_record_at,
    encode_record,
    encode_segment_header,
    find_next_record,
    scan_records,
)


def _segment(*records: bytes) -> bytes:
    return encode_segment_header(7) + b"".join(records)


def test_crc_chaining_equals_crc_of_concatenation() -> None:
    assert crc32c.crc32c(b" world", crc32c.crc32c(b"hello")) == crc32c.crc32c(b"hello world")


@given(
    ledger_id=st.integers(0, 2**63 - 1),
    entry_id=st.integers(-1, 2**63 - 1),
    lac=st.integers(-1, 2**63 - 1),
    payload=st.binary(max_size=2000),
)
def test_record_round_trip(ledger_id: int, entry_id: int, lac: int, payload: bytes) -> None:
    data = encode_record(ENTRY, ledger_id, entry_id, lac, payload)
    outcome, header = decode_record_at(data, 0, len(data))
    assert outcome == OK
    assert header == RecordHeader(ENTRY, ledger_id, entry_id, lac, 0, len(payload))
    assert header.end == len(data) == HEADER_SIZE + len(payload)


@given(payload=st.binary(min_size=1, max_size=500), data=st.data())
def test_any_flipped_bit_is_detected(payload: bytes, data: st.DataObject) -> None:
    record = bytearray(encode_record(ENTRY, 3, 4, 2, payload))
    position = data.draw(st.integers(0, len(record) - 1))
    record[position] ^= 1 << data.draw(st.integers(0, 7))
    outcome, _ = decode_record_at(bytes(record), 0, len(record))
    assert outcome in (BAD_CRC, BAD_FRAME)


def test_truncated_record_is_a_bad_frame() -> None:
    record = encode_record(ENTRY, 1, 2, 1, b"x" * 50)
    assert decode_record_at(record[:-1], 0, len(record) - 1) == (BAD_FRAME, None)
    assert decode_record_at(record[:10], 0, 10) == (BAD_FRAME, None)


def test_segment_header() -> None:
    assert check_segment_header(encode_segment_header(7), 7) is None
    assert check_segment_header(encode_segment_header(7), 8) is not None
    assert check_segment_header(b"STRJ", 7) is not None


def test_scan_intact_segment() -> None:
    records = [encode_record(ENTRY, 1, i, i - 1, b"p" * i) for i in range(5)]
    data = _segment(*records)
    events = list(scan_records(data, SEGMENT_HEADER_SIZE, len(data), last_segment=True))
    assert [e.entry_id for e in events if isinstance(e, RecordHeader)] == [0, 1, 2, 3, 4]


def test_scan_torn_tail_of_last_segment() -> None:
    records = [encode_record(ENTRY, 1, i, i - 1, b"p" * 40) for i in range(3)]
    data = _segment(*records)[:-7] + b"\x00garbage\xff" * 3
    events = list(scan_records(data, SEGMENT_HEADER_SIZE, len(data), last_segment=True))
    assert isinstance(events[-1], TornTail)
    assert events[-1].offset == SEGMENT_HEADER_SIZE + 2 * len(records[0])
    assert [e.entry_id for e in events if isinstance(e, RecordHeader)] == [0, 1]


def test_scan_damaged_tail_of_sealed_segment_is_damage_not_torn() -> None:
    records = [encode_record(ENTRY, 1, i, i - 1, b"p" * 40) for i in range(3)]
    data = _segment(*records)[:-7]
    events = list(scan_records(data, SEGMENT_HEADER_SIZE, len(data), last_segment=False))
    assert isinstance(events[-1], Damage)
    assert not any(isinstance(e, TornTail) for e in events)


def test_scan_checksum_mismatch_followed_by_records_is_damage() -> None:
    records = [encode_record(ENTRY, 1, i, i - 1, b"p" * 40) for i in range(4)]
    data = bytearray(_segment(*records))
    data[SEGMENT_HEADER_SIZE + len(records[0]) + HEADER_SIZE + 5] ^= 0xFF  # payload of entry 1
    events = list(scan_records(bytes(data), SEGMENT_HEADER_SIZE, len(data), last_segment=True))
    damage = [e for e in events if isinstance(e, Damage)]
    assert len(damage) == 1 and damage[0].header is not None and damage[0].header.entry_id == 1
    assert [e.entry_id for e in events if isinstance(e, RecordHeader)] == [0, 2, 3]


def test_scan_resyncs_after_a_broken_length() -> None:
    records = [encode_record(FENCE, 9, -1, -1, b"key")] + [
        encode_record(ENTRY, 9, i, i - 1, b"q" * 30) for i in range(3)
    ]
    data = bytearray(_segment(*records))
    data[SEGMENT_HEADER_SIZE + len(records[0]) + 4] ^= 0x7F  # length field of entry 0
    events = list(scan_records(bytes(data), SEGMENT_HEADER_SIZE, len(data), last_segment=False))
    assert [e.entry_id for e in events if isinstance(e, RecordHeader)] == [-1, 1, 2]
    assert sum(isinstance(e, Damage) for e in events) == 1


def test_find_next_record_skips_a_stray_magic() -> None:
    record = encode_record(ENTRY, 1, 1, 0, b"abc")
    data = b"SR" + b"\x00" * 40 + record
    assert find_next_record(data, 0, len(data)) == 42
