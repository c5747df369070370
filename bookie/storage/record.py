"""Journal segment and record formats: pure encoding and parsing, no I/O, no asyncio.

A journal segment file (``journal/<20-digit id>.seg``) is a 16-byte segment header followed by
records. The journal is also the entry log: the index points at records inside segments.

Segment header (16 bytes, little-endian)::

    0   8  magic b"STRJSEG1"
    8   8  segment id (u64)

Record (36-byte header + payload, little-endian)::

    0   2  magic 0x5253 (b"SR"), so that a reader can find the next record after damage
    2   1  record type: ENTRY, KEY, FENCE or DELETE
    3   1  reserved, 0
    4   4  payload length (u32)
    8   8  ledger id (i64)
    16  8  entry id (i64; -1 for meta records)
    24  8  last add confirmed (i64; -1 for meta records)
    32  4  CRC32C over bytes 0..32 of the header and the payload

KEY and FENCE records carry the ledger's master key as payload; DELETE has no payload.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

import crc32c

from bookie.storage.config import MAX_ENTRY_SIZE_LIMIT_BYTES

SEGMENT_MAGIC = b"STRJSEG1"
SEGMENT_HEADER = struct.Struct("<8sQ")
SEGMENT_HEADER_SIZE = SEGMENT_HEADER.size

RECORD_MAGIC = 0x5253
RECORD_MAGIC_BYTES = RECORD_MAGIC.to_bytes(2, "little")
_HEADER_BODY = struct.Struct("<HBBIqqq")
_CRC = struct.Struct("<I")
_HEADER = struct.Struct("<HBBIqqqI")
HEADER_SIZE = _HEADER.size  # 36

# Record types.
ENTRY = 1
KEY = 2
FENCE = 3
DELETE = 4
RECORD_TYPES = frozenset((ENTRY, KEY, FENCE, DELETE))
RECORD_TYPE_NAMES = {ENTRY: "ENTRY", KEY: "KEY", FENCE: "FENCE", DELETE: "DELETE"}

assert HEADER_SIZE == 36 and SEGMENT_HEADER_SIZE == 16


def encode_segment_header(segment_id: int) -> bytes:
    return SEGMENT_HEADER.pack(SEGMENT_MAGIC, segment_id)


def check_segment_header(data: bytes | memoryview, segment_id: int) -> str | None:
    """None when ``data`` starts with the header of ``segment_id``, else what is wrong."""
    if len(data) < SEGMENT_HEADER_SIZE:
        return f"segment header truncated ({len(data)} bytes)"
    magic, found_id = SEGMENT_HEADER.unpack_from(data, 0)
    if magic != SEGMENT_MAGIC:
        return f"bad segment magic {magic!r}"
    if found_id != segment_id:
        return f"segment header names segment {found_id}, file name says {segment_id}"
    return None


def encode_record_header(
    record_type: int, ledger_id: int, entry_id: int, last_add_confirmed: int, payload: bytes
) -> bytes:
    """The 36-byte header of a record; the payload follows it unchanged (no copy is made)."""
    body = _HEADER_BODY.pack(
        RECORD_MAGIC, record_type, 0, len(payload), ledger_id, entry_id, last_add_confirmed
    )
    checksum = crc32c.crc32c(payload, crc32c.crc32c(body)) if payload else crc32c.crc32c(body)
    return body + _CRC.pack(checksum)


def encode_record(
    record_type: int, ledger_id: int, entry_id: int, last_add_confirmed: int, payload: bytes
) -> bytes:
    """Header and payload in one buffer (tests and small meta records)."""
    return encode_record_header(record_type, ledger_id, entry_id, last_add_confirmed, payload) + (
        payload
    )


# Outcomes of decode_record_at.
OK = 0
BAD_CRC = 1  # the header is plausible and the record fits, but the checksum does not match
BAD_FRAME = 2  # no plausible record starts here (bad magic or type, or it runs past the end)


@dataclass(frozen=True, slots=True)
class RecordHeader:
    """A parsed header and where its record lies in the buffer it was parsed from."""

    record_type: int
    ledger_id: int
    entry_id: int
    last_add_confirmed: int
    offset: int
    payload_length: int

    @property
    def length(self) -> int:
        """Header plus payload, in bytes."""
        return HEADER_SIZE + self.payload_length

    @property
    def end(self) -> int:
        return self.offset + HEADER_SIZE + self.payload_length


def decode_record_at(
    data: bytes | memoryview, offset: int, end: int
) -> tuple[int, RecordHeader | None]:
    """Parse the record starting at ``offset`` within ``data[:end]`` and verify its CRC32C.

    Returns ``(OK, header)``, ``(BAD_CRC, header)`` or ``(BAD_FRAME, None)``.
    """
    if end - offset < HEADER_SIZE:
        return BAD_FRAME, None
    magic, record_type, reserved, payload_length, ledger_id, entry_id, lac, checksum = (
        _HEADER.unpack_from(data, offset)
    )
    if (
        magic != RECORD_MAGIC
        or record_type not in RECORD_TYPES
        or reserved != 0
        or payload_length > MAX_ENTRY_SIZE_LIMIT_BYTES
        or offset + HEADER_SIZE + payload_length > end
    ):
        return BAD_FRAME, None
    header = RecordHeader(record_type, ledger_id, entry_id, lac, offset, payload_length)
    view = memoryview(data)
    actual = crc32c.crc32c(view[offset : offset + HEADER_SIZE - 4])
    if payload_length:
        payload_start = offset + HEADER_SIZE
        actual = crc32c.crc32c(view[payload_start : payload_start + payload_length], actual)
    return (OK if actual == checksum else BAD_CRC), header


def find_next_record(data: bytes | memoryview, start: int, end: int) -> int | None:
    """The offset of the first intact record at or after ``start``, or None.

    Used after damage: candidates are found by the record magic, and only a record whose CRC
    matches counts, so a stray magic inside a payload is skipped.
    """
    raw = data if isinstance(data, bytes) else bytes(data)
    position = start
    while True:
        position = raw.find(RECORD_MAGIC_BYTES, position, end)
        if position < 0:
            return None
        outcome, _ = decode_record_at(raw, position, end)
        if outcome == OK:
            return position
        position += 1


@dataclass(frozen=True, slots=True)
class Damage:
    """Bytes that do not parse as intact records.

    ``header`` is the damaged record's header when its framing is consistent (a checksum
    mismatch with an intact record, or the end of the segment, right after it); its ids are
    then probably right but cannot be trusted. ``end`` is where parsing resumes.
    """

    offset: int
    end: int
    header: RecordHeader | None
    reason: str


@dataclass(frozen=True, slots=True)
class TornTail:
    """From ``offset`` to the end of the segment nothing parses: an interrupted last write."""

    offset: int


def scan_records(
    data: bytes, start: int, end: int, *, last_segment: bool
) -> Iterator[RecordHeader | Damage | TornTail]:
    """Walk the records of one segment's bytes from ``start`` to ``end``.

    Yields a RecordHeader per intact record, a Damage per damaged region that is followed by
    intact records, and at most one TornTail, last. In a sealed segment (``last_segment``
    False) a damaged end is reported as Damage, never as a torn tail: sealed segments were
    fsynced whole before the next segment was created, so damage there is corruption.
    """
    position = start
    while position < end:
        outcome, header = decode_record_at(data, position, end)
        if outcome == OK:
            assert header is not None
            yield header
            position = header.end
            continue
        if outcome == BAD_CRC:
            assert header is not None
            after = header.end
            framed = after == end or decode_record_at(data, after, end)[0] == OK
            if framed and not (last_segment and after == end):
                yield Damage(position, after, header, "checksum mismatch")
                position = after
                continue
        resume = find_next_record(data, position + 1, end)
        if resume is None:
            if last_segment:
                yield TornTail(position)
            else:
                yield Damage(position, end, None, "unparsable bytes up to the segment end")
            return
        yield Damage(position, resume, None, "unparsable bytes")
        position = resume
