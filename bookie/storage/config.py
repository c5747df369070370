"""The storage engine's configuration: one frozen, validated dataclass, loaded once.

Every field has its help text in its metadata (``setting``); ``strata bookie`` binds each
one to a flag ``--kebab-name`` and a variable ``STRATA_UPPER_SNAKE`` (``fsync`` is
``--journal-fsync``) through ``strata.config_binding``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from strata.config_binding import HELP, setting

MIB = 1024 * 1024

# Locations in the index pack (segment id, offset) into one signed 64-bit integer (see
# ``bookie.storage.index``); a segment therefore holds at most 2**32 bytes.
MAX_SEGMENT_SIZE_BYTES = 1024 * MIB
# The record format stores the payload length as u32; the parser refuses anything larger than
# this, whatever the configuration says, so that garbage cannot make it allocate gigabytes.
MAX_ENTRY_SIZE_LIMIT_BYTES = 64 * MIB


DEFAULT_MAX_ENTRY_SIZE_BYTES = 8 * MIB


@dataclass(frozen=True, slots=True)
class BookieStorageConfig:
    """How one bookie stores ledgers: the index (and the instance cookie) in ``data_dir``,
    the journal segments (which hold the entries) in ``journal_dir``, by default
    ``data_dir/journal``. A separate journal directory lets the journal have a volume of its
    own, as BookKeeper's ``journalDirectory`` beside its ``ledgerDirectories``."""

    data_dir: Path = field(metadata={HELP: "directory of the index and the instance cookie"})
    journal_dir: str = setting(
        "", "directory of the journal segments, which hold the entries (empty: DATA_DIR/journal)"
    )
    journal_segment_size_bytes: int = setting(
        64 * MIB, "the journal rolls to a new segment file once the current one would exceed this"
    )
    max_entry_size_bytes: int = setting(
        DEFAULT_MAX_ENTRY_SIZE_BYTES, "largest entry payload accepted; larger adds are refused"
    )
    fsync: bool = setting(
        True,
        "fdatasync every group commit before acknowledging (turn off only for tests)",
        name="journal_fsync",
    )
    # While the journal is idle it zero-fills (and fsyncs) this much of its segment ahead of
    # the data, as BookKeeper preallocates journal files: an fdatasync that neither grows the
    # file nor allocates blocks skips the file system's metadata commit (0 = off; at most
    # the segment size is ever zero-filled).
    journal_preallocation_bytes: int = setting(
        1 * MIB, "zero-filled (and fsynced) journal space kept ahead of the data (0 = off)"
    )
    group_commit_max_bytes: int = setting(
        1 * MIB, "bytes buffered for the next group commit; beyond it adds wait"
    )
    # The index is checkpointed this often, and also once this many journal bytes were written
    # since the last checkpoint, which bounds the replay at open.
    checkpoint_interval_ms: int = setting(60_000, "how often the index is checkpointed")
    checkpoint_journal_bytes: int = setting(
        256 * MIB, "checkpoint once this many journal bytes were written since the last one"
    )
    gc_interval_ms: int = setting(
        300_000, "how often garbage collection removes and compacts segments"
    )
    compaction_live_ratio: float = setting(
        0.5, "compact a sealed segment whose live bytes fall below this fraction of its size"
    )
    compaction_max_bytes_per_run: int = setting(
        256 * MIB, "live bytes one garbage-collection run copies at most"
    )
    # Compaction copies go through the journal with the client adds; this pace (BookKeeper's
    # compactionRateByBytes) keeps each group commit's share of copies small.
    compaction_max_bytes_per_second: int = setting(
        4 * MIB, "live bytes compaction copies per second at most"
    )
    # Removed segments are truncated a step at a time at this pace before the unlink: freeing
    # a run's gigabyte at once (on a filesystem mounted with ``discard``, the TRIM of every
    # freed extent in one commit of the filesystem's journal) stalled every fdatasync sharing
    # the disk. Faster when a run would not finish within half of ``gc_interval_ms`` otherwise.
    segment_release_bytes_per_second: int = setting(
        16 * MIB, "bytes of removed journal segments released to the filesystem per second"
    )
    read_cache_max_bytes: int = setting(
        64 * MIB, "recently added entries kept in memory for tailing readers (bytes)"
    )
    read_cache_max_entries: int = setting(
        100_000, "recently added entries kept in memory for tailing readers (count)"
    )
    max_read_bytes: int = setting(4 * MIB, "payload bytes one read returns at most")
    max_read_entries: int = setting(10_000, "entries one read returns at most")
    read_threads: int = setting(4, "threads serving reads that miss the cache")
    # Long polls of read_last_add_confirmed: at most this many waiters per ledger (beyond it a
    # poll is answered at once) and at most this long a wait.
    max_lac_waiters_per_ledger: int = setting(
        1024, "long polls waiting on one ledger's last add confirmed; more are answered at once"
    )
    max_long_poll_ms: int = setting(60_000, "longest wait of one long poll")
    close_timeout_ms: int = setting(
        10_000, "how long closing waits for queued adds to become durable"
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir))
        if self.journal_dir and Path(self.journal_dir).resolve() == self.data_dir.resolve():
            raise ValueError(
                "journal_dir must not be data_dir itself (leave it empty for DATA_DIR/journal)"
            )
        if not 4096 <= self.journal_segment_size_bytes <= MAX_SEGMENT_SIZE_BYTES:
            raise ValueError(
                f"journal_segment_size_bytes must be in [4096, {MAX_SEGMENT_SIZE_BYTES}], "
                f"got {self.journal_segment_size_bytes}"
            )
        if not 0 <= self.journal_preallocation_bytes <= MAX_SEGMENT_SIZE_BYTES:
            raise ValueError(
                f"journal_preallocation_bytes must be in [0, {MAX_SEGMENT_SIZE_BYTES}], "
                f"got {self.journal_preallocation_bytes}"
            )
        if not 1 <= self.max_entry_size_bytes <= MAX_ENTRY_SIZE_LIMIT_BYTES:
            raise ValueError(
                f"max_entry_size_bytes must be in [1, {MAX_ENTRY_SIZE_LIMIT_BYTES}], "
                f"got {self.max_entry_size_bytes}"
            )
        positive = (
            "group_commit_max_bytes",
            "checkpoint_interval_ms",
            "checkpoint_journal_bytes",
            "gc_interval_ms",
            "compaction_max_bytes_per_run",
            "compaction_max_bytes_per_second",
            "segment_release_bytes_per_second",
            "max_read_bytes",
            "max_read_entries",
            "read_threads",
            "max_lac_waiters_per_ledger",
            "max_long_poll_ms",
            "close_timeout_ms",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("read_cache_max_bytes", "read_cache_max_entries"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")
        if not 0.0 <= self.compaction_live_ratio < 1.0:
            raise ValueError(
                f"compaction_live_ratio must be in [0, 1), got {self.compaction_live_ratio}"
            )

    @property
    def journal_path(self) -> Path:
        """Where the journal segments live."""
        return Path(self.journal_dir) if self.journal_dir else self.data_dir / "journal"

    @property
    def journal_is_separate(self) -> bool:
        """Whether the journal has a directory (a volume) outside ``data_dir``."""
        return bool(self.journal_dir)
