"""The index checkpoint file: pure encoding and decoding, plus its atomic replacement.

``index/checkpoint`` (little-endian)::

    magic b"STRJCKP1" | version u32 | body length u64 | body | CRC32C(body) u32

    body:  mark segment id i64 | mark offset i64 | ledger count u64 | ledgers... |
           deleted count u64 | deleted ids i64[]
    ledger: id i64 | LAC i64 | last entry id i64 | fenced u8 | key length i32 (-1: none) |
            key | segment count u32 | (segment id i64, live bytes i64)[] |
            entry count u64 | entry ids i64[] | locations i64[]

The file is replaced with write-to-temporary, fsync, rename, fsync of the directory, so a crash
leaves either the old or the new checkpoint, never a mix.
"""

from __future__ import annotations

import os
import struct
from array import array
from pathlib import Path

import crc32c

from bookie.errors import CheckpointError
from bookie.storage.index import IndexSnapshot, LedgerSnapshot

CHECKPOINT_FILE_NAME = "checkpoint"
MAGIC = b"STRJCKP1"
VERSION = 1
_PREAMBLE = struct.Struct("<8sIQ")
_MARK = struct.Struct("<qqQ")
_LEDGER = struct.Struct("<qqqBi")
_COUNT32 = struct.Struct("<I")
_COUNT64 = struct.Struct("<Q")
_CRC = struct.Struct("<I")
assert array("q").itemsize == 8


def encode_checkpoint(snapshot: IndexSnapshot) -> bytes:
    parts: list[bytes] = [
        _MARK.pack(snapshot.mark_segment_id, snapshot.mark_offset, len(snapshot.ledgers))
    ]
    for ledger in snapshot.ledgers:
        key = ledger.master_key
        parts.append(
            _LEDGER.pack(
                ledger.ledger_id,
                ledger.last_add_confirmed,
                ledger.last_entry_id,
                1 if ledger.fenced else 0,
                -1 if key is None else len(key),
            )
        )
        if key:
            parts.append(key)
        segments = array("q")
        for segment_id, size in ledger.bytes_by_segment.items():
            segments.append(segment_id)
            segments.append(size)
        parts.append(_COUNT32.pack(len(ledger.bytes_by_segment)))
        parts.append(segments.tobytes())
        parts.append(_COUNT64.pack(len(ledger.entries)))
        parts.append(array("q", ledger.entries.keys()).tobytes())
        parts.append(array("q", ledger.entries.values()).tobytes())
    parts.append(_COUNT64.pack(len(snapshot.deleted_ledger_ids)))
    parts.append(array("q", snapshot.deleted_ledger_ids).tobytes())
    body = b"".join(parts)
    return _PREAMBLE.pack(MAGIC, VERSION, len(body)) + body + _CRC.pack(crc32c.crc32c(body))


def decode_checkpoint(data: bytes) -> IndexSnapshot:
    """Parse and verify a checkpoint; raises CheckpointError when anything is off."""
    if len(data) < _PREAMBLE.size + _CRC.size:
        raise CheckpointError(f"checkpoint truncated ({len(data)} bytes)")
    magic, version, body_length = _PREAMBLE.unpack_from(data, 0)
    if magic != MAGIC:
        raise CheckpointError(f"bad checkpoint magic {magic!r}")
    if version != VERSION:
        raise CheckpointError(f"unknown checkpoint version {version}")
    if len(data) != _PREAMBLE.size + body_length + _CRC.size:
        raise CheckpointError("checkpoint length does not match its header")
    body = memoryview(data)[_PREAMBLE.size : _PREAMBLE.size + body_length]
    (expected,) = _CRC.unpack_from(data, _PREAMBLE.size + body_length)
    if crc32c.crc32c(body) != expected:
        raise CheckpointError("checkpoint checksum mismatch")
    try:
        return _decode_body(body)
    except (struct.error, ValueError, IndexError) as exc:  # pragma: no cover - CRC guards it
        raise CheckpointError(f"malformed checkpoint body: {exc}") from exc


def _read_int64s(body: memoryview, position: int, count: int) -> tuple[array[int], int]:
    values = array("q")
    end = position + 8 * count
    if end > len(body):
        raise ValueError("array runs past the end of the checkpoint")
    values.frombytes(body[position:end])
    return values, end


def _decode_body(body: memoryview) -> IndexSnapshot:
    mark_segment_id, mark_offset, ledger_count = _MARK.unpack_from(body, 0)
    position = _MARK.size
    ledgers: list[LedgerSnapshot] = []
    for _ in range(ledger_count):
        ledger_id, lac, last_entry_id, fenced, key_length = _LEDGER.unpack_from(body, position)
        position += _LEDGER.size
        key: bytes | None = None
        if key_length >= 0:
            key = bytes(body[position : position + key_length])
            position += key_length
        (segment_count,) = _COUNT32.unpack_from(body, position)
        position += _COUNT32.size
        segments, position = _read_int64s(body, position, 2 * segment_count)
        (entry_count,) = _COUNT64.unpack_from(body, position)
        position += _COUNT64.size
        entry_ids, position = _read_int64s(body, position, entry_count)
        locations, position = _read_int64s(body, position, entry_count)
        ledgers.append(
            LedgerSnapshot(
                ledger_id,
                lac,
                last_entry_id,
                bool(fenced),
                key,
                dict(zip(segments[0::2], segments[1::2], strict=True)),
                dict(zip(entry_ids, locations, strict=True)),
            )
        )
    (deleted_count,) = _COUNT64.unpack_from(body, position)
    position += _COUNT64.size
    deleted, position = _read_int64s(body, position, deleted_count)
    if position != len(body):
        raise ValueError("trailing bytes after the checkpoint body")
    return IndexSnapshot(mark_segment_id, mark_offset, ledgers, list(deleted))


def fsync_directory(directory: Path) -> None:
    """Make a create, rename or unlink in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file_atomically(path: Path, data: bytes, *, fsync: bool) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old or the new file whole."""
    temporary = path.with_name(path.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)
    if fsync:
        fsync_directory(path.parent)


def write_checkpoint(index_dir: Path, snapshot: IndexSnapshot, *, fsync: bool) -> int:
    """Encode and atomically store a checkpoint; returns its size in bytes."""
    data = encode_checkpoint(snapshot)
    write_file_atomically(index_dir / CHECKPOINT_FILE_NAME, data, fsync=fsync)
    return len(data)


def read_checkpoint(index_dir: Path) -> IndexSnapshot | None:
    """The stored checkpoint, None when there is none; CheckpointError when it is damaged."""
    try:
        data = (index_dir / CHECKPOINT_FILE_NAME).read_bytes()
    except FileNotFoundError:
        return None
    return decode_checkpoint(data)
