"""Tiered storage under faults, with real processes: moto's S3 server paused (SIGSTOP) in the
middle of an offload, and the standalone killed (kill -9) in the middle of one.

Neither loses anything: the topic keeps taking messages, no bookie copy is deleted before its
offload is verified, a consumer of offloaded data waits while S3 is away and then gets the
same bytes in the same order; the offload resumes and completes, and the orphans of the
interrupted attempts (objects, unfinished multipart uploads) are swept.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from strata.v1 import admin_pb2
from tests.harness import Standalone
from tests.moto_server import MotoServer
from tests.offload_workload import (
    MIB,
    Admin,
    Produced,
    assert_identical,
    consume,
    pin,
    produce,
)

pytestmark = [pytest.mark.integration, pytest.mark.fault]

BUCKET = "strata-offload-faults"
TOPIC = "persistent://public/default/offload-faults"
SIZE_MB = 120
PAUSE_SECONDS = 6.0
KILL_DELAY_SECONDS = 0.15
RUNNING = admin_pb2.OFFLOAD_RUN_STATUS_RUNNING


def start_standalone(tmp_path: Path, moto: MotoServer) -> Standalone:
    return Standalone(
        tmp_path / "data",
        # Ledgers of about 10 MiB (multipart uploads), read from storage, not the cache.
        "--managed-ledger-max-entries-per-ledger",
        "80",
        "--managed-ledger-cache-size-bytes",
        str(1024 * 1024),
        "--offload-driver",
        "s3",
        "--offload-bucket",
        BUCKET,
        "--offload-deletion-lag-ms",
        "0",
        # Fail fast while S3 is away, retry often once it is back.
        "--offload-request-timeout-ms",
        "1000",
        "--offload-retry-timeout-ms",
        "2000",
        "--housekeeping-interval-ms",
        "300",
        env=moto.env(),
    ).start()


def wait_mid_offload(admin: Admin, timeout_s: float = 60) -> admin_pb2.OffloadStatus:
    """Poll until at least one ledger is offloaded while the run is still going."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = admin.status(TOPIC)
        if status.run_ledgers_offloaded >= 1:
            assert status.status == RUNNING, f"the offload ended before the fault: {status}"
            return status
        # Poll interval of a probe; the offload takes seconds.
        time.sleep(0.02)
    raise TimeoutError("no ledger was offloaded")


def wait_clean_bucket(moto: MotoServer, admin: Admin, timeout_s: float = 30) -> int:
    """Until the bucket holds exactly the offloaded ledgers' two objects each and no
    unfinished upload: every orphan of an interrupted attempt is gone."""
    client = moto.client()
    deadline = time.monotonic() + timeout_s
    while True:
        offloaded = admin.status(TOPIC).offloaded_ledgers
        keys = moto.list_keys(BUCKET)
        uploads = client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])  # type: ignore[attr-defined]
        if len(keys) == 2 * offloaded and not uploads:
            return offloaded
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(keys)} keys for {offloaded} ledgers, {len(uploads)} uploads")
        time.sleep(0.2)


async def test_s3_paused_mid_offload(moto_server: MotoServer, tmp_path: Path) -> None:
    moto_server.create_bucket(BUCKET)
    server = start_standalone(tmp_path, moto_server)
    admin = Admin(server.address)
    try:
        await pin(server.address, TOPIC)
        produced = await produce(server.address, TOPIC, SIZE_MB * MIB)
        admin.offload(TOPIC)
        wait_mid_offload(admin)
        moto_server.pause()
        paused_at = time.monotonic()
        try:
            # The topic keeps working: producing goes to the bookies.
            more = await produce(server.address, TOPIC, 8 * MIB, start=len(produced.ids))
            # The offload fails (and will be retried); nothing unverified left the bookies.
            deadline = time.monotonic() + 30
            status = admin.status(TOPIC)
            while status.status != admin_pb2.OFFLOAD_RUN_STATUS_ERROR:
                assert time.monotonic() < deadline, status
                await asyncio.sleep(0.1)
                status = admin.status(TOPIC)
            assert status.error
            assert status.bookie_deleted_ledgers <= status.offloaded_ledgers
            assert status.offloaded_ledgers < status.closed_ledgers
            # A consumer of the offloaded ledgers waits; it gets nothing wrong meanwhile.
            waiting = asyncio.ensure_future(
                consume(
                    server.address,
                    TOPIC,
                    "during-outage",
                    len(produced.ids) + len(more.ids),
                    timeout_s=120,
                )
            )
            await asyncio.sleep(max(0.0, PAUSE_SECONDS - (time.monotonic() - paused_at)))
            assert not waiting.done()
        finally:
            moto_server.resume()
        everything = Produced(
            produced.ids + more.ids, produced.digests + more.digests, produced.total_bytes
        )
        assert_identical(everything, await asyncio.wait_for(waiting, 150))
        # The failed manual request is retried after the outage and completes.
        final = admin.wait_offloaded(TOPIC, timeout_s=90)
        assert final.status == admin_pb2.OFFLOAD_RUN_STATUS_SUCCESS

        server.restart()
        again = await consume(server.address, TOPIC, "after-restart", len(everything.ids), 120)
        assert_identical(everything, again)
        wait_clean_bucket(moto_server, Admin(server.address))
    finally:
        server.stop()


async def test_kill9_mid_offload(moto_server: MotoServer, tmp_path: Path) -> None:
    moto_server.create_bucket(BUCKET)
    server = start_standalone(tmp_path, moto_server)
    try:
        await pin(server.address, TOPIC)
        produced = await produce(server.address, TOPIC, SIZE_MB * MIB)
        admin = Admin(server.address)
        admin.offload(TOPIC)
        before = wait_mid_offload(admin)
        # Into the next ledger's upload (a ledger takes about a quarter second here).
        await asyncio.sleep(KILL_DELAY_SECONDS)
        server.kill()
        server.start()
        admin = Admin(server.address)
        status = admin.status(TOPIC)
        assert status.status == admin_pb2.OFFLOAD_RUN_STATUS_NOT_RUN  # a new process
        # What was recorded COMPLETE before the crash still is; nothing else was deleted.
        assert status.offloaded_ledgers >= before.offloaded_ledgers
        admin.offload(TOPIC)
        final = admin.wait_offloaded(TOPIC, timeout_s=90)
        again = await consume(server.address, TOPIC, "after-crash", len(produced.ids), 120)
        assert_identical(produced, again)
        assert wait_clean_bucket(moto_server, admin) == final.offloaded_ledgers
    finally:
        server.stop()
