"""Bundle ownership among the brokers of a cluster: lookup, unload and split.

**Bundles.** Each namespace's 32-bit hash ring is split into bundles (default 4, set per
namespace at creation; boundaries in the namespace policies). A topic belongs to the bundle
holding ``murmur3_32(topic name)``. The bundle is the unit of ownership and of load balancing.
The range math is ``broker.bundles`` (pure).

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

**Load.** Load reports and the elected load manager that sheds load and splits bundles are
``broker.load_manager``'s; a ``BundleOwnership`` owns its ``LoadManager`` and runs it with its
session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc

from broker.bundles import (
    MAX_BUNDLE_COUNT,
    Bundle,
    bundle_key,
    bundles_of,
    parse_bundle_name,
    split_bundle_key,
    topic_hash,
    with_boundary,
)
from broker.errors import NotOwnerError, PreconditionError, ServiceUnavailableError
from broker.load_manager import (
    LEADER_KEY,
    LoadManager,
    LoadReport,
    least_loaded_broker,
    live_brokers,
    load_reports,
    owned_bundle_counts,
)
from broker.loops import OwnedLoops
from broker.metrics import BUNDLE_SPLITS, BUNDLE_UNLOADS
from broker.namespaces import Namespaces
from broker.topics import TopicRegistry
from strata.auth.credentials import TokenSource, aio_interceptors
from strata.metadata import (
    BadVersionError,
    MetadataError,
    MetadataStore,
    MetadataStoreClosedError,
)
from strata.naming import NamespaceName, TopicName
from strata.v1 import admin_pb2, admin_pb2_grpc

# Names other modules import from here, though their homes are broker.bundles and
# broker.load_manager.
__all__ = [
    "FORWARDED_HEADER",
    "LEADER_KEY",
    "BundleOwnership",
    "Forwarder",
    "OwnershipConfig",
    "bundles_of",
    "forward_to_owner",
    "parse_bundle_name",
    "with_boundary",
]

log = logging.getLogger(__name__)

# gRPC metadata marking an admin call one broker forwarded to another (never forwarded again).
FORWARDED_HEADER = "strata-forwarded"


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
    # The credentials presented to the owner (--broker-client-auth-token[-file]), over TLS
    # with these channel credentials when --broker-client-tls-enabled.
    forward_token: TokenSource | None = None
    forward_credentials: grpc.ChannelCredentials | None = None


# Forward an admin operation on a bundle to its owner: (owner address, bundle key, operation).
Forwarder = Callable[[str, str, str], Awaitable[None]]


class OwnershipSession:
    """The metadata-store session whose lease holds this broker's ephemeral keys: bundle
    ownership, the load report, the load-manager leadership.

    ``open`` opens it and starts the owned check loop: every ``check_interval_ms`` a read
    through the session; once its lease has expired (the broker was paused or cut off longer
    than the session TTL) ``on_lost`` runs — the broker gives up every bundle — and a new
    session is opened. ``current`` is None in between. ``stop`` ends the checks, ``close``
    ends the session too (the store deletes its keys).
    """

    def __init__(
        self,
        store: MetadataStore,
        check_interval_ms: int,
        on_lost: Callable[[], Awaitable[None]],
    ) -> None:
        self._store = store
        self._check_interval_ms = check_interval_ms
        self._on_lost = on_lost
        self.current: MetadataStore | None = None
        self._loops = OwnedLoops("ownership session", log)

    async def open(self) -> None:
        self.current = await self._store.open_session()
        self._loops.start(self._check_loop(), name="ownership-session")

    async def stop(self) -> None:
        await self._loops.close()

    async def close(self) -> None:
        await self.stop()
        if self.current is not None:
            with contextlib.suppress(MetadataError):
                await self.current.close()

    def live(self) -> MetadataStore:
        if self.current is None:
            raise ServiceUnavailableError("the broker's ownership session is not open")
        return self.current

    async def release(self, key: str) -> None:
        """Delete an ephemeral key of this session (best effort: its lease would end it)."""
        if self.current is not None:
            with contextlib.suppress(MetadataError):
                await self.current.delete(key)

    async def _check_loop(self) -> None:
        while True:
            await asyncio.sleep(self._check_interval_ms / 1000)
            session = self.current
            try:
                if session is not None:
                    await session.get(LEADER_KEY)
                    continue
            except MetadataStoreClosedError:
                self.current = None
                await self._on_lost()
            except MetadataError as exc:
                log.warning("ownership session check failed: %s", exc)
                continue
            try:
                self.current = await self._store.open_session()
            except MetadataError as exc:
                log.warning("cannot open a new ownership session yet: %s", exc)


class BundleOwnership:
    """This broker's bundles. Owned by ``BrokerService`` (``service.ownership``), which builds
    it when the broker is one of a cluster.

    Lifecycle: ``start`` opens the ownership session (``OwnershipSession``) and starts the
    load manager (reports, election, shedding); ``close`` stops them, unloads every bundle
    and closes the session (deleting the ownership keys). ``forward``
    (default: ``forward_to_owner`` over gRPC) carries an unload or split to a bundle's owner.
    """

    def __init__(
        self,
        namespaces: Namespaces,
        registry: TopicRegistry,
        store: MetadataStore,
        address: str,
        config: OwnershipConfig,
        forward: Forwarder | None = None,
    ) -> None:
        self._namespaces = namespaces
        self._registry = registry
        self.store = store
        self.address = address
        self.config = config
        self.forward = forward or self._forward_over_grpc
        self._session = OwnershipSession(
            store, config.session_check_interval_ms, self._on_session_lost
        )
        self.owned: dict[str, Bundle] = {}  # bundle key → bundle
        self._unloading: set[str] = set()
        self._acquire_lock = asyncio.Lock()
        self.load_manager = LoadManager(self, registry)
        self.lost_sessions = 0

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        await self._session.open()
        self.load_manager.start()

    async def close(self) -> None:
        await self.load_manager.close()
        await self._session.stop()
        for key in list(self.owned):
            with contextlib.suppress(Exception):
                await self.unload_bundle(key)
        await self._session.close()

    @property
    def session(self) -> MetadataStore | None:
        """The ownership session; None while a lost one is being replaced."""
        return self._session.current

    async def _forward_over_grpc(self, owner: str, key: str, operation: str) -> None:
        await forward_to_owner(
            owner,
            key,
            operation,
            self.config.forward_timeout_ms / 1000,
            token=self.config.forward_token,
            credentials=self.config.forward_credentials,
        )

    async def _on_session_lost(self) -> None:
        """The lease expired: another broker may own our bundles by now. Give every one of
        them up at once (their topics close, their clients look up again)."""
        self.lost_sessions += 1
        self.load_manager.on_session_lost()
        lost = list(self.owned)
        log.error("ownership session lost; giving up %d bundles", len(lost))
        self.owned.clear()
        await self._registry.close_topics(lambda name: True)

    # ---- bundles ---------------------------------------------------------------------------

    async def bundles(self, namespace: NamespaceName) -> list[Bundle]:
        policies = await self._namespaces.get_namespace_policies(namespace)
        return bundles_of(namespace, policies)

    async def bundle_for(self, name: TopicName) -> Bundle:
        for bundle in await self.bundles(name.namespace_name):
            if bundle.contains(name):
                return bundle
        raise AssertionError(f"no bundle of {name.namespace_name} holds {name}")

    async def owner_of(self, bundle: Bundle) -> str | None:
        record = await self.store.get(bundle.key)
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
            session = self._session.live()
            try:
                await session.put(
                    bundle.key, self.address.encode(), expected_version=0, ephemeral=True
                )
            except BadVersionError:
                record = await self.store.get(bundle.key)
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
                    await self.store.delete(bundle.key, expected_version=record.version)
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

    # ---- the cluster's view (for the admin edge) ---------------------------------------------

    async def live_brokers(self) -> list[str]:
        return await live_brokers(self.store)

    async def owned_bundle_counts(self) -> dict[str, int]:
        return await owned_bundle_counts(self.store)

    async def load_reports(self) -> dict[str, LoadReport]:
        return await load_reports(self.store)

    async def least_loaded_broker(self) -> str:
        return await least_loaded_broker(self.store, self.address)

    # ---- unload and split --------------------------------------------------------------------

    async def unload_bundle(self, key: str) -> None:
        """Stop serving a bundle: close its topics (clients look up again), release its key."""
        bundle = self.owned.get(key)
        if bundle is None:
            return
        self._unloading.add(key)
        try:
            await self._registry.close_topics(bundle.contains)
            self.owned.pop(key, None)
            await self._session.release(key)
            BUNDLE_UNLOADS.inc()
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
                await self.unload_bundle(bundle_key(namespace, bundle_name))
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
                await self.forward(owner, bundle.key, "unload")

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
            await self.forward(owner, bundle.key, "split")
            return await self.bundles(namespace)
        mine = bundle.key in self.owned
        if mine:
            self._unloading.add(bundle.key)
        try:
            if mine:
                await self._registry.close_topics(bundle.contains)
            await self._namespaces.update_namespace_policies(
                namespace, lambda policies: with_boundary(policies, middle)
            )
            if mine:
                self.owned.pop(bundle.key, None)
                await self._session.release(bundle.key)
            else:
                # Nobody owned it when we looked; if a broker took it since, it must let go.
                late_owner = await self.owner_of(bundle)
                if late_owner is not None and late_owner != self.address:
                    await self.forward(late_owner, bundle.key, "unload")
        finally:
            self._unloading.discard(bundle.key)
        BUNDLE_SPLITS.inc()
        log.info("split bundle %s at 0x%08x", bundle, middle)
        return [Bundle(namespace, bundle.lower, middle), Bundle(namespace, middle, bundle.upper)]


async def forward_to_owner(
    owner: str,
    key: str,
    operation: str,
    timeout_s: float,
    token: TokenSource | None = None,
    credentials: grpc.ChannelCredentials | None = None,
) -> None:
    """Ask the broker at ``owner`` to ``"unload"`` or ``"split"`` a bundle it owns."""
    namespace, name = split_bundle_key(key)
    metadata = ((FORWARDED_HEADER, "1"),)
    interceptors = aio_interceptors(token)
    opened = (
        grpc.aio.insecure_channel(owner, interceptors=interceptors)
        if credentials is None
        else grpc.aio.secure_channel(owner, credentials, interceptors=interceptors)
    )
    async with opened as channel:
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
