"""Tiered storage end to end: a real ``strata standalone`` offloading to moto's S3 server over
HTTP (and to a directory), driven by the ``strata admin`` CLI.

Many small ledgers are produced, offloaded, verified and deleted from the bookie (deletion lag
0), and a new subscription from the earliest position reads everything back from object
storage: same message ids, same bytes, same order, also after a restart. The default run moves
the issue's 200 MB (about 15 s here); ``-m soak`` moves 1 GB (``STRATA_TEST_OFFLOAD_MB``
overrides both).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from strata.v1 import admin_pb2
from tests.harness import Standalone
from tests.moto_server import MotoServer
from tests.offload_workload import MIB, Admin, Produced, assert_identical, consume, pin, produce

pytestmark = pytest.mark.integration

BUCKET = "strata-offload"
PREFIX = "it/offload"
DEFAULT_MB = int(os.environ.get("STRATA_TEST_OFFLOAD_MB", "200"))
SOAK_MB = int(os.environ.get("STRATA_TEST_OFFLOAD_MB", "1000"))
# Entries are SDK batches of about 128 KiB: 80 make ledgers of about 10 MiB (S3 multipart
# uploads of two parts), 20 ledgers of about 2.5 MiB (single PUTs).
S3_ENTRIES_PER_LEDGER = "80"
FS_ENTRIES_PER_LEDGER = "20"


def offload_args(entries_per_ledger: str, *extra: str) -> list[str]:
    return [
        "--managed-ledger-max-entries-per-ledger",
        entries_per_ledger,
        # A small entry cache, so that catch-up reads really go to storage.
        "--managed-ledger-cache-size-bytes",
        str(1024 * 1024),
        "--offload-deletion-lag-ms",
        "0",
        "--housekeeping-interval-ms",
        "500",
        *extra,
    ]


def cli(address: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "strata", "admin", *args, "--service-url", address],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


async def run_round_trip(
    server: Standalone, topic: str, size_mb: int
) -> tuple[Produced, admin_pb2.OffloadStatus]:
    await pin(server.address, topic)
    produced = await produce(server.address, topic, size_mb * MIB)
    ledgers = {ledger for ledger, _, _ in produced.ids}
    assert len(ledgers) >= size_mb // 12, "the data should span many ledgers"

    status = json.loads(cli(server.address, "topics", "offload-status", topic))
    assert status["status"] == "NOT_RUN"
    started = json.loads(cli(server.address, "topics", "offload", topic))
    assert started["status"] in ("RUNNING", "SUCCESS")
    finished = json.loads(
        cli(
            server.address,
            "topics",
            "offload-status",
            topic,
            "--wait",
            "--wait-timeout-seconds",
            "120",
        )
    )
    assert finished["status"] == "SUCCESS", finished
    assert finished["error"] == ""
    final = Admin(server.address).wait_offloaded(topic, timeout_s=60)
    # Every ledger but the open one, whose entries are all in closed ledgers here (the
    # producer's last entries closed no ledger yet, so one may hold data on bookies).
    assert final.closed_ledgers >= len(ledgers) - 1
    return produced, final


async def test_offload_to_s3_and_read_back(moto_server: MotoServer, tmp_path: Path) -> None:
    await _round_trip_s3(moto_server, tmp_path, DEFAULT_MB)


@pytest.mark.soak
async def test_offload_to_s3_and_read_back_1gb(moto_server: MotoServer, tmp_path: Path) -> None:
    await _round_trip_s3(moto_server, tmp_path, SOAK_MB)


async def _round_trip_s3(moto_server: MotoServer, tmp_path: Path, size_mb: int) -> None:
    moto_server.create_bucket(BUCKET)
    # Credentials, region and endpoint come from the standard AWS variables.
    server = Standalone(
        tmp_path / "data",
        *offload_args(
            S3_ENTRIES_PER_LEDGER,
            "--offload-driver",
            "s3",
            "--offload-bucket",
            BUCKET,
            "--offload-prefix",
            PREFIX,
        ),
        env=moto_server.env(),
    ).start()
    topic = "persistent://public/default/offload-s3"
    try:
        produced, final = await run_round_trip(server, topic, size_mb)
        keys = moto_server.list_keys(BUCKET)
        assert len(keys) == 2 * final.offloaded_ledgers
        assert all(k.startswith(f"{PREFIX}/public/default/offload-s3/") for k in keys)
        assert sum(k.endswith("-index") for k in keys) == final.offloaded_ledgers
        assert "?uploads" in moto_server.log_path.read_text()  # multipart uploads were used

        count = len(produced.ids)
        first = await consume(server.address, topic, "after-offload", count, timeout_s=120)
        assert_identical(produced, first)

        server.restart()  # kill -9, then the same data directory
        again = await consume(server.address, topic, "after-restart", count, timeout_s=120)
        assert_identical(produced, again)
        after = Admin(server.address).status(topic)
        assert after.bookie_deleted_ledgers == final.bookie_deleted_ledgers
    finally:
        server.stop()


async def test_namespace_threshold_offloads_to_a_directory(tmp_path: Path) -> None:
    directory = tmp_path / "offloaded"
    server = Standalone(
        tmp_path / "data",
        *offload_args(
            FS_ENTRIES_PER_LEDGER,
            "--offload-driver",
            "filesystem",
            "--offload-directory",
            str(directory),
        ),
    ).start()
    topic = "persistent://public/default/offload-fs"
    try:
        address = server.address
        cli(address, "namespaces", "set-offload-threshold", "public/default", "--size", "4M")
        cli(address, "namespaces", "set-offload-deletion-lag", "public/default", "--lag", "0s")
        assert json.loads(
            cli(address, "namespaces", "get-offload-threshold", "public/default")
        ) == {"offload_threshold_bytes": 4 * MIB}
        assert json.loads(
            cli(address, "namespaces", "get-offload-deletion-lag", "public/default")
        ) == {"offload_deletion_lag_ms": 0}

        await pin(address, topic)
        produced = await produce(address, topic, 16 * MIB)
        admin = Admin(address)
        status = admin.status(topic)
        for _ in range(600):  # automatic: after rollovers and in housekeeping
            status = admin.status(topic)
            if status.bookie_deleted_ledgers and status.bookie_resident_bytes <= 8 * MIB:
                break
            await asyncio.sleep(0.1)
        assert status.trigger == "automatic"
        assert status.bookie_resident_bytes <= 8 * MIB  # the threshold plus the open ledger
        assert status.bookie_deleted_ledgers >= 3
        files = sorted(p.name for p in directory.rglob("*") if p.is_file())
        assert len(files) == 2 * status.offloaded_ledgers

        server.restart()
        again = await consume(address, topic, "after-restart", len(produced.ids), timeout_s=120)
        assert_identical(produced, again)
    finally:
        server.stop()
