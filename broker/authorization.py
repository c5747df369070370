"""Authorization at the edge (issue 11 item 2): one rule per RPC, one check per call.

With ``--authorization-enabled`` (which needs authentication) every call of
``strata.v1.AdminService`` and ``strata.v1.MessagingService`` passes ``Authorizer.authorize``
before its servicer runs: unary calls through the class wrapper ``authorize_calls`` (applied
under ``audit_mutations``, so a refusal is audited), Produce and Consume on their first
request (``ProducerStream``/``ConsumerStream``), the only request that names the topic.
``RULES`` maps each RPC to the access it needs and the resource its request names; a unit
test enumerates the service descriptors and fails on an RPC without a rule.

The rules are Pulsar's (``PulsarAuthorizationProvider``):

* ``SUPERUSER`` — cluster operations: tenants create/update/delete/list, brokers, bookies,
  runtime configuration, bundle splits. Only roles in ``--superuser-roles``.
* ``TENANT_ADMIN`` — namespace and topic administration: a superuser or a role in the
  tenant's ``admin_roles`` (``tenants create|update --admin-roles``).
* ``PRODUCE`` / ``CONSUME`` — a superuser, an admin of the topic's tenant, or a role granted
  the action on the topic's namespace or on the topic (a partition inherits its partitioned
  topic's grants). ``CONSUME`` naming a subscription that the namespace restricts
  (``grant-subscription-permission``) also needs the role in that subscription's roles.
  Subscription administration (reset, skip, peek, expire, unsubscribe) is ``CONSUME``, as
  in Pulsar.
* ``LOOKUP`` — produce or consume (lookups, partition metadata, topic stats).
* ``NAMESPACE_LOOKUP`` — produce or consume granted on the namespace (topic discovery for
  pattern subscriptions).

A refusal is PERMISSION_DENIED naming the role and the action; a tenant that does not exist
refuses a non-superuser the same way (existence is not disclosed). Grants live in the
namespace policies (``auth_policies``), read from the metadata store at each check, so every
broker applies a change at the next call; an open stream keeps what it was allowed (Pulsar
does the same).
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from broker.edge import abort_for
from broker.errors import InvalidRequestError, NotFoundError, PermissionDeniedError
from broker.namespaces import Namespaces
from strata.auth.principal import current_role
from strata.naming import NamespaceName, TopicName, parse_tenant, quoted

ACTIONS = ("produce", "consume")
# Grants are bounded so that a namespace's policies stay small.
MAX_GRANTED_ROLES = 1000
MAX_ROLE_LENGTH = 255


class Access(enum.Enum):
    SUPERUSER = "administer the cluster"
    TENANT_ADMIN = "administer"
    PRODUCE = "produce to"
    CONSUME = "consume from"
    LOOKUP = "look up"
    NAMESPACE_LOOKUP = "list the topics of"


@dataclass(frozen=True, slots=True)
class Resource:
    """What a request names: a tenant, a namespace, a topic (and a subscription)."""

    tenant: str = ""
    namespace: NamespaceName | None = None
    topic: TopicName | None = None
    subscription: str = ""

    def __str__(self) -> str:
        if self.topic is not None:
            text = str(self.topic)
            return f"{text} subscription {quoted(self.subscription)}" if self.subscription else text
        if self.namespace is not None:
            return str(self.namespace)
        return f"tenant {quoted(self.tenant)}" if self.tenant else "the cluster"


def _cluster(request: Any) -> Resource:
    return Resource()


def _tenant_of_name(request: Any) -> Resource:
    return Resource(tenant=parse_tenant(request.name))


def _tenant_of_parent(request: Any) -> Resource:
    return Resource(tenant=parse_tenant(request.parent))


def _namespace(name: NamespaceName) -> Resource:
    return Resource(tenant=name.tenant, namespace=name)


def _topic(name: TopicName, subscription: str = "") -> Resource:
    return Resource(
        tenant=name.tenant, namespace=name.namespace_name, topic=name, subscription=subscription
    )


def _namespace_of_name(request: Any) -> Resource:
    return _namespace(NamespaceName.parse(request.name))


def _namespace_of_parent(request: Any) -> Resource:
    return _namespace(NamespaceName.parse(request.parent))


def _topic_of_name(request: Any) -> Resource:
    return _topic(TopicName.parse(request.name))


def _topic_of_topic(request: Any) -> Resource:
    return _topic(TopicName.parse(request.topic), getattr(request, "subscription", ""))


def permission_target(name: str) -> tuple[NamespaceName, TopicName | None]:
    """A permission RPC names a namespace (``tenants/T/namespaces/N`` or ``T/N``) or a topic
    (any spelling ``TopicName.parse`` takes)."""
    if "://" not in name and name.count("/") in (1, 3):
        return NamespaceName.parse(name), None
    topic = TopicName.parse(name)
    return topic.namespace_name, topic


def _namespace_or_topic(request: Any) -> Resource:
    namespace, topic = permission_target(request.name)
    return _topic(topic) if topic is not None else _namespace(namespace)


def _produce_open(request: Any) -> Resource:
    return _topic(TopicName.parse(request.open.topic))


def _consume_subscribe(request: Any) -> Resource:
    subscribe = request.subscribe
    # A reader's cursor is its own (non-durable): no subscription restriction applies.
    subscription = "" if subscribe.non_durable else subscribe.subscription
    return _topic(TopicName.parse(subscribe.topic), subscription)


def _namespace_of_namespace(request: Any) -> Resource:
    return _namespace(NamespaceName.parse(request.namespace))


@dataclass(frozen=True, slots=True)
class Rule:
    access: Access
    resource: Callable[[Any], Resource]


# Every RPC of both services, by "Service/Method". Streams are checked on their first request.
RULES: dict[str, Rule] = {
    # ---- cluster: superusers --------------------------------------------------------------
    "AdminService/CreateTenant": Rule(Access.SUPERUSER, _cluster),
    "AdminService/ListTenants": Rule(Access.SUPERUSER, _cluster),
    "AdminService/UpdateTenant": Rule(Access.SUPERUSER, _cluster),
    "AdminService/DeleteTenant": Rule(Access.SUPERUSER, _cluster),
    "AdminService/ListBookies": Rule(Access.SUPERUSER, _cluster),
    "AdminService/DecommissionBookie": Rule(Access.SUPERUSER, _cluster),
    "AdminService/ListBrokers": Rule(Access.SUPERUSER, _cluster),
    "AdminService/ListTopicSummaries": Rule(Access.SUPERUSER, _cluster),
    "AdminService/GetRuntimeConfig": Rule(Access.SUPERUSER, _cluster),
    "AdminService/SplitNamespaceBundle": Rule(Access.SUPERUSER, _cluster),
    # ---- tenant administration -------------------------------------------------------------
    "AdminService/GetTenant": Rule(Access.TENANT_ADMIN, _tenant_of_name),
    "AdminService/CreateNamespace": Rule(Access.TENANT_ADMIN, _tenant_of_parent),
    "AdminService/ListNamespaces": Rule(Access.TENANT_ADMIN, _tenant_of_parent),
    "AdminService/GetNamespace": Rule(Access.TENANT_ADMIN, _namespace_of_name),
    "AdminService/DeleteNamespace": Rule(Access.TENANT_ADMIN, _namespace_of_name),
    "AdminService/SetPersistence": Rule(Access.TENANT_ADMIN, _namespace_of_name),
    "AdminService/SetLimits": Rule(Access.TENANT_ADMIN, _namespace_of_name),
    "AdminService/SetOffloadThreshold": Rule(Access.TENANT_ADMIN, _namespace_of_name),
    "AdminService/SetOffloadDeletionLag": Rule(Access.TENANT_ADMIN, _namespace_of_name),
    "AdminService/SetDeduplication": Rule(Access.TENANT_ADMIN, _namespace_of_name),
    "AdminService/SetRetention": Rule(Access.TENANT_ADMIN, _namespace_of_name),
    "AdminService/SetMessageTtl": Rule(Access.TENANT_ADMIN, _namespace_of_name),
    "AdminService/SetBacklogQuota": Rule(Access.TENANT_ADMIN, _namespace_of_name),
    "AdminService/SetPublishRate": Rule(Access.TENANT_ADMIN, _namespace_of_name),
    "AdminService/SetDispatchRate": Rule(Access.TENANT_ADMIN, _namespace_of_name),
    "AdminService/SetTopicPolicies": Rule(Access.TENANT_ADMIN, _topic_of_name),
    "AdminService/GetTopicPolicies": Rule(Access.TENANT_ADMIN, _topic_of_name),
    "AdminService/CompactTopic": Rule(Access.TENANT_ADMIN, _topic_of_name),
    "AdminService/GetCompactionStatus": Rule(Access.TENANT_ADMIN, _topic_of_name),
    "AdminService/SetCompactionThreshold": Rule(Access.TENANT_ADMIN, _namespace_of_name),
    "AdminService/ListBundles": Rule(Access.TENANT_ADMIN, _namespace_of_name),
    "AdminService/UnloadNamespace": Rule(Access.TENANT_ADMIN, _namespace_of_name),
    "AdminService/ListTopics": Rule(Access.TENANT_ADMIN, _namespace_of_parent),
    "AdminService/CreateTopic": Rule(Access.TENANT_ADMIN, _topic_of_name),
    "AdminService/CreatePartitionedTopic": Rule(Access.TENANT_ADMIN, _topic_of_name),
    "AdminService/DeleteTopic": Rule(Access.TENANT_ADMIN, _topic_of_name),
    "AdminService/OffloadTopic": Rule(Access.TENANT_ADMIN, _topic_of_name),
    "AdminService/GetOffloadStatus": Rule(Access.TENANT_ADMIN, _topic_of_name),
    "AdminService/UnloadTopic": Rule(Access.TENANT_ADMIN, _topic_of_name),
    "AdminService/GrantPermission": Rule(Access.TENANT_ADMIN, _namespace_or_topic),
    "AdminService/RevokePermission": Rule(Access.TENANT_ADMIN, _namespace_or_topic),
    "AdminService/GetPermissions": Rule(Access.TENANT_ADMIN, _namespace_or_topic),
    "AdminService/GrantSubscriptionPermission": Rule(Access.TENANT_ADMIN, _namespace_of_name),
    "AdminService/RevokeSubscriptionPermission": Rule(Access.TENANT_ADMIN, _namespace_of_name),
    # ---- topics: grants --------------------------------------------------------------------
    "AdminService/GetTopicStats": Rule(Access.LOOKUP, _topic_of_name),
    "AdminService/GetTopicInternalStats": Rule(Access.LOOKUP, _topic_of_name),
    "AdminService/ListSubscriptions": Rule(Access.CONSUME, _topic_of_topic),
    "AdminService/CreateSubscription": Rule(Access.CONSUME, _topic_of_topic),
    "AdminService/DeleteSubscription": Rule(Access.CONSUME, _topic_of_topic),
    "AdminService/ResetCursor": Rule(Access.CONSUME, _topic_of_topic),
    "AdminService/SkipMessages": Rule(Access.CONSUME, _topic_of_topic),
    "AdminService/PeekMessages": Rule(Access.CONSUME, _topic_of_topic),
    "AdminService/ExpireMessages": Rule(Access.CONSUME, _topic_of_topic),
    "AdminService/GetMessage": Rule(Access.CONSUME, _topic_of_topic),
    "MessagingService/Produce": Rule(Access.PRODUCE, _produce_open),
    "MessagingService/Consume": Rule(Access.CONSUME, _consume_subscribe),
    "MessagingService/Lookup": Rule(Access.LOOKUP, _topic_of_topic),
    "MessagingService/GetPartitionedTopicMetadata": Rule(Access.LOOKUP, _topic_of_topic),
    "MessagingService/GetTopicsOfNamespace": Rule(Access.NAMESPACE_LOOKUP, _namespace_of_namespace),
}


# ---- grants in the namespace policies -------------------------------------------------------


def check_role(role: str) -> str:
    if not role or len(role) > MAX_ROLE_LENGTH or not role.isprintable():
        raise InvalidRequestError(
            f"role {quoted(role)} must be printable and 1 to {MAX_ROLE_LENGTH} characters"
        )
    return role


def check_actions(actions: list[str]) -> list[str]:
    if not actions:
        raise InvalidRequestError(f"give at least one action ({', '.join(ACTIONS)})")
    for action in actions:
        if action not in ACTIONS:
            raise InvalidRequestError(
                f"unknown action {quoted(action)}; actions are {', '.join(ACTIONS)}"
            )
    return sorted(set(actions))


def auth_policies(policies: dict[str, Any]) -> dict[str, Any]:
    """The ``auth_policies`` of a namespace's policies (Pulsar's layout)::

    {"namespace_auth": {role: [action]}, "destination_auth": {topic: {role: [action]}},
     "subscription_auth_roles": {subscription: [role]}}
    """
    found: dict[str, Any] = policies.get("auth_policies", {})
    return found


def granted_actions(policies: dict[str, Any], role: str, topic: TopicName | None) -> set[str]:
    """The actions ``role`` holds on the namespace, and on ``topic`` (or its partitioned
    topic) when given."""
    auth = auth_policies(policies)
    actions = set(auth.get("namespace_auth", {}).get(role, []))
    if topic is not None:
        by_topic = auth.get("destination_auth", {})
        for name in {str(topic), str(topic.partitioned_name)}:
            actions.update(by_topic.get(name, {}).get(role, []))
    return actions


def _bounded_roles(roles: dict[str, Any], kind: str) -> None:
    if len(roles) > MAX_GRANTED_ROLES:
        raise InvalidRequestError(
            f"{kind} would hold {len(roles)} roles; at most {MAX_GRANTED_ROLES}"
        )


def grant(
    policies: dict[str, Any], role: str, actions: list[str], topic: TopicName | None
) -> dict[str, Any]:
    """``policies`` with ``role`` granted ``actions`` on the namespace or ``topic`` (replacing
    what the role held there, as Pulsar's grant does)."""
    auth = policies.setdefault("auth_policies", {})
    if topic is None:
        roles = auth.setdefault("namespace_auth", {})
        kind = "the namespace's grants"
    else:
        roles = auth.setdefault("destination_auth", {}).setdefault(str(topic), {})
        kind = f"the grants of {topic}"
    roles[role] = actions
    _bounded_roles(roles, kind)
    if topic is not None and len(auth["destination_auth"]) > MAX_GRANTED_ROLES:
        raise InvalidRequestError(f"at most {MAX_GRANTED_ROLES} topics of a namespace hold grants")
    return policies


def revoke(policies: dict[str, Any], role: str, topic: TopicName | None) -> dict[str, Any]:
    auth = policies.setdefault("auth_policies", {})
    if topic is None:
        roles = auth.get("namespace_auth", {})
        where = "the namespace"
    else:
        roles = auth.get("destination_auth", {}).get(str(topic), {})
        where = str(topic)
    if role not in roles:
        raise NotFoundError(f"role {quoted(role)} holds no permission on {where}")
    del roles[role]
    if topic is not None and not roles:
        del auth["destination_auth"][str(topic)]
    return policies


def grant_subscription(
    policies: dict[str, Any], subscription: str, roles: list[str]
) -> dict[str, Any]:
    auth = policies.setdefault("auth_policies", {})
    by_subscription = auth.setdefault("subscription_auth_roles", {})
    current = set(by_subscription.get(subscription, []))
    by_subscription[subscription] = sorted(current | set(roles))
    if len(by_subscription[subscription]) > MAX_GRANTED_ROLES:
        raise InvalidRequestError(
            f"subscription {quoted(subscription)} would hold more than {MAX_GRANTED_ROLES} roles"
        )
    if len(by_subscription) > MAX_GRANTED_ROLES:
        raise InvalidRequestError(f"at most {MAX_GRANTED_ROLES} subscriptions may be restricted")
    return policies


def revoke_subscription(policies: dict[str, Any], subscription: str, role: str) -> dict[str, Any]:
    by_subscription = policies.setdefault("auth_policies", {}).get("subscription_auth_roles", {})
    roles = by_subscription.get(subscription, [])
    if role not in roles:
        raise NotFoundError(
            f"role {quoted(role)} is not among the roles of subscription {quoted(subscription)}"
        )
    roles.remove(role)
    if not roles:
        del by_subscription[subscription]
    return policies


# ---- the check -----------------------------------------------------------------------------


class Authorizer:
    """Decides each call by its rule (see the module docstring). Disabled, it allows all."""

    def __init__(self, namespaces: Namespaces, enabled: bool, superusers: frozenset[str]) -> None:
        self._namespaces = namespaces
        self.enabled = enabled
        self._superusers = superusers

    async def authorize(self, method: str, request: Any) -> None:
        """Raise ``PermissionDeniedError`` unless the caller may make this call; a request
        naming a malformed resource raises ``InvalidNameError`` first."""
        if not self.enabled:
            return
        rule = RULES[method]
        resource = rule.resource(request)
        role = current_role()
        if role is None:
            # Authorization needs authentication, which sets a role on every call it admits.
            raise PermissionDeniedError(f"{method.rpartition('/')[2]} needs an authenticated role")
        if not await self.allowed(role, rule.access, resource):
            raise PermissionDeniedError(
                f"role {quoted(role)} may not {rule.access.value} {resource} "
                f"({method.rpartition('/')[2]})"
            )

    async def allowed(self, role: str, access: Access, resource: Resource) -> bool:
        if role in self._superusers:
            return True
        if access is Access.SUPERUSER:
            return False
        if await self._is_tenant_admin(role, resource.tenant):
            return True
        if access is Access.TENANT_ADMIN or resource.namespace is None:
            return False
        try:
            policies = await self._namespaces.get_namespace_policies(resource.namespace)
        except NotFoundError:
            return False
        if access is Access.NAMESPACE_LOOKUP:
            return bool(granted_actions(policies, role, None))
        actions = granted_actions(policies, role, resource.topic)
        if access is Access.PRODUCE:
            return "produce" in actions
        if access is Access.LOOKUP:
            return bool(actions)
        if "consume" not in actions:
            return False
        if resource.subscription:
            restricted = auth_policies(policies).get("subscription_auth_roles", {})
            roles = restricted.get(resource.subscription)
            if roles is not None and role not in roles:
                return False
        return True

    async def _is_tenant_admin(self, role: str, tenant: str) -> bool:
        if not tenant:
            return False
        try:
            record = await self._namespaces.get_tenant(tenant)
        except NotFoundError:
            return False
        return role in record.get("admin_roles", [])


# ---- the wrapper of unary servicer methods --------------------------------------------------

R = TypeVar("R")
Method = Callable[[Any, Any, Any], Awaitable[R]]


def authorized(method_key: str, method: Method[R]) -> Method[R]:
    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: Any) -> R:
        try:
            await self.authorizer.authorize(method_key, request)
        except Exception as exc:
            await abort_for(context, exc, method_key)
        return await method(self, request, context)

    wrapper.__strata_authorized__ = method_key  # type: ignore[attr-defined]
    return wrapper


def authorize_calls(
    service: str, stream_methods: frozenset[str] = frozenset()
) -> Callable[[type], type]:
    """Wrap every unary RPC method of a servicer class with its rule's check; the servicer
    has an ``authorizer``. ``stream_methods`` check their first request themselves."""

    def wrap(servicer: type) -> type:
        for key in RULES:
            owner, _, name = key.partition("/")
            if owner != service or name in stream_methods:
                continue
            setattr(servicer, name, authorized(key, getattr(servicer, name)))
        return servicer

    return wrap
