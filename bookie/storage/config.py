"""The storage engine's configuration: one frozen, validated dataclass, loaded once.

Every field has a default, a command-line flag ``--bookie-<kebab-name>`` and an environment
variable ``STRATA_BOOKIE_<UPPER_SNAKE>`` (see ``add_arguments`` / ``from_arguments``).
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from strata.options import add_option

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
    """How one bookie stores ledgers in ``data_dir`` (``journal/`` and ``index/`` below it)."""

    data_dir: Path
    # The journal rolls to a new segment file once the current one would exceed this size.
    journal_segment_size_bytes: int = 64 * MIB
    # Largest payload accepted by add_entry; larger ones are refused with BadRequestError.
    max_entry_size_bytes: int = DEFAULT_MAX_ENTRY_SIZE_BYTES
    # fdatasync every group commit before acknowledging; False only for tests and benchmarks.
    fsync: bool = True
    # While the journal is idle it zero-fills (and fsyncs) this much of its segment ahead of
    # the data, as BookKeeper preallocates journal files: an fdatasync that neither grows the
    # file nor allocates blocks skips the file system's metadata commit (0 = off; at most
    # the segment size is ever zero-filled).
    journal_preallocation_bytes: int = 1 * MIB
    # Bytes buffered for the next group commit; beyond it adds wait (backpressure).
    group_commit_max_bytes: int = 1 * MIB
    # The index is checkpointed this often, and also once this many journal bytes were written
    # since the last checkpoint, which bounds the replay at open.
    checkpoint_interval_ms: int = 60_000
    checkpoint_journal_bytes: int = 256 * MIB
    # Garbage collection: removes segments without live entries, compacts sparse ones.
    gc_interval_ms: int = 300_000
    # A sealed segment whose live bytes fall below this fraction of its size is compacted.
    compaction_live_ratio: float = 0.5
    # At most this many bytes of live records are copied by one garbage collection run.
    compaction_max_bytes_per_run: int = 256 * MIB
    # Recently added entries kept in memory for tailing readers.
    read_cache_max_bytes: int = 64 * MIB
    read_cache_max_entries: int = 100_000
    # One read returns at most this many payload bytes (the request may ask for fewer) ...
    max_read_bytes: int = 4 * MIB
    # ... and at most this many entries.
    max_read_entries: int = 10_000
    # Threads serving reads that miss the cache.
    read_threads: int = 4
    # Long polls of read_last_add_confirmed: at most this many waiters per ledger (beyond it a
    # poll is answered at once) and at most this long a wait.
    max_lac_waiters_per_ledger: int = 1024
    max_long_poll_ms: int = 60_000
    # close() waits at most this long for queued adds to become durable.
    close_timeout_ms: int = 10_000

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir))
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

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
        """Add ``--bookie-<field>`` flags (env ``STRATA_BOOKIE_<FIELD>``) for every field."""
        for field in dataclasses.fields(BookieStorageConfig):
            flag = "--bookie-" + field.name.replace("_", "-")
            if field.name == "data_dir":
                add_option(parser, flag, type=Path, default=None, help="bookie data directory")
            elif field.type in ("bool", bool):
                add_option(
                    parser,
                    flag,
                    type=lambda text: text.strip().lower() in ("1", "true", "yes", "on"),
                    default=field.default,
                    help=field.name,
                )
            else:
                kind: Any = float if field.type in ("float", float) else int
                add_option(parser, flag, type=kind, default=field.default, help=field.name)

    @classmethod
    def from_arguments(
        cls, arguments: argparse.Namespace, *, data_dir: Path | None = None
    ) -> BookieStorageConfig:
        """Build the config from a namespace filled by ``add_arguments``."""
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            values[field.name] = getattr(arguments, "bookie_" + field.name)
        if data_dir is not None:
            values["data_dir"] = data_dir
        if values["data_dir"] is None:
            raise ValueError("the bookie needs a data directory (--bookie-data-dir)")
        return cls(**values)
