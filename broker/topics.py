"""The registry of the topics loaded on this broker, and the topics' records in the store.

Layout::

    /managed-ledgers/<tenant>/<namespace>/persistent/<t>   a topic's ledger list
    /admin/partitioned-topics/<tenant>/<namespace>/<t>     a partitioned topic's partition count

A topic is loaded on first use (``get``, at most one load per topic at a time), and created
by that load when its ledger list does not exist yet (auto-creation). It is unloaded — closed
and forgotten, to be loaded again on next use, here or on another broker — by an unload of its
bundle, by housekeeping when idle, or at once when another broker took it over (its ledger
list changed under us: ``ManagedLedger.on_fenced``). Whether this broker may serve a topic at
all is ``BrokerService``'s question (bundle ownership), asked before ``get``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any

from bookie.ledger import LedgerManager
from broker import backlog_quota
from broker.config import BrokerConfig
from broker.deduplication import DeduplicationConfig
from broker.errors import AlreadyExistsError, InvalidRequestError, NotFoundError, PreconditionError
from broker.limits import check_topic_room
from broker.managed_ledger import (
    MANAGED_LEDGERS_PREFIX,
    EntryCache,
    ManagedLedger,
    ManagedLedgerConfig,
    ManagedLedgerListener,
)
from broker.namespaces import Namespaces, effective_policies
from broker.offload import ManagedLedgerOffloader
from broker.topic import Topic
from strata.logging_setup import log_fields
from strata.metadata import BadVersionError, MetadataStore
from strata.naming import NamespaceName, TopicName
from tiered import Offloader

log = logging.getLogger(__name__)

PARTITIONED_TOPICS_PREFIX = "/admin/partitioned-topics/"
MAX_PARTITIONS = 10_000
TOPIC_DOMAIN = "persistent"


def _ml_name(topic: TopicName) -> str:
    return f"{topic.tenant}/{topic.namespace}/{TOPIC_DOMAIN}/{topic.local_name}"


def _partitioned_key(name: TopicName) -> str:
    return f"{PARTITIONED_TOPICS_PREFIX}{name.tenant}/{name.namespace}/{name.local_name}"


class TopicRegistry:
    """The loaded topics (``topics``: canonical name → topic). Owned by ``BrokerService``;
    ``close`` waits for pending unloads and closes every topic."""

    def __init__(
        self,
        config: BrokerConfig,
        store: MetadataStore,
        ledgers: LedgerManager,
        namespaces: Namespaces,
        *,
        offloader: Offloader | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.ledgers = ledgers
        self.namespaces = namespaces
        # Tiered storage (owned and closed by the process role); None: offloading is off.
        self.offloader = offloader
        self.cache = EntryCache(config.managed_ledger_cache_size_bytes)
        self._deduplication = DeduplicationConfig(
            entries_interval=config.broker_deduplication_entries_interval,
            max_producers=config.broker_deduplication_max_number_of_producers,
            inactivity_timeout_s=config.broker_deduplication_producer_inactivity_timeout_minutes
            * 60.0,
        )
        self.topics: dict[str, Topic] = {}
        self._loading: dict[str, asyncio.Task[Topic]] = {}
        # Topics unloaded and still closing: loading one again waits until its old instance
        # has closed, so the old ledger's last list write cannot fence the new one.
        self._closing: dict[str, asyncio.Event] = {}
        # Unloads of topics another owner fenced; awaited by close.
        self._unloads: set[asyncio.Task[None]] = set()
        self.ml_config = ManagedLedgerConfig(
            max_entries_per_ledger=config.managed_ledger_max_entries_per_ledger,
            max_size_per_ledger_bytes=config.managed_ledger_max_size_per_ledger_bytes,
            max_ledger_rollover_time_ms=config.managed_ledger_max_ledger_rollover_time_ms,
            ensemble_size=config.managed_ledger_default_ensemble_size,
            write_quorum=config.managed_ledger_default_write_quorum,
            ack_quorum=config.managed_ledger_default_ack_quorum,
        )

    # ---- topics in the store -----------------------------------------------------------------

    async def list_topics(self, name: NamespaceName) -> list[str]:
        await self.namespaces.check_namespace(name)
        prefix = f"{MANAGED_LEDGERS_PREFIX}{name.tenant}/{name.namespace}/{TOPIC_DOMAIN}/"
        return [
            str(TopicName(name.tenant, name.namespace, key[len(prefix) :]))
            for key in await self.store.list_keys(prefix)
        ]

    async def topic_exists(self, name: TopicName) -> bool:
        if str(name) in self.topics:
            return True
        return await self.store.get(MANAGED_LEDGERS_PREFIX + _ml_name(name)) is not None

    async def create_partitioned_topic(self, name: TopicName, partitions: int) -> None:
        """Record ``name`` as a topic of ``partitions`` partitions; the partitions themselves
        are ordinary topics, created on first use."""
        if name.partition_index >= 0:
            raise InvalidRequestError(f"{name} is a partition name; give the topic's base name")
        if not 1 <= partitions <= MAX_PARTITIONS:
            raise InvalidRequestError(f"partitions must be within 1..{MAX_PARTITIONS}")
        await self.namespaces.check_namespace(name.namespace_name)
        if await self.topic_exists(name):
            raise AlreadyExistsError(f"topic {name} already exists as a non-partitioned topic")
        body = json.dumps({"partitions": partitions}).encode()
        try:
            await self.store.put(_partitioned_key(name), body, expected_version=0)
        except BadVersionError as exc:
            raise AlreadyExistsError(f"partitioned topic {name} already exists") from exc

    async def partitions_of(self, name: TopicName) -> int:
        """The partition count of ``name``; 0 when it is not a partitioned topic."""
        record = await self.store.get(_partitioned_key(name))
        if record is None:
            return 0
        return int(json.loads(record.value)["partitions"])

    # ---- loading -----------------------------------------------------------------------------

    async def get_topic(self, name: TopicName) -> Topic:
        """The loaded topic, loading it (and creating it, as auto-creation) on first use.
        The caller has made sure this broker may serve it."""
        key = str(name)
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
        closing = self._closing.get(str(name))
        if closing is not None:
            await closing.wait()
        await self.namespaces.check_namespace(name.namespace_name)
        if await self.partitions_of(name):
            raise PreconditionError(
                f"{name} is a partitioned topic: use its partitions ({name}-partition-N); "
                "the SDK does this by itself"
            )
        if not await self.topic_exists(name):  # auto-creation: within the namespace's limit
            limits = await self.namespaces.limits_for(name.namespace_name)
            if limits.max_topics_per_namespace:
                existing = await self.list_topics(name.namespace_name)
                check_topic_room(str(name.namespace_name), len(existing), limits)
        if name.partition_index >= 0:
            # A partition exists only as part of its partitioned topic, within its count.
            partitions = await self.partitions_of(name.partitioned_name)
            if name.partition_index >= partitions:
                raise NotFoundError(
                    f"{name} is not a partition: {name.partitioned_name} has "
                    f"{partitions} partitions"
                    if partitions
                    else f"{name} is not a partition: {name.partitioned_name} is not partitioned"
                )
        topic = Topic(
            name,
            lambda listener: self._managed_ledger(name, listener),
            self.store,
            self.config.cursor_persist_interval_ms,
            self.config.cursor_max_persisted_ranges,
            on_fenced=self._unload_fenced,
            deduplication=self._deduplication,
        )
        await topic.ledger.open()
        try:
            # Before any producer: the persisted sequence ids of the log (snapshot + replay).
            await self.apply_policies(
                topic,
                effective_policies(
                    await self.namespaces.get_namespace_policies(name.namespace_name),
                    await self.namespaces.get_topic_policies(name),
                ),
            )
        except BaseException:
            await topic.ledger.close()
            raise
        await topic.load_subscriptions()
        self.topics[str(name)] = topic
        log.info(
            "loaded topic %s (%d ledgers)",
            name,
            len(topic.ledger.ledgers),
            extra=log_fields(topic=name),
        )
        return topic

    async def apply_policies(self, topic: Topic, policies: dict[str, Any]) -> None:
        """Apply the policies in effect (the namespace's, overridden by the topic's own) to a
        loaded topic, at load and at each housekeeping pass: deduplication, retention, message
        TTL, backlog quota, rate limits."""
        topic.retention = self.namespaces.retention_of(policies)
        topic.compaction_threshold_bytes = self.namespaces.compaction_threshold_of(policies)
        topic.compaction.persistence = self.namespaces.persistence_of(policies)
        topic.message_ttl_seconds = self.namespaces.message_ttl_of(policies)
        await topic.deduplication.set_enabled(self.namespaces.deduplication_of(policies))
        await backlog_quota.check(topic, self.namespaces.backlog_quota_of(policies))
        topic.set_rate_limits(
            self.namespaces.rate_of(policies, "publish_rate"),
            self.namespaces.rate_of(policies, "dispatch_rate"),
        )

    def _managed_ledger(self, name: TopicName, listener: ManagedLedgerListener) -> ManagedLedger:
        """A topic's managed ledger (not yet open), with its offload scheduler if any."""
        namespace = name.namespace_name
        offloader = self.offloader

        def offload(ledger: ManagedLedger) -> ManagedLedgerOffloader:
            assert offloader is not None
            return ManagedLedgerOffloader(
                ledger,
                name,
                offloader,
                lambda: self.namespaces.offload_policy_for(namespace),
                retry_initial_backoff_ms=self.config.housekeeping_interval_ms,
            )

        return ManagedLedger(
            _ml_name(name),
            self.ledgers,
            self.ml_config,
            self.cache,
            listener=listener,
            quorums=lambda: self.namespaces.persistence_for(namespace),
            offloader=offloader,
            offload=offload if offloader is not None else None,
        )

    # ---- unloading ---------------------------------------------------------------------------

    async def delete_topic(self, topic: Topic, force: bool) -> None:
        """Delete a loaded topic: its ledgers, cursors and ledger list."""
        busy = topic.connected_producers or any(s.consumers for s in topic.subscriptions.values())
        if busy and not force:
            raise PreconditionError(
                f"topic {topic.name} has connected producers or consumers; use force"
            )
        self.topics.pop(str(topic.name), None)
        topic.connected_producers.clear()
        await topic.delete()

    async def delete_unloaded_topic(self, name: TopicName) -> None:
        """Delete a topic that is not loaded, without loading it (no new ledger): its
        cursors, its ledgers (a bookie that cannot delete one is logged, as for any
        delete) and its ledger list. The caller owns the topic's bundle."""
        topic = Topic(
            name,
            lambda listener: self._managed_ledger(name, listener),
            self.store,
            self.config.cursor_persist_interval_ms,
            self.config.cursor_max_persisted_ranges,
            on_fenced=self._unload_fenced,
        )
        await topic.ledger.ledger_list.load()
        await topic.delete()
        log.info("deleted topic %s without loading it", name, extra=log_fields(topic=name))

    async def close_topics(self, predicate: Callable[[TopicName], bool]) -> int:
        """Close and forget every loaded topic whose name matches (an unload: the next use
        loads it again, here or on the bundle's new owner); returns how many."""
        chosen = [t for t in self.topics.values() if predicate(t.name)]
        closed = {str(topic.name): asyncio.Event() for topic in chosen}
        for key, event in closed.items():
            self.topics.pop(key, None)
            self._closing[key] = event
        for topic in chosen:
            key = str(topic.name)
            try:
                await topic.close()
            except Exception as exc:
                log.warning(
                    "closing %s failed: %s", topic.name, exc, extra=log_fields(topic=topic.name)
                )
            finally:
                if self._closing.get(key) is closed[key]:
                    del self._closing[key]
                closed[key].set()
        return len(chosen)

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
        for topic in list(self.topics.values()):
            try:
                await topic.close()
            except Exception as exc:
                log.warning(
                    "closing %s failed: %s", topic.name, exc, extra=log_fields(topic=topic.name)
                )
        self.topics.clear()
