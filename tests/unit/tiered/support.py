"""Helpers of the tiered unit tests: an in-memory closed ledger and offloaders on moto."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import boto3
from moto import mock_aws

from bookie.api import LedgerEntry
from bookie.errors import BookieUnavailableError
from bookie.ledger import STATE_CLOSED, LedgerMetadata
from tiered.config import MIB, OffloadConfig
from tiered.offloader import BlockOffloader, FilesystemOffloader, S3Offloader

BUCKET = "strata-offload-test"
REGION = "us-east-1"


def closed_metadata(ledger_id: int, payloads: list[bytes]) -> LedgerMetadata:
    return LedgerMetadata(
        ledger_id=ledger_id,
        ensemble_size=1,
        write_quorum=1,
        ack_quorum=1,
        ensembles={0: ["memory"]},
        state=STATE_CLOSED,
        last_entry_id=len(payloads) - 1,
        length_bytes=sum(len(p) for p in payloads),
    )


class MemoryLedger:
    """A closed ledger held in memory, read like ``LedgerReader`` reads one from bookies.

    ``fail_after`` makes reads fail once that many entries were served (a bookie outage)."""

    def __init__(self, ledger_id: int, payloads: list[bytes], fail_after: int = -1) -> None:
        self.payloads = payloads
        self._metadata = closed_metadata(ledger_id, payloads)
        self.fail_after = fail_after
        self.served = 0

    @property
    def metadata(self) -> LedgerMetadata:
        return self._metadata

    async def read(
        self, first_entry_id: int, last_entry_id: int, max_bytes: int = 0
    ) -> list[LedgerEntry]:
        result: list[LedgerEntry] = []
        size = 0
        for entry_id in range(first_entry_id, min(last_entry_id, len(self.payloads) - 1) + 1):
            if 0 <= self.fail_after <= self.served:
                if result:
                    return result
                raise BookieUnavailableError("injected bookie outage")
            payload = self.payloads[entry_id]
            result.append(LedgerEntry(entry_id, len(self.payloads) - 1, payload))
            self.served += 1
            size += len(payload)
            if max_bytes and size >= max_bytes:
                break
        return result


def random_payloads(count: int, max_size: int, seed: int = 1) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(rng.randint(0, max_size)) for _ in range(count)]


def small_config(driver: str, tmp_path: Path, **overrides: object) -> OffloadConfig:
    """Small blocks, windows and cache, so that tests cross every boundary with little data."""
    values: dict[str, object] = {
        "driver": driver,
        "prefix": "cluster-a/offload",
        "bucket": BUCKET,
        "region": REGION,
        "directory": str(tmp_path / "offload"),
        "block_size_bytes": 64 * 1024,
        "part_size_bytes": 5 * MIB,
        "read_window_bytes": 256 * 1024,
        "block_cache_size_bytes": 1 * MIB,
        "source_read_max_bytes": 200 * 1024,
        "retry_timeout_ms": 5_000,
        "retry_initial_backoff_ms": 10,
        "retry_max_backoff_ms": 50,
    }
    values.update(overrides)
    return OffloadConfig(**values)  # type: ignore[arg-type]


@asynccontextmanager
async def make_offloader(
    driver: str, tmp_path: Path, **overrides: object
) -> AsyncIterator[BlockOffloader]:
    """An offloader of ``driver``; for S3 inside ``mock_aws`` with the bucket created."""
    config = small_config(driver, tmp_path, **overrides)
    if driver == "filesystem":
        offloader: BlockOffloader = FilesystemOffloader(config)
        try:
            yield offloader
        finally:
            await offloader.close()
        return
    with mock_aws():
        boto3.client("s3", region_name=REGION).create_bucket(Bucket=BUCKET)
        offloader = S3Offloader(config)
        try:
            yield offloader
        finally:
            await offloader.close()
