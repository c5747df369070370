"""Exactly once across failovers and restarts (issue 13 item 1): etcd + 3 bookies + 3 brokers with
deduplication on; a steady producer while its topic's owner is killed with ``kill -9`` five
times. Every receipted message is in the topic exactly once and in order: a fresh reader from
the earliest sees each value once (the SDK resends every batch without a receipt to the new
owner, which knows from the snapshot and the replayed log which ones it already stored).
Without deduplication the same run leaves duplicates (measured before this issue: 3 in
20,000)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import strata
from tests.cluster import Cluster
from tests.faults.test_cluster_ownership import (
    KILLS,
    TOPIC,
    Workload,
    broker_index,
    lookup,
    wait_for_receipts,
)

pytestmark = [pytest.mark.integration, pytest.mark.fault]

READ_TIMEOUT_MS = 5_000


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with Cluster(
        tmp_path,
        bookies=3,
        brokers=3,
        bookie_args=["--autorecovery", "false"],
        broker_args=[
            "--load-report-interval-ms",
            "1000",
            "--broker-deduplication-enabled",
            "true",
            # Snapshots every 100 entries: each failover both loads one and replays after it.
            "--broker-deduplication-entries-interval",
            "100",
            "--managed-ledger-default-ensemble-size",
            "3",
            "--managed-ledger-default-write-quorum",
            "3",
            "--managed-ledger-default-ack-quorum",
            "2",
        ],
    ) as running:
        yield running


def read_everything(service_url: str) -> list[tuple[int, strata.MessageId]]:
    values: list[tuple[int, strata.MessageId]] = []
    with strata.Client(service_url, operation_timeout_seconds=60) as client:
        reader = client.create_reader(TOPIC, strata.MessageId.earliest)
        while True:
            try:
                message = reader.read_next(READ_TIMEOUT_MS)
            except strata.Timeout:
                return values
            values.append((int(message.data()), message.message_id()))


async def test_owner_kill9_five_times_stores_each_message_once(cluster: Cluster) -> None:
    # A subscription that never acknowledges keeps every ledger (no retention policy yet)
    # for the read-back at the end.
    async with strata.AsyncClient(cluster.service_url) as client:
        held = await client.subscribe(
            TOPIC, "audit", initial_position=strata.InitialPosition.Earliest
        )
        await held.close()
    workload = Workload(cluster.service_url)
    drained = asyncio.Event()
    producing = asyncio.create_task(workload.produce())
    consuming = asyncio.create_task(workload.consume(drained))
    try:
        await wait_for_receipts(workload, 500, 60)
        for _ in range(KILLS):
            owner = await asyncio.to_thread(lookup, cluster.broker_address(0), TOPIC)
            index = broker_index(cluster, owner)
            cluster.kill_broker(index)
            await wait_for_receipts(workload, 200, 120)
            await asyncio.to_thread(cluster.restart_broker, index)
        workload.stop.set()
        await asyncio.wait_for(producing, 180)
        drained.set()
        await asyncio.wait_for(consuming, 180)
    finally:
        workload.stop.set()
        drained.set()
        for task in (producing, consuming):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
    workload.check()  # nothing receipted lost, per-producer order kept
    started = time.monotonic()
    stored = await asyncio.to_thread(read_everything, cluster.service_url)
    values = [value for value, _ in stored]
    twice = [value for value, count in collections.Counter(values).items() if count > 1]
    assert not twice, f"{len(twice)} values stored more than once, e.g. {sorted(twice)[:5]}"
    assert values == sorted(values), "stored out of order"
    assert set(workload.receipted) <= set(values)
    print(
        f"\ndedup under kill -9 of the owner x{KILLS}: {len(workload.receipted)} receipted, "
        f"{len(values)} stored, 0 duplicates (read back in {time.monotonic() - started:.1f} s)"
    )


RESTART_TOPIC = "persistent://public/default/dedup-full-restart"
RESTART_PRODUCER = "survives-everything"
RESTART_MESSAGES = 1_050  # 105 entries of 10: one snapshot (every 100 entries) and a tail


def test_dedup_state_survives_a_kill9_of_every_process(cluster: Cluster) -> None:
    """etcd, the three bookies and the three brokers all killed with kill -9 and started
    again: the producer reopens with its name, ``last_sequence_id`` is the last receipted id,
    and a resend of the last batches is answered without storing them again."""
    with strata.Client(cluster.service_url, operation_timeout_seconds=60) as client:
        client.subscribe(
            RESTART_TOPIC, "keep", initial_position=strata.InitialPosition.Earliest
        ).close()
        producer = client.create_producer(
            RESTART_TOPIC,
            producer_name=RESTART_PRODUCER,
            batching_max_messages=10,
            block_if_queue_full=True,
        )
        failed: list[strata.Result] = []
        for value in range(RESTART_MESSAGES):
            producer.send_async(
                str(value).encode(),
                lambda result, _id: failed.append(result) if result != strata.Result.Ok else None,
            )
        producer.flush()
        producer.close()
        assert not failed
    for process in [*cluster.brokers, *cluster.bookies]:
        process.kill()
    cluster.etcd.kill()
    cluster.etcd.start()
    for process in [*cluster.bookies, *cluster.brokers]:
        process.start(wait=False)
    cluster.wait_servers_ready()

    with strata.Client(cluster.service_url, operation_timeout_seconds=60) as client:
        producer = client.create_producer(RESTART_TOPIC, producer_name=RESTART_PRODUCER)
        assert producer.last_sequence_id() == RESTART_MESSAGES - 1
        # The last 50 again (as a client that lost their receipts would), then 10 new ones.
        resent = [
            producer.send(str(value).encode(), sequence_id=value)
            for value in range(RESTART_MESSAGES - 50, RESTART_MESSAGES)
        ]
        # Pulsar's -1:-1: stored before, not stored again.
        assert {(m.ledger_id(), m.entry_id()) for m in resent} == {(-1, -1)}, resent[:3]
        for value in range(RESTART_MESSAGES, RESTART_MESSAGES + 10):
            producer.send(str(value).encode(), sequence_id=value)
        producer.close()
        reader = client.create_reader(RESTART_TOPIC, strata.MessageId.earliest)
        values = []
        while True:
            try:
                values.append(int(reader.read_next(READ_TIMEOUT_MS).data()))
            except strata.Timeout:
                break
    assert values == list(range(RESTART_MESSAGES + 10))
