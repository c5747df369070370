"""The broker's Prometheus metrics: Pulsar's names with the ``strata_`` prefix.

Two kinds, so that publishing pays nothing for per-topic metrics:

* process-wide histograms and counters observed on the hot path, once per batch (never per
  message): ``strata_publish_latency_seconds`` (batch received → its receipt sent, in
  ``ProducerStream``), ``strata_entry_size_bytes`` (``Topic.publish``) and
  ``strata_ml_ledger_rollovers_total`` (``RolloverOp``). The ledger client's families
  (``strata_storage_write_latency_seconds``, ``strata_ml_adds_total``, ...) are in
  ``bookie.metrics``, beside the ledger client;
* per topic and subscription, ``BrokerCollector``: at scrape time it takes one
  ``topic_stats`` snapshot of every loaded topic on the event loop — the function
  ``strata admin topics stats`` answers with, so the two agree — and builds the families
  from it in the scraping thread.

Labels (Pulsar's): ``tenant``, ``namespace`` (``tenant/namespace``), ``topic`` (the full
``persistent://`` name) and ``subscription``. With ``--expose-topic-level-metrics false``
(Pulsar's ``exposeTopicLevelMetricsInPrometheus``) the families are summed per namespace and
carry only ``tenant`` and ``namespace``: the scrape grows with namespaces, not topics.

Nothing here is registered at import (``registry=None``): a role registers what it serves in
its own registry (``strata.metrics``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from broker.topic_stats import SubscriptionStats, TopicStats, topic_stats
from strata.metrics import STAGE_BUCKETS_SECONDS

if TYPE_CHECKING:
    from broker.ownership import BundleOwnership
    from broker.topic import Topic

log = logging.getLogger(__name__)

PUBLISH_LATENCY_SECONDS = Histogram(
    "strata_publish_latency_seconds",
    "producer batch received by the broker → its send receipt (the entry is durable)",
    buckets=STAGE_BUCKETS_SECONDS,
    registry=None,
)
ENTRY_SIZE_BYTES = Histogram(
    "strata_entry_size_bytes",
    "size of the entries (producer batches) appended to topics",
    buckets=(128, 512, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216),
    registry=None,
)
ML_LEDGER_ROLLOVERS = Counter(
    "strata_ml_ledger_rollovers",
    "managed ledgers that closed their ledger and moved on to a new one",
    registry=None,
)
OFFLOAD_BYTES = Counter(
    "strata_offload_bytes", "bytes of ledgers offloaded to tiered storage", registry=None
)
OFFLOAD_ERRORS = Counter("strata_offload_errors", "offload passes that failed", registry=None)
OFFLOAD_DURATION_SECONDS = Histogram(
    "strata_offload_duration_seconds",
    "one ledger's offload: recorded IN_PROGRESS → uploaded, verified and recorded COMPLETE",
    buckets=(0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0),
    registry=None,
)
BUNDLE_UNLOADS = Counter(
    "strata_bundle_unloads", "bundles this broker stopped serving on request", registry=None
)
BUNDLE_SPLITS = Counter("strata_bundle_splits", "bundles this broker split", registry=None)

# A scrape snapshots this many topics per turn of the event loop, so 10,000 topics stall
# publishing for many short turns rather than one long one: ``topic_stats`` costs ~12 µs for
# a topic with one subscription, so a turn takes ~2.5 ms.
SNAPSHOT_TOPICS_PER_TURN = 200
# A scrape that cannot get a snapshot in this time (the loop is blocked or closing) answers
# without the topic families rather than hang the scraper.
SNAPSHOT_TIMEOUT_SECONDS = 10.0

TOPIC_LABELS = ("tenant", "namespace", "topic")
SUBSCRIPTION_LABELS = (*TOPIC_LABELS, "subscription")
NAMESPACE_LABELS = ("tenant", "namespace")


@dataclass(frozen=True, slots=True)
class _Family:
    name: str
    documentation: str
    counter: bool


# Per topic: the family and the TopicStats value it exports.
TOPIC_FAMILIES: tuple[tuple[_Family, Callable[[TopicStats], float]], ...] = (
    (_Family("strata_in_messages", "messages published", True), lambda t: t.msg_in_counter),
    (_Family("strata_in_bytes", "bytes published", True), lambda t: t.bytes_in_counter),
    (_Family("strata_out_messages", "messages delivered", True), lambda t: t.msg_out_counter),
    (_Family("strata_rate_in", "messages published per second", False), lambda t: t.msg_rate_in),
    (_Family("strata_rate_out", "messages delivered per second", False), lambda t: t.msg_rate_out),
    (
        _Family(
            "strata_msg_backlog", "entries not yet acknowledged by the slowest subscription", False
        ),
        lambda t: t.msg_backlog,
    ),
    (
        _Family("strata_storage_size", "bytes of the topic's ledgers", False),
        lambda t: t.storage_size,
    ),
    (
        _Family(
            "strata_storage_offloaded_size", "bytes of ledgers offloaded to tiered storage", False
        ),
        lambda t: t.offloaded_storage_size,
    ),
    (_Family("strata_producers_count", "connected producers", False), lambda t: t.producers_count),
    (_Family("strata_consumers_count", "connected consumers", False), lambda t: t.consumers_count),
)

# Per subscription: the family and the SubscriptionStats value it exports.
SUBSCRIPTION_FAMILIES: tuple[tuple[_Family, Callable[[SubscriptionStats], float]], ...] = (
    (
        _Family("strata_subscription_back_log", "entries not yet acknowledged", False),
        lambda s: s.msg_backlog,
    ),
    (
        _Family(
            "strata_subscription_unacked_messages", "messages delivered, not acknowledged", False
        ),
        lambda s: s.unacked_messages,
    ),
    (
        _Family("strata_subscription_msg_rate_redeliver", "messages redelivered per second", False),
        lambda s: s.msg_rate_redeliver,
    ),
)


def _family(family: _Family, labels: Sequence[str]) -> CounterMetricFamily | GaugeMetricFamily:
    if family.counter:
        return CounterMetricFamily(family.name, family.documentation, labels=labels)
    return GaugeMetricFamily(family.name, family.documentation, labels=labels)


def _namespace_labels(stats: TopicStats) -> tuple[str, str]:
    return stats.name.tenant, f"{stats.name.tenant}/{stats.name.namespace}"


def topic_families(stats: Iterable[TopicStats], *, topic_level: bool) -> list[Metric]:
    """The per-topic families of ``BrokerCollector`` from a snapshot (pure: unit-tested)."""
    # Each topic's label values, made once per scrape rather than once per family.
    labelled = [(t, (*_namespace_labels(t), str(t.name))) for t in stats]
    topics_count = GaugeMetricFamily(
        "strata_topics_count", "topics loaded on this broker", labels=NAMESPACE_LABELS
    )
    per_namespace: dict[tuple[str, ...], int] = defaultdict(int)
    for _topic, labels in labelled:
        per_namespace[labels[:2]] += 1
    for namespace, count in sorted(per_namespace.items()):
        topics_count.add_metric(namespace, count)
    families: list[Metric] = [topics_count]
    for family, value in TOPIC_FAMILIES:
        metric = _family(family, TOPIC_LABELS if topic_level else NAMESPACE_LABELS)
        _add_rows(metric, ((labels, value(t)) for t, labels in labelled), topic_level)
        families.append(metric)
    for family, sub_value in SUBSCRIPTION_FAMILIES:
        metric = _family(family, SUBSCRIPTION_LABELS if topic_level else NAMESPACE_LABELS)
        sub_rows = (
            ((*labels, s.name), sub_value(s)) for t, labels in labelled for s in t.subscriptions
        )
        _add_rows(metric, sub_rows, topic_level)
        families.append(metric)
    return families


def _add_rows(
    metric: CounterMetricFamily | GaugeMetricFamily,
    rows: Iterable[tuple[tuple[str, ...], float]],
    topic_level: bool,
) -> None:
    if topic_level:
        for labels, value in rows:
            metric.add_metric(labels, value)
        return
    sums: dict[tuple[str, ...], float] = defaultdict(float)
    for labels, value in rows:
        sums[labels[:2]] += value
    for labels, value in sorted(sums.items()):
        metric.add_metric(labels, value)


async def snapshot_topics(topics: Mapping[str, Topic]) -> list[TopicStats]:
    """``topic_stats`` of every loaded topic that is not closing, on the event loop, a
    bounded number per turn of the loop."""
    loaded = list(topics.values())
    stats: list[TopicStats] = []
    for start in range(0, len(loaded), SNAPSHOT_TOPICS_PER_TURN):
        if start:
            await asyncio.sleep(0)
        for topic in loaded[start : start + SNAPSHOT_TOPICS_PER_TURN]:
            if not topic.closing.is_set():
                stats.append(topic_stats(topic))
    return stats


class OwnershipCollector(Collector):
    """A cluster broker's owned bundles and lost sessions, read in the scraping thread (the
    length of a dict and an int: atomic reads)."""

    def __init__(self, ownership: BundleOwnership) -> None:
        self._ownership = ownership

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "strata_owned_bundles_count",
            "namespace bundles this broker owns",
            value=len(self._ownership.owned),
        )
        lost = CounterMetricFamily(
            "strata_ownership_sessions_lost", "metadata-store sessions this broker lost"
        )
        lost.add_metric([], self._ownership.lost_sessions)
        yield lost


class BrokerCollector(Collector):
    """The per-topic families of one broker, collected at scrape time.

    ``collect`` runs in the scraping thread of the metrics server: it asks the broker's loop
    for a snapshot (``snapshot_topics``; the topics are only ever touched on their loop) and
    waits for it at most ``SNAPSHOT_TIMEOUT_SECONDS``. Never call it on that loop itself.
    """

    def __init__(
        self,
        topics: Callable[[], Mapping[str, Topic]],
        loop: asyncio.AbstractEventLoop,
        *,
        topic_level: bool,
    ) -> None:
        self._topics = topics
        self._loop = loop
        self._topic_level = topic_level

    def describe(self) -> Iterable[Metric]:
        return []  # nothing fixed to check at registration (and no snapshot there)

    def collect(self) -> Iterator[Metric]:
        async def snapshot() -> list[TopicStats]:
            return await snapshot_topics(self._topics())

        try:
            future = asyncio.run_coroutine_threadsafe(snapshot(), self._loop)
            stats = future.result(SNAPSHOT_TIMEOUT_SECONDS)
        except (concurrent.futures.TimeoutError, concurrent.futures.CancelledError, RuntimeError):
            log.warning("metrics scrape: no topic snapshot from the broker's loop; skipped")
            return
        yield from topic_families(stats, topic_level=self._topic_level)


def broker_collectors(
    topics: Callable[[], Mapping[str, Topic]],
    loop: asyncio.AbstractEventLoop,
    *,
    topic_level: bool,
) -> list[Collector]:
    """What a broker role serves: its topics' families and its hot-path metrics (the ledger
    client's are ``bookie.metrics.LEDGER_CLIENT_METRICS``)."""
    return [
        BrokerCollector(topics, loop, topic_level=topic_level),
        PUBLISH_LATENCY_SECONDS,
        ENTRY_SIZE_BYTES,
        ML_LEDGER_ROLLOVERS,
        OFFLOAD_BYTES,
        OFFLOAD_ERRORS,
        OFFLOAD_DURATION_SECONDS,
        BUNDLE_UNLOADS,
        BUNDLE_SPLITS,
    ]
