"""The broker's core: tenants and namespaces, the registry of loaded topics, housekeeping.

Servicers (``broker.messaging_service``, ``broker.admin_service``) are thin gRPC edges over
this class. Metadata layout in the store::

    /admin/tenants/<tenant>                                tenant policies (JSON)
    /admin/namespaces/<tenant>/<namespace>                 namespace policies (JSON)
    /managed-ledgers/<tenant>/<namespace>/persistent/<t>   a topic's ledger list
    /cursors/<tenant>/<namespace>/<t>/<subscription>       a subscription's cursor
    /ledgers/<id>                                          ledger metadata

Architecture invariant: the broker keeps no state that the metadata store and the bookies
cannot rebuild; a restarted broker reloads topics lazily on first use.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from bookie.ledger import LedgerManager
from broker.config import BrokerConfig
from broker.errors import (
    AlreadyExistsError,
    InvalidRequestError,
    NotFoundError,
    NotOwnerError,
    PreconditionError,
    ServiceUnavailableError,
)
from broker.managed_ledger import (
    MANAGED_LEDGERS_PREFIX,
    EntryCache,
    ManagedLedger,
    ManagedLedgerConfig,
)
from broker.offload import ManagedLedgerOffloader, OffloadPolicy, OffloadStatus
from broker.ownership import BundleOwnership, equal_boundaries
from broker.topic import Topic
from strata.metadata import BadVersionError, MetadataStore
from strata.naming import DEFAULT_NAMESPACE, DEFAULT_TENANT, NamespaceName, TopicName
from tiered import Offloader

log = logging.getLogger(__name__)

TENANTS_PREFIX = "/admin/tenants/"
NAMESPACES_PREFIX = "/admin/namespaces/"
PARTITIONED_TOPICS_PREFIX = "/admin/partitioned-topics/"
MAX_PARTITIONS = 10_000
TOPIC_DOMAIN = "persistent"
MAX_ENSEMBLE_SIZE = 64
POLICY_UPDATE_MAX_ATTEMPTS = 20


async def initialize_cluster(store: MetadataStore) -> None:
    """Create tenant ``public`` and namespace ``public/default`` if they are missing
    (idempotent; every broker runs it at start, ``strata initialize-cluster`` on demand)."""
    tenant = json.dumps({"admin_roles": [], "allowed_clusters": []}).encode()
    with contextlib.suppress(BadVersionError):
        await store.put(TENANTS_PREFIX + DEFAULT_TENANT, tenant, expected_version=0)
    with contextlib.suppress(BadVersionError):
        await store.put(
            f"{NAMESPACES_PREFIX}{DEFAULT_TENANT}/{DEFAULT_NAMESPACE}", b"{}", expected_version=0
        )


def _ml_name(topic: TopicName) -> str:
    return f"{topic.tenant}/{topic.namespace}/{TOPIC_DOMAIN}/{topic.local_name}"


class BrokerService:
    """Owns loaded topics and the housekeeping task; closed by the process role."""

    def __init__(
        self,
        config: BrokerConfig,
        store: MetadataStore,
        ledgers: LedgerManager,
        *,
        offloader: Offloader | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.ledgers = ledgers
        # Tiered storage (owned and closed by the process role); None: offloading is off.
        self.offloader = offloader
        self.cache = EntryCache(config.managed_ledger_cache_size_bytes)
        self.topics: dict[str, Topic] = {}
        self._loading: dict[str, asyncio.Task[Topic]] = {}
        self._housekeeping: asyncio.Task[None] | None = None
        # Unloads of topics another owner fenced; awaited by close.
        self._unloads: set[asyncio.Task[None]] = set()
        # host:port clients dial; set by the process role once the server has its port.
        self.advertised_address = ""
        # Bundle ownership among several brokers; None: this broker serves every topic
        # (a standalone).
        self.ownership: BundleOwnership | None = None
        # True while a cluster broker serves gRPC but has not joined bundle ownership yet:
        # topics and lookups are refused (UNAVAILABLE) rather than served unowned.
        self.joining = False
        self.ml_config = ManagedLedgerConfig(
            max_entries_per_ledger=config.managed_ledger_max_entries_per_ledger,
            max_size_per_ledger_bytes=config.managed_ledger_max_size_per_ledger_bytes,
            max_ledger_rollover_time_ms=config.managed_ledger_max_ledger_rollover_time_ms,
            ensemble_size=config.managed_ledger_default_ensemble_size,
            write_quorum=config.managed_ledger_default_write_quorum,
            ack_quorum=config.managed_ledger_default_ack_quorum,
        )

    async def start(self) -> None:
        self._housekeeping = asyncio.get_running_loop().create_task(self._housekeeping_loop())

    async def initialize_defaults(self) -> None:
        await initialize_cluster(self.store)

    # ---- tenants and namespaces ---------------------------------------------------------

    async def create_tenant(
        self, tenant: str, admin_roles: list[str], allowed_clusters: list[str]
    ) -> None:
        body = json.dumps({"admin_roles": admin_roles, "allowed_clusters": allowed_clusters})
        try:
            await self.store.put(TENANTS_PREFIX + tenant, body.encode(), expected_version=0)
        except BadVersionError as exc:
            raise AlreadyExistsError(f"tenant {tenant!r} already exists") from exc

    async def get_tenant(self, tenant: str) -> dict[str, list[str]]:
        record = await self.store.get(TENANTS_PREFIX + tenant)
        if record is None:
            raise NotFoundError(f"tenant {tenant!r} does not exist")
        body: dict[str, list[str]] = json.loads(record.value)
        return body

    async def list_tenants(self) -> list[str]:
        return [k[len(TENANTS_PREFIX) :] for k in await self.store.list_keys(TENANTS_PREFIX)]

    async def delete_tenant(self, tenant: str, force: bool) -> None:
        await self.get_tenant(tenant)
        namespaces = await self.list_namespaces(tenant)
        if namespaces and not force:
            raise PreconditionError(
                f"tenant {tenant!r} still has namespaces {namespaces}; delete them or use force"
            )
        for namespace in namespaces:
            await self.delete_namespace(NamespaceName(tenant, namespace), force=True)
        await self.store.delete(TENANTS_PREFIX + tenant)

    async def create_namespace(self, name: NamespaceName, bundles: int = 0) -> None:
        """Create a namespace; ``bundles`` > 0 splits its hash range into that many bundles
        (default: 4, see ``broker.ownership``)."""
        await self.get_tenant(name.tenant)
        key = f"{NAMESPACES_PREFIX}{name.tenant}/{name.namespace}"
        policies: dict[str, Any] = {}
        if bundles:
            try:
                policies["bundles"] = equal_boundaries(bundles)
            except ValueError as exc:
                raise InvalidRequestError(str(exc)) from exc
        try:
            await self.store.put(key, json.dumps(policies).encode(), expected_version=0)
        except BadVersionError as exc:
            raise AlreadyExistsError(f"namespace {name} already exists") from exc

    async def get_namespace_policies(self, name: NamespaceName) -> dict[str, Any]:
        record = await self.store.get(f"{NAMESPACES_PREFIX}{name.tenant}/{name.namespace}")
        if record is None:
            await self.check_namespace(name)  # raises the precise NotFoundError
            raise NotFoundError(f"namespace {name} does not exist")
        policies: dict[str, Any] = json.loads(record.value)
        return policies

    async def set_persistence(
        self, name: NamespaceName, ensemble_size: int, write_quorum: int, ack_quorum: int
    ) -> None:
        """Set E/Qw/Qa for the namespace's ledgers created from now on (compare-and-set)."""
        if not 1 <= ack_quorum <= write_quorum <= ensemble_size:
            raise InvalidRequestError(
                f"need 1 <= ack quorum ({ack_quorum}) <= write quorum ({write_quorum}) "
                f"<= ensemble size ({ensemble_size})"
            )
        if ensemble_size > MAX_ENSEMBLE_SIZE:
            raise InvalidRequestError(f"ensemble size is at most {MAX_ENSEMBLE_SIZE}")
        persistence = {
            "bookkeeper_ensemble": ensemble_size,
            "bookkeeper_write_quorum": write_quorum,
            "bookkeeper_ack_quorum": ack_quorum,
        }
        await self.update_namespace_policies(
            name, lambda policies: {**policies, "persistence": persistence}
        )

    async def update_namespace_policies(
        self, name: NamespaceName, mutate: Callable[[dict[str, Any]], dict[str, Any]]
    ) -> dict[str, Any]:
        """Apply ``mutate`` to the namespace's policies by compare-and-set (re-read and retry
        on a conflict, a bounded number of times); returns the stored policies."""
        key = f"{NAMESPACES_PREFIX}{name.tenant}/{name.namespace}"
        for _ in range(POLICY_UPDATE_MAX_ATTEMPTS):
            record = await self.store.get(key)
            if record is None:
                await self.check_namespace(name)
                raise NotFoundError(f"namespace {name} does not exist")
            policies = mutate(json.loads(record.value))
            try:
                await self.store.put(
                    key, json.dumps(policies).encode(), expected_version=record.version
                )
            except BadVersionError:
                continue
            return policies
        raise ServiceUnavailableError(
            f"namespace {name} policies are changing too often; try again"
        )

    async def persistence_for(self, name: NamespaceName) -> tuple[int, int, int]:
        """E/Qw/Qa for a new ledger of a topic in ``name``: its policy, else the defaults."""
        persistence = (await self.get_namespace_policies(name)).get("persistence")
        if not persistence:
            return (
                self.config.managed_ledger_default_ensemble_size,
                self.config.managed_ledger_default_write_quorum,
                self.config.managed_ledger_default_ack_quorum,
            )
        return (
            int(persistence["bookkeeper_ensemble"]),
            int(persistence["bookkeeper_write_quorum"]),
            int(persistence["bookkeeper_ack_quorum"]),
        )

    async def set_offload_threshold(self, name: NamespaceName, threshold_bytes: int) -> None:
        """Bytes of a topic kept on bookies before its oldest closed ledgers are offloaded
        (-1: automatic offload off, 0: offload every closed ledger)."""
        if threshold_bytes < -1:
            raise InvalidRequestError("offload threshold must be -1 (off) or at least 0 bytes")
        await self.update_namespace_policies(
            name, lambda policies: {**policies, "offload_threshold_bytes": threshold_bytes}
        )

    async def set_offload_deletion_lag(self, name: NamespaceName, lag_ms: int | None) -> None:
        """How long a ledger's bookie copy is kept after its offload; None: the broker's
        ``--offload-deletion-lag-ms``."""
        if lag_ms is not None and lag_ms < 0:
            raise InvalidRequestError("offload deletion lag must not be negative")

        def mutate(policies: dict[str, Any]) -> dict[str, Any]:
            policies = dict(policies)
            if lag_ms is None:
                policies.pop("offload_deletion_lag_ms", None)
            else:
                policies["offload_deletion_lag_ms"] = lag_ms
            return policies

        await self.update_namespace_policies(name, mutate)

    def offload_policy_of(self, policies: dict[str, Any]) -> OffloadPolicy:
        lag = policies.get("offload_deletion_lag_ms")
        return OffloadPolicy(
            threshold_bytes=int(policies.get("offload_threshold_bytes", -1)),
            deletion_lag_ms=int(self.config.offload_deletion_lag_ms if lag is None else lag),
        )

    async def offload_policy_for(self, name: NamespaceName) -> OffloadPolicy:
        return self.offload_policy_of(await self.get_namespace_policies(name))

    async def check_namespace(self, name: NamespaceName) -> None:
        if await self.store.get(f"{NAMESPACES_PREFIX}{name.tenant}/{name.namespace}") is None:
            if await self.store.get(TENANTS_PREFIX + name.tenant) is None:
                raise NotFoundError(f"tenant {name.tenant!r} does not exist")
            raise NotFoundError(f"namespace {name} does not exist")

    async def list_namespaces(self, tenant: str) -> list[str]:
        await self.get_tenant(tenant)
        prefix = f"{NAMESPACES_PREFIX}{tenant}/"
        return [k[len(prefix) :] for k in await self.store.list_keys(prefix)]

    async def delete_namespace(self, name: NamespaceName, force: bool) -> None:
        await self.check_namespace(name)
        topics = await self.list_topics(name)
        if topics and not force:
            raise PreconditionError(
                f"namespace {name} still has {len(topics)} topics; delete them or use force"
            )
        for topic in topics:
            await self.delete_topic(TopicName.parse(topic), force=True)
        await self.store.delete(f"{NAMESPACES_PREFIX}{name.tenant}/{name.namespace}")

    # ---- topics -------------------------------------------------------------------------------

    async def list_topics(self, name: NamespaceName) -> list[str]:
        await self.check_namespace(name)
        prefix = f"{MANAGED_LEDGERS_PREFIX}{name.tenant}/{name.namespace}/{TOPIC_DOMAIN}/"
        return [
            str(TopicName(name.tenant, name.namespace, key[len(prefix) :]))
            for key in await self.store.list_keys(prefix)
        ]

    def _partitioned_key(self, name: TopicName) -> str:
        return f"{PARTITIONED_TOPICS_PREFIX}{name.tenant}/{name.namespace}/{name.local_name}"

    async def lookup(self, name: TopicName, authoritative: bool) -> tuple[bool, str, bool]:
        """Which broker serves ``name``: (redirect?, broker address, authoritative)."""
        self._check_joined()
        await self.check_namespace(name.namespace_name)
        if self.ownership is None:
            return False, self.advertised_address, False
        return await self.ownership.lookup(name, authoritative)

    def _check_joined(self) -> None:
        if self.joining:
            raise ServiceUnavailableError("the broker is starting; try again")

    async def create_partitioned_topic(self, name: TopicName, partitions: int) -> None:
        """Record ``name`` as a topic of ``partitions`` partitions; the partitions themselves
        are ordinary topics, created on first use."""
        if name.partition_index >= 0:
            raise InvalidRequestError(f"{name} is a partition name; give the topic's base name")
        if not 1 <= partitions <= MAX_PARTITIONS:
            raise InvalidRequestError(f"partitions must be within 1..{MAX_PARTITIONS}")
        await self.check_namespace(name.namespace_name)
        if await self.topic_exists(name):
            raise AlreadyExistsError(f"topic {name} already exists as a non-partitioned topic")
        body = json.dumps({"partitions": partitions}).encode()
        try:
            await self.store.put(self._partitioned_key(name), body, expected_version=0)
        except BadVersionError as exc:
            raise AlreadyExistsError(f"partitioned topic {name} already exists") from exc

    async def partitions_of(self, name: TopicName) -> int:
        """The partition count of ``name``; 0 when it is not a partitioned topic."""
        record = await self.store.get(self._partitioned_key(name))
        if record is None:
            return 0
        return int(json.loads(record.value)["partitions"])

    async def topic_exists(self, name: TopicName) -> bool:
        if str(name) in self.topics:
            return True
        return await self.store.get(MANAGED_LEDGERS_PREFIX + _ml_name(name)) is not None

    async def create_topic(self, name: TopicName) -> Topic:
        await self.check_namespace(name.namespace_name)
        if await self.topic_exists(name):
            raise AlreadyExistsError(f"topic {name} already exists")
        return await self.get_topic(name)

    async def get_topic(self, name: TopicName) -> Topic:
        """The loaded topic, loading it (and creating it, as auto-creation) on first use."""
        key = str(name)
        self._check_joined()
        ownership = self.ownership
        if ownership is not None and not ownership.owns_loaded(name):
            await ownership.ensure_owned(name)
        topic = self.topics.get(key)
        if topic is not None:
            return topic
        loading = self._loading.get(key)
        if loading is None:
            loading = asyncio.get_running_loop().create_task(self._load_topic(name))
            self._loading[key] = loading
            loading.add_done_callback(lambda _: self._loading.pop(key, None))
        return await asyncio.shield(loading)

    async def _load_topic(self, name: TopicName) -> Topic:
        await self.check_namespace(name.namespace_name)
        if await self.partitions_of(name):
            raise PreconditionError(
                f"{name} is a partitioned topic: use its partitions ({name}-partition-N); "
                "the SDK does this by itself"
            )
        namespace = name.namespace_name
        ledger = ManagedLedger(
            _ml_name(name),
            self.ledgers,
            self.ml_config,
            self.cache,
            quorums=lambda: self.persistence_for(namespace),
            offloader=self.offloader,
        )
        await ledger.open()
        if self.offloader is not None:
            ManagedLedgerOffloader(
                ledger,
                name,
                self.offloader,
                lambda: self.offload_policy_for(namespace),
                retry_initial_backoff_ms=self.config.housekeeping_interval_ms,
            )
        topic = Topic(
            name,
            ledger,
            self.store,
            self.config.cursor_persist_interval_ms,
            self.config.cursor_max_persisted_ranges,
        )
        await topic.load_subscriptions()
        ledger.on_fenced = lambda: self._unload_fenced(topic)
        self.topics[str(name)] = topic
        log.info("loaded topic %s (%d ledgers)", name, len(ledger.ledgers))
        return topic

    async def delete_topic(self, name: TopicName, force: bool) -> None:
        if not await self.topic_exists(name):
            raise NotFoundError(f"topic {name} does not exist")
        topic = await self.get_topic(name)
        busy = topic.connected_producers or any(s.consumers for s in topic.subscriptions.values())
        if busy and not force:
            raise PreconditionError(f"topic {name} has connected producers or consumers; use force")
        self.topics.pop(str(name), None)
        topic.connected_producers.clear()
        await topic.delete()

    async def offload_topic(self, name: TopicName, threshold_bytes: int) -> OffloadStatus:
        """Start offloading the topic's closed ledgers past ``threshold_bytes`` (0: all)."""
        if threshold_bytes < 0:
            raise InvalidRequestError("size threshold must not be negative")
        offload = await self._topic_offload(name)
        return offload.request_offload(threshold_bytes)

    async def offload_status(self, name: TopicName) -> OffloadStatus:
        return (await self._topic_offload(name)).status()

    async def _topic_offload(self, name: TopicName) -> ManagedLedgerOffloader:
        if self.offloader is None:
            raise PreconditionError(
                "offloading is not configured on this broker (start it with --offload-driver)"
            )
        if not await self.topic_exists(name):
            raise NotFoundError(f"topic {name} does not exist")
        offload = (await self.get_topic(name)).ledger.offload
        assert offload is not None
        return offload

    # ---- housekeeping ---------------------------------------------------------------------

    async def close_topics(self, predicate: Callable[[TopicName], bool]) -> int:
        """Close and forget every loaded topic whose name matches (an unload: the next use
        loads it again, here or on the bundle's new owner); returns how many."""
        chosen = [t for t in self.topics.values() if predicate(t.name)]
        for topic in chosen:
            self.topics.pop(str(topic.name), None)
        for topic in chosen:
            try:
                await topic.close()
            except Exception as exc:
                log.warning("closing %s failed: %s", topic.name, exc)
        return len(chosen)

    async def unload_topic(self, name: TopicName) -> bool:
        """Close ``name`` where it is loaded; True if it was loaded here."""
        ownership = self.ownership
        if ownership is not None and not ownership.owns_loaded(name):
            owner = await ownership.owner_of(await ownership.bundle_for(name))
            if owner is not None and owner != ownership.address:
                raise NotOwnerError(f"topic {name} is served by broker {owner}", owner)
        return await self.close_topics(lambda candidate: candidate == name) > 0

    def _unload_idle_topics(self) -> list[Topic]:
        """Topics without producers, consumers or traffic for ``topic_idle_unload_seconds``."""
        now = time.monotonic()
        idle = []
        for topic in self.topics.values():
            busy = (
                topic.connected_producers
                or any(s.consumers for s in topic.subscriptions.values())
                or (topic.ledger.offload is not None and topic.ledger.offload.running)
            )
            if busy:
                topic.idle_since = None
            elif topic.idle_since is None:
                topic.idle_since = now
            elif now - topic.idle_since >= self.config.topic_idle_unload_seconds:
                idle.append(topic)
        for topic in idle:
            self.topics.pop(str(topic.name), None)
        return idle

    async def run_housekeeping_once(self) -> None:
        for topic in self._unload_idle_topics():
            try:
                await topic.close()
            except Exception as exc:
                log.warning("unloading idle topic %s failed: %s", topic.name, exc)
        for topic in list(self.topics.values()):
            topic.ledger.maybe_rollover_by_time()
            try:
                await topic.trim()
            except Exception as exc:
                log.warning("trimming %s failed: %s", topic.name, exc)
            if topic.ledger.offload is not None:
                topic.ledger.offload.on_housekeeping()

    async def _housekeeping_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.housekeeping_interval_ms / 1000)
            await self.run_housekeeping_once()

    def _unload_fenced(self, topic: Topic) -> None:
        """Another broker took the topic over (its ledger list changed under us): stop serving
        it at once; its clients look it up again."""
        if self.topics.get(str(topic.name)) is not topic:
            return

        async def unload() -> None:
            await self.close_topics(lambda name: name == topic.name)

        task = asyncio.get_running_loop().create_task(unload(), name=f"unload {topic.name}")
        self._unloads.add(task)
        task.add_done_callback(self._unloads.discard)

    async def close(self) -> None:
        for task in list(self._unloads):
            with contextlib.suppress(Exception):
                await task
        if self._housekeeping is not None:
            self._housekeeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._housekeeping
        for topic in list(self.topics.values()):
            try:
                await topic.close()
            except Exception as exc:
                log.warning("closing %s failed: %s", topic.name, exc)
        self.topics.clear()
