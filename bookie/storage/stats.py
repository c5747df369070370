"""The bookie's counters, shared by its parts (``Bookie.stats``): for tests and metrics."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class BookieStats:
    """Counters for tests and metrics. Journal counters are read from the journal itself."""

    records_replayed_at_open: int = 0
    corrupt_records_at_open: int = 0
    torn_tail_bytes_truncated: int = 0
    corrupt_reads: int = 0
    checkpoints_written: int = 0
    segments_removed: int = 0
    segments_compacted: int = 0
    bytes_compacted: int = 0
