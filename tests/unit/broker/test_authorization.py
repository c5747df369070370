"""Authorization rules (issue 11 item 2): every RPC has one, and each access decides as
Pulsar's PulsarAuthorizationProvider does. The role matrix over real processes is
``tests/integration/test_authorization.py``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from broker import authorization
from broker.admin_service import AdminServicer
from broker.authorization import RULES, Access, Authorizer, Resource
from broker.config import BrokerConfig
from broker.errors import InvalidRequestError, NotFoundError, PermissionDeniedError
from broker.messaging_service import MessagingServicer
from broker.namespaces import Namespaces
from strata.auth.principal import acting_as
from strata.metadata import open_metadata_store
from strata.naming import InvalidNameError, NamespaceName, TopicName
from strata.v1 import admin_pb2, messaging_pb2

SERVICES = (
    admin_pb2.DESCRIPTOR.services_by_name["AdminService"],
    messaging_pb2.DESCRIPTOR.services_by_name["MessagingService"],
)
STREAMS = {"MessagingService/Produce", "MessagingService/Consume"}


def test_every_rpc_of_both_services_has_exactly_one_rule() -> None:
    methods = {
        f"{service.name}/{method.name}" for service in SERVICES for method in service.methods
    }
    assert methods - RULES.keys() == set(), "RPCs without an authorization rule"
    assert RULES.keys() - methods == set(), "rules for RPCs that do not exist"
    assert len(methods) >= 45


@pytest.mark.parametrize("servicer", [AdminServicer, MessagingServicer])
def test_every_unary_method_of_the_servicers_is_wrapped_by_its_rule(servicer: type) -> None:
    service = next(s for s in SERVICES if servicer.__name__.startswith(s.name[: -len("Service")]))
    for method in service.methods:
        key = f"{service.name}/{method.name}"
        wrapped = getattr(getattr(servicer, method.name), "__strata_authorized__", None)
        if key in STREAMS:
            assert wrapped is None  # checked on the first request instead
        else:
            assert wrapped == key, f"{key} is not authorized at the edge"


def test_every_rule_reads_its_resource_from_a_well_formed_request() -> None:
    """Each rule's extractor works on a request naming tenant a's resources."""
    values = {
        "name": "tenants/a",
        "parent": "tenants/a",
        "topic": "persistent://a/ns/t",
        "namespace": "a/ns",
        "subscription": "s",
    }
    for key, rule in RULES.items():
        service_name, _, method_name = key.partition("/")
        service = next(s for s in SERVICES if s.name == service_name)
        request_class: Any = _message_class(service.methods_by_name[method_name].input_type)
        request = request_class()
        fields = {f.name for f in request.DESCRIPTOR.fields}
        for field, value in values.items():
            if field in fields:
                setattr(request, field, value)
        if "name" in fields and rule.resource.__name__ in (
            "_namespace_of_name",
            "_namespace_or_topic",
        ):
            request.name = "tenants/a/namespaces/ns"
        if "name" in fields and rule.resource.__name__ == "_topic_of_name":
            request.name = "persistent://a/ns/t"
        if "parent" in fields and rule.resource.__name__ == "_namespace_of_parent":
            request.parent = "tenants/a/namespaces/ns"
        if method_name == "Produce":
            request.open.topic = "persistent://a/ns/t"
        if method_name == "Consume":
            request.subscribe.topic = "persistent://a/ns/t"
            request.subscribe.subscription = "s"
        resource = rule.resource(request)
        if rule.access is Access.SUPERUSER:
            assert resource == Resource()
        else:
            assert resource.tenant == "a", key


def _message_class(descriptor: Any) -> Any:
    module = admin_pb2 if descriptor.file.name.endswith("admin.proto") else messaging_pb2
    return getattr(module, descriptor.name)


@pytest.fixture
async def authorizer(tmp_path: Path) -> AsyncIterator[tuple[Authorizer, Namespaces]]:
    store = await open_metadata_store("memory://")
    namespaces = Namespaces(store, BrokerConfig(port=0, data_dir=tmp_path))
    await namespaces.create_tenant("a", ["admin-a"], [])
    await namespaces.create_tenant("b", ["admin-b"], [])
    for tenant in ("a", "b"):
        await namespaces.create_namespace(NamespaceName(tenant, "ns"))
    await namespaces.update_namespace_policies(
        NamespaceName("a", "ns"),
        lambda p: authorization.grant(p, "producer", ["produce"], None),
    )
    await namespaces.update_namespace_policies(
        NamespaceName("a", "ns"),
        lambda p: authorization.grant(p, "consumer", ["consume"], None),
    )
    try:
        yield Authorizer(namespaces, True, frozenset({"root"})), namespaces
    finally:
        await store.close()


TOPIC_A = TopicName.parse("persistent://a/ns/t")
TOPIC_B = TopicName.parse("persistent://b/ns/t")


def topic(name: TopicName, subscription: str = "") -> Resource:
    return Resource(name.tenant, name.namespace_name, name, subscription)


@pytest.mark.parametrize(
    ("role", "access", "resource", "allowed"),
    [
        ("root", Access.SUPERUSER, Resource(), True),
        ("admin-a", Access.SUPERUSER, Resource(), False),
        ("admin-a", Access.TENANT_ADMIN, Resource("a"), True),
        ("admin-a", Access.TENANT_ADMIN, Resource("b"), False),
        ("admin-a", Access.PRODUCE, topic(TOPIC_A), True),
        ("admin-a", Access.CONSUME, topic(TOPIC_B), False),
        ("producer", Access.PRODUCE, topic(TOPIC_A), True),
        ("producer", Access.CONSUME, topic(TOPIC_A), False),
        ("producer", Access.LOOKUP, topic(TOPIC_A), True),
        ("producer", Access.PRODUCE, topic(TOPIC_B), False),
        ("producer", Access.TENANT_ADMIN, Resource("a"), False),
        ("consumer", Access.CONSUME, topic(TOPIC_A, "s"), True),
        ("consumer", Access.PRODUCE, topic(TOPIC_A), False),
        ("consumer", Access.NAMESPACE_LOOKUP, Resource("a", NamespaceName("a", "ns")), True),
        ("nobody", Access.NAMESPACE_LOOKUP, Resource("a", NamespaceName("a", "ns")), False),
        ("nobody", Access.LOOKUP, topic(TOPIC_A), False),
        ("admin-a", Access.TENANT_ADMIN, Resource("missing"), False),
    ],
)
async def test_access_decisions(
    authorizer: tuple[Authorizer, Namespaces],
    role: str,
    access: Access,
    resource: Resource,
    allowed: bool,
) -> None:
    assert await authorizer[0].allowed(role, access, resource) is allowed


async def test_topic_grants_add_to_the_namespace_and_partitions_inherit_them(
    authorizer: tuple[Authorizer, Namespaces],
) -> None:
    check, namespaces = authorizer
    partitioned = TopicName.parse("persistent://a/ns/p")
    await namespaces.update_namespace_policies(
        NamespaceName("a", "ns"),
        lambda p: authorization.grant(p, "t-only", ["consume"], partitioned),
    )
    assert await check.allowed("t-only", Access.CONSUME, topic(partitioned.partition(3)))
    assert not await check.allowed("t-only", Access.CONSUME, topic(TOPIC_A))
    assert not await check.allowed("t-only", Access.PRODUCE, topic(partitioned))
    await namespaces.update_namespace_policies(
        NamespaceName("a", "ns"), lambda p: authorization.revoke(p, "t-only", partitioned)
    )
    assert not await check.allowed("t-only", Access.CONSUME, topic(partitioned))


async def test_a_restricted_subscription_admits_only_its_roles(
    authorizer: tuple[Authorizer, Namespaces],
) -> None:
    check, namespaces = authorizer
    await namespaces.update_namespace_policies(
        NamespaceName("a", "ns"), lambda p: authorization.grant(p, "other", ["consume"], None)
    )
    await namespaces.update_namespace_policies(
        NamespaceName("a", "ns"),
        lambda p: authorization.grant_subscription(p, "billing", ["consumer"]),
    )
    assert await check.allowed("consumer", Access.CONSUME, topic(TOPIC_A, "billing"))
    assert not await check.allowed("other", Access.CONSUME, topic(TOPIC_A, "billing"))
    assert await check.allowed("other", Access.CONSUME, topic(TOPIC_A, "audit"))
    assert await check.allowed("admin-a", Access.CONSUME, topic(TOPIC_A, "billing"))
    await namespaces.update_namespace_policies(
        NamespaceName("a", "ns"),
        lambda p: authorization.revoke_subscription(p, "billing", "consumer"),
    )
    assert await check.allowed("other", Access.CONSUME, topic(TOPIC_A, "billing"))


async def test_a_refusal_names_the_role_and_the_action(
    authorizer: tuple[Authorizer, Namespaces],
) -> None:
    request = messaging_pb2.ProduceRequest()
    request.open.topic = "persistent://b/ns/t"
    with acting_as("producer"), pytest.raises(PermissionDeniedError) as refused:
        await authorizer[0].authorize("MessagingService/Produce", request)
    assert str(refused.value) == (
        "role 'producer' may not produce to persistent://b/ns/t (Produce)"
    )
    with acting_as(None), pytest.raises(PermissionDeniedError, match="authenticated role"):
        await authorizer[0].authorize("MessagingService/Produce", request)
    request.open.topic = "a/../b"
    with acting_as("root"), pytest.raises(InvalidNameError):
        await authorizer[0].authorize("MessagingService/Produce", request)


async def test_disabled_allows_every_call_without_reading_the_request(
    authorizer: tuple[Authorizer, Namespaces],
) -> None:
    disabled = Authorizer(authorizer[1], False, frozenset())
    with acting_as(None):
        await disabled.authorize("AdminService/DeleteTenant", admin_pb2.DeleteTenantRequest())


def test_grants_check_their_roles_and_actions() -> None:
    with pytest.raises(InvalidRequestError, match="unknown action 'functions'"):
        authorization.check_actions(["produce", "functions"])
    with pytest.raises(InvalidRequestError, match="at least one action"):
        authorization.check_actions([])
    assert authorization.check_actions(["consume", "produce", "consume"]) == ["consume", "produce"]
    for bad in ("", "x" * 256, "a\nb"):
        with pytest.raises(InvalidRequestError):
            authorization.check_role(bad)
    with pytest.raises(NotFoundError, match="holds no permission"):
        authorization.revoke({}, "r", None)
    policies: dict[str, Any] = {}
    with pytest.raises(InvalidRequestError, match="at most 1000"):
        for index in range(authorization.MAX_GRANTED_ROLES + 1):
            authorization.grant(policies, f"r{index}", ["produce"], None)


def test_permission_targets_are_namespaces_or_topics() -> None:
    assert authorization.permission_target("tenants/a/namespaces/ns") == (
        NamespaceName("a", "ns"),
        None,
    )
    assert authorization.permission_target("a/ns") == (NamespaceName("a", "ns"), None)
    assert authorization.permission_target("a/ns/t") == (NamespaceName("a", "ns"), TOPIC_A)
    assert authorization.permission_target("persistent://a/ns/t")[1] == TOPIC_A
