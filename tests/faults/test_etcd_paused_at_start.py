"""The fault issue 10 reports: a bookie restarted while etcd was paused exited with status 1
after ~10 s. Now it waits for etcd (``--metadata-store-connect-timeout-seconds``, each
attempt timing out against the hung server) and becomes ready once etcd resumes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster import Cluster

pytestmark = [pytest.mark.integration, pytest.mark.fault]

# Longer than the 10 s after which the bookie used to give up.
PAUSE_SECONDS = 12.0
WAITING_LOG = "is not reachable yet"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with Cluster(
        tmp_path,
        bookies=2,
        brokers=1,
        bookie_args=["--journal-fsync", "false", "--autorecovery", "false"],
    ) as running:
        yield running


async def test_bookie_restarted_while_etcd_is_paused_waits_for_it(cluster: Cluster) -> None:
    bookie = cluster.bookies[0]
    bookie.kill()
    cluster.etcd.pause()
    try:
        paused_at = time.monotonic()
        bookie.start(wait=False)
        cluster.wait_for(
            lambda: bookie.log_text().count(WAITING_LOG),
            lambda count: count > 0,
            30,
            "bookie waiting for etcd",
        )
        # The scenario's pause (etcd hangs), not a wait standing in for a condition.
        await asyncio.sleep(max(0.0, PAUSE_SECONDS - (time.monotonic() - paused_at)))
        assert bookie.running, f"the bookie gave up while etcd was paused:\n{bookie.log_text()}"
    finally:
        cluster.etcd.resume()
    bookie.wait_ready()
    cluster.wait_bookies_available(2)
