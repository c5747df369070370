"""Shared helpers of the bookie unit tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from bookie.storage import Bookie, BookieStorageConfig

KEY = b"master-key"


def make_config(tmp_path: Path, **overrides: Any) -> BookieStorageConfig:
    """Small segments, no fsync (unless asked) and no background timers firing during a test."""
    values: dict[str, Any] = {
        "data_dir": tmp_path / "bookie",
        "fsync": False,
        "journal_segment_size_bytes": 64 * 1024,
        "checkpoint_interval_ms": 3_600_000,
        "gc_interval_ms": 3_600_000,
    }
    values.update(overrides)
    return BookieStorageConfig(**values)


@contextlib.asynccontextmanager
async def opened(config: BookieStorageConfig, *, checkpoint: bool = True) -> AsyncIterator[Bookie]:
    bookie = await Bookie.open(config)
    try:
        yield bookie
    finally:
        await bookie.close(checkpoint=checkpoint)


def payload_for(ledger_id: int, entry_id: int, size: int = 100) -> bytes:
    """A payload that identifies its entry, so that a misplaced read cannot pass."""
    seed = f"{ledger_id}:{entry_id}:".encode()
    return (seed * (size // len(seed) + 1))[:size]


async def add_range(bookie: Bookie, ledger_id: int, first: int, last: int, size: int = 100) -> None:
    """Add entries first..last to the ledger, concurrently, each LAC = its id - 1."""
    await asyncio.gather(
        *(
            bookie.add_entry(
                ledger_id, entry_id, entry_id - 1, payload_for(ledger_id, entry_id, size), KEY
            )
            for entry_id in range(first, last + 1)
        )
    )
