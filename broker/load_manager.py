"""Load reports, and the elected load manager that sheds load and splits bundles.

**Reports.** Each broker publishes a load report every ``load_report_interval_ms`` to the
ephemeral key ``/loadbalance/brokers/<address>`` of its ownership session: owned bundles,
topics, message and byte rates (per bundle too), CPU.

**Shedding.** One broker, elected by the ephemeral ``/loadbalance/leader``, runs a round every
``load_shedding_interval_ms``: a broker whose message rate is above the cluster average by more
than ``load_shedding_threshold_percent`` (and above ``load_shedding_min_msg_rate``) has its
busiest bundle unloaded, at most once per bundle per ``load_shedding_grace_ms``; a bundle with
more than ``max_topics_per_bundle`` loaded topics is split in two. The unloads and splits
themselves are ``BundleOwnership``'s (forwarded to the bundle's owner when that is another
broker).

The module's functions read the cluster's view (live brokers, bundle counts, reports) that
lookups use to pick the least-loaded broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from broker.bundles import OWNERSHIP_PREFIX, split_bundle_key
from broker.loops import OwnedLoops
from strata.metadata import BadVersionError, MetadataError, MetadataStore

if TYPE_CHECKING:
    from broker.ownership import BundleOwnership
    from broker.topics import TopicRegistry

log = logging.getLogger(__name__)

LOAD_REPORTS_PREFIX = "/loadbalance/brokers/"
LEADER_KEY = "/loadbalance/leader"
BROKERS_AVAILABLE_PREFIX = "/brokers/available/"
MAX_REDIRECT_CANDIDATES = 1000


@dataclass(slots=True)
class LoadReport:
    broker: str
    bundles: int = 0
    topics: int = 0
    msg_rate_in: float = 0.0
    msg_rate_out: float = 0.0
    bytes_rate_in: float = 0.0
    bytes_rate_out: float = 0.0
    cpu_percent: float = 0.0
    bundle_msg_rates: dict[str, float] | None = None
    bundle_topics: dict[str, int] | None = None
    timestamp_ms: int = 0

    @property
    def msg_rate(self) -> float:
        return self.msg_rate_in + self.msg_rate_out

    def to_json(self) -> bytes:
        return json.dumps(
            {name: getattr(self, name) for name in self.__slots__}, sort_keys=True
        ).encode()

    @classmethod
    def from_json(cls, data: bytes) -> LoadReport:
        body = json.loads(data)
        return cls(**{k: v for k, v in body.items() if k in cls.__slots__})


# ---- the cluster's view ----------------------------------------------------------------------


async def live_brokers(store: MetadataStore) -> list[str]:
    keys = await store.list_keys(BROKERS_AVAILABLE_PREFIX)
    return [key[len(BROKERS_AVAILABLE_PREFIX) :] for key in keys[:MAX_REDIRECT_CANDIDATES]]


async def owned_bundle_counts(store: MetadataStore) -> dict[str, int]:
    counts: dict[str, int] = {}
    for record in await store.list(OWNERSHIP_PREFIX):
        owner = record.value.decode()
        counts[owner] = counts.get(owner, 0) + 1
    return counts


async def load_reports(store: MetadataStore) -> dict[str, LoadReport]:
    reports = {}
    for record in await store.list(LOAD_REPORTS_PREFIX):
        with contextlib.suppress(ValueError, TypeError):
            report = LoadReport.from_json(record.value)
            reports[report.broker] = report
    return reports


async def least_loaded_broker(store: MetadataStore, default: str) -> str:
    """The live broker owning the fewest bundles (ties: lowest message rate, then address);
    ``default`` when no broker is registered."""
    live = await live_brokers(store)
    if not live:
        return default
    counts = await owned_bundle_counts(store)
    reports = await load_reports(store)

    def load(broker: str) -> tuple[int, float, str]:
        report = reports.get(broker)
        return counts.get(broker, 0), report.msg_rate if report else 0.0, broker

    return min(live, key=load)


# ---- this broker's part ------------------------------------------------------------------------


class LoadManager:
    """This broker's load reports and, while elected, the shedding rounds.

    Owned by ``BundleOwnership``, which starts it once its session is open and closes it
    first in its own ``close``; it loses the leadership with the session
    (``on_session_lost``).
    """

    def __init__(self, ownership: BundleOwnership, registry: TopicRegistry) -> None:
        self._ownership = ownership
        self._registry = registry
        self.config = ownership.config
        self.is_leader = False
        self._last_shed_ms: dict[str, int] = {}
        self._cpu_sample = (time.monotonic(), time.process_time())
        self._loops = OwnedLoops("load manager", log)

    def start(self) -> None:
        self._loops.start(self._load_report_loop(), name="load-report")
        self._loops.start(self._leader_loop(), name="load-manager")

    async def close(self) -> None:
        await self._loops.close()

    def on_session_lost(self) -> None:
        self.is_leader = False

    # ---- reports ---------------------------------------------------------------------------

    def current_load(self) -> LoadReport:
        now, cpu = time.monotonic(), time.process_time()
        then, cpu_then = self._cpu_sample
        self._cpu_sample = (now, cpu)
        report = LoadReport(
            broker=self._ownership.address,
            bundles=len(self._ownership.owned),
            cpu_percent=round(100 * (cpu - cpu_then) / max(now - then, 1e-3), 1),
            bundle_msg_rates={},
            bundle_topics={},
            timestamp_ms=int(time.time() * 1000),
        )
        assert report.bundle_msg_rates is not None and report.bundle_topics is not None
        for topic in self._registry.topics.values():
            rate_in, rate_out = topic.messages_in.rate(), topic.messages_out.rate()
            report.topics += 1
            report.msg_rate_in += rate_in
            report.msg_rate_out += rate_out
            report.bytes_rate_in += topic.bytes_in.rate()
            report.bytes_rate_out += topic.bytes_out.rate()
            bundle = self._ownership.owned_bundle_of(topic.name)
            if bundle is not None:
                report.bundle_msg_rates[bundle.key] = (
                    report.bundle_msg_rates.get(bundle.key, 0.0) + rate_in + rate_out
                )
                report.bundle_topics[bundle.key] = report.bundle_topics.get(bundle.key, 0) + 1
        return report

    async def _load_report_loop(self) -> None:
        while True:
            session = self._ownership.session
            if session is not None:
                try:
                    await session.put(
                        LOAD_REPORTS_PREFIX + self._ownership.address,
                        self.current_load().to_json(),
                        ephemeral=True,
                    )
                except MetadataError as exc:
                    log.warning("publishing the load report failed: %s", exc)
            await asyncio.sleep(self.config.load_report_interval_ms / 1000)

    # ---- the elected load manager ----------------------------------------------------------

    async def _leader_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.load_shedding_interval_ms / 1000)
            session = self._ownership.session
            if session is None:
                continue
            try:
                if not self.is_leader:
                    try:
                        await session.put(
                            LEADER_KEY,
                            self._ownership.address.encode(),
                            expected_version=0,
                            ephemeral=True,
                        )
                        self.is_leader = True
                        log.info("this broker is now the load manager leader")
                    except BadVersionError:
                        continue
                await self.shed_once()
            except MetadataError as exc:
                self.is_leader = False
                log.warning("load manager round failed: %s", exc)

    async def shed_once(self) -> list[str]:
        """One load-manager round; returns the bundle keys it unloaded or split."""
        reports = await load_reports(self._ownership.store)
        actions: list[str] = []
        now_ms = int(time.time() * 1000)
        for report in reports.values():
            for key, topics in (report.bundle_topics or {}).items():
                if topics > self.config.max_topics_per_bundle and self._may_act(key, now_ms):
                    namespace, name = split_bundle_key(key)
                    await self._ownership.split_bundle(namespace, name)
                    actions.append(key)
        if len(reports) < 2:
            return actions
        average = sum(r.msg_rate for r in reports.values()) / len(reports)
        limit = average * (1 + self.config.load_shedding_threshold_percent / 100)
        for report in reports.values():
            if report.msg_rate <= max(limit, self.config.load_shedding_min_msg_rate):
                continue
            rates = report.bundle_msg_rates or {}
            if len(rates) < 2:
                continue  # moving its only busy bundle would just move the overload
            busiest = max(rates, key=lambda k: rates[k])
            if not self._may_act(busiest, now_ms):
                continue
            log.info(
                "broker %s is overloaded (%.0f msg/s, average %.0f): unloading %s",
                report.broker,
                report.msg_rate,
                average,
                busiest,
            )
            if report.broker == self._ownership.address:
                await self._ownership.unload_bundle(busiest)
            else:
                await self._ownership.forward(report.broker, busiest, "unload")
            actions.append(busiest)
        return actions

    def _may_act(self, key: str, now_ms: int) -> bool:
        if now_ms - self._last_shed_ms.get(key, 0) < self.config.load_shedding_grace_ms:
            return False
        self._last_shed_ms[key] = now_ms
        return True
