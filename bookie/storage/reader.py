"""Blocking reads of journal segments, run in worker threads (never on the event loop, except
``read_record_length``, a single small pread used on the rare overwrite path).

Every record read here is checked against its CRC32C, its type and the (ledger, entry) the index
expected, before any byte of it is returned.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from bookie.api import LedgerEntry
from bookie.errors import CorruptEntryError, SegmentGoneError
from bookie.storage.config import MAX_ENTRY_SIZE_LIMIT_BYTES
from bookie.storage.index import unpack_location
from bookie.storage.record import (
    ENTRY,
    HEADER_SIZE,
    OK,
    RECORD_TYPE_NAMES,
    RecordHeader,
    decode_record_at,
)
from bookie.storage.segment_writer import list_segments, segment_path

_log = logging.getLogger(__name__)

# One pread fetches this much, so that a range read of small, nearby entries costs one syscall
# for many of them.
READ_CHUNK_BYTES = 64 * 1024


@dataclass(slots=True)
class DiskRead:
    entries: list[LedgerEntry]
    # Set when the read stopped at a record that failed its checks.
    corruption: CorruptEntryError | None = None


def read_entries_from_segments(
    journal_dir: Path,
    ledger_id: int,
    locations: list[tuple[int, int]],
    budget_bytes: int,
    have_entries: bool,
) -> DiskRead:
    """Read ``(entry id, location)`` records in order until ``budget_bytes`` of payload.

    The first entry is always returned unless ``have_entries`` says the caller already has some.
    A record that fails its checks ends the read: the entries before it are returned along
    with the error.
    """
    result: list[LedgerEntry] = []
    total = 0
    fds: dict[int, int] = {}
    chunk_segment = -1
    chunk_start = 0
    chunk = b""
    try:
        for entry_id, location in locations:
            segment_id, offset = unpack_location(location)
            fd = fds.get(segment_id)
            if fd is None:
                fd = fds[segment_id] = _open_segment(journal_dir, segment_id)
            relative = offset - chunk_start
            if segment_id != chunk_segment or relative < 0 or relative + HEADER_SIZE > len(chunk):
                chunk = os.pread(fd, READ_CHUNK_BYTES, offset)
                chunk_segment, chunk_start, relative = segment_id, offset, 0
            if len(chunk) - relative >= HEADER_SIZE:
                # A record longer than what the chunk holds: read all of it at once.
                payload_length = int.from_bytes(chunk[relative + 4 : relative + 8], "little")
                needed = HEADER_SIZE + payload_length
                if relative + needed > len(chunk) and payload_length <= MAX_ENTRY_SIZE_LIMIT_BYTES:
                    chunk = os.pread(fd, max(needed, READ_CHUNK_BYTES), offset)
                    chunk_start, relative = offset, 0
            outcome, header = decode_record_at(chunk, relative, len(chunk))
            problem = _check(outcome, header, ledger_id, entry_id)
            if problem is not None:
                error = CorruptEntryError(
                    f"ledger {ledger_id} entry {entry_id}: {problem} "
                    f"(segment {segment_id}, offset {offset})"
                )
                return DiskRead(result, error)
            assert header is not None
            size = header.payload_length
            if (result or have_entries) and total + size > budget_bytes:
                break
            start = relative + HEADER_SIZE
            result.append(
                LedgerEntry(entry_id, header.last_add_confirmed, chunk[start : start + size])
            )
            total += size
            if total >= budget_bytes:
                break
    finally:
        for fd in fds.values():
            os.close(fd)
    return DiskRead(result)


def _open_segment(journal_dir: Path, segment_id: int) -> int:
    try:
        return os.open(segment_path(journal_dir, segment_id), os.O_RDONLY)
    except FileNotFoundError as exc:
        raise SegmentGoneError(segment_id) from exc


def _check(outcome: int, header: RecordHeader | None, ledger_id: int, entry_id: int) -> str | None:
    if header is None:
        return "no intact record at the indexed location"
    if outcome != OK:
        return "checksum mismatch"
    if header.record_type != ENTRY:
        return f"found a {RECORD_TYPE_NAMES[header.record_type]} record instead of an entry"
    if header.ledger_id != ledger_id or header.entry_id != entry_id:
        return f"found ledger {header.ledger_id} entry {header.entry_id} instead"
    return None


def read_record_length(journal_dir: Path, location: int) -> int:
    """Header plus payload length of the record at ``location``, 0 when it cannot be read."""
    segment_id, offset = unpack_location(location)
    try:
        fd = os.open(segment_path(journal_dir, segment_id), os.O_RDONLY)
    except OSError as exc:
        _log.warning("cannot read record length at segment %d: %s", segment_id, exc)
        return 0
    try:
        header = os.pread(fd, HEADER_SIZE, offset)
    finally:
        os.close(fd)
    if len(header) < HEADER_SIZE:
        return 0
    return HEADER_SIZE + int.from_bytes(header[4:8], "little")


def segment_sizes(journal_dir: Path) -> dict[int, int]:
    """Segment id → file size in bytes."""
    sizes = {}
    for segment_id in list_segments(journal_dir):
        try:
            sizes[segment_id] = segment_path(journal_dir, segment_id).stat().st_size
        except FileNotFoundError:
            continue
    return sizes
