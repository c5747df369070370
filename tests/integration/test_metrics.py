"""Every role's ``/metrics`` scraped over HTTP after real traffic: the listed families exist
and move with the traffic (``strata_in_messages_total`` is what was produced, the backlog is
what ``strata admin topics stats`` says, the bookies' journal synced).

A listed family missing from a scrape fails its test, so renaming or dropping one is seen.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

import strata
from strata import stage_report
from strata.v1 import admin_pb2, admin_pb2_grpc
from tests.cluster import Cluster
from tests.harness import Standalone

pytestmark = pytest.mark.integration

SCRAPE_TIMEOUT_SECONDS = 10.0
RATE_WAIT_SECONDS = 15.0

# The sample names each role must serve (histograms by their _count).
TOPIC_SAMPLES = (
    "strata_in_messages_total",
    "strata_in_bytes_total",
    "strata_out_messages_total",
    "strata_rate_in",
    "strata_rate_out",
    "strata_msg_backlog",
    "strata_storage_size",
    "strata_storage_offloaded_size",
    "strata_producers_count",
    "strata_consumers_count",
    "strata_subscription_back_log",
    "strata_subscription_unacked_messages",
    "strata_subscription_msg_rate_redeliver",
)
BROKER_SAMPLES = (
    *TOPIC_SAMPLES,
    "strata_publish_latency_seconds_count",
    "strata_storage_write_latency_seconds_count",
    "strata_entry_size_bytes_count",
    "strata_ml_adds_total",
    "strata_ml_add_failures_total",
    "strata_ml_ledger_rollovers_total",
    "strata_ml_ensemble_changes_total",
    "strata_offload_bytes_total",
    "strata_offload_errors_total",
    "strata_offload_duration_seconds_count",
    "strata_bundle_unloads_total",
    "strata_bundle_splits_total",
    "strata_event_loop_lag_seconds_count",
)
CLUSTER_BROKER_SAMPLES = (
    *BROKER_SAMPLES,
    "strata_owned_bundles_count",
    "strata_ownership_sessions_lost_total",
    "strata_metadata_store_op_latency_seconds_count",
    "strata_metadata_store_session_expirations_total",
)
AUTORECOVERY_SAMPLES = (
    "strata_autorecovery_is_auditor",
    "strata_autorecovery_under_replicated_ledgers",
    "strata_autorecovery_audits_total",
    "strata_autorecovery_fragments_replicated_total",
)
BOOKIE_SAMPLES = (
    "strata_bookie_journal_sync_latency_seconds_count",
    "strata_bookie_journal_queue_size",
    "strata_bookie_server_status",
    "strata_bookie_add_entry_latency_seconds_count",
    "strata_bookie_read_entry_latency_seconds_count",
    "strata_bookie_ledgers_count",
    "strata_bookie_storage_size_bytes",
    "strata_bookie_corrupt_entries_total",
    "strata_event_loop_lag_seconds_count",
)

Labels = frozenset[tuple[str, str]]


class Scrape:
    """One scrape of a ``/metrics`` endpoint: sample (name, labels) → value."""

    def __init__(self, port: int) -> None:
        url = f"http://127.0.0.1:{port}/metrics"
        with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT_SECONDS) as response:
            self.text = response.read().decode()
        self.samples: dict[tuple[str, Labels], float] = {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(self.text)
            for sample in family.samples
        }

    def names(self) -> set[str]:
        return {name for name, _labels in self.samples}

    def value(self, name: str, **labels: str) -> float:
        return self.samples[(name, frozenset(labels.items()))]

    def require(self, names: tuple[str, ...]) -> None:
        missing = sorted(set(names) - self.names())
        assert not missing, f"families missing from /metrics: {missing}"


def wait_scrape(port: int, done: Callable[[Scrape], bool], what: str) -> Scrape:
    """Scrape until ``done`` holds (a rate needs a window of a second to move)."""
    deadline = time.monotonic() + RATE_WAIT_SECONDS
    while True:
        scrape = Scrape(port)
        if done(scrape):
            return scrape
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not seen in /metrics after {RATE_WAIT_SECONDS} s")
        # Poll interval of a scraper, not a wait standing in for a condition.
        time.sleep(0.2)


def topic_stats(address: str, topic: str) -> admin_pb2.TopicStats:
    with grpc.insecure_channel(address) as channel:
        stats: admin_pb2.TopicStats = admin_pb2_grpc.AdminServiceStub(channel).GetTopicStats(
            admin_pb2.GetTopicStatsRequest(name=topic), timeout=10
        )
        return stats


@pytest.fixture
def standalone(tmp_path: Path) -> Iterator[Standalone]:
    server = Standalone(tmp_path / "data", "--metrics-port", "0").start()
    try:
        yield server
    finally:
        server.stop()


async def produce(address: str, topic: str, count: int, batches: int) -> None:
    client = strata.AsyncClient(address)
    try:
        producer = await client.create_producer(topic)
        for i in range(count):
            producer.send_nowait(f"m{i}".encode())
            if (i + 1) % (count // batches) == 0:
                await producer.flush()
        await producer.flush()
        await producer.close()
    finally:
        await client.close()


async def test_standalone_topic_and_storage_families_move_with_traffic(
    standalone: Standalone,
) -> None:
    port = standalone.metrics_port()
    Scrape(port).require(("strata_event_loop_lag_seconds_count", "process_cpu_seconds_total"))
    topic = "persistent://public/default/metrics-t"
    labels = {"tenant": "public", "namespace": "public/default", "topic": topic}
    client = strata.AsyncClient(standalone.address)
    try:
        consumer = await client.subscribe(
            topic,
            "sub",
            initial_position=strata.InitialPosition.Earliest,
            negative_ack_redelivery_delay_ms=0,
        )
        producer = await client.create_producer(topic)
        Scrape(port)  # the rates' first window starts here
        await produce(standalone.address, topic, 400, batches=8)
        received = await consumer.receive_many(100, timeout_millis=10_000)
        consumer.acknowledge_many(received[:50])
        for message in received[50:60]:
            consumer.negative_acknowledge(message)
        await consumer.flush_acknowledgements()

        scrape = await asyncio.to_thread(
            wait_scrape,
            port,
            lambda s: (
                s.value("strata_rate_in", **labels) > 0
                and s.value("strata_rate_out", **labels) > 0
                and s.value("strata_subscription_msg_rate_redeliver", subscription="sub", **labels)
                > 0
            ),
            "rates in, out and redeliver above 0",
        )
        scrape.require(BROKER_SAMPLES)
        scrape.require(BOOKIE_SAMPLES)
        # The embedded metadata store is timed as etcd is (cursors, ledgers, topic loads).
        for operation in ("read", "write"):
            count = "strata_metadata_store_op_latency_seconds_count"
            assert scrape.value(count, operation=operation) > 0
        stats = topic_stats(standalone.address, topic)
        assert scrape.value("strata_in_messages_total", **labels) == 400 == stats.msg_in_counter
        assert scrape.value("strata_in_bytes_total", **labels) == stats.bytes_in_counter
        assert scrape.value("strata_out_messages_total", **labels) >= 100
        assert scrape.value("strata_msg_backlog", **labels) == stats.msg_backlog > 0
        sub = {"subscription": "sub", **labels}
        assert (
            scrape.value("strata_subscription_back_log", **sub)
            == stats.subscriptions["sub"].msg_backlog
        )
        assert (
            scrape.value("strata_subscription_unacked_messages", **sub)
            == stats.subscriptions["sub"].unacked_messages
        )
        assert scrape.value("strata_storage_size", **labels) == stats.storage_size > 0
        assert scrape.value("strata_producers_count", **labels) == 1
        assert scrape.value("strata_consumers_count", **labels) == 1
        # Per batch: as many entries as batches written, each with its latencies.
        entries = stats.entries_count
        assert entries >= 8
        assert scrape.value("strata_entry_size_bytes_count") == entries
        assert scrape.value("strata_publish_latency_seconds_count") == entries
        assert scrape.value("strata_storage_write_latency_seconds_count") == entries
        assert scrape.value("strata_ml_adds_total") == entries
        assert scrape.value("strata_bookie_add_entry_latency_seconds_count") >= entries
        assert scrape.value("strata_bookie_journal_sync_latency_seconds_count") > 0
        assert scrape.value("strata_bookie_ledgers_count") >= 1
        assert scrape.value("strata_bookie_storage_size_bytes") > 0
        assert scrape.value("strata_event_loop_lag_seconds_count") > 0
        await producer.close()
        await consumer.close()
    finally:
        await client.close()
    after = Scrape(port)
    assert after.value("strata_producers_count", **labels) == 0
    assert after.value("strata_consumers_count", **labels) == 0


async def test_without_topic_level_metrics_a_namespace_sums_its_topics(tmp_path: Path) -> None:
    server = Standalone(
        tmp_path / "data", "--metrics-port", "0", "--expose-topic-level-metrics", "false"
    ).start()
    try:
        await produce(server.address, "ns-a", 30, batches=3)
        await produce(server.address, "ns-b", 50, batches=5)
        scrape = Scrape(server.metrics_port())
        scrape.require(TOPIC_SAMPLES[:4])
        namespace = {"tenant": "public", "namespace": "public/default"}
        assert scrape.value("strata_in_messages_total", **namespace) == 80
        assert scrape.value("strata_topics_count", **namespace) == 2
        assert not any(
            dict(labels).get("topic")
            for _name, labels in scrape.samples
            if _name.startswith("strata_")
        )
    finally:
        server.stop()


def summarize_url(url: str) -> list[stage_report.StageQuantiles]:
    return stage_report.summarize(url, stage_report.scrape(url))


async def test_cluster_bookies_and_broker_serve_their_families(tmp_path: Path) -> None:
    with Cluster(
        tmp_path / "cluster",
        bookies=2,
        brokers=1,
        bookie_args=["--metrics-port", "0"],
        broker_args=["--metrics-port", "0"],
    ) as cluster:
        topic = "persistent://public/default/cluster-metrics"
        client = strata.AsyncClient(cluster.service_url)
        try:
            await (await client.subscribe(topic, "sub")).close()
        finally:
            await client.close()
        await produce(cluster.service_url, topic, 200, batches=4)
        stats = topic_stats(cluster.broker_address(), topic)
        broker = Scrape(cluster.brokers[0].metrics_port())
        broker.require(CLUSTER_BROKER_SAMPLES)
        assert broker.value("strata_owned_bundles_count") >= 1
        for operation in ("read", "write"):
            latency = "strata_metadata_store_op_latency_seconds_count"
            assert broker.value(latency, operation=operation) > 0
        labels = {"tenant": "public", "namespace": "public/default", "topic": topic}
        assert broker.value("strata_in_messages_total", **labels) == 200
        sub = {"subscription": "sub", **labels}
        assert broker.value("strata_subscription_back_log", **sub) == stats.msg_backlog >= 4
        assert broker.value("strata_storage_write_latency_seconds_count") >= stats.entries_count
        assert broker.value("strata_ml_adds_total") >= stats.entries_count >= 4
        # The write path stage by stage (issue 15): the broker side in the broker, the
        # storage side in each bookie, as `strata perf stages` reads them.
        broker_url = f"http://127.0.0.1:{cluster.brokers[0].metrics_port()}/metrics"
        broker_stages = {row.stage: row.count for row in summarize_url(broker_url)}
        for stage in ("broker_publish", "ledger_quorum", "bookie_round_trip"):
            assert broker_stages[stage] >= stats.entries_count, (stage, broker_stages)
        assert broker_stages["bookie_round_trip"] >= 2 * stats.entries_count  # Qw = 2
        for bookie in cluster.bookies:
            bookie_url = f"http://127.0.0.1:{bookie.metrics_port()}/metrics"
            bookie_stages = {row.stage: row.count for row in summarize_url(bookie_url)}
            for stage in ("bookie_add", "journal_wait", "journal_write", "journal_sync"):
                assert bookie_stages[stage] >= 1, (stage, bookie_stages)
            assert bookie_stages["bookie_add"] >= stats.entries_count
            assert bookie_stages["bookie_reply"] >= 1
            scrape = Scrape(bookie.metrics_port())
            scrape.require(BOOKIE_SAMPLES)
            scrape.require(AUTORECOVERY_SAMPLES)
            scrape.require(("strata_metadata_store_op_latency_seconds_count",))
            # E/Qw/Qa 2/2/2 on two bookies: each holds every entry.
            assert scrape.value("strata_bookie_add_entry_latency_seconds_count") >= 4
            assert scrape.value("strata_bookie_journal_sync_latency_seconds_count") > 0
            assert scrape.value("strata_bookie_ledgers_count") >= 1
            assert scrape.value("strata_bookie_server_status") == 1
            assert scrape.value("strata_bookie_storage_size_bytes") > 0
            assert scrape.value("strata_bookie_corrupt_entries_total") == 0
