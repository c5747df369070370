"""Rebuilding the index when a bookie opens: the newest checkpoint plus the journal after it.

``JournalReplay.run()`` (blocking; run it in a worker thread before anything is served):

1. Load ``index/checkpoint``. Without one, replay the whole journal, which is only possible
   while no segment was ever garbage collected (ids 1..n all present); a damaged checkpoint is
   treated the same way, otherwise opening fails (the bookie must be rebuilt by re-replication).
2. Check that every segment the checkpoint points into still exists.
3. Replay every segment from the checkpoint's mark, checking each record's CRC32C:

   * the newest segment's tail that does not parse (a write interrupted by a crash) is
     truncated: those records were never acknowledged, since acknowledgement follows fsync;
   * damage followed by intact records, or anywhere in a sealed segment, is corruption: it is
     counted and logged and the file is left as it is. A damaged ENTRY record whose framing is
     intact is still indexed (if its entry is not indexed yet), so that a read of it fails with
     CorruptEntryError (DATA_LOSS) rather than claiming the entry was never stored; a damaged
     FENCE record still fences, because refusing adds is the safe side.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from bookie.errors import BookieIOError, CheckpointError
from bookie.storage.checkpoint import fsync_directory, read_checkpoint
from bookie.storage.index import LedgerIndex, pack_location
from bookie.storage.reader import read_record_length
from bookie.storage.record import (
    DELETE,
    ENTRY,
    FENCE,
    HEADER_SIZE,
    KEY,
    RECORD_TYPE_NAMES,
    SEGMENT_HEADER_SIZE,
    Damage,
    RecordHeader,
    TornTail,
    check_segment_header,
    scan_records,
)
from bookie.storage.segment_writer import list_segments, segment_path

_log = logging.getLogger(__name__)


@dataclass(slots=True)
class RecoveryResult:
    index: LedgerIndex
    # The first segment this run writes: one past every existing segment.
    next_segment_id: int
    records_replayed: int
    corrupt_records: int
    torn_tail_bytes: int
    checkpoint_loaded: bool


class JournalReplay:
    """One replay of one data directory; see the module docstring for the steps."""

    def __init__(self, journal_dir: Path, index_dir: Path, *, fsync: bool) -> None:
        self._journal_dir = journal_dir
        self._index_dir = index_dir
        self._fsync = fsync
        self._index = LedgerIndex(lambda location: read_record_length(journal_dir, location))
        self._records_replayed = 0
        self._corrupt_records = 0
        self._torn_tail_bytes = 0

    def run(self) -> RecoveryResult:
        segments = list_segments(self._journal_dir)
        never_collected = segments == list(range(1, len(segments) + 1))
        try:
            snapshot = read_checkpoint(self._index_dir)
        except CheckpointError as exc:
            if not never_collected:
                raise BookieIOError(
                    f"the index checkpoint is damaged ({exc}) and journal segments were already "
                    "garbage collected: this bookie cannot rebuild its index"
                ) from exc
            _log.warning("index checkpoint damaged (%s); replaying the whole journal", exc)
            snapshot = None
        if snapshot is None and not never_collected:
            raise BookieIOError(
                "the index checkpoint is missing and journal segments were already garbage "
                f"collected (first segment {segments[0]}): this bookie cannot rebuild its index"
            )
        mark_segment_id, mark_offset = 1, SEGMENT_HEADER_SIZE
        if snapshot is not None:
            self._index.load(snapshot)
            mark_segment_id, mark_offset = snapshot.mark_segment_id, snapshot.mark_offset
            missing = self._index.referenced_segments() - set(segments)
            if missing:
                raise BookieIOError(
                    f"journal segments {sorted(missing)} hold indexed entries but are missing"
                )
        for segment_id in segments:
            if segment_id < mark_segment_id:
                continue
            start = mark_offset if segment_id == mark_segment_id else SEGMENT_HEADER_SIZE
            self._replay_segment(segment_id, start, last=segment_id == segments[-1])
        return RecoveryResult(
            index=self._index,
            next_segment_id=(segments[-1] + 1) if segments else 1,
            records_replayed=self._records_replayed,
            corrupt_records=self._corrupt_records,
            torn_tail_bytes=self._torn_tail_bytes,
            checkpoint_loaded=snapshot is not None,
        )

    def _replay_segment(self, segment_id: int, start: int, *, last: bool) -> None:
        path = segment_path(self._journal_dir, segment_id)
        data = path.read_bytes()
        if start > len(data):
            raise BookieIOError(
                f"journal segment {segment_id} is {len(data)} bytes, shorter than the "
                f"checkpoint mark at {start}: acknowledged data was lost"
            )
        problem = check_segment_header(data, segment_id)
        if problem is not None:
            if last and len(data) <= SEGMENT_HEADER_SIZE:
                # The crash interrupted the creation of this segment: nothing was written to it.
                _log.warning("removing unfinished journal segment %d (%s)", segment_id, problem)
                path.unlink()
                if self._fsync:
                    fsync_directory(self._journal_dir)
                return
            self._corrupt_records += 1
            _log.error("journal segment %d: %s; reading its records anyway", segment_id, problem)
        for event in scan_records(data, start, len(data), last_segment=last):
            if isinstance(event, RecordHeader):
                self._records_replayed += 1
                self._apply(event, data, segment_id)
            elif isinstance(event, Damage):
                self._corrupt_records += 1
                self._apply_damaged(event, segment_id)
            else:
                assert isinstance(event, TornTail)
                self._truncate(path, segment_id, event.offset, data)

    def _apply(self, header: RecordHeader, data: bytes, segment_id: int) -> None:
        index = self._index
        record_type = header.record_type
        if record_type == DELETE:
            index.apply_delete(header.ledger_id)
            return
        ledger = index.ledger_for_apply(header.ledger_id)
        if ledger is None:  # written before the ledger's deletion
            return
        if record_type == ENTRY:
            index.apply_entry(
                ledger,
                header.entry_id,
                header.last_add_confirmed,
                pack_location(segment_id, header.offset),
                header.length,
            )
        else:
            payload_start = header.offset + HEADER_SIZE
            master_key = data[payload_start : payload_start + header.payload_length]
            if record_type == KEY:
                index.apply_key(ledger, master_key)
            else:
                assert record_type == FENCE
                index.apply_fence(ledger, master_key)

    def _apply_damaged(self, damage: Damage, segment_id: int) -> None:
        header = damage.header
        if header is None:
            _log.error(
                "journal segment %d: %d unparsable bytes at offset %d skipped (%s)",
                segment_id,
                damage.end - damage.offset,
                damage.offset,
                damage.reason,
            )
            return
        _log.error(
            "journal segment %d offset %d: %s record (ledger %d, entry %d as its damaged header "
            "says) failed its checksum",
            segment_id,
            damage.offset,
            RECORD_TYPE_NAMES[header.record_type],
            header.ledger_id,
            header.entry_id,
        )
        ledger = self._index.ledgers.get(header.ledger_id)
        if ledger is None:
            return
        if header.record_type == ENTRY and header.entry_id not in ledger.entries:
            self._index.apply_entry(
                ledger,
                header.entry_id,
                -1,  # the damaged record's LAC cannot be trusted
                pack_location(segment_id, header.offset),
                header.length,
            )
        elif header.record_type == FENCE:
            ledger.fenced = ledger.fence_admitted = True
            ledger.snapshot = None

    def _truncate(self, path: Path, segment_id: int, offset: int, data: bytes) -> None:
        size = len(data)
        if data.count(0, offset) == size - offset:
            # Only zeros: the journal's preallocated space after its last write (or pages of
            # an interrupted write that never reached the disk). Nothing was torn.
            _log.info(
                "journal segment %d: releasing %d bytes of unused preallocated space at offset %d",
                segment_id,
                size - offset,
                offset,
            )
        else:
            _log.warning(
                "journal segment %d: truncating a torn tail of %d bytes at offset %d",
                segment_id,
                size - offset,
                offset,
            )
            self._torn_tail_bytes += size - offset
        fd = os.open(path, os.O_WRONLY)
        try:
            os.ftruncate(fd, offset)
            if self._fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
