"""Stateless brokers as processes: lookup from any broker, topics spread over brokers, the
owner killed with kill -9 five times in a row, and a stale (paused) owner.

etcd + bookies + 3 brokers; sessions (leases) of 4 s, so that a dead owner's bundles are free
again within seconds.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

import strata
from strata.v1 import admin_pb2, admin_pb2_grpc, messaging_pb2, messaging_pb2_grpc
from tests.cluster import Cluster

pytestmark = [pytest.mark.integration, pytest.mark.fault]

MAX_REDIRECTS = 20
KILLS = 5
RECEIVE_TIMEOUT_MS = 3_000
# Once the workload stops, the consumer's acks must be durable within this (the client's
# operation timeout is 60 s).
ACKS_DURABLE_S = 30
MAX_PENDING = 500
TOPIC = "persistent://public/default/failover"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with Cluster(
        tmp_path,
        bookies=2,
        brokers=3,
        bookie_args=["--journal-fsync", "false", "--autorecovery", "false"],
        broker_args=["--load-report-interval-ms", "1000"],
    ) as running:
        yield running


def lookup(address: str, topic: str) -> str:
    """The owner of ``topic`` as the Lookup RPC tells it, following redirects."""
    authoritative = False
    for _ in range(MAX_REDIRECTS):
        with grpc.insecure_channel(address) as channel:
            response = messaging_pb2_grpc.MessagingServiceStub(channel).Lookup(
                messaging_pb2.LookupRequest(topic=topic, authoritative=authoritative), timeout=10
            )
        if response.result == messaging_pb2.LookupResponse.CONNECT:
            return str(response.broker_address)
        address, authoritative = response.broker_address, response.authoritative
    raise AssertionError(f"more than {MAX_REDIRECTS} redirects for {topic}")


def broker_index(cluster: Cluster, address: str) -> int:
    return next(i for i, broker in enumerate(cluster.brokers) if broker.address == address)


async def test_any_broker_reaches_every_topic_spread_over_brokers(cluster: Cluster) -> None:
    with grpc.insecure_channel(cluster.broker_address(1)) as channel:
        admin_pb2_grpc.AdminServiceStub(channel).CreateNamespace(
            admin_pb2.CreateNamespaceRequest(
                parent="tenants/public", namespace_id="spread", bundles=16
            ),
            timeout=10,
        )
    topics = [f"public/spread/t{i}" for i in range(100)]
    # A client that knows one broker only reaches all of them.
    client = strata.AsyncClient(cluster.broker_address(0))
    try:
        for topic in topics:
            producer = await client.create_producer(topic)
            await producer.send(topic.encode())
            await producer.close()
        for topic in topics:
            consumer = await client.subscribe(
                topic, "s", initial_position=strata.InitialPosition.Earliest
            )
            assert (await consumer.receive(timeout_millis=10_000)).data() == topic.encode()
            await consumer.close()
    finally:
        await client.close()
    owners = collections.Counter(lookup(cluster.broker_address(2), t) for t in topics)
    assert set(owners) <= {b.address for b in cluster.brokers}
    assert max(owners.values()) <= len(topics) // 2, owners


class Workload:
    """A producer and an Exclusive consumer running until stopped; records receipts and
    deliveries by message number."""

    def __init__(self, service_url: str) -> None:
        self.service_url = service_url
        self.receipted: dict[int, float] = {}  # message number → receipt time
        self.delivered: list[int] = []
        self.sent_at: dict[int, float] = {}
        self.stop = asyncio.Event()

    async def produce(self) -> None:
        client = strata.AsyncClient(
            self.service_url, operation_timeout_seconds=60, keep_alive_interval_seconds=2
        )
        producer = await client.create_producer(
            TOPIC, send_timeout_millis=120_000, max_pending_messages=MAX_PENDING
        )

        def on_receipt(index: int) -> Callable[[strata.Result, strata.MessageId | None], None]:
            def callback(result: strata.Result, _id: strata.MessageId | None) -> None:
                if result == strata.Result.Ok:
                    self.receipted[index] = time.monotonic()

            return callback

        try:
            index = 0
            while not self.stop.is_set():
                while producer.pending_messages >= MAX_PENDING:
                    await asyncio.wait_for(producer.wait_for_space(), 120)
                self.sent_at[index] = time.monotonic()
                producer.send_nowait(str(index).encode(), callback=on_receipt(index))
                index += 1
                await asyncio.sleep(0.002)  # about 500 msg/s: a steady stream
            await asyncio.wait_for(producer.flush(), 120)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.close(), 10)
            await client.close()

    async def consume(self, until_idle: asyncio.Event) -> None:
        client = strata.AsyncClient(
            self.service_url, operation_timeout_seconds=60, keep_alive_interval_seconds=2
        )
        try:
            consumer = await client.subscribe(
                TOPIC,
                "check",
                consumer_type=strata.ConsumerType.Exclusive,
                initial_position=strata.InitialPosition.Earliest,
            )
            while True:
                try:
                    batch = await consumer.receive_many(500, timeout_millis=RECEIVE_TIMEOUT_MS)
                except strata.Timeout:
                    if until_idle.is_set():
                        # The owner persists the acks (a cursor the stale owner wrote once
                        # more after the takeover must not keep it from doing so).
                        await asyncio.wait_for(
                            consumer.flush_acknowledgements(wait_durable=True), ACKS_DURABLE_S
                        )
                        return
                    continue
                self.delivered.extend(int(m.data()) for m in batch)
                consumer.acknowledge_many(batch)
        finally:
            await client.close()

    def first_receipt_after(self, moment: float) -> float:
        """Seconds from ``moment`` until a message sent after it got its receipt."""
        later = [
            self.receipted[i] - moment
            for i, sent in self.sent_at.items()
            if sent >= moment and i in self.receipted
        ]
        assert later, "no message sent after the fault was ever receipted"
        return min(later)

    def check(self) -> None:
        missing = set(self.receipted) - set(self.delivered)
        assert not missing, f"{len(missing)} receipted messages lost, e.g. {sorted(missing)[:5]}"
        first_seen = list(dict.fromkeys(self.delivered))  # resends may deliver twice
        assert first_seen == sorted(first_seen), "per-producer order broken"


async def wait_for_receipts(workload: Workload, count: int, timeout_s: float) -> None:
    target = len(workload.receipted) + count
    deadline = time.monotonic() + timeout_s
    while len(workload.receipted) < target:
        assert time.monotonic() < deadline, f"fewer than {count} receipts in {timeout_s} s"
        await asyncio.sleep(0.05)  # poll interval of a progress probe


async def test_owner_kill9_five_times(cluster: Cluster) -> None:
    workload = Workload(cluster.service_url)
    drained = asyncio.Event()
    producing = asyncio.create_task(workload.produce())
    consuming = asyncio.create_task(workload.consume(drained))
    recoveries: list[float] = []
    try:
        await wait_for_receipts(workload, 500, 60)
        for _ in range(KILLS):
            owner = await asyncio.to_thread(lookup, cluster.broker_address(0), TOPIC)
            index = broker_index(cluster, owner)
            killed_at = time.monotonic()
            cluster.kill_broker(index)
            await wait_for_receipts(workload, 200, 120)
            recoveries.append(workload.first_receipt_after(killed_at))
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
    workload.check()
    print(
        f"\nkill -9 of the owner x{KILLS}: kill to next successful send p50 "
        f"{statistics.median(recoveries):.2f} s, max {max(recoveries):.2f} s; "
        f"{len(workload.receipted)} receipted, {len(workload.delivered)} delivered"
    )


async def test_stale_owner_acknowledges_nothing_and_gives_up(cluster: Cluster) -> None:
    workload = Workload(cluster.service_url)
    drained = asyncio.Event()
    producing = asyncio.create_task(workload.produce())
    consuming = asyncio.create_task(workload.consume(drained))
    try:
        await wait_for_receipts(workload, 500, 60)
        owner = await asyncio.to_thread(lookup, cluster.broker_address(0), TOPIC)
        stale = broker_index(cluster, owner)
        other = (stale + 1) % len(cluster.brokers)
        cluster.brokers[stale].pause()
        paused_at = time.monotonic()
        try:
            # Longer than the lease: another broker takes the topic over and writes.
            await wait_for_receipts(workload, 500, 120)
            new_owner = await asyncio.to_thread(lookup, cluster.broker_address(other), TOPIC)
            assert new_owner != owner
        finally:
            cluster.brokers[stale].resume()
        took_over_s = workload.first_receipt_after(paused_at)

        # Resumed, the old owner finds its session gone and serves none of its bundles.
        def bundles_of_stale() -> int:
            with grpc.insecure_channel(cluster.broker_address(other)) as channel:
                response = admin_pb2_grpc.AdminServiceStub(channel).ListBundles(
                    admin_pb2.ListBundlesRequest(name="tenants/public/namespaces/default"),
                    timeout=10,
                )
            return sum(1 for bundle in response.bundles if bundle.owner == owner)

        await asyncio.to_thread(
            cluster.wait_for, bundles_of_stale, lambda n: n == 0, 30, "stale owner to give up"
        )
        assert "ownership session lost" in cluster.brokers[stale].log_text()

        # It then rejoins as a live broker with a new session, owning nothing yet.
        def live_brokers() -> int:
            with grpc.insecure_channel(cluster.broker_address(other)) as channel:
                response = admin_pb2_grpc.AdminServiceStub(channel).ListBrokers(
                    admin_pb2.ListBrokersRequest(), timeout=10
                )
            return len(response.brokers)

        await asyncio.to_thread(cluster.wait_for, live_brokers, lambda n: n == 3, 30, "rejoin")
        await wait_for_receipts(workload, 200, 60)
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
    workload.check()
    print(f"\nstale owner paused: next successful send after {took_over_s:.2f} s")


def cli(cluster: Cluster, *args: str, via: str = "") -> str:
    """Run a ``strata`` command against broker ``via`` (default: the first broker)."""
    result = subprocess.run(
        [sys.executable, "-m", "strata", *args, "--service-url", via or cluster.broker_address(0)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


async def test_admin_moves_bundles_and_clients_follow(cluster: Cluster) -> None:
    brokers = [json.loads(line) for line in cli(cluster, "admin", "brokers", "list").splitlines()]
    assert sorted(b["address"] for b in brokers) == sorted(b.address for b in cluster.brokers)
    topic = "public/default/moved"
    client = strata.AsyncClient(cluster.service_url, keep_alive_interval_seconds=2)
    try:
        producer = await client.create_producer(topic)
        await producer.send(b"0")
        owner = cli(cluster, "admin", "topics", "lookup", topic).strip()
        bundles = dict(
            line.split()
            for line in cli(
                cluster, "admin", "namespaces", "bundles", "public/default"
            ).splitlines()
        )
        assert len(bundles) == 4 and owner in bundles.values()
        # Every operation goes through a broker that does not own the bundle: it is
        # forwarded to the owner. Unload the topic's bundle: the producer follows it.
        bundle = next(name for name, holder in bundles.items() if holder == owner)
        other = next(b.address for b in cluster.brokers if b.address != owner)
        cli(cluster, "admin", "namespaces", "unload", "public/default", "-b", bundle, via=other)
        await producer.send(b"1")
        # Split it (at its new owner): two bundles where there was one; the producer sends on.
        owner = cli(cluster, "admin", "topics", "lookup", topic).strip()
        other = next(b.address for b in cluster.brokers if b.address != owner)
        split = ("admin", "namespaces", "split-bundle", "public/default", "-b", bundle)
        after = cli(cluster, *split, via=other)
        assert len(after.splitlines()) == 5 and bundle not in after
        await producer.send(b"2")
        # A topic unload through a broker that does not serve it reaches the owner.
        owner = cli(cluster, "admin", "topics", "lookup", topic).strip()
        other = next(b.address for b in cluster.brokers if b.address != owner)
        cli(cluster, "admin", "topics", "unload", topic, via=other)
        await producer.send(b"3")
        consumer = await client.subscribe(
            topic, "s", initial_position=strata.InitialPosition.Earliest
        )
        got = [(await consumer.receive(timeout_millis=10_000)).data() for _ in range(4)]
        assert got == [b"0", b"1", b"2", b"3"]
    finally:
        await client.close()
