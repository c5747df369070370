"""Tenants and namespaces, and the namespace policies, in the metadata store.

Layout::

    /admin/tenants/<tenant>                    tenant policies (JSON)
    /admin/namespaces/<tenant>/<namespace>     namespace policies (JSON)

Namespace policies hold the bundle boundaries (``broker.bundles``), the persistence quorums
(E/Qw/Qa) of new ledgers and the offload policy. Every change is a compare-and-set of the
whole policies document, retried on a conflict a bounded number of times. Deleting a tenant or
a namespace that still has topics is ``BrokerService``'s (it unloads the topics first).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

from broker.backlog_quota import POLICIES, BacklogQuota
from broker.bundles import equal_boundaries
from broker.config import LIMIT_NAMES, BrokerConfig
from broker.errors import (
    AlreadyExistsError,
    InvalidRequestError,
    NotFoundError,
    ServiceUnavailableError,
)
from broker.managed_ledger import Retention
from broker.offload import OffloadPolicy
from broker.rate_limit import NO_LIMIT, RateLimit
from strata.metadata import BadVersionError, MetadataStore
from strata.naming import DEFAULT_NAMESPACE, DEFAULT_TENANT, NamespaceName, TopicName, quoted

TENANTS_PREFIX = "/admin/tenants/"
NAMESPACES_PREFIX = "/admin/namespaces/"
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


TOPIC_POLICIES_PREFIX = "/admin/topic-policies/"
# The policies a topic may set for itself (the namespace policy keys they override).
TOPIC_POLICY_KEYS = (
    "deduplication_enabled",
    "retention_policies",
    "message_ttl_in_seconds",
    "backlog_quota",
    "publish_rate",
    "dispatch_rate",
    "compaction_threshold",
)
PolicyTarget = NamespaceName | TopicName


def effective_policies(namespace: dict[str, Any], topic: dict[str, Any]) -> dict[str, Any]:
    """A topic's policies in effect: its own where it has them, else its namespace's."""
    return {**namespace, **{k: v for k, v in topic.items() if k in TOPIC_POLICY_KEYS}}


def topic_policies_key(name: TopicName) -> str:
    return (
        f"{TOPIC_POLICIES_PREFIX}{name.tenant}/{name.namespace}/{quote(name.local_name, safe='')}"
    )


def _namespace_key(name: NamespaceName) -> str:
    return f"{NAMESPACES_PREFIX}{name.tenant}/{name.namespace}"


# The largest limit a namespace may set.
MAX_LIMIT = 1_000_000_000
# Retention minutes or MiB, and message TTL seconds: signed 32-bit, as Pulsar's.
MAX_RETENTION_VALUE = (1 << 31) - 1
MAX_TTL_SECONDS = (1 << 31) - 1
# Rate limits: per second, within a signed 64-bit value; the two kinds of policy.
MAX_RATE = (1 << 62) - 1
RATE_KINDS = ("publish_rate", "dispatch_rate")


@dataclass(frozen=True, slots=True)
class Limits:
    """A namespace's limits in effect (0 = unlimited)."""

    max_topics_per_namespace: int
    max_producers_per_topic: int
    max_consumers_per_topic: int
    max_subscriptions_per_topic: int
    max_unacked_messages_per_consumer: int
    max_unacked_messages_per_subscription: int


class Namespaces:
    """The tenants and namespaces of the cluster. Stateless: every call reads the store, so
    every broker sees the same policies. ``config`` gives the defaults a policy overrides."""

    def __init__(self, store: MetadataStore, config: BrokerConfig) -> None:
        self.store = store
        self.config = config

    # ---- tenants ---------------------------------------------------------------------------

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

    async def update_tenant(
        self, tenant: str, admin_roles: list[str], allowed_clusters: list[str]
    ) -> None:
        """Replace the tenant's admin roles and allowed clusters (compare-and-set)."""
        key = TENANTS_PREFIX + tenant
        for _ in range(POLICY_UPDATE_MAX_ATTEMPTS):
            record = await self.store.get(key)
            if record is None:
                raise NotFoundError(f"tenant {tenant!r} does not exist")
            body = json.loads(record.value)
            body.update(admin_roles=admin_roles, allowed_clusters=allowed_clusters)
            try:
                await self.store.put(
                    key, json.dumps(body).encode(), expected_version=record.version
                )
            except BadVersionError:
                continue
            return
        raise ServiceUnavailableError(f"tenant {tenant!r} is changing too often; try again")

    async def list_tenants(self) -> list[str]:
        return [k[len(TENANTS_PREFIX) :] for k in await self.store.list_keys(TENANTS_PREFIX)]

    async def remove_tenant(self, tenant: str) -> None:
        """Delete the tenant's record (its namespaces are gone already)."""
        await self.store.delete(TENANTS_PREFIX + tenant)

    # ---- namespaces ------------------------------------------------------------------------

    async def create_namespace(self, name: NamespaceName, bundles: int = 0) -> None:
        """Create a namespace; ``bundles`` > 0 splits its hash range into that many bundles
        (default: 4, see ``broker.bundles``)."""
        await self.get_tenant(name.tenant)
        policies: dict[str, Any] = {}
        if bundles:
            try:
                policies["bundles"] = equal_boundaries(bundles)
            except ValueError as exc:
                raise InvalidRequestError(str(exc)) from exc
        try:
            await self.store.put(
                _namespace_key(name), json.dumps(policies).encode(), expected_version=0
            )
        except BadVersionError as exc:
            raise AlreadyExistsError(f"namespace {name} already exists") from exc

    async def check_namespace(self, name: NamespaceName) -> None:
        if await self.store.get(_namespace_key(name)) is None:
            if await self.store.get(TENANTS_PREFIX + name.tenant) is None:
                raise NotFoundError(f"tenant {name.tenant!r} does not exist")
            raise NotFoundError(f"namespace {name} does not exist")

    async def list_namespaces(self, tenant: str) -> list[str]:
        await self.get_tenant(tenant)
        prefix = f"{NAMESPACES_PREFIX}{tenant}/"
        return [k[len(prefix) :] for k in await self.store.list_keys(prefix)]

    async def remove_namespace(self, name: NamespaceName) -> None:
        """Delete the namespace's record (its topics are gone already)."""
        await self.store.delete(_namespace_key(name))

    # ---- policies --------------------------------------------------------------------------

    async def get_namespace_policies(self, name: NamespaceName) -> dict[str, Any]:
        record = await self.store.get(_namespace_key(name))
        if record is None:
            await self.check_namespace(name)  # raises the precise NotFoundError
            raise NotFoundError(f"namespace {name} does not exist")
        policies: dict[str, Any] = json.loads(record.value)
        return policies

    async def update_namespace_policies(
        self, name: NamespaceName, mutate: Callable[[dict[str, Any]], dict[str, Any]]
    ) -> dict[str, Any]:
        """Apply ``mutate`` to the namespace's policies by compare-and-set (re-read and retry
        on a conflict, a bounded number of times); returns the stored policies."""
        key = _namespace_key(name)
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

    async def persistence_for(self, name: NamespaceName) -> tuple[int, int, int]:
        """E/Qw/Qa for a new ledger of a topic in ``name``: its policy, else the defaults."""
        return self.persistence_of(await self.get_namespace_policies(name))

    def persistence_of(self, policies: dict[str, Any]) -> tuple[int, int, int]:
        persistence = policies.get("persistence")
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

    async def set_limits(self, name: NamespaceName, limits: dict[str, int]) -> None:
        """Set the given limits (0 = unlimited) of the namespace; the others keep theirs."""
        for limit, value in limits.items():
            if limit not in LIMIT_NAMES:
                raise InvalidRequestError(f"no limit {limit}")
            if not 0 <= value <= MAX_LIMIT:
                raise InvalidRequestError(f"{limit} must be within 0..{MAX_LIMIT}, got {value}")
        await self.update_namespace_policies(
            name,
            lambda policies: {**policies, "limits": {**policies.get("limits", {}), **limits}},
        )

    def limits_of(self, policies: dict[str, Any]) -> Limits:
        """The limits in effect: the namespace's, else the broker's."""
        own = policies.get("limits", {})
        return Limits(
            **{name: int(own.get(name, getattr(self.config, name))) for name in LIMIT_NAMES}
        )

    async def limits_for(self, name: NamespaceName) -> Limits:
        return self.limits_of(await self.get_namespace_policies(name))

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

    # ---- topic-level policies -----------------------------------------------------------
    # A topic may override its namespace's lifecycle policies (``TOPIC_POLICY_KEYS``), stored
    # under /admin/topic-policies/<tenant>/<namespace>/<topic> with the namespace's keys.

    async def update_policies(
        self, name: PolicyTarget, mutate: Callable[[dict[str, Any]], dict[str, Any]]
    ) -> dict[str, Any]:
        """``update_namespace_policies`` for a namespace; for a topic, its own policies."""
        if isinstance(name, NamespaceName):
            return await self.update_namespace_policies(name, mutate)
        await self.check_namespace(name.namespace_name)
        key = topic_policies_key(name)
        for _ in range(POLICY_UPDATE_MAX_ATTEMPTS):
            record = await self.store.get(key)
            policies = mutate(json.loads(record.value) if record is not None else {})
            try:
                if policies:
                    await self.store.put(
                        key,
                        json.dumps(policies).encode(),
                        expected_version=record.version if record is not None else 0,
                    )
                elif record is not None:
                    await self.store.delete(key, expected_version=record.version)
            except BadVersionError:
                continue
            return policies
        raise ServiceUnavailableError(f"policies of {name} are changing too often; try again")

    async def get_topic_policies(self, name: TopicName) -> dict[str, Any]:
        """The topic's own policies (empty: its namespace's apply); a partition has its
        partitioned topic's, under its own."""
        found: dict[str, Any] = {}
        names = [name] if name.partition_index < 0 else [name.partitioned_name, name]
        for each in names:
            record = await self.store.get(topic_policies_key(each))
            if record is not None:
                found.update(json.loads(record.value))
        return found

    async def topic_policies_in(self, namespace: NamespaceName) -> dict[str, dict[str, Any]]:
        """Every topic's own policies in the namespace, by topic local name (one read)."""
        prefix = f"{TOPIC_POLICIES_PREFIX}{namespace.tenant}/{namespace.namespace}/"
        return {
            unquote(record.key[len(prefix) :]): json.loads(record.value)
            for record in await self.store.list(prefix)
        }

    async def delete_topic_policies(self, name: TopicName) -> None:
        await self.store.delete(topic_policies_key(name))

    async def set_deduplication(self, name: PolicyTarget, enabled: bool | None) -> None:
        """Turn deduplication on or off for the namespace's topics; None: the broker default
        (``--broker-deduplication-enabled``)."""

        def mutate(policies: dict[str, Any]) -> dict[str, Any]:
            if enabled is None:
                policies.pop("deduplication_enabled", None)
            else:
                policies["deduplication_enabled"] = enabled
            return policies

        await self.update_policies(name, mutate)

    def deduplication_of(self, policies: dict[str, Any]) -> bool:
        value = policies.get("deduplication_enabled")
        return self.config.broker_deduplication_enabled if value is None else bool(value)

    async def deduplication_for(self, name: NamespaceName) -> bool:
        return self.deduplication_of(await self.get_namespace_policies(name))

    async def set_retention(self, name: PolicyTarget, retention: Retention | None) -> None:
        """Set (None: remove) the namespace's retention policy."""
        if retention is not None:
            for kind, value in (
                ("retention_time_in_minutes", retention.time_minutes),
                ("retention_size_in_mb", retention.size_mb),
            ):
                if not -1 <= value <= MAX_RETENTION_VALUE:
                    raise InvalidRequestError(
                        f"{kind} must be -1 (no limit) or 0..{MAX_RETENTION_VALUE}, got {value}"
                    )

        def mutate(policies: dict[str, Any]) -> dict[str, Any]:
            if retention is None:
                policies.pop("retention_policies", None)
            else:
                policies["retention_policies"] = {
                    "retention_time_in_minutes": retention.time_minutes,
                    "retention_size_in_mb": retention.size_mb,
                }
            return policies

        await self.update_policies(name, mutate)

    def retention_of(self, policies: dict[str, Any]) -> Retention:
        own = policies.get("retention_policies")
        if own is None:
            return Retention(
                self.config.default_retention_time_in_minutes,
                self.config.default_retention_size_in_mb,
            )
        return Retention(int(own["retention_time_in_minutes"]), int(own["retention_size_in_mb"]))

    async def set_message_ttl(self, name: PolicyTarget, ttl_seconds: int | None) -> None:
        """Set (None: remove) the namespace's message TTL; 0 means messages never expire."""
        if ttl_seconds is not None and not 0 <= ttl_seconds <= MAX_TTL_SECONDS:
            raise InvalidRequestError(
                f"message TTL must be 0..{MAX_TTL_SECONDS} seconds, got {ttl_seconds}"
            )

        def mutate(policies: dict[str, Any]) -> dict[str, Any]:
            if ttl_seconds is None:
                policies.pop("message_ttl_in_seconds", None)
            else:
                policies["message_ttl_in_seconds"] = ttl_seconds
            return policies

        await self.update_policies(name, mutate)

    def message_ttl_of(self, policies: dict[str, Any]) -> int:
        own = policies.get("message_ttl_in_seconds")
        return self.config.ttl_duration_default_in_seconds if own is None else int(own)

    async def set_backlog_quota(self, name: PolicyTarget, quota: BacklogQuota | None) -> None:
        """Set (None: remove) the namespace's backlog quota."""
        if quota is not None:
            if quota.policy not in POLICIES:
                raise InvalidRequestError(
                    f"backlog quota policy {quoted(quota.policy)} is not one of "
                    + ", ".join(POLICIES)
                )
            for kind, value in (("limit", quota.limit_bytes), ("limit_time", quota.limit_time_s)):
                if value < -1:
                    raise InvalidRequestError(f"backlog quota {kind} must be -1 (none) or more")

        def mutate(policies: dict[str, Any]) -> dict[str, Any]:
            if quota is None:
                policies.pop("backlog_quota", None)
            else:
                policies["backlog_quota"] = {
                    "limit_size": quota.limit_bytes,
                    "limit_time": quota.limit_time_s,
                    "policy": quota.policy,
                }
            return policies

        await self.update_policies(name, mutate)

    def backlog_quota_of(self, policies: dict[str, Any]) -> BacklogQuota:
        own = policies.get("backlog_quota")
        if own is None:
            return BacklogQuota(
                self.config.backlog_quota_default_limit_bytes,
                self.config.backlog_quota_default_limit_second,
                self.config.backlog_quota_default_retention_policy,
            )
        return BacklogQuota(int(own["limit_size"]), int(own["limit_time"]), str(own["policy"]))

    async def set_rate(self, name: PolicyTarget, kind: str, limit: RateLimit | None) -> None:
        """Set (None: remove) the namespace's ``publish_rate`` or ``dispatch_rate``."""
        assert kind in RATE_KINDS
        if limit is not None:
            for field, value in (("msg_rate", limit.msg_rate), ("byte_rate", limit.byte_rate)):
                if not -1 <= value <= MAX_RATE:
                    raise InvalidRequestError(
                        f"{kind} {field} must be -1 (no limit) or 0..{MAX_RATE}, got {value}"
                    )

        def mutate(policies: dict[str, Any]) -> dict[str, Any]:
            if limit is None:
                policies.pop(kind, None)
            else:
                policies[kind] = {"msg_rate": limit.msg_rate, "byte_rate": limit.byte_rate}
            return policies

        await self.update_policies(name, mutate)

    def rate_of(self, policies: dict[str, Any], kind: str) -> RateLimit:
        own = policies.get(kind)
        return NO_LIMIT if own is None else RateLimit(int(own["msg_rate"]), int(own["byte_rate"]))

    async def set_compaction_threshold(self, name: PolicyTarget, threshold: int | None) -> None:
        """Compact automatically once this many bytes follow the horizon (0: off; None:
        remove, back to the broker's --broker-compaction-threshold-bytes)."""
        if threshold is not None and not 0 <= threshold <= MAX_RATE:
            raise InvalidRequestError(f"compaction threshold must be 0..{MAX_RATE} bytes")

        def mutate(policies: dict[str, Any]) -> dict[str, Any]:
            if threshold is None:
                policies.pop("compaction_threshold", None)
            else:
                policies["compaction_threshold"] = threshold
            return policies

        await self.update_policies(name, mutate)

    def compaction_threshold_of(self, policies: dict[str, Any]) -> int:
        own = policies.get("compaction_threshold")
        return self.config.broker_compaction_threshold_bytes if own is None else int(own)

    def offload_policy_of(self, policies: dict[str, Any]) -> OffloadPolicy:
        lag = policies.get("offload_deletion_lag_ms")
        return OffloadPolicy(
            threshold_bytes=int(policies.get("offload_threshold_bytes", -1)),
            deletion_lag_ms=int(self.config.offload_deletion_lag_ms if lag is None else lag),
        )

    async def offload_policy_for(self, name: NamespaceName) -> OffloadPolicy:
        return self.offload_policy_of(await self.get_namespace_policies(name))
