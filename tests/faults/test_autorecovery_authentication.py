"""Autorecovery on closed bookies: with authentication and authorization on every bookie, a
paused bookie's fragments are still copied elsewhere, because autorecovery presents the
superuser token (``--broker-client-auth-token-file``) to the bookies it reads and writes.
Without it the repair could not finish, and this test would time out."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

import strata
from strata.storage.v1 import bookie_pb2, bookie_pb2_grpc
from tests.cluster import Cluster

pytestmark = [pytest.mark.integration, pytest.mark.fault]

TOPIC = "persistent://public/default/repaired-behind-auth"
SUPERUSER = "cluster-superuser"
MESSAGES = 3_000
PAUSE_AFTER = 1_000
MAX_PENDING = 500


def cli(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "strata", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[tuple[Cluster, str, str]]:
    secret = tmp_path / "secret.key"
    cli("tokens", "create-secret-key", "--output", str(secret))
    superuser = cli("tokens", "create", "--secret-key", f"file:{secret}", "--subject", SUPERUSER)
    app = cli("tokens", "create", "--secret-key", f"file:{secret}", "--subject", "app")
    token_file = tmp_path / "superuser.token"
    token_file.write_text(superuser)
    authentication = [
        "--authentication-enabled",
        "true",
        "--auth-token-secret-key",
        f"file:{secret}",
        "--broker-client-auth-token-file",
        str(token_file),
    ]
    cluster = Cluster(
        tmp_path / "cluster",
        bookies=3,
        brokers=1,
        bookie_args=[
            "--journal-fsync",
            "false",
            "--autorecovery-lost-bookie-grace-ms",
            "500",
            "--autorecovery-audit-interval-ms",
            "2000",
            *authentication,
            "--authorization-enabled",
            "true",
            "--superuser-roles",
            SUPERUSER,
        ],
        broker_args=authentication,
        admin_token=superuser,
    )
    with contextlib.closing(cluster):
        cluster.start()
        yield cluster, superuser, app


def holders(cluster: Cluster, token: str, ledger_id: int) -> list[int]:
    """The bookies (indexes) that hold entry 0 of ``ledger_id``."""
    found = []
    for index in range(len(cluster.bookies)):
        with grpc.insecure_channel(cluster.bookie_id(index)) as channel:
            try:
                bookie_pb2_grpc.BookieServiceStub(channel).ReadEntries(
                    bookie_pb2.ReadEntriesRequest(
                        ledger_id=ledger_id, first_entry_id=0, last_entry_id=0
                    ),
                    metadata=(("authorization", f"Bearer {token}"),),
                    timeout=10,
                )
            except grpc.RpcError as exc:
                assert exc.code() is grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
                continue
            found.append(index)
    return found


async def test_autorecovery_repairs_with_the_superuser_token(
    secured: tuple[Cluster, str, str],
) -> None:
    cluster, superuser, app = secured
    client = strata.AsyncClient(cluster.service_url, authentication=strata.AuthenticationToken(app))
    try:
        producer = await client.create_producer(
            TOPIC, send_timeout_millis=60_000, max_pending_messages=MAX_PENDING
        )
        first = await producer.send(b"0")
        victim = holders(cluster, superuser, first.ledger_id())[0]
        victim_id = cluster.bookie_id(victim)
        for index in range(1, MESSAGES):
            if index == PAUSE_AFTER:
                await producer.flush()
                cluster.pause_bookie(victim)
            while producer.pending_messages >= MAX_PENDING:
                await asyncio.wait_for(producer.wait_for_space(), 60)
            producer.send_nowait(str(index).encode())
            if index % 200 == 0:
                await asyncio.sleep(0)
        await asyncio.wait_for(producer.flush(), 120)
        try:

            def state() -> tuple[int, int]:
                response = cluster.list_bookies()
                listing = {b.id: b for b in response.bookies}
                return listing[victim_id].ledger_count, response.under_replicated_ledger_count

            cluster.wait_for(state, lambda s: s == (0, 0), 120, "repair of the paused bookie")
        finally:
            cluster.resume_bookie(victim)
        consumer = await client.subscribe(
            TOPIC, "check", initial_position=strata.InitialPosition.Earliest
        )
        got: list[bytes] = []
        while len(got) < MESSAGES:
            batch = await consumer.receive_many(1000, timeout_millis=15_000)
            got.extend(message.data() for message in batch)
        assert got == [str(i).encode() for i in range(MESSAGES)]
    finally:
        await client.close()
    for process in cluster.bookies:
        log = process.log_text()
        assert "UNAUTHENTICATED" not in log and "PERMISSION_DENIED" not in log
        assert superuser.rsplit(".", 1)[-1] not in log
