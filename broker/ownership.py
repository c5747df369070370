"""Bundle ownership among the brokers of a cluster, lookup, load reports and load shedding.

**Bundles.** Each namespace's 32-bit hash ring is split into bundles (default 4, set per
namespace at creation; boundaries in the namespace policies). A topic belongs to the bundle
holding ``murmur3_32(topic name)``. The bundle is the unit of ownership and of load balancing.

**Ownership.** The owner of a bundle holds the ephemeral key
``/namespace/<tenant>/<namespace>/<0xLO_0xHI>`` (value: the owner's address), created with
create-if-absent in the broker's *ownership session*. A broker serves a topic only while it
holds its bundle's key. When the session ends (its lease expired: the broker was paused or cut
off longer than the session TTL) the broker gives up every bundle at once: its topics close and
their clients look them up again. Meanwhile the bookies' fencing keeps data safe: a new owner
fences the topic's open ledger, so the old owner's adds are never acknowledged, and the
managed ledger's compare-and-set fails for it (Pulsar #17736, #23011, #24901).

**Lookup** (any broker; ``Lookup`` RPC): an owned bundle answers CONNECT with its owner; for an
unowned bundle the broker picks the live broker owning the fewest bundles (ties: lowest message
rate, then address) and answers REDIRECT authoritative — unless it picked itself, in which case
it takes ownership and answers CONNECT. A client that opens a producer or consumer on a broker
for an unowned bundle also makes that broker the owner (it reached a live broker; that is a
valid choice).

**Load.** Each broker publishes a load report every ``load_report_interval_ms`` to the
ephemeral key ``/loadbalance/brokers/<address>``: owned bundles, topics, message and byte
rates, CPU. One broker, elected by the ephemeral ``/loadbalance/leader``, sheds load every
``load_shedding_interval_ms``: a broker whose message rate is above the cluster average by
more than ``load_shedding_threshold_percent`` (and above ``load_shedding_min_msg_rate``) has
its busiest bundle unloaded, at most once per bundle per ``load_shedding_grace_ms``; a bundle
with more than ``max_topics_per_bundle`` loaded topics is split in two.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
import mmh3

from broker.errors import NotOwnerError, PreconditionError, ServiceUnavailableError
from strata.metadata import (
    BadVersionError,
    MetadataError,
    MetadataStore,
    MetadataStoreClosedError,
)
from strata.naming import NamespaceName, TopicName
from strata.v1 import admin_pb2, admin_pb2_grpc

if TYPE_CHECKING:
    from broker.service import BrokerService

log = logging.getLogger(__name__)

OWNERSHIP_PREFIX = "/namespace/"
LOAD_REPORTS_PREFIX = "/loadbalance/brokers/"
LEADER_KEY = "/loadbalance/leader"
BROKERS_AVAILABLE_PREFIX = "/brokers/available/"
# gRPC metadata marking an admin call one broker forwarded to another (never forwarded again).
FORWARDED_HEADER = "strata-forwarded"
HASH_RANGE = 1 << 32
DEFAULT_BUNDLE_COUNT = 4
MAX_BUNDLE_COUNT = 1024
MAX_REDIRECT_CANDIDATES = 1000


def topic_hash(name: TopicName) -> int:
    """The 32-bit Murmur3 hash of the canonical topic name that places it in a bundle."""
    return mmh3.hash(str(name), signed=False)


def equal_boundaries(count: int) -> list[int]:
    if not 1 <= count <= MAX_BUNDLE_COUNT:
        raise ValueError(f"bundle count must be within 1..{MAX_BUNDLE_COUNT}, got {count}")
    return [HASH_RANGE * i // count for i in range(count)] + [HASH_RANGE]


@dataclass(frozen=True, slots=True)
class Bundle:
    namespace: NamespaceName
    lower: int  # inclusive
    upper: int  # exclusive; HASH_RANGE for the last bundle

    @property
    def name(self) -> str:
        return f"0x{self.lower:08x}_0x{min(self.upper, HASH_RANGE - 1):08x}"

    @property
    def key(self) -> str:
        return _bundle_key(self.namespace, self.name)

    def contains(self, name: TopicName) -> bool:
        return name.namespace_name == self.namespace and self.holds(topic_hash(name))

    def holds(self, hash_value: int) -> bool:
        return self.lower <= hash_value < self.upper

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


def bundles_of(namespace: NamespaceName, policies: dict[str, Any]) -> list[Bundle]:
    boundaries = policies.get("bundles") or equal_boundaries(DEFAULT_BUNDLE_COUNT)
    return [Bundle(namespace, lo, hi) for lo, hi in itertools.pairwise(boundaries)]


def parse_bundle_name(namespace: NamespaceName, name: str, bundles: list[Bundle]) -> Bundle:
    for bundle in bundles:
        if bundle.name == name:
            return bundle
    raise PreconditionError(
        f"namespace {namespace} has no bundle {name!r}; its bundles are "
        + ", ".join(b.name for b in bundles)
    )


@dataclass(frozen=True, slots=True)
class OwnershipConfig:
    load_report_interval_ms: int = 5_000
    # How often the ownership session is checked; a lost session is noticed within this.
    session_check_interval_ms: int = 500
    load_shedding_interval_ms: int = 60_000
    load_shedding_threshold_percent: int = 10
    load_shedding_min_msg_rate: float = 1_000.0
    load_shedding_grace_ms: int = 300_000
    max_topics_per_bundle: int = 1_000
    # Bound of one broker-to-broker admin call (unload or split on the owner).
    forward_timeout_ms: int = 30_000


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


# Forward an admin operation on a bundle to its owner: (owner address, bundle key, operation).
Forwarder = Callable[[str, str, str], Awaitable[None]]


class BundleOwnership:
    """This broker's bundles. Owned by ``BrokerService`` (``service.ownership``).

    Lifecycle: ``start`` opens the ownership session and starts the owned tasks (session
    check, load reports, leader election and shedding); ``close`` unloads every bundle,
    cancels the tasks and closes the session (deleting the ownership keys).
    """

    def __init__(
        self,
        service: BrokerService,
        store: MetadataStore,
        address: str,
        config: OwnershipConfig,
        forward: Forwarder,
    ) -> None:
        self._service = service
        self._store = store
        self.address = address
        self.config = config
        self._forward = forward
        self._session: MetadataStore | None = None
        self.owned: dict[str, Bundle] = {}  # bundle key → bundle
        self._unloading: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._acquire_lock = asyncio.Lock()
        self.is_leader = False
        self._last_shed_ms: dict[str, int] = {}
        self._cpu_sample = (time.monotonic(), time.process_time())
        self.lost_sessions = 0

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self._session = await self._store.open_session()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._session_check_loop(), name="ownership-session"),
            loop.create_task(self._load_report_loop(), name="load-report"),
            loop.create_task(self._leader_loop(), name="load-manager"),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        for key in list(self.owned):
            with contextlib.suppress(Exception):
                await self.unload_bundle(key)
        if self._session is not None:
            with contextlib.suppress(MetadataError):
                await self._session.close()

    def _live_session(self) -> MetadataStore:
        if self._session is None:
            raise ServiceUnavailableError("the broker's ownership session is not open")
        return self._session

    async def _session_check_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.session_check_interval_ms / 1000)
            session = self._session
            try:
                if session is not None:
                    await session.get(LEADER_KEY)
                    continue
            except MetadataStoreClosedError:
                await self._on_session_lost()
            except MetadataError as exc:
                log.warning("ownership session check failed: %s", exc)
                continue
            try:
                self._session = await self._store.open_session()
            except MetadataError as exc:
                log.warning("cannot open a new ownership session yet: %s", exc)

    async def _on_session_lost(self) -> None:
        """The lease expired: another broker may own our bundles by now. Give every one of
        them up at once (their topics close, their clients look up again)."""
        self.lost_sessions += 1
        self._session = None
        self.is_leader = False
        lost = list(self.owned)
        log.error("ownership session lost; giving up %d bundles", len(lost))
        self.owned.clear()
        await self._service.close_topics(lambda name: True)

    # ---- bundles ---------------------------------------------------------------------------

    async def bundles(self, namespace: NamespaceName) -> list[Bundle]:
        policies = await self._service.get_namespace_policies(namespace)
        return bundles_of(namespace, policies)

    async def bundle_for(self, name: TopicName) -> Bundle:
        for bundle in await self.bundles(name.namespace_name):
            if bundle.contains(name):
                return bundle
        raise AssertionError(f"no bundle of {name.namespace_name} holds {name}")

    async def owner_of(self, bundle: Bundle) -> str | None:
        record = await self._store.get(bundle.key)
        return record.value.decode() if record is not None else None

    def owned_bundle_of(self, name: TopicName) -> Bundle | None:
        """The bundle of ours that holds ``name``, if any (no I/O; one hash)."""
        namespace, hash_value = name.namespace_name, topic_hash(name)
        for bundle in self.owned.values():
            if bundle.namespace == namespace and bundle.holds(hash_value):
                return bundle
        return None

    def owns_loaded(self, name: TopicName) -> bool:
        return self.owned_bundle_of(name) is not None

    async def ensure_owned(self, name: TopicName) -> Bundle:
        """Make sure this broker may serve ``name``: its bundle is ours (taken now if free);
        raise NotOwnerError naming the owner otherwise."""
        bundle = await self.bundle_for(name)
        if bundle.key in self._unloading:
            raise ServiceUnavailableError(f"bundle {bundle} is being unloaded; look up again")
        if bundle.key in self.owned:
            return bundle
        owner = await self._acquire(bundle)
        if owner != self.address:
            raise NotOwnerError(f"topic {name} is served by broker {owner}", owner)
        return bundle

    async def _acquire(self, bundle: Bundle) -> str:
        """Take ``bundle`` if nobody owns it; returns the owner's address."""
        async with self._acquire_lock:
            if bundle.key in self.owned:
                return self.address
            session = self._live_session()
            try:
                await session.put(
                    bundle.key, self.address.encode(), expected_version=0, ephemeral=True
                )
            except BadVersionError:
                record = await self._store.get(bundle.key)
                if record is None:
                    raise ServiceUnavailableError(
                        f"bundle {bundle} changed owner just now; look up again"
                    ) from None
                owner = record.value.decode()
                if owner != self.address:
                    return owner
                # A key at our own address from a session that is gone (an earlier process at
                # this address, which is dead since this one bound its port, or a session of
                # ours whose lease ran out): nobody serves the bundle, so take it over.
                try:
                    await self._store.delete(bundle.key, expected_version=record.version)
                    await session.put(
                        bundle.key, self.address.encode(), expected_version=0, ephemeral=True
                    )
                except BadVersionError:
                    raise ServiceUnavailableError(
                        f"bundle {bundle} changed owner just now; look up again"
                    ) from None
            # A split may have replaced the bundle while we took it: then give it back.
            if bundle not in await self.bundles(bundle.namespace):
                with contextlib.suppress(MetadataError):
                    await session.delete(bundle.key)
                raise ServiceUnavailableError(f"bundle {bundle} was just split; look up again")
            self.owned[bundle.key] = bundle
            log.info("now serving bundle %s", bundle)
            return self.address

    async def lookup(self, name: TopicName, authoritative: bool) -> tuple[bool, str, bool]:
        bundle = await self.bundle_for(name)
        if bundle.key in self.owned:
            return False, self.address, False
        owner = await self.owner_of(bundle)
        if owner is not None:
            return False, owner, False
        chosen = self.address if authoritative else await self.least_loaded_broker()
        if chosen == self.address:
            owner = await self._acquire(bundle)
            return False, owner, False
        return True, chosen, True

    async def live_brokers(self) -> list[str]:
        keys = await self._store.list_keys(BROKERS_AVAILABLE_PREFIX)
        return [key[len(BROKERS_AVAILABLE_PREFIX) :] for key in keys[:MAX_REDIRECT_CANDIDATES]]

    async def owned_bundle_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for record in await self._store.list(OWNERSHIP_PREFIX):
            owner = record.value.decode()
            counts[owner] = counts.get(owner, 0) + 1
        return counts

    async def load_reports(self) -> dict[str, LoadReport]:
        reports = {}
        for record in await self._store.list(LOAD_REPORTS_PREFIX):
            with contextlib.suppress(ValueError, TypeError):
                report = LoadReport.from_json(record.value)
                reports[report.broker] = report
        return reports

    async def least_loaded_broker(self) -> str:
        live = await self.live_brokers()
        if not live:
            return self.address
        counts = await self.owned_bundle_counts()
        reports = await self.load_reports()

        def load(broker: str) -> tuple[int, float, str]:
            report = reports.get(broker)
            return counts.get(broker, 0), report.msg_rate if report else 0.0, broker

        return min(live, key=load)

    # ---- unload and split --------------------------------------------------------------------

    async def unload_bundle(self, key: str) -> None:
        """Stop serving a bundle: close its topics (clients look up again), release its key."""
        bundle = self.owned.get(key)
        if bundle is None:
            return
        self._unloading.add(key)
        try:
            await self._service.close_topics(bundle.contains)
            self.owned.pop(key, None)
            if self._session is not None:
                with contextlib.suppress(MetadataError):
                    await self._session.delete(key)
            log.info("unloaded bundle %s", bundle)
        finally:
            self._unloading.discard(key)

    async def unload_namespace_bundle(
        self, namespace: NamespaceName, bundle_name: str, *, local_only: bool = False
    ) -> None:
        """Unload one bundle (or every bundle with ``bundle_name`` empty), wherever it is
        owned: here directly, elsewhere by forwarding to the owner. A forwarded request
        (``local_only``) names the bundle its sender saw; it is unloaded here by that name if
        this broker holds it, whatever the policy says now, and never forwarded again."""
        if local_only:
            if bundle_name:
                await self.unload_bundle(_bundle_key(namespace, bundle_name))
            else:
                for key, bundle in list(self.owned.items()):
                    if bundle.namespace == namespace:
                        await self.unload_bundle(key)
            return
        bundles = await self.bundles(namespace)
        chosen = bundles
        if bundle_name:
            chosen = [parse_bundle_name(namespace, bundle_name, bundles)]
        for bundle in chosen:
            if bundle.key in self.owned:
                await self.unload_bundle(bundle.key)
                continue
            owner = await self.owner_of(bundle)
            if owner is not None and owner != self.address:
                await self._forward(owner, bundle.key, "unload")

    async def bundle_owners(self, namespace: NamespaceName) -> list[tuple[Bundle, str]]:
        return [(b, await self.owner_of(b) or "") for b in await self.bundles(namespace)]

    async def split_bundle(
        self, namespace: NamespaceName, bundle_name: str, *, local_only: bool = False
    ) -> list[Bundle]:
        """Split a bundle at the middle of its range. Its owner does it (a request elsewhere
        is forwarded there): it stops serving the bundle, stores the new boundaries by
        compare-and-set, then releases the bundle's key, so that no broker ever serves a
        half while another still serves the whole. The halves are assigned on next use."""
        bundles = await self.bundles(namespace)
        bundle = parse_bundle_name(namespace, bundle_name, bundles)
        if bundle.upper - bundle.lower < 2:
            raise PreconditionError(f"bundle {bundle} is too small to split")
        if len(bundles) >= MAX_BUNDLE_COUNT:
            raise PreconditionError(f"namespace {namespace} has {MAX_BUNDLE_COUNT} bundles already")
        middle = (bundle.lower + bundle.upper) // 2
        owner = await self.owner_of(bundle)
        if owner is not None and owner != self.address:
            if local_only:
                raise ServiceUnavailableError(f"bundle {bundle} moved to {owner}; try again")
            await self._forward(owner, bundle.key, "split")
            return await self.bundles(namespace)
        mine = bundle.key in self.owned
        if mine:
            self._unloading.add(bundle.key)
        try:
            if mine:
                await self._service.close_topics(bundle.contains)
            await self._service.update_namespace_policies(
                namespace, lambda policies: with_boundary(policies, middle)
            )
            if mine:
                self.owned.pop(bundle.key, None)
                if self._session is not None:
                    with contextlib.suppress(MetadataError):
                        await self._session.delete(bundle.key)
            else:
                # Nobody owned it when we looked; if a broker took it since, it must let go.
                late_owner = await self.owner_of(bundle)
                if late_owner is not None and late_owner != self.address:
                    await self._forward(late_owner, bundle.key, "unload")
        finally:
            self._unloading.discard(bundle.key)
        log.info("split bundle %s at 0x%08x", bundle, middle)
        return [Bundle(namespace, bundle.lower, middle), Bundle(namespace, middle, bundle.upper)]

    # ---- load reports and shedding -------------------------------------------------------------

    def current_load(self) -> LoadReport:
        now, cpu = time.monotonic(), time.process_time()
        then, cpu_then = self._cpu_sample
        self._cpu_sample = (now, cpu)
        report = LoadReport(
            broker=self.address,
            bundles=len(self.owned),
            cpu_percent=round(100 * (cpu - cpu_then) / max(now - then, 1e-3), 1),
            bundle_msg_rates={},
            bundle_topics={},
            timestamp_ms=int(time.time() * 1000),
        )
        assert report.bundle_msg_rates is not None and report.bundle_topics is not None
        for topic in self._service.topics.values():
            rate_in, rate_out = topic.messages_in.rate(), topic.messages_out.rate()
            report.topics += 1
            report.msg_rate_in += rate_in
            report.msg_rate_out += rate_out
            report.bytes_rate_in += topic.bytes_in.rate()
            report.bytes_rate_out += topic.bytes_out.rate()
            bundle = self.owned_bundle_of(topic.name)
            if bundle is not None:
                report.bundle_msg_rates[bundle.key] = (
                    report.bundle_msg_rates.get(bundle.key, 0.0) + rate_in + rate_out
                )
                report.bundle_topics[bundle.key] = report.bundle_topics.get(bundle.key, 0) + 1
        return report

    async def _load_report_loop(self) -> None:
        while True:
            session = self._session
            if session is not None:
                try:
                    await session.put(
                        LOAD_REPORTS_PREFIX + self.address,
                        self.current_load().to_json(),
                        ephemeral=True,
                    )
                except MetadataError as exc:
                    log.warning("publishing the load report failed: %s", exc)
            await asyncio.sleep(self.config.load_report_interval_ms / 1000)

    async def _leader_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.load_shedding_interval_ms / 1000)
            session = self._session
            if session is None:
                continue
            try:
                if not self.is_leader:
                    try:
                        await session.put(
                            LEADER_KEY, self.address.encode(), expected_version=0, ephemeral=True
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
        reports = await self.load_reports()
        actions: list[str] = []
        now_ms = int(time.time() * 1000)
        for report in reports.values():
            for key, topics in (report.bundle_topics or {}).items():
                if topics > self.config.max_topics_per_bundle and self._may_act(key, now_ms):
                    namespace, name = _split_key(key)
                    await self.split_bundle(namespace, name)
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
            if report.broker == self.address:
                await self.unload_bundle(busiest)
            else:
                await self._forward(report.broker, busiest, "unload")
            actions.append(busiest)
        return actions

    def _may_act(self, key: str, now_ms: int) -> bool:
        if now_ms - self._last_shed_ms.get(key, 0) < self.config.load_shedding_grace_ms:
            return False
        self._last_shed_ms[key] = now_ms
        return True


def _bundle_key(namespace: NamespaceName, name: str) -> str:
    return f"{OWNERSHIP_PREFIX}{namespace.tenant}/{namespace.namespace}/{name}"


def _split_key(key: str) -> tuple[NamespaceName, str]:
    tenant, namespace, name = key[len(OWNERSHIP_PREFIX) :].split("/")
    return NamespaceName(tenant, namespace), name


def with_boundary(policies: dict[str, Any], middle: int) -> dict[str, Any]:
    boundaries = list(policies.get("bundles") or equal_boundaries(DEFAULT_BUNDLE_COUNT))
    if middle not in boundaries:
        boundaries.append(middle)
        boundaries.sort()
    return {**policies, "bundles": boundaries}


async def forward_to_owner(owner: str, bundle_key: str, operation: str, timeout_s: float) -> None:
    """Ask the broker at ``owner`` to ``"unload"`` or ``"split"`` a bundle it owns."""
    namespace, name = _split_key(bundle_key)
    metadata = ((FORWARDED_HEADER, "1"),)
    async with grpc.aio.insecure_channel(owner) as channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        if operation == "unload":
            await stub.UnloadNamespace(
                admin_pb2.UnloadNamespaceRequest(name=namespace.resource_name, bundle=name),
                metadata=metadata,
                timeout=timeout_s,
            )
        elif operation == "split":
            await stub.SplitNamespaceBundle(
                admin_pb2.SplitNamespaceBundleRequest(name=namespace.resource_name, bundle=name),
                metadata=metadata,
                timeout=timeout_s,
            )
        else:
            raise ValueError(f"unknown bundle operation {operation!r}")
