"""Housekeeping: the broker's periodic pass over its loaded topics.

Every ``housekeeping_interval_ms`` one pass, topic by topic: apply namespace policies that
changed (deduplication on or off; inactive producers forgotten), unload topics idle (no producers,
consumers, traffic or running offload) for ``topic_idle_unload_seconds``, roll a ledger over
by age, trim ledgers no cursor needs any more, and give the offload scheduler its turn
(automatic offload, deletions whose lag has passed, retries).

A failing step is logged and the pass goes on with the next topic; a pass that fails as a
whole is logged with its traceback and the next pass runs at the next interval. The loop is
owned (``broker.loops``): if it ever dies, that is logged at once, and ``close`` cancels and
awaits it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from broker.loops import OwnedLoops
from broker.namespaces import effective_policies
from broker.subscription_admin import expire_by_ttl
from broker.topic import Topic
from broker.topics import TopicRegistry
from strata.logging_setup import log_fields
from strata.naming import NamespaceName, TopicName

log = logging.getLogger(__name__)


class Housekeeping:
    """Owned by ``BrokerService``: ``start`` runs the loop, ``close`` stops it."""

    def __init__(
        self,
        registry: TopicRegistry,
        interval_ms: int,
        idle_unload_seconds: float,
        ttl_check_interval_s: float = 300.0,
    ) -> None:
        self._registry = registry
        self._interval_ms = interval_ms
        self._idle_unload_seconds = idle_unload_seconds
        self._ttl_check_interval_s = ttl_check_interval_s
        self._next_ttl_check = 0.0  # the first pass checks
        self._loops = OwnedLoops("housekeeping", log)
        self.passes_failed = 0

    def start(self) -> None:
        self._loops.start(self._loop(), name="housekeeping")

    async def close(self) -> None:
        await self._loops.close()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval_ms / 1000)
            try:
                await self.run_once()
            except Exception:
                self.passes_failed += 1
                log.exception("housekeeping pass failed; the next runs in %d ms", self._interval_ms)

    async def run_once(self) -> None:
        idle = self._idle_topics()
        if idle:
            await self._registry.close_topics(lambda name: name in idle)
        # One read of the namespace's policies and one of its topics' own, per namespace.
        policies: dict[NamespaceName, dict[str, Any]] = {}
        topic_policies: dict[NamespaceName, dict[str, dict[str, Any]]] = {}
        check_ttl = time.monotonic() >= self._next_ttl_check
        if check_ttl:
            self._next_ttl_check = time.monotonic() + self._ttl_check_interval_s
        for topic in list(self._registry.topics.values()):
            try:
                await self._apply_policies(topic, policies, topic_policies)
                if check_ttl and topic.message_ttl_seconds > 0:
                    await expire_by_ttl(topic)
                await topic.compaction.maybe_start(topic.compaction_threshold_bytes)
            except Exception as exc:
                log.warning(
                    "applying the policies of %s failed: %s",
                    topic.name,
                    exc,
                    extra=log_fields(topic=topic.name),
                )
            topic.ledger.maybe_rollover_by_time()
            try:
                await topic.trim()
            except Exception as exc:
                log.warning(
                    "trimming %s failed: %s", topic.name, exc, extra=log_fields(topic=topic.name)
                )
            if topic.ledger.offload is not None:
                topic.ledger.offload.on_housekeeping()

    async def _apply_policies(
        self,
        topic: Topic,
        policies: dict[NamespaceName, dict[str, Any]],
        topic_policies: dict[NamespaceName, dict[str, dict[str, Any]]],
    ) -> None:
        """Policy changes reach loaded topics here, within one interval, without a reload."""
        namespace = topic.name.namespace_name
        if namespace not in policies:
            namespaces = self._registry.namespaces
            policies[namespace] = await namespaces.get_namespace_policies(namespace)
            topic_policies[namespace] = await namespaces.topic_policies_in(namespace)
        if topic.closing.is_set():
            return
        in_namespace = topic_policies[namespace]
        own = {
            **in_namespace.get(topic.name.partitioned_name.local_name, {}),
            **in_namespace.get(topic.name.local_name, {}),
        }
        await self._registry.apply_policies(topic, effective_policies(policies[namespace], own))
        topic.deduplication.expire_inactive(topic.connected_producers)

    def _idle_topics(self) -> set[TopicName]:
        """Topics without producers, consumers or traffic for ``topic_idle_unload_seconds``."""
        now = time.monotonic()
        idle = set()
        for topic in self._registry.topics.values():
            busy = (
                topic.connected_producers
                or any(s.consumers for s in topic.subscriptions.values())
                or (topic.ledger.offload is not None and topic.ledger.offload.running)
            )
            if busy:
                topic.idle_since = None
            elif topic.idle_since is None:
                topic.idle_since = now
            elif now - topic.idle_since >= self._idle_unload_seconds:
                idle.add(topic.name)
        return idle

    @property
    def dead(self) -> bool:
        """True when the loop ended before ``close`` (it was logged when it did)."""
        return bool(self._loops.dead)
