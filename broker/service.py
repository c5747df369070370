"""The broker's core, composed of its collaborators; the gRPC edges
(``broker.messaging_service``, ``broker.admin_service``) call this class.

- ``broker.namespaces.Namespaces`` — tenants, namespaces and their policies in the store;
- ``broker.topics.TopicRegistry`` — the loaded topics (load once, unload, delete) and the
  topics' records in the store;
- ``broker.housekeeping.Housekeeping`` — the owned periodic pass over the loaded topics;
- ``broker.ownership.BundleOwnership`` — on a cluster broker only: which topics this broker
  may serve, lookups, unload and split, and (``broker.load_manager``) load balancing.

This class holds what crosses them: a topic is served only once ownership allows it, deleting
a namespace deletes its topics, and a cluster broker serves no topic before it has joined
bundle ownership. Metadata layout in the store::

    /admin/tenants/<tenant>                                tenant policies (JSON)
    /admin/namespaces/<tenant>/<namespace>                 namespace policies (JSON)
    /admin/partitioned-topics/<tenant>/<namespace>/<t>     a partitioned topic's partitions
    /managed-ledgers/<tenant>/<namespace>/persistent/<t>   a topic's ledger list
    /cursors/<tenant>/<namespace>/<t>/<subscription>       a subscription's cursor
    /ledgers/<id>                                          ledger metadata
    /namespace/<tenant>/<namespace>/<bundle>               a bundle's owner (ephemeral)

Architecture invariant: the broker keeps no state that the metadata store and the bookies
cannot rebuild; a restarted broker reloads topics lazily on first use.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bookie.ledger import LedgerManager, NotEnoughBookiesError
from broker.authorization import Authorizer
from broker.config import BrokerConfig
from broker.errors import (
    AlreadyExistsError,
    InvalidRequestError,
    NotFoundError,
    NotOwnerError,
    PreconditionError,
    ServiceUnavailableError,
)
from broker.housekeeping import Housekeeping
from broker.namespaces import Namespaces, initialize_cluster
from broker.offload import ManagedLedgerOffloader, OffloadPolicy, OffloadStatus
from broker.ownership import BundleOwnership, Forwarder, OwnershipConfig
from broker.topic import Topic
from broker.topics import TopicRegistry
from strata.metadata import MetadataStore
from strata.naming import NamespaceName, TopicName
from tiered import Offloader


class BrokerService:
    """One broker. Built by the process role with everything it needs; lifecycle: ``start``
    (housekeeping), ``join_cluster`` (a cluster broker, once its gRPC server serves),
    ``leave_cluster`` then ``close``.

    ``advertised_address`` is the host:port clients dial (the role binds the gRPC port
    first). ``ownership`` (an ``OwnershipConfig``) makes this broker one of a cluster: it
    serves only the topics of the bundles it owns; without it, it serves every topic (a
    standalone). ``forward`` replaces the gRPC call that carries an unload or split to a
    bundle's owner (tests).
    """

    def __init__(
        self,
        config: BrokerConfig,
        store: MetadataStore,
        ledgers: LedgerManager,
        *,
        offloader: Offloader | None = None,
        advertised_address: str = "",
        ownership: OwnershipConfig | None = None,
        forward: Forwarder | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.ledgers = ledgers
        self.advertised_address = advertised_address
        self.namespaces = Namespaces(store, config)
        self.authorizer = Authorizer(
            self.namespaces, config.auth.authorization_enabled, config.auth.superusers
        )
        self.registry = TopicRegistry(config, store, ledgers, self.namespaces, offloader=offloader)
        self.housekeeping = Housekeeping(
            self.registry,
            config.housekeeping_interval_ms,
            config.topic_idle_unload_seconds,
            config.message_expiry_check_interval_seconds,
        )
        self.ownership: BundleOwnership | None = None
        if ownership is not None:
            assert advertised_address, "a cluster broker needs its advertised address"
            self.ownership = BundleOwnership(
                self.namespaces, self.registry, store, advertised_address, ownership, forward
            )
        # A standalone serves from the start; a cluster broker once it has joined ownership.
        self._joined = self.ownership is None

    @property
    def topics(self) -> dict[str, Topic]:
        """The loaded topics, by canonical name."""
        return self.registry.topics

    # ---- lifecycle -----------------------------------------------------------------------------

    async def initialize_defaults(self) -> None:
        await initialize_cluster(self.store)

    async def start(self) -> None:
        self.housekeeping.start()

    async def join_cluster(self) -> None:
        """Join bundle ownership (open the ownership session, start the load reports and the
        load-manager election); from then on topics and lookups are served.

        A cluster broker serves gRPC before it joins: its address must answer before the
        broker registers as a lookup candidate. Until this returns it answers UNAVAILABLE
        (clients retry) rather than serve a topic whose bundle it does not own.
        """
        if self.ownership is not None:
            await self.ownership.start()
        self._joined = True

    async def leave_cluster(self) -> None:
        """Give up every bundle (their clients move to other brokers) and stop serving topics:
        first refuse new ones, so that no client takes a bundle back while they unload."""
        if self.ownership is not None:
            self._joined = False
            await self.ownership.close()

    async def close(self) -> None:
        await self.housekeeping.close()
        await self.registry.close()

    def _check_joined(self) -> None:
        if not self._joined:
            raise ServiceUnavailableError(
                "the broker is not in bundle ownership (starting or stopping); try again"
            )

    # ---- tenants and namespaces (the work is Namespaces') ------------------------------------

    async def create_tenant(
        self, tenant: str, admin_roles: list[str], allowed_clusters: list[str]
    ) -> None:
        await self.namespaces.create_tenant(tenant, admin_roles, allowed_clusters)

    async def get_tenant(self, tenant: str) -> dict[str, list[str]]:
        return await self.namespaces.get_tenant(tenant)

    async def update_tenant(
        self, tenant: str, admin_roles: list[str], allowed_clusters: list[str]
    ) -> None:
        await self.namespaces.update_tenant(tenant, admin_roles, allowed_clusters)

    async def list_tenants(self) -> list[str]:
        return await self.namespaces.list_tenants()

    async def delete_tenant(self, tenant: str, force: bool) -> None:
        await self.get_tenant(tenant)
        namespaces = await self.list_namespaces(tenant)
        if namespaces and not force:
            raise PreconditionError(
                f"tenant {tenant!r} still has namespaces {namespaces}; delete them or use force"
            )
        for namespace in namespaces:
            await self.delete_namespace(NamespaceName(tenant, namespace), force=True)
        await self.namespaces.remove_tenant(tenant)

    async def create_namespace(self, name: NamespaceName, bundles: int = 0) -> None:
        await self.namespaces.create_namespace(name, bundles)

    async def check_namespace(self, name: NamespaceName) -> None:
        await self.namespaces.check_namespace(name)

    async def list_namespaces(self, tenant: str) -> list[str]:
        return await self.namespaces.list_namespaces(tenant)

    async def delete_namespace(self, name: NamespaceName, force: bool) -> None:
        await self.check_namespace(name)
        topics = await self.list_topics(name)
        if topics and not force:
            raise PreconditionError(
                f"namespace {name} still has {len(topics)} topics; delete them or use force"
            )
        for topic in topics:
            await self.delete_topic(TopicName.parse(topic), force=True)
        await self.namespaces.remove_namespace(name)

    async def get_namespace_policies(self, name: NamespaceName) -> dict[str, Any]:
        return await self.namespaces.get_namespace_policies(name)

    async def update_namespace_policies(
        self, name: NamespaceName, mutate: Callable[[dict[str, Any]], dict[str, Any]]
    ) -> dict[str, Any]:
        return await self.namespaces.update_namespace_policies(name, mutate)

    async def set_persistence(
        self, name: NamespaceName, ensemble_size: int, write_quorum: int, ack_quorum: int
    ) -> None:
        await self.namespaces.set_persistence(name, ensemble_size, write_quorum, ack_quorum)

    async def persistence_for(self, name: NamespaceName) -> tuple[int, int, int]:
        return await self.namespaces.persistence_for(name)

    async def set_offload_threshold(self, name: NamespaceName, threshold_bytes: int) -> None:
        await self.namespaces.set_offload_threshold(name, threshold_bytes)

    async def set_offload_deletion_lag(self, name: NamespaceName, lag_ms: int | None) -> None:
        await self.namespaces.set_offload_deletion_lag(name, lag_ms)

    def offload_policy_of(self, policies: dict[str, Any]) -> OffloadPolicy:
        return self.namespaces.offload_policy_of(policies)

    async def offload_policy_for(self, name: NamespaceName) -> OffloadPolicy:
        return await self.namespaces.offload_policy_for(name)

    # ---- topics ----------------------------------------------------------------------------------

    async def lookup(self, name: TopicName, authoritative: bool) -> tuple[bool, str, bool]:
        """Which broker serves ``name``: (redirect?, broker address, authoritative)."""
        self._check_joined()
        await self.check_namespace(name.namespace_name)
        if self.ownership is None:
            return False, self.advertised_address, False
        return await self.ownership.lookup(name, authoritative)

    async def get_topic(self, name: TopicName) -> Topic:
        """The loaded topic, loading it (and creating it, as auto-creation) on first use,
        once this broker owns the topic's bundle (taking it if nobody does)."""
        self._check_joined()
        ownership = self.ownership
        if ownership is not None and not ownership.owns_loaded(name):
            await ownership.ensure_owned(name)
        return await self.registry.get_topic(name)

    async def list_topics(self, name: NamespaceName) -> list[str]:
        return await self.registry.list_topics(name)

    async def topic_exists(self, name: TopicName) -> bool:
        return await self.registry.topic_exists(name)

    async def create_topic(self, name: TopicName) -> Topic:
        await self.check_namespace(name.namespace_name)
        if await self.topic_exists(name):
            raise AlreadyExistsError(f"topic {name} already exists")
        return await self.get_topic(name)

    async def create_partitioned_topic(self, name: TopicName, partitions: int) -> None:
        await self.registry.create_partitioned_topic(name, partitions)

    async def partitions_of(self, name: TopicName) -> int:
        return await self.registry.partitions_of(name)

    async def delete_topic(self, name: TopicName, force: bool) -> None:
        if not await self.topic_exists(name):
            raise NotFoundError(f"topic {name} does not exist")
        try:
            topic = await self.get_topic(name)
        except NotEnoughBookiesError:
            # Loading opens a new ledger, which the namespace's ensemble does not allow now;
            # a topic that cannot load has no producer or consumer, and deleting it needs
            # only the metadata and the bookies that hold its ledgers.
            await self.registry.delete_unloaded_topic(name)
            return
        await self.registry.delete_topic(topic, force)

    async def offload_topic(self, name: TopicName, threshold_bytes: int) -> OffloadStatus:
        """Start offloading the topic's closed ledgers past ``threshold_bytes`` (0: all)."""
        if threshold_bytes < 0:
            raise InvalidRequestError("size threshold must not be negative")
        offload = await self._topic_offload(name)
        return offload.request_offload(threshold_bytes)

    async def offload_status(self, name: TopicName) -> OffloadStatus:
        return (await self._topic_offload(name)).status()

    async def _topic_offload(self, name: TopicName) -> ManagedLedgerOffloader:
        if self.registry.offloader is None:
            raise PreconditionError(
                "offloading is not configured on this broker (start it with --offload-driver)"
            )
        if not await self.topic_exists(name):
            raise NotFoundError(f"topic {name} does not exist")
        offload = (await self.get_topic(name)).ledger.offload
        assert offload is not None
        return offload

    # ---- unloading -------------------------------------------------------------------------------

    async def close_topics(self, predicate: Callable[[TopicName], bool]) -> int:
        """Close and forget every loaded topic whose name matches (an unload: the next use
        loads it again, here or on the bundle's new owner); returns how many."""
        return await self.registry.close_topics(predicate)

    async def unload_topic(self, name: TopicName) -> bool:
        """Close ``name`` where it is loaded; True if it was loaded here."""
        ownership = self.ownership
        if ownership is not None and not ownership.owns_loaded(name):
            owner = await ownership.owner_of(await ownership.bundle_for(name))
            if owner is not None and owner != ownership.address:
                raise NotOwnerError(f"topic {name} is served by broker {owner}", owner)
        return await self.close_topics(lambda candidate: candidate == name) > 0

    async def run_housekeeping_once(self) -> None:
        await self.housekeeping.run_once()
