"""The gRPC edge of administration: ``strata.v1.AdminService``.

Thin: names are parsed and validated here, the work is ``BrokerService``'s, and errors map to
statuses through ``broker.errors.to_status``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

from broker import admin_cluster, authorization, subscription_admin
from broker.audit import audit_mutations
from broker.authorization import authorize_calls
from broker.backlog_quota import BacklogQuota, backlog_size_bytes
from broker.compaction import TopicCompaction
from broker.edge import edge
from broker.errors import InvalidRequestError, NotFoundError, PreconditionError
from broker.managed_ledger import Retention
from broker.namespaces import effective_policies
from broker.offload import OffloadStatus
from broker.ownership import (
    FORWARDED_HEADER,
    bundles_of,
    parse_bundle_name,
    with_boundary,
)
from broker.rate_limit import RateLimit
from broker.service import BrokerService
from broker.stream_requests import check_subscription_name
from broker.topic import Topic
from broker.topic_internal_stats import topic_internal_stats
from broker.topic_stats import TopicStats, topic_stats
from strata.naming import NamespaceName, TopicName, check_name_part, parse_tenant, quoted
from strata.v1 import admin_pb2, admin_pb2_grpc

log = logging.getLogger(__name__)

MAX_PAGE_SIZE = 1000


def _page(items: list[str], page_size: int, page_token: str) -> tuple[list[str], str]:
    """Keyset pagination over sorted names: the token is the last name of the previous page."""
    if page_size < 0:
        raise InvalidRequestError("page_size must not be negative")
    size = min(page_size or MAX_PAGE_SIZE, MAX_PAGE_SIZE)
    ordered = sorted(items)
    if page_token:
        ordered = [i for i in ordered if i > page_token]
    page = ordered[:size]
    next_token = page[-1] if len(ordered) > size else ""
    return page, next_token


# A tenant's admin roles and allowed clusters: bounded so that a tenant record stays small.
MAX_TENANT_LIST_ENTRIES = 1000
MAX_ROLE_LENGTH = 255


def check_tenant_lists(admin_roles: Sequence[str], allowed_clusters: Sequence[str]) -> None:
    for kind, values in (("admin_roles", admin_roles), ("allowed_clusters", allowed_clusters)):
        if len(values) > MAX_TENANT_LIST_ENTRIES:
            raise InvalidRequestError(
                f"{kind} holds {len(values)} entries; at most {MAX_TENANT_LIST_ENTRIES}"
            )
        for value in values:
            if not value or len(value) > MAX_ROLE_LENGTH or not value.isprintable():
                raise InvalidRequestError(
                    f"{kind} entry {quoted(value)} must be printable and 1 to "
                    f"{MAX_ROLE_LENGTH} characters"
                )


def _offload_status(name: TopicName, status: OffloadStatus) -> admin_pb2.OffloadStatus:
    return admin_pb2.OffloadStatus(
        name=str(name),
        status=admin_pb2.OffloadRunStatus.Value(f"OFFLOAD_RUN_STATUS_{status.status}"),
        error=status.error,
        trigger=status.trigger,
        started_ms=status.started_ms,
        finished_ms=status.finished_ms,
        run_ledgers_offloaded=status.run_ledgers_offloaded,
        run_bytes_offloaded=status.run_bytes_offloaded,
        offloaded_ledgers=status.offloaded_ledgers,
        bookie_deleted_ledgers=status.bookie_deleted_ledgers,
        offloaded_bytes=status.offloaded_bytes,
        bookie_resident_bytes=status.bookie_resident_bytes,
        closed_ledgers=status.closed_ledgers,
    )


@audit_mutations
@authorize_calls("AdminService")
class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    def __init__(self, broker: BrokerService) -> None:
        self._broker = broker
        self.authorizer = broker.authorizer

    @edge
    async def CreateTenant(self, request: Any, context: Any) -> admin_pb2.Tenant:
        tenant_id = request.tenant_id or parse_tenant(request.tenant.name or "")
        check_name_part("tenant", tenant_id)
        check_tenant_lists(request.tenant.admin_roles, request.tenant.allowed_clusters)
        await self._broker.create_tenant(
            tenant_id, list(request.tenant.admin_roles), list(request.tenant.allowed_clusters)
        )
        return admin_pb2.Tenant(
            name=f"tenants/{tenant_id}",
            admin_roles=request.tenant.admin_roles,
            allowed_clusters=request.tenant.allowed_clusters,
        )

    @edge
    async def GetTenant(self, request: Any, context: Any) -> admin_pb2.Tenant:
        tenant = parse_tenant(request.name)
        body = await self._broker.get_tenant(tenant)
        return admin_pb2.Tenant(
            name=f"tenants/{tenant}",
            admin_roles=body.get("admin_roles", []),
            allowed_clusters=body.get("allowed_clusters", []),
        )

    @edge
    async def ListTenants(self, request: Any, context: Any) -> admin_pb2.ListTenantsResponse:
        page, token = _page(
            await self._broker.list_tenants(), request.page_size, request.page_token
        )
        return admin_pb2.ListTenantsResponse(
            tenants=[admin_pb2.Tenant(name=f"tenants/{t}") for t in page], next_page_token=token
        )

    @edge
    async def DeleteTenant(self, request: Any, context: Any) -> admin_pb2.DeleteTenantResponse:
        await self._broker.delete_tenant(parse_tenant(request.name), request.force)
        return admin_pb2.DeleteTenantResponse()

    @edge
    async def UpdateTenant(self, request: Any, context: Any) -> admin_pb2.Tenant:
        tenant = parse_tenant(request.tenant.name)
        check_tenant_lists(request.tenant.admin_roles, request.tenant.allowed_clusters)
        await self._broker.update_tenant(
            tenant, list(request.tenant.admin_roles), list(request.tenant.allowed_clusters)
        )
        return admin_pb2.Tenant(
            name=f"tenants/{tenant}",
            admin_roles=request.tenant.admin_roles,
            allowed_clusters=request.tenant.allowed_clusters,
        )

    @edge
    async def CreateNamespace(self, request: Any, context: Any) -> admin_pb2.Namespace:
        tenant = parse_tenant(request.parent)
        name = NamespaceName(tenant, check_name_part("namespace", request.namespace_id))
        if request.bundles < 0:
            raise InvalidRequestError("bundles must not be negative")
        await self._broker.create_namespace(name, request.bundles)
        return admin_pb2.Namespace(name=name.resource_name)

    @edge
    async def GetNamespace(self, request: Any, context: Any) -> admin_pb2.Namespace:
        name = NamespaceName.parse(request.name)
        return await self._namespace(name)

    async def _namespace(self, name: NamespaceName) -> admin_pb2.Namespace:
        policies = await self._broker.get_namespace_policies(name)
        namespace = admin_pb2.Namespace(name=name.resource_name)
        persistence = policies.get("persistence")
        if persistence:
            namespace.persistence.CopyFrom(admin_pb2.PersistencePolicies(**persistence))
        limits = self._broker.namespaces.limits_of(policies)
        namespace.limits.CopyFrom(admin_pb2.LimitPolicies(**dataclasses.asdict(limits)))
        own = policies.get("deduplication_enabled")
        namespace.deduplication.CopyFrom(
            admin_pb2.DeduplicationPolicy(
                enabled=own, effective=self._broker.namespaces.deduplication_of(policies)
            )
        )
        retention = policies.get("retention_policies")
        if retention is not None:
            namespace.retention.CopyFrom(admin_pb2.RetentionPolicies(**retention))
        if "message_ttl_in_seconds" in policies:
            namespace.message_ttl_seconds = int(policies["message_ttl_in_seconds"])
        if "compaction_threshold" in policies:
            namespace.compaction_threshold_bytes = int(policies["compaction_threshold"])
        quota = policies.get("backlog_quota")
        if quota is not None:
            namespace.backlog_quota.CopyFrom(admin_pb2.BacklogQuota(**quota))
        for kind in ("publish_rate", "dispatch_rate"):
            if kind in policies:
                getattr(namespace, kind).CopyFrom(admin_pb2.RateLimit(**policies[kind]))
        offload = self._broker.offload_policy_of(policies)
        namespace.offload.CopyFrom(
            admin_pb2.OffloadPolicies(
                threshold_bytes=offload.threshold_bytes, deletion_lag_ms=offload.deletion_lag_ms
            )
        )
        return namespace

    @edge
    async def SetOffloadThreshold(self, request: Any, context: Any) -> admin_pb2.Namespace:
        name = NamespaceName.parse(request.name)
        await self._broker.set_offload_threshold(name, request.threshold_bytes)
        return await self._namespace(name)

    @edge
    async def SetOffloadDeletionLag(self, request: Any, context: Any) -> admin_pb2.Namespace:
        name = NamespaceName.parse(request.name)
        lag = request.deletion_lag_ms if request.HasField("deletion_lag_ms") else None
        await self._broker.set_offload_deletion_lag(name, lag)
        return await self._namespace(name)

    @edge
    async def SetDeduplication(self, request: Any, context: Any) -> admin_pb2.Namespace:
        name = NamespaceName.parse(request.name)
        enabled = request.enabled if request.HasField("enabled") else None
        await self._broker.namespaces.set_deduplication(name, enabled)
        return await self._namespace(name)

    @edge
    async def SetRetention(self, request: Any, context: Any) -> admin_pb2.Namespace:
        name = NamespaceName.parse(request.name)
        retention = None
        if request.HasField("retention"):
            retention = Retention(
                request.retention.retention_time_in_minutes,
                request.retention.retention_size_in_mb,
            )
        await self._broker.namespaces.set_retention(name, retention)
        return await self._namespace(name)

    @edge
    async def SetMessageTtl(self, request: Any, context: Any) -> admin_pb2.Namespace:
        name = NamespaceName.parse(request.name)
        ttl = request.ttl_seconds if request.HasField("ttl_seconds") else None
        await self._broker.namespaces.set_message_ttl(name, ttl)
        return await self._namespace(name)

    @edge
    async def SetBacklogQuota(self, request: Any, context: Any) -> admin_pb2.Namespace:
        name = NamespaceName.parse(request.name)
        quota = None
        if request.HasField("quota"):
            q = request.quota
            quota = BacklogQuota(q.limit_size, q.limit_time, q.policy)
        await self._broker.namespaces.set_backlog_quota(name, quota)
        return await self._namespace(name)

    @edge
    async def SetPublishRate(self, request: Any, context: Any) -> admin_pb2.Namespace:
        return await self._set_rate(request, "publish_rate")

    @edge
    async def SetDispatchRate(self, request: Any, context: Any) -> admin_pb2.Namespace:
        return await self._set_rate(request, "dispatch_rate")

    async def _set_rate(self, request: Any, kind: str) -> admin_pb2.Namespace:
        name = NamespaceName.parse(request.name)
        limit = None
        if request.HasField("rate"):
            limit = RateLimit(request.rate.msg_rate, request.rate.byte_rate)
        await self._broker.namespaces.set_rate(name, kind, limit)
        return await self._namespace(name)

    @edge
    async def SetTopicPolicies(self, request: Any, context: Any) -> admin_pb2.TopicPolicies:
        name = TopicName.parse(request.name)
        namespaces = self._broker.namespaces
        unknown = sorted(set(request.remove) - set(TOPIC_POLICY_NAMES))
        if unknown:
            raise InvalidRequestError(
                f"cannot remove {', '.join(quoted(u) for u in unknown[:5])}: policies are "
                + ", ".join(TOPIC_POLICY_NAMES)
            )
        given = request.policies
        if given.HasField("deduplication_enabled"):
            await namespaces.set_deduplication(name, given.deduplication_enabled)
        if given.HasField("retention"):
            r = given.retention
            await namespaces.set_retention(
                name, Retention(r.retention_time_in_minutes, r.retention_size_in_mb)
            )
        if given.HasField("message_ttl_seconds"):
            await namespaces.set_message_ttl(name, given.message_ttl_seconds)
        if given.HasField("backlog_quota"):
            q = given.backlog_quota
            await namespaces.set_backlog_quota(
                name, BacklogQuota(q.limit_size, q.limit_time, q.policy)
            )
        for kind in ("publish_rate", "dispatch_rate"):
            if given.HasField(kind):
                rate = getattr(given, kind)
                await namespaces.set_rate(name, kind, RateLimit(rate.msg_rate, rate.byte_rate))
        for policy in request.remove:
            if policy == "deduplication":
                await namespaces.set_deduplication(name, None)
            elif policy == "retention":
                await namespaces.set_retention(name, None)
            elif policy == "message_ttl":
                await namespaces.set_message_ttl(name, None)
            elif policy == "backlog_quota":
                await namespaces.set_backlog_quota(name, None)
            else:
                await namespaces.set_rate(name, policy, None)
        return await self._topic_policies(name)

    @edge
    async def GetTopicPolicies(self, request: Any, context: Any) -> admin_pb2.TopicPolicies:
        return await self._topic_policies(TopicName.parse(request.name))

    def _policies_in_effect(
        self, name: TopicName, policies: dict[str, Any]
    ) -> admin_pb2.TopicPolicies:
        """Every policy the topic runs with, defaults included (for its stats)."""
        namespaces = self._broker.namespaces
        retention = namespaces.retention_of(policies)
        quota = namespaces.backlog_quota_of(policies)
        return admin_pb2.TopicPolicies(
            name=str(name),
            deduplication_enabled=namespaces.deduplication_of(policies),
            retention=admin_pb2.RetentionPolicies(
                retention_time_in_minutes=retention.time_minutes,
                retention_size_in_mb=retention.size_mb,
            ),
            message_ttl_seconds=namespaces.message_ttl_of(policies),
            backlog_quota=admin_pb2.BacklogQuota(
                limit_size=quota.limit_bytes, limit_time=quota.limit_time_s, policy=quota.policy
            ),
            publish_rate=_rate_message(namespaces.rate_of(policies, "publish_rate")),
            dispatch_rate=_rate_message(namespaces.rate_of(policies, "dispatch_rate")),
        )

    async def _topic_policies(self, name: TopicName) -> admin_pb2.TopicPolicies:
        own = await self._broker.namespaces.get_topic_policies(name)
        policies = admin_pb2.TopicPolicies(name=str(name))
        if "deduplication_enabled" in own:
            policies.deduplication_enabled = bool(own["deduplication_enabled"])
        if "retention_policies" in own:
            policies.retention.CopyFrom(admin_pb2.RetentionPolicies(**own["retention_policies"]))
        if "message_ttl_in_seconds" in own:
            policies.message_ttl_seconds = int(own["message_ttl_in_seconds"])
        if "backlog_quota" in own:
            policies.backlog_quota.CopyFrom(admin_pb2.BacklogQuota(**own["backlog_quota"]))
        for kind in ("publish_rate", "dispatch_rate"):
            if kind in own:
                getattr(policies, kind).CopyFrom(admin_pb2.RateLimit(**own[kind]))
        return policies

    @edge
    async def CompactTopic(self, request: Any, context: Any) -> admin_pb2.CompactionStatus:
        name = TopicName.parse(request.name)
        if not await self._broker.topic_exists(name):
            raise NotFoundError(f"topic {name} does not exist")
        topic = await self._broker.get_topic(name)
        await topic.compaction.load()
        if topic.compaction.start():
            topic.compaction.trigger = "manual"
        return _compaction_status(name, topic.compaction)

    @edge
    async def GetCompactionStatus(self, request: Any, context: Any) -> admin_pb2.CompactionStatus:
        name = TopicName.parse(request.name)
        if not await self._broker.topic_exists(name):
            raise NotFoundError(f"topic {name} does not exist")
        topic = await self._broker.get_topic(name)
        await topic.compaction.load()
        return _compaction_status(name, topic.compaction)

    @edge
    async def SetCompactionThreshold(self, request: Any, context: Any) -> admin_pb2.Namespace:
        name = NamespaceName.parse(request.name)
        threshold = request.threshold_bytes if request.HasField("threshold_bytes") else None
        await self._broker.namespaces.set_compaction_threshold(name, threshold)
        return await self._namespace(name)

    @edge
    async def OffloadTopic(self, request: Any, context: Any) -> admin_pb2.OffloadStatus:
        name = TopicName.parse(request.name)
        threshold = request.size_threshold_bytes if request.HasField("size_threshold_bytes") else 0
        return _offload_status(name, await self._broker.offload_topic(name, threshold))

    @edge
    async def GetOffloadStatus(self, request: Any, context: Any) -> admin_pb2.OffloadStatus:
        name = TopicName.parse(request.name)
        return _offload_status(name, await self._broker.offload_status(name))

    @edge
    async def SetPersistence(self, request: Any, context: Any) -> admin_pb2.Namespace:
        name = NamespaceName.parse(request.name)
        if not request.HasField("persistence"):
            raise InvalidRequestError("persistence is required")
        p = request.persistence
        await self._broker.set_persistence(
            name, p.bookkeeper_ensemble, p.bookkeeper_write_quorum, p.bookkeeper_ack_quorum
        )
        return await self._namespace(name)

    @edge
    async def SetLimits(self, request: Any, context: Any) -> admin_pb2.Namespace:
        name = NamespaceName.parse(request.name)
        given = {field.name: value for field, value in request.limits.ListFields()}
        if not given:
            raise InvalidRequestError("give at least one limit")
        await self._broker.namespaces.set_limits(name, given)
        return await self._namespace(name)

    @edge
    async def ListBookies(self, request: Any, context: Any) -> admin_pb2.ListBookiesResponse:
        return await admin_cluster.list_bookies(self._broker)

    @edge
    async def ListBrokers(self, request: Any, context: Any) -> admin_pb2.ListBrokersResponse:
        return await admin_cluster.list_brokers(self._broker)

    @edge
    async def ListTopicSummaries(
        self, request: Any, context: Any
    ) -> admin_pb2.ListTopicSummariesResponse:
        served = {str(name): topic for name, topic in self._broker.topics.items()}
        page, token = _page(list(served), request.page_size, request.page_token)
        return admin_pb2.ListTopicSummariesResponse(
            broker=self._broker.advertised_address,
            topics=[_summary(topic_stats(served[name])) for name in page],
            next_page_token=token,
        )

    @edge
    async def GetRuntimeConfig(self, request: Any, context: Any) -> admin_pb2.RuntimeConfig:
        return admin_cluster.runtime_config(self._broker)

    @edge
    async def ListBundles(self, request: Any, context: Any) -> admin_pb2.ListBundlesResponse:
        name = NamespaceName.parse(request.name)
        return await self._bundles(name)

    async def _bundles(self, name: NamespaceName) -> admin_pb2.ListBundlesResponse:
        policies = await self._broker.get_namespace_policies(name)
        ownership = self._broker.ownership
        if ownership is None:
            pairs = [(b, self._broker.advertised_address) for b in bundles_of(name, policies)]
        else:
            pairs = await ownership.bundle_owners(name)
        return admin_pb2.ListBundlesResponse(
            bundles=[admin_pb2.BundleInfo(name=b.name, owner=owner) for b, owner in pairs]
        )

    @edge
    async def UnloadTopic(self, request: Any, context: Any) -> admin_pb2.UnloadTopicResponse:
        name = TopicName.parse(request.name)
        await self._broker.check_namespace(name.namespace_name)
        return admin_pb2.UnloadTopicResponse(was_loaded=await self._broker.unload_topic(name))

    @edge
    async def UnloadNamespace(
        self, request: Any, context: Any
    ) -> admin_pb2.UnloadNamespaceResponse:
        name = NamespaceName.parse(request.name)
        policies = await self._broker.get_namespace_policies(name)
        ownership = self._broker.ownership
        if ownership is None:
            bundles = bundles_of(name, policies)
            if request.bundle:
                bundles = [parse_bundle_name(name, request.bundle, bundles)]
            await self._broker.close_topics(lambda t: any(b.contains(t) for b in bundles))
        else:
            forwarded = (FORWARDED_HEADER, "1") in (context.invocation_metadata() or ())
            await ownership.unload_namespace_bundle(name, request.bundle, local_only=forwarded)
        return admin_pb2.UnloadNamespaceResponse()

    @edge
    async def SplitNamespaceBundle(
        self, request: Any, context: Any
    ) -> admin_pb2.ListBundlesResponse:
        name = NamespaceName.parse(request.name)
        if not request.bundle:
            raise InvalidRequestError("the bundle to split is required (see namespaces bundles)")
        ownership = self._broker.ownership
        if ownership is None:
            bundles = bundles_of(name, await self._broker.get_namespace_policies(name))
            bundle = parse_bundle_name(name, request.bundle, bundles)
            middle = (bundle.lower + bundle.upper) // 2
            if bundle.upper - bundle.lower < 2:
                raise PreconditionError(f"bundle {bundle} is too small to split")
            await self._broker.update_namespace_policies(
                name, lambda policies: with_boundary(policies, middle)
            )
            await self._broker.close_topics(bundle.contains)
        else:
            forwarded = (FORWARDED_HEADER, "1") in (context.invocation_metadata() or ())
            await ownership.split_bundle(name, request.bundle, local_only=forwarded)
        return await self._bundles(name)

    @edge
    async def DecommissionBookie(
        self, request: Any, context: Any
    ) -> admin_pb2.DecommissionBookieResponse:
        await admin_cluster.decommission(self._broker, request.id)
        return admin_pb2.DecommissionBookieResponse()

    @edge
    async def ListNamespaces(self, request: Any, context: Any) -> admin_pb2.ListNamespacesResponse:
        tenant = parse_tenant(request.parent)
        page, token = _page(
            await self._broker.list_namespaces(tenant), request.page_size, request.page_token
        )
        return admin_pb2.ListNamespacesResponse(
            namespaces=[
                admin_pb2.Namespace(name=NamespaceName(tenant, ns).resource_name) for ns in page
            ],
            next_page_token=token,
        )

    @edge
    async def DeleteNamespace(
        self, request: Any, context: Any
    ) -> admin_pb2.DeleteNamespaceResponse:
        await self._broker.delete_namespace(NamespaceName.parse(request.name), request.force)
        return admin_pb2.DeleteNamespaceResponse()

    @edge
    async def CreateTopic(self, request: Any, context: Any) -> admin_pb2.Topic:
        name = TopicName.parse(request.name)
        await self._broker.create_topic(name)
        return admin_pb2.Topic(name=str(name))

    @edge
    async def CreatePartitionedTopic(
        self, request: Any, context: Any
    ) -> admin_pb2.PartitionedTopic:
        name = TopicName.parse(request.name)
        await self._broker.create_partitioned_topic(name, request.partitions)
        return admin_pb2.PartitionedTopic(name=str(name), partitions=request.partitions)

    @edge
    async def ListTopics(self, request: Any, context: Any) -> admin_pb2.ListTopicsResponse:
        namespace = NamespaceName.parse(request.parent)
        page, token = _page(
            await self._broker.list_topics(namespace), request.page_size, request.page_token
        )
        return admin_pb2.ListTopicsResponse(
            topics=[admin_pb2.Topic(name=t) for t in page], next_page_token=token
        )

    @edge
    async def DeleteTopic(self, request: Any, context: Any) -> admin_pb2.DeleteTopicResponse:
        await self._broker.delete_topic(TopicName.parse(request.name), request.force)
        return admin_pb2.DeleteTopicResponse()

    # ---- subscriptions (broker.subscription_admin) ---------------------------------------

    async def _owned_topic(self, name: str) -> Topic:
        topic_name = TopicName.parse(name)
        if not await self._broker.topic_exists(topic_name):
            raise NotFoundError(f"topic {topic_name} does not exist")
        return await self._broker.get_topic(topic_name)

    @edge
    async def ListSubscriptions(
        self, request: Any, context: Any
    ) -> admin_pb2.ListSubscriptionsResponse:
        topic = await self._owned_topic(request.topic)
        return admin_pb2.ListSubscriptionsResponse(subscriptions=sorted(topic.subscriptions))

    @edge
    async def CreateSubscription(
        self, request: Any, context: Any
    ) -> admin_pb2.CreateSubscriptionResponse:
        topic = await self._owned_topic(request.topic)
        await subscription_admin.create_subscription(
            topic, request.subscription, request.message_id
        )
        return admin_pb2.CreateSubscriptionResponse()

    @edge
    async def DeleteSubscription(
        self, request: Any, context: Any
    ) -> admin_pb2.DeleteSubscriptionResponse:
        topic = await self._owned_topic(request.topic)
        await subscription_admin.delete_subscription(topic, request.subscription, request.force)
        return admin_pb2.DeleteSubscriptionResponse()

    @edge
    async def ResetCursor(self, request: Any, context: Any) -> admin_pb2.ResetCursorResponse:
        topic = await self._owned_topic(request.topic)
        target = request.WhichOneof("target")
        if target == "publish_time_ms":
            mark_delete = await subscription_admin.position_before_time(
                topic, request.subscription, request.publish_time_ms
            )
        elif target == "message_id":
            mark_delete = subscription_admin.position_before(topic, request.message_id)
        else:
            raise InvalidRequestError("reset-cursor needs a publish time or a message id")
        await subscription_admin.reset_cursor(topic, request.subscription, mark_delete)
        return admin_pb2.ResetCursorResponse()

    @edge
    async def SkipMessages(self, request: Any, context: Any) -> admin_pb2.SkipMessagesResponse:
        topic = await self._owned_topic(request.topic)
        skipped = await subscription_admin.skip_messages(topic, request.subscription, request.count)
        return admin_pb2.SkipMessagesResponse(skipped_messages=skipped)

    @edge
    async def PeekMessages(self, request: Any, context: Any) -> admin_pb2.PeekMessagesResponse:
        topic = await self._owned_topic(request.topic)
        entries = await subscription_admin.peek_messages(topic, request.subscription, request.count)
        return admin_pb2.PeekMessagesResponse(
            entries=[
                admin_pb2.PeekedEntry(ledger_id=e.ledger_id, entry_id=e.entry_id, entry=e.data)
                for e in entries
            ]
        )

    @edge
    async def ExpireMessages(self, request: Any, context: Any) -> admin_pb2.SkipMessagesResponse:
        topic = await self._owned_topic(request.topic)
        expired = await subscription_admin.expire_messages(
            topic, request.subscription, request.expire_time_seconds
        )
        return admin_pb2.SkipMessagesResponse(skipped_messages=expired)

    @edge
    async def GetMessage(self, request: Any, context: Any) -> admin_pb2.PeekedEntry:
        topic = await self._owned_topic(request.topic)
        which = request.WhichOneof("position")
        if which is None:
            raise InvalidRequestError("get a message by message_id, from_earliest or from_latest")
        entry = await subscription_admin.get_message(
            topic,
            request.message_id if which == "message_id" else None,
            request.from_earliest if which == "from_earliest" else None,
            request.from_latest if which == "from_latest" else None,
        )
        return admin_pb2.PeekedEntry(
            ledger_id=entry.ledger_id, entry_id=entry.entry_id, entry=entry.data
        )

    @edge
    async def GetTopicStats(self, request: Any, context: Any) -> admin_pb2.TopicStats:
        name = TopicName.parse(request.name)
        if not await self._broker.topic_exists(name):
            raise NotFoundError(f"topic {name} does not exist")
        topic = await self._broker.get_topic(name)
        stats = topic_stats(topic)
        namespaces = self._broker.namespaces
        policies = effective_policies(
            await namespaces.get_namespace_policies(name.namespace_name),
            await namespaces.get_topic_policies(name),
        )
        return admin_pb2.TopicStats(
            name=str(name),
            policies=self._policies_in_effect(name, policies),
            compaction_threshold_bytes=namespaces.compaction_threshold_of(policies),
            deduplication_status="Enabled" if topic.deduplication.enabled else "Disabled",
            backlog_size=backlog_size_bytes(topic),
            publish_rate_limited_times=(
                topic.publish_limiter.throttled_times if topic.publish_limiter else 0
            ),
            msg_rate_in=stats.msg_rate_in,
            msg_throughput_in=stats.msg_throughput_in,
            msg_rate_out=stats.msg_rate_out,
            msg_throughput_out=stats.msg_throughput_out,
            msg_in_counter=stats.msg_in_counter,
            bytes_in_counter=stats.bytes_in_counter,
            storage_size=stats.storage_size,
            msg_backlog=stats.msg_backlog,
            producers_count=stats.producers_count,
            ledgers_count=stats.ledgers_count,
            entries_count=stats.entries_count,
            subscriptions={
                sub.name: admin_pb2.SubscriptionStats(
                    type=sub.type_name,
                    msg_backlog=sub.msg_backlog,
                    unacked_messages=sub.unacked_messages,
                    consumers_count=sub.consumers_count,
                    msg_delayed=sub.msg_delayed,
                    msg_rate_redeliver=sub.msg_rate_redeliver,
                    msg_rate_expired=sub.msg_rate_expired,
                    total_msg_expired=sub.total_msg_expired,
                    dispatch_throttled_times=sub.dispatch_throttled_times,
                    mark_delete_position=_position_text(sub.mark_delete_position),
                    read_position=_position_text(sub.read_position),
                    msg_rate_out=sub.msg_rate_out,
                    msg_throughput_out=sub.msg_throughput_out,
                    consumers=[
                        admin_pb2.ConsumerStats(
                            consumer_name=c.name,
                            available_permits=c.available_permits,
                            unacked_messages=c.unacked_messages,
                            msg_out_counter=c.msg_out_counter,
                            bytes_out_counter=c.bytes_out_counter,
                            priority_level=c.priority_level,
                            blocked_on_unacked_messages=c.blocked_on_unacked_messages,
                        )
                        for c in sub.consumers
                    ],
                )
                for sub in stats.subscriptions
            },
        )

    @edge
    async def GetTopicInternalStats(
        self, request: Any, context: Any
    ) -> admin_pb2.TopicInternalStats:
        name = TopicName.parse(request.name)
        if not await self._broker.topic_exists(name):
            raise NotFoundError(f"topic {name} does not exist")
        topic = await self._broker.get_topic(name)
        return await topic_internal_stats(topic, self._broker.ledgers)

    # ---- authorization -----------------------------------------------------------------------

    @edge
    async def GrantPermission(self, request: Any, context: Any) -> admin_pb2.Permissions:
        namespace, topic = authorization.permission_target(request.name)
        role = authorization.check_role(request.role)
        actions = authorization.check_actions(list(request.actions))
        await self._broker.update_namespace_policies(
            namespace, lambda policies: authorization.grant(policies, role, actions, topic)
        )
        return await self._permissions(request.name)

    @edge
    async def RevokePermission(self, request: Any, context: Any) -> admin_pb2.Permissions:
        namespace, topic = authorization.permission_target(request.name)
        role = authorization.check_role(request.role)
        await self._broker.update_namespace_policies(
            namespace, lambda policies: authorization.revoke(policies, role, topic)
        )
        return await self._permissions(request.name)

    @edge
    async def GetPermissions(self, request: Any, context: Any) -> admin_pb2.Permissions:
        return await self._permissions(request.name)

    @edge
    async def GrantSubscriptionPermission(
        self, request: Any, context: Any
    ) -> admin_pb2.Permissions:
        namespace = NamespaceName.parse(request.name)
        check_subscription_name(request.subscription)
        roles = [authorization.check_role(role) for role in request.roles]
        if not roles:
            raise InvalidRequestError("give at least one role")
        await self._broker.update_namespace_policies(
            namespace,
            lambda policies: authorization.grant_subscription(
                policies, request.subscription, roles
            ),
        )
        return await self._permissions(request.name)

    @edge
    async def RevokeSubscriptionPermission(
        self, request: Any, context: Any
    ) -> admin_pb2.Permissions:
        namespace = NamespaceName.parse(request.name)
        check_subscription_name(request.subscription)
        role = authorization.check_role(request.role)
        await self._broker.update_namespace_policies(
            namespace,
            lambda policies: authorization.revoke_subscription(
                policies, request.subscription, role
            ),
        )
        return await self._permissions(request.name)

    async def _permissions(self, name: str) -> admin_pb2.Permissions:
        namespace, topic = authorization.permission_target(name)
        policies = await self._broker.get_namespace_policies(namespace)
        auth = authorization.auth_policies(policies)
        roles: dict[str, list[str]] = {
            role: list(actions) for role, actions in auth.get("namespace_auth", {}).items()
        }
        if topic is not None:
            by_topic = auth.get("destination_auth", {})
            for source in {str(topic.partitioned_name), str(topic)}:
                for role, actions in by_topic.get(source, {}).items():
                    roles[role] = sorted(set(roles.get(role, [])) | set(actions))
        response = admin_pb2.Permissions(name=str(topic) if topic is not None else name)
        for role, actions in sorted(roles.items()):
            response.roles[role].actions.extend(sorted(actions))
        if topic is None:
            for subscription, members in auth.get("subscription_auth_roles", {}).items():
                response.subscriptions[subscription].roles.extend(sorted(members))
        return response


# The names SetTopicPoliciesRequest.remove takes.
TOPIC_POLICY_NAMES = (
    "deduplication",
    "retention",
    "message_ttl",
    "backlog_quota",
    "publish_rate",
    "dispatch_rate",
)


def _compaction_status(name: TopicName, compaction: TopicCompaction) -> admin_pb2.CompactionStatus:
    state = compaction.state
    return admin_pb2.CompactionStatus(
        name=str(name),
        status=compaction.status.value,
        error=compaction.error,
        trigger=compaction.trigger,
        started_ms=compaction.started_ms,
        finished_ms=compaction.finished_ms,
        horizon=_position_text(state.horizon) if state is not None else "",
        compacted_entries=state.entries if state is not None else 0,
        keys=state.keys if state is not None else 0,
        last_run_messages_read=compaction.last_run_messages_read,
        last_run_bytes_read=compaction.last_run_bytes_read,
        last_run_seconds=compaction.last_run_seconds,
    )


def _summary(stats: TopicStats) -> admin_pb2.TopicSummary:
    return admin_pb2.TopicSummary(
        name=str(stats.name),
        msg_rate_in=stats.msg_rate_in,
        msg_rate_out=stats.msg_rate_out,
        msg_throughput_in=stats.msg_throughput_in,
        msg_throughput_out=stats.msg_throughput_out,
        msg_backlog=stats.msg_backlog,
        storage_size=stats.storage_size,
        producers_count=stats.producers_count,
        consumers_count=stats.consumers_count,
        subscriptions_count=len(stats.subscriptions),
    )


def _position_text(position: tuple[int, int]) -> str:
    """A position as ``ledger:entry``, as Pulsar's stats print it."""
    return f"{position[0]}:{position[1]}"


def _rate_message(rate: RateLimit) -> admin_pb2.RateLimit:
    return admin_pb2.RateLimit(msg_rate=rate.msg_rate, byte_rate=rate.byte_rate)
