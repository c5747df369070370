"""The journal's open segment file, as the thread writing it sees it: rolls, writes, zeros ahead.

``SegmentWriter`` is the file half of ``bookie.storage.journal.Journal``: every method except
``wants_preallocation`` runs in a thread, one thread at a time: ``write_batch`` in a commit
slot's job (``SyncSlots``, which orders the jobs' writes by a turn), ``create``,
``preallocate`` and ``close`` in the journal's own thread while no job is in flight. The slot
job reads ``fd`` right after its write for its fdatasync; a roll (``write_batch`` creating the
next segment) runs only while no other job is in flight, so a file is never closed under an
fdatasync (ARCHITECTURE.md's first invariant).

Rolling. ``write_batch`` takes the chunks the event loop prepared (``Chunk``: buffers bound
for one segment); a chunk for a new segment creates it, after the old one was cut back to its
data and fdatasync'ed, so that only the newest segment can have a torn tail after a crash.
The new segment's directory entry is fsynced before the batch is acknowledged.

Preallocation (the numbers are in the journal's docstring): while the journal is idle,
``preallocate`` zero-fills and fdatasyncs the next ``preallocation_bytes`` after the data, so a
group commit that overwrites those zeros neither grows the file nor allocates blocks. The zeros
are cut off when the segment is sealed (``create`` of the next one) or closed.

Lifecycle: created by the journal; ``create(first_segment_id, write_header=True)`` opens the
first segment of the run; ``close()`` seals the open one. A failure raises ``OSError`` to the
journal, which then fails for good.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from bookie.storage.checkpoint import fsync_directory
from bookie.storage.record import encode_segment_header

_log = logging.getLogger(__name__)

SEGMENT_SUFFIX = ".seg"
# os.writev takes at most IOV_MAX (1024 on Linux) buffers per call.
_MAX_WRITEV_BUFFERS = 1024


def segment_path(journal_dir: Path, segment_id: int) -> Path:
    return journal_dir / f"{segment_id:020d}{SEGMENT_SUFFIX}"


def list_segments(journal_dir: Path) -> list[int]:
    """Ids of the segment files in ``journal_dir``, ascending."""
    ids = []
    for name in os.listdir(journal_dir):
        if name.endswith(SEGMENT_SUFFIX) and name[: -len(SEGMENT_SUFFIX)].isdigit():
            ids.append(int(name[: -len(SEGMENT_SUFFIX)]))
    return sorted(ids)


class Chunk:
    """Buffers bound for one segment; ``creates`` when the writer must create that segment."""

    __slots__ = ("buffers", "creates", "segment_id")

    def __init__(self, segment_id: int, creates: bool) -> None:
        self.segment_id = segment_id
        self.creates = creates
        self.buffers: list[bytes] = []


class SegmentWriter:
    """The open segment file of a journal; see the module docstring."""

    def __init__(
        self, journal_dir: Path, *, segment_size_bytes: int, preallocation_bytes: int, fsync: bool
    ) -> None:
        self._dir = journal_dir
        self._segment_size_bytes = segment_size_bytes
        self._preallocation_bytes = preallocation_bytes
        self._fsync = fsync
        # The open segment file, the end of its data, and the end of the zeros written (and
        # synced) ahead of the data.
        self.fd = -1
        self._segment_id = -1
        self._data_end = 0
        self._zeroed_end = 0
        self._preallocation_failed = False
        # Statistics: fdatasyncs done here (rolls, preallocation), bytes of records written.
        self.fsyncs = 0
        self.bytes_written = 0
        self.bytes_preallocated = 0

    def wants_preallocation(self) -> bool:
        """Fewer than ``preallocation_bytes`` of zeros ahead of the data (asked while idle)?"""
        return (
            self._fsync
            and self._preallocation_bytes > 0
            and not self._preallocation_failed
            and self._zeroed_end - self._data_end < self._preallocation_bytes
            and max(self._zeroed_end, self._data_end) < self._segment_size_bytes
        )

    def create(self, segment_id: int, write_header: bool) -> None:
        """Seal the open segment (zeros cut, fdatasync'ed, closed) and create ``segment_id``."""
        if self.fd >= 0:
            self._cut_preallocation()
            if self._fsync:
                os.fdatasync(self.fd)
                self.fsyncs += 1
            os.close(self.fd)
            self.fd = -1
        fd = os.open(
            segment_path(self._dir, segment_id), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644
        )
        self.fd, self._segment_id = fd, segment_id
        self._data_end = self._zeroed_end = 0
        self._preallocation_failed = False
        if write_header:
            self._data_end = _write_all(fd, [encode_segment_header(segment_id)])
            if self._fsync:
                os.fdatasync(fd)
                fsync_directory(self._dir)

    def preallocate(self) -> None:
        """Zero-fill and fdatasync the next ``preallocation_bytes`` after the data."""
        start = max(self._zeroed_end, self._data_end)
        end = min(start + self._preallocation_bytes, self._segment_size_bytes)
        zeros = bytes(end - start)
        try:
            written = os.pwrite(self.fd, zeros, start)
            while written < len(zeros):
                written += os.pwrite(self.fd, memoryview(zeros)[written:], start + written)
        except OSError as exc:
            # Out of space, say: the segment simply grows by appending from here on. Whatever
            # part of the zeros did land is cut off when the segment is sealed.
            _log.warning("journal preallocation stopped for this segment: %s", exc)
            self._preallocation_failed = True
            self._zeroed_end = max(self._zeroed_end, end)
            return
        # A failing fdatasync raises: after it the page cache is in an unknown state.
        os.fdatasync(self.fd)
        self.fsyncs += 1
        self.bytes_preallocated += end - start
        self._zeroed_end = end

    def _cut_preallocation(self) -> None:
        """Cut the zeros after the data off the open segment (before it is sealed)."""
        if self._zeroed_end > self._data_end:
            os.ftruncate(self.fd, self._data_end)
            self._zeroed_end = self._data_end

    def write_batch(self, chunks: list[Chunk]) -> None:
        """Write one group commit's chunks, creating the segments they roll to."""
        created = False
        for chunk in chunks:
            if chunk.segment_id != self._segment_id:
                assert chunk.creates, "the journal only ever appends to its newest segment"
                # Fsync the old segment before the new one exists: a torn tail can then only
                # be in the newest segment.
                self.create(chunk.segment_id, write_header=False)
                created = True
            written = _write_all(self.fd, chunk.buffers)
            self.bytes_written += written
            self._data_end += written
        if self._fsync and created:
            # The new segment's directory entry is durable before any of its batches are
            # acknowledged; their data is the fdatasync's that follows this write.
            fsync_directory(self._dir)

    def close(self, *, failed: bool) -> None:
        """Close the open segment; unless the journal ``failed``, cut and fdatasync it first."""
        if self.fd >= 0:
            if not failed:
                self._cut_preallocation()
                if self._fsync:
                    os.fdatasync(self.fd)
            os.close(self.fd)
            self.fd = -1


def _write_all(fd: int, buffers: list[bytes]) -> int:
    """Write every buffer, in order; returns the byte count. Handles short writes."""
    total = 0
    for start in range(0, len(buffers), _MAX_WRITEV_BUFFERS):
        group = buffers[start : start + _MAX_WRITEV_BUFFERS]
        expected = sum(len(buffer) for buffer in group)
        written = os.writev(fd, group)
        if written < expected:
            # A short write (rare: signals, full disk): finish it buffer by buffer.
            rest = memoryview(b"".join(group))[written:]
            while rest:
                rest = rest[os.write(fd, rest) :]
        total += expected
    return total
