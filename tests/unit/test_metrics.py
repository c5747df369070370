"""The metrics collectors and registries without processes: the broker's topic families agree
with the admin stats (one snapshot function), per-namespace aggregation, the bookie's
gauges, one registry per role (two in one process do not collide), the event-loop lag."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from prometheus_client import REGISTRY, Histogram, generate_latest
from prometheus_client.core import Metric

from bookie.metrics import BookieCollector, bookie_collectors
from broker.entry_format import stored_entry_for
from broker.metrics import BrokerCollector, broker_collectors, topic_families
from broker.service import BrokerService
from broker.topic_stats import SubscriptionStats, TopicStats, topic_stats
from strata.metadata import open_metadata_store
from strata.metrics import EventLoopLagMonitor, RoleMetrics, process_registry
from strata.naming import TopicName
from strata.v1 import messaging_pb2
from tests.unit.bookie.support import add_range, make_config, opened
from tests.unit.broker.test_service_lifecycle import broker_service


@contextlib.asynccontextmanager
async def memory_broker(tmp_path: Path) -> AsyncIterator[BrokerService]:
    """A standalone-like broker over a fake bookie and an in-memory store, closed after."""
    store = await open_metadata_store("memory://")
    broker = broker_service(store, tmp_path, cluster=False)
    try:
        await broker.initialize_defaults()
        yield broker
    finally:
        await broker.close()
        await store.close()


def samples(families: list[Metric]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in families
        for sample in family.samples
    }


def stats_of(name: str, messages: int, backlogs: tuple[int, ...]) -> TopicStats:
    subscriptions = tuple(
        SubscriptionStats(f"s{i}", "Shared", backlog, 2, 1, 0.5, (1, -1), (1, 0))
        for i, backlog in enumerate(backlogs)
    )
    return TopicStats(
        name=TopicName.parse(name),
        msg_rate_in=1.0,
        msg_throughput_in=10.0,
        msg_rate_out=2.0,
        msg_throughput_out=20.0,
        msg_in_counter=messages,
        bytes_in_counter=messages * 10,
        msg_out_counter=messages,
        bytes_out_counter=messages * 10,
        storage_size=1000,
        offloaded_storage_size=100,
        producers_count=1,
        ledgers_count=1,
        entries_count=messages,
        msg_backlog=max(backlogs, default=0),
        subscriptions=subscriptions,
    )


def test_topic_level_families_carry_topic_and_subscription_labels() -> None:
    values = samples(topic_families([stats_of("a/b/t", 7, (3, 5))], topic_level=True))
    topic = (("namespace", "a/b"), ("tenant", "a"), ("topic", "persistent://a/b/t"))
    assert values[("strata_in_messages_total", topic)] == 7
    assert values[("strata_msg_backlog", topic)] == 5
    assert values[("strata_consumers_count", topic)] == 2
    assert values[("strata_storage_offloaded_size", topic)] == 100
    subscription = tuple(sorted((*topic, ("subscription", "s0"))))
    assert values[("strata_subscription_back_log", subscription)] == 3
    assert values[("strata_topics_count", topic[:2])] == 1


def test_without_topic_level_metrics_the_families_are_summed_per_namespace() -> None:
    stats = [stats_of("a/b/t1", 7, (3,)), stats_of("a/b/t2", 5, (4, 1)), stats_of("a/c/t", 1, ())]
    values = samples(topic_families(stats, topic_level=False))
    assert not any(dict(labels).get("topic") for _name, labels in values)
    namespace = (("namespace", "a/b"), ("tenant", "a"))
    assert values[("strata_in_messages_total", namespace)] == 12
    assert values[("strata_msg_backlog", namespace)] == 7
    assert values[("strata_subscription_back_log", namespace)] == 8
    assert values[("strata_topics_count", namespace)] == 2
    assert values[("strata_in_messages_total", (("namespace", "a/c"), ("tenant", "a")))] == 1


async def test_the_broker_collector_agrees_with_the_admin_stats(tmp_path: Path) -> None:
    async with memory_broker(tmp_path) as broker:
        topic = await broker.get_topic(TopicName.parse("t"))
        await topic.get_subscription("sub", None, start_at_earliest=True)
        batch = messaging_pb2.ProducerBatch(sequence_id=0, num_messages=3, payload=b"x" * 30)
        for _ in range(4):
            await topic.publish(stored_entry_for("p", batch), batch.num_messages)
        collector = BrokerCollector(
            lambda: broker.topics, asyncio.get_running_loop(), topic_level=True
        )
        # The collector runs in the scraping thread and asks this loop for the snapshot.
        values = samples(await asyncio.to_thread(lambda: list(collector.collect())))
        stats = topic_stats(topic)
        labels = (
            ("namespace", "public/default"),
            ("tenant", "public"),
            ("topic", "persistent://public/default/t"),
        )
        assert values[("strata_in_messages_total", labels)] == stats.msg_in_counter == 12
        assert values[("strata_msg_backlog", labels)] == stats.msg_backlog == 4
        assert values[("strata_storage_size", labels)] == stats.storage_size > 0


async def test_the_bookie_collector_reads_its_bookie(tmp_path: Path) -> None:
    async with opened(make_config(tmp_path)) as bookie:
        await add_range(bookie, 1, 0, 9)
        await add_range(bookie, 2, 0, 0)
        values = samples(list(BookieCollector(bookie).collect()))
        collector = BookieCollector(bookie)
    assert values[("strata_bookie_server_status", ())] == 1
    assert samples(list(collector.collect()))[("strata_bookie_server_status", ())] == 0
    assert values[("strata_bookie_ledgers_count", ())] == 2
    assert values[("strata_bookie_journal_queue_size", ())] == 0
    assert values[("strata_bookie_storage_size_bytes", ())] > 0
    assert values[("strata_bookie_corrupt_entries_total", ())] == 0


async def test_two_roles_in_one_process_each_have_their_own_registry(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    async with memory_broker(tmp_path) as broker, opened(make_config(tmp_path)) as bookie:
        first = RoleMetrics("127.0.0.1", -1, broker_collectors(dict, loop, topic_level=True))
        second = RoleMetrics(
            "127.0.0.1",
            -1,
            [
                *broker_collectors(lambda: broker.topics, loop, topic_level=True),
                *bookie_collectors(bookie),
            ],
        ).start()
        text = (await asyncio.to_thread(generate_latest, second.registry)).decode()
        await first.close()
        await second.close()
    for family in (
        "strata_publish_latency_seconds",
        "strata_bookie_journal_sync_latency_seconds",
        "strata_event_loop_lag_seconds",
        "process_cpu_seconds_total",
    ):
        assert family in text
    assert "_created" not in text
    assert second.port == -1


def test_nothing_is_registered_in_the_global_registry() -> None:
    """Roles serve registries of their own: importing the metric modules registers nothing."""
    text = generate_latest(REGISTRY).decode()
    assert "strata_" not in text


def test_a_registry_serves_process_families() -> None:
    text = generate_latest(process_registry([])).decode()
    assert "python_gc_objects_collected_total" in text
    assert "strata_event_loop_lag_seconds_count" in text


async def test_the_event_loop_lag_monitor_observes_and_is_cancelled_by_its_owner() -> None:
    histogram = Histogram("test_lag_seconds", "lag", registry=None)
    monitor = EventLoopLagMonitor(interval_seconds=0.0, histogram=histogram)
    monitor.start()
    for _ in range(5):  # each turn of the loop wakes the monitor once
        await asyncio.sleep(0)
    await monitor.close()
    [family] = histogram.collect()
    count = next(s.value for s in family.samples if s.name == "test_lag_seconds_count")
    assert count >= 2


async def test_a_topics_outbound_counts_are_its_subscriptions_even_deleted_ones(
    tmp_path: Path,
) -> None:
    async with memory_broker(tmp_path) as broker:
        topic = await broker.get_topic(TopicName.parse("t"))
        first = await topic.get_subscription("a", None, start_at_earliest=True)
        second = await topic.get_subscription("b", None, start_at_earliest=True)
        first.messages_out, first.bytes_out = 3, 30
        second.messages_out, second.bytes_out = 4, 40
        assert topic_stats(topic).msg_out_counter == 7
        await topic.delete_subscription("a")
        stats = topic_stats(topic)
        assert (stats.msg_out_counter, stats.bytes_out_counter) == (7, 70)
