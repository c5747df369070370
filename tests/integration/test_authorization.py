"""The authorization matrix (issue 11 item 2) against a real standalone with
``--authentication-enabled --authorization-enabled --superuser-roles root``.

Every role kind — a superuser, the admins of tenants A and B, a producer-only and a
consumer-only role on A's namespace, a valid token with no grants, and no token — calls every
RPC of ``AdminService`` and ``MessagingService`` on tenant A's and on tenant B's resources.
Each cell must be allowed (any status but PERMISSION_DENIED/UNAUTHENTICATED) or refused as
``EXPECTED`` — the rules written here again, independently of ``broker.authorization`` —
says; a test fails on any RPC the matrix does not cover. Requests are chosen so that an
allowed call changes nothing the next cells read (a delete names a missing resource or one
that is not empty, a create an existing one, a policy is set to its current value).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest

import strata
from strata.v1 import admin_pb2, admin_pb2_grpc, messaging_pb2, messaging_pb2_grpc
from tests.harness import Standalone

pytestmark = pytest.mark.integration

CALL_TIMEOUT_S = 10
TENANTS = ("a", "b")
# Role kinds: the token subject of each (None: no token at all).
ROLES: dict[str, str | None] = {
    "superuser": "root",
    "admin of a": "admin-a",
    "admin of b": "admin-b",
    "producer on a": "producer-a",
    "consumer on a": "consumer-a",
    "no grants": "stranger",
    "no token": None,
}

A = admin_pb2
M = messaging_pb2


def _admin(method: str, build: Callable[[str], Any]) -> tuple[str, str, Callable[[str], Any]]:
    return ("AdminService", method, build)


def _ns(t: str) -> str:
    return f"tenants/{t}/namespaces/ns"


def _topic(t: str) -> str:
    return f"persistent://{t}/ns/t"


# Every RPC: (service, method, request for tenant t). Harmless when allowed (module docstring).
OPERATIONS: list[tuple[str, str, Callable[[str], Any]]] = [
    _admin(
        "CreateTenant",
        lambda t: A.CreateTenantRequest(
            tenant_id=t, tenant=A.Tenant(name=f"tenants/{t}", admin_roles=[f"admin-{t}"])
        ),
    ),
    _admin("GetTenant", lambda t: A.GetTenantRequest(name=f"tenants/{t}")),
    _admin("ListTenants", lambda t: A.ListTenantsRequest()),
    _admin("DeleteTenant", lambda t: A.DeleteTenantRequest(name=f"tenants/{t}")),
    _admin(
        "UpdateTenant",
        lambda t: A.UpdateTenantRequest(
            tenant=A.Tenant(name=f"tenants/{t}", admin_roles=[f"admin-{t}"])
        ),
    ),
    _admin(
        "CreateNamespace",
        lambda t: A.CreateNamespaceRequest(parent=f"tenants/{t}", namespace_id="ns"),
    ),
    _admin("GetNamespace", lambda t: A.GetNamespaceRequest(name=_ns(t))),
    _admin("ListNamespaces", lambda t: A.ListNamespacesRequest(parent=f"tenants/{t}")),
    _admin("DeleteNamespace", lambda t: A.DeleteNamespaceRequest(name=_ns(t))),
    _admin(
        "SetPersistence",
        lambda t: A.SetPersistenceRequest(
            name=_ns(t),
            persistence=A.PersistencePolicies(
                bookkeeper_ensemble=1, bookkeeper_write_quorum=1, bookkeeper_ack_quorum=1
            ),
        ),
    ),
    _admin(
        "SetLimits",
        lambda t: A.SetLimitsRequest(
            name=_ns(t), limits=A.LimitPolicies(max_topics_per_namespace=1000)
        ),
    ),
    _admin(
        "SetOffloadThreshold",
        lambda t: A.SetOffloadThresholdRequest(name=_ns(t), threshold_bytes=-1),
    ),
    _admin("SetOffloadDeletionLag", lambda t: A.SetOffloadDeletionLagRequest(name=_ns(t))),
    _admin("SetDeduplication", lambda t: A.SetDeduplicationRequest(name=_ns(t))),
    _admin("SetRetention", lambda t: A.SetRetentionRequest(name=_ns(t))),
    _admin("SetMessageTtl", lambda t: A.SetMessageTtlRequest(name=_ns(t))),
    _admin("SetBacklogQuota", lambda t: A.SetBacklogQuotaRequest(name=_ns(t))),
    _admin("SetPublishRate", lambda t: A.SetPublishRateRequest(name=_ns(t))),
    _admin("SetDispatchRate", lambda t: A.SetDispatchRateRequest(name=_ns(t))),
    _admin("SetTopicPolicies", lambda t: A.SetTopicPoliciesRequest(name=_topic(t))),
    _admin("GetTopicPolicies", lambda t: A.GetTopicPoliciesRequest(name=_topic(t))),
    _admin("CompactTopic", lambda t: A.CompactTopicRequest(name=f"persistent://{t}/ns/missing")),
    _admin("GetCompactionStatus", lambda t: A.GetCompactionStatusRequest(name=_topic(t))),
    _admin("SetCompactionThreshold", lambda t: A.SetCompactionThresholdRequest(name=_ns(t))),
    _admin("CreateTopic", lambda t: A.CreateTopicRequest(name=_topic(t))),
    _admin("ListTopics", lambda t: A.ListTopicsRequest(parent=_ns(t))),
    _admin("DeleteTopic", lambda t: A.DeleteTopicRequest(name=f"persistent://{t}/ns/missing")),
    _admin("GetTopicStats", lambda t: A.GetTopicStatsRequest(name=_topic(t))),
    _admin("GetTopicInternalStats", lambda t: A.GetTopicInternalStatsRequest(name=_topic(t))),
    _admin(
        "OffloadTopic",
        lambda t: A.OffloadTopicRequest(name=f"persistent://{t}/ns/missing"),
    ),
    _admin("GetOffloadStatus", lambda t: A.GetOffloadStatusRequest(name=_topic(t))),
    _admin(
        "CreatePartitionedTopic",
        lambda t: A.CreatePartitionedTopicRequest(name=_topic(t), partitions=2),
    ),
    _admin("ListSubscriptions", lambda t: A.ListSubscriptionsRequest(topic=_topic(t))),
    _admin(
        "CreateSubscription",
        lambda t: A.CreateSubscriptionRequest(topic=_topic(t), subscription="s"),
    ),
    _admin(
        "DeleteSubscription",
        lambda t: A.DeleteSubscriptionRequest(topic=_topic(t), subscription="missing"),
    ),
    _admin(
        "ResetCursor",
        lambda t: A.ResetCursorRequest(topic=_topic(t), subscription="missing", message_id="1:0"),
    ),
    _admin(
        "SkipMessages",
        lambda t: A.SkipMessagesRequest(topic=_topic(t), subscription="missing", count=1),
    ),
    _admin(
        "PeekMessages",
        lambda t: A.PeekMessagesRequest(topic=_topic(t), subscription="missing", count=1),
    ),
    _admin(
        "ExpireMessages",
        lambda t: A.ExpireMessagesRequest(topic=_topic(t), subscription="missing"),
    ),
    _admin("GetMessage", lambda t: A.GetMessageRequest(topic=_topic(t), from_earliest=1)),
    _admin("ListBookies", lambda t: A.ListBookiesRequest()),
    _admin("DecommissionBookie", lambda t: A.DecommissionBookieRequest(id="127.0.0.1:1")),
    _admin("ListBrokers", lambda t: A.ListBrokersRequest()),
    _admin("ListTopicSummaries", lambda t: A.ListTopicSummariesRequest()),
    _admin("GetRuntimeConfig", lambda t: A.GetRuntimeConfigRequest()),
    _admin("ListBundles", lambda t: A.ListBundlesRequest(name=_ns(t))),
    _admin("UnloadTopic", lambda t: A.UnloadTopicRequest(name=f"persistent://{t}/ns/missing")),
    _admin("UnloadNamespace", lambda t: A.UnloadNamespaceRequest(name=_ns(t), bundle="0x0_0x1")),
    _admin(
        "SplitNamespaceBundle",
        lambda t: A.SplitNamespaceBundleRequest(name=_ns(t), bundle="0x0_0x1"),
    ),
    _admin(
        "GrantPermission",
        lambda t: A.GrantPermissionRequest(name=_ns(t), role="unused", actions=["produce"]),
    ),
    _admin("RevokePermission", lambda t: A.RevokePermissionRequest(name=_topic(t), role="unused")),
    _admin("GetPermissions", lambda t: A.GetPermissionsRequest(name=_ns(t))),
    _admin(
        "GrantSubscriptionPermission",
        lambda t: A.GrantSubscriptionPermissionRequest(
            name=_ns(t), subscription="restricted", roles=["unused"]
        ),
    ),
    _admin(
        "RevokeSubscriptionPermission",
        lambda t: A.RevokeSubscriptionPermissionRequest(
            name=_ns(t), subscription="restricted", role="nobody"
        ),
    ),
    (
        "MessagingService",
        "Produce",
        lambda t: M.ProduceRequest(open=M.OpenProducer(topic=_topic(t))),
    ),
    (
        "MessagingService",
        "Consume",
        lambda t: M.ConsumeRequest(
            subscribe=M.Subscribe(
                topic=_topic(t), subscription="s", type=M.SUBSCRIPTION_TYPE_SHARED
            )
        ),
    ),
    ("MessagingService", "Lookup", lambda t: M.LookupRequest(topic=_topic(t))),
    (
        "MessagingService",
        "GetPartitionedTopicMetadata",
        lambda t: M.PartitionedTopicMetadataRequest(topic=_topic(t)),
    ),
    (
        "MessagingService",
        "GetTopicsOfNamespace",
        lambda t: M.GetTopicsOfNamespaceRequest(namespace=f"{t}/ns"),
    ),
]

# The rules, stated again: what each operation needs.
CLUSTER = {
    "CreateTenant",
    "ListTenants",
    "DeleteTenant",
    "UpdateTenant",
    "ListBookies",
    "DecommissionBookie",
    "ListBrokers",
    "ListTopicSummaries",
    "GetRuntimeConfig",
    "SplitNamespaceBundle",
}
PRODUCE = {"Produce"}
CONSUME = {
    "Consume",
    "ListSubscriptions",
    "CreateSubscription",
    "DeleteSubscription",
    "ResetCursor",
    "SkipMessages",
    "PeekMessages",
    "ExpireMessages",
    "GetMessage",
}
LOOKUP = {
    "Lookup",
    "GetPartitionedTopicMetadata",
    "GetTopicStats",
    "GetTopicInternalStats",
    "GetTopicsOfNamespace",
}


def expected(kind: str, method: str, tenant: str) -> str:
    """``allowed``, ``denied`` (PERMISSION_DENIED) or ``unauthenticated``."""
    if kind == "no token":
        return "unauthenticated"
    if kind == "superuser":
        return "allowed"
    if method in CLUSTER:
        return "denied"
    if kind == f"admin of {tenant}":
        return "allowed"
    if tenant != "a":
        return "denied"
    if kind == "producer on a" and method in PRODUCE | LOOKUP:
        return "allowed"
    if kind == "consumer on a" and method in CONSUME | LOOKUP:
        return "allowed"
    return "denied"


@dataclass
class Cluster:
    standalone: Standalone
    secret: bytes

    def token(self, role: str) -> str:
        return jwt.encode({"sub": role}, self.secret, algorithm="HS256")


def run_cli(cluster: Cluster, role: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "strata", "admin", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={
            "PATH": "/usr/bin:/bin",
            "STRATA_SERVICE_URL": cluster.standalone.address,
            "STRATA_AUTH_TOKEN": cluster.token(role),
        },
    )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("authz")
    secret_file = root / "secret.key"
    made = subprocess.run(
        [
            sys.executable,
            "-m",
            "strata",
            "tokens",
            "create-secret-key",
            "--output",
            str(secret_file),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert made.returncode == 0, made.stderr
    standalone = Standalone(
        root / "data",
        "--authentication-enabled",
        "true",
        "--authorization-enabled",
        "true",
        "--superuser-roles",
        "root",
        "--auth-token-secret-key",
        f"file:{secret_file}",
    ).start()
    try:
        cluster = Cluster(standalone, secret_file.read_bytes())
        for tenant in TENANTS:
            for args in (
                ("tenants", "create", tenant, "--admin-roles", f"admin-{tenant}"),
                ("namespaces", "create", f"{tenant}/ns"),
                ("topics", "create", f"{tenant}/ns/t"),
            ):
                done = run_cli(cluster, "root", *args)
                assert done.returncode == 0, done.stderr
        # The tenant admin grants, not the superuser: grants are tenant administration.
        for role, actions in (("producer-a", "produce"), ("consumer-a", "consume")):
            done = run_cli(
                cluster, "admin-a", "namespaces", "grant-permission", "a/ns",
                "--role", role, "--actions", actions,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
        yield cluster
    finally:
        standalone.stop()


def call(channel: grpc.Channel, service: str, method: str, request: Any, token: str | None) -> None:
    """Make the call; raise its RpcError if refused. A stream is judged by its first answer."""
    metadata = None if token is None else [("authorization", f"Bearer {token}")]
    if service == "AdminService":
        getattr(admin_pb2_grpc.AdminServiceStub(channel), method)(
            request, metadata=metadata, timeout=CALL_TIMEOUT_S
        )
        return
    stub = messaging_pb2_grpc.MessagingServiceStub(channel)
    if method in ("Produce", "Consume"):
        responses = getattr(stub, method)(
            iter([request]), metadata=metadata, timeout=CALL_TIMEOUT_S
        )
        try:
            next(iter(responses))
        finally:
            responses.cancel()
        return
    getattr(stub, method)(request, metadata=metadata, timeout=CALL_TIMEOUT_S)


def outcome(
    channel: grpc.Channel, service: str, method: str, request: Any, token: str | None
) -> str:
    try:
        call(channel, service, method, request, token)
    except grpc.RpcError as exc:
        code = exc.code()
        if code == grpc.StatusCode.PERMISSION_DENIED:
            return "denied"
        if code == grpc.StatusCode.UNAUTHENTICATED:
            return "unauthenticated"
        if code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
            return f"broken ({code.name}: {exc.details()})"  # never expected in any cell
        return "allowed"  # got past authorization; refused for what it asked (e.g. NOT_FOUND)
    return "allowed"


def test_the_matrix_covers_every_rpc_of_both_services() -> None:
    services = (
        admin_pb2.DESCRIPTOR.services_by_name["AdminService"],
        messaging_pb2.DESCRIPTOR.services_by_name["MessagingService"],
    )
    rpcs = {(s.name, m.name) for s in services for m in s.methods}
    assert {(service, method) for service, method, _ in OPERATIONS} == rpcs


def test_authorization_matrix(cluster: Cluster) -> None:
    cells = 0
    wrong: list[str] = []
    counts = {"allowed": 0, "denied": 0, "unauthenticated": 0}
    with grpc.insecure_channel(cluster.standalone.address) as channel:
        for kind, role in ROLES.items():
            token = None if role is None else cluster.token(role)
            for service, method, build in OPERATIONS:
                for tenant in TENANTS:
                    cells += 1
                    want = expected(kind, method, tenant)
                    got = outcome(channel, service, method, build(tenant), token)
                    counts[got if got in counts else "broken"] = counts.get(got, 0) + 1
                    if got != want:
                        wrong.append(f"{kind} {method} on tenant {tenant}: {got}, expected {want}")
    print(f"authorization matrix: {cells} cells, {counts}")
    assert not wrong, "\n".join(wrong)
    assert cells == len(ROLES) * len(OPERATIONS) * len(TENANTS)
    assert counts["allowed"] and counts["denied"] and counts["unauthenticated"]


def test_a_refusal_names_the_role_and_the_action(cluster: Cluster) -> None:
    with grpc.insecure_channel(cluster.standalone.address) as channel:
        with pytest.raises(grpc.RpcError) as refused:
            call(
                channel,
                "MessagingService",
                "Produce",
                M.ProduceRequest(open=M.OpenProducer(topic=_topic("a"))),
                cluster.token("consumer-a"),
            )
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert refused.value.details() == (
        "role 'consumer-a' may not produce to persistent://a/ns/t (Produce)"
    )


def test_sdk_round_trip_with_grants_and_a_refused_producer(cluster: Cluster) -> None:
    url = cluster.standalone.address
    topic = "persistent://a/ns/sdk"
    with strata.Client(
        url, authentication=strata.AuthenticationToken(cluster.token("admin-a"))
    ) as admin:
        admin.create_producer(topic).close()  # the tenant admin may create it
    producer_client = strata.Client(
        url, authentication=strata.AuthenticationToken(cluster.token("producer-a"))
    )
    consumer_client = strata.Client(
        url, authentication=strata.AuthenticationToken(cluster.token("consumer-a"))
    )
    try:
        consumer = consumer_client.subscribe(topic, "sdk-sub")
        producer = producer_client.create_producer(topic)
        for index in range(10):
            producer.send(f"m{index}".encode())
        received = [consumer.receive(timeout_millis=10_000) for _ in range(10)]
        for message in received:
            consumer.acknowledge(message)
        assert [m.data() for m in received] == [f"m{i}".encode() for i in range(10)]
        with pytest.raises(strata.AuthorizationError, match="may not produce to"):
            consumer_client.create_producer(topic)
    finally:
        producer_client.close()
        consumer_client.close()


def test_grants_and_subscription_restrictions_through_the_cli(cluster: Cluster) -> None:
    def admin_a(*args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(cluster, "admin-a", *args)

    shown = admin_a("namespaces", "permissions", "a/ns")
    assert shown.returncode == 0, shown.stderr
    assert '"producer-a": [\n    "produce"\n  ]' in shown.stdout
    granted = admin_a(
        "topics", "grant-permission", "a/ns/t", "--role", "late", "--actions", "consume"
    )
    assert granted.returncode == 0, granted.stderr
    topic_grants = admin_a("topics", "permissions", "a/ns/t")
    assert '"late"' in topic_grants.stdout and '"consumer-a"' in topic_grants.stdout
    refused = run_cli(cluster, "consumer-a", "namespaces", "grant-permission", "a/ns",
                      "--role", "x", "--actions", "produce")  # fmt: skip
    assert refused.returncode == 1
    assert "PERMISSION_DENIED: role 'consumer-a' may not administer a/ns" in refused.stderr
    bad = admin_a("namespaces", "grant-permission", "a/ns", "--role", "x", "--actions", "sinks")
    assert "INVALID_ARGUMENT: unknown action 'sinks'" in bad.stderr
    restricted = admin_a(
        "namespaces", "grant-subscription-permission", "a/ns",
        "--subscription", "billing", "--roles", "late",
    )  # fmt: skip
    assert restricted.returncode == 0, restricted.stderr
    with grpc.insecure_channel(cluster.standalone.address) as channel:
        subscribe = M.ConsumeRequest(
            subscribe=M.Subscribe(
                topic=_topic("a"), subscription="billing", type=M.SUBSCRIPTION_TYPE_SHARED
            )
        )
        assert outcome(
            channel, "MessagingService", "Consume", subscribe, cluster.token("late")
        ) == ("allowed")
        assert (
            outcome(channel, "MessagingService", "Consume", subscribe, cluster.token("consumer-a"))
            == "denied"
        )
    revoked = admin_a("topics", "revoke-permission", "a/ns/t", "--role", "late")
    assert revoked.returncode == 0, revoked.stderr
    with grpc.insecure_channel(cluster.standalone.address) as channel:
        assert outcome(
            channel, "MessagingService", "Consume", subscribe, cluster.token("late")
        ) == ("denied")
    opened = admin_a(
        "namespaces", "revoke-subscription-permission", "a/ns",
        "--subscription", "billing", "--role", "late",
    )  # fmt: skip
    assert opened.returncode == 0, opened.stderr
    listed = admin_a("namespaces", "subscription-permissions", "a/ns")
    assert listed.returncode == 0, listed.stderr
    assert "billing" not in listed.stdout


def test_tenant_update_changes_who_administers(cluster: Cluster) -> None:
    made = run_cli(cluster, "root", "tenants", "create", "c", "--admin-roles", "admin-c")
    assert made.returncode == 0, made.stderr
    assert run_cli(cluster, "admin-c", "namespaces", "create", "c/one").returncode == 0
    by_other = run_cli(cluster, "new-admin", "namespaces", "create", "c/two")
    assert "PERMISSION_DENIED" in by_other.stderr
    not_by_admin = run_cli(cluster, "admin-c", "tenants", "update", "c", "--admin-roles", "x")
    assert "PERMISSION_DENIED" in not_by_admin.stderr
    updated = run_cli(cluster, "root", "tenants", "update", "c", "--admin-roles", "new-admin")
    assert updated.returncode == 0, updated.stderr
    assert run_cli(cluster, "new-admin", "namespaces", "create", "c/two").returncode == 0
    assert (
        "PERMISSION_DENIED" in run_cli(cluster, "admin-c", "namespaces", "create", "c/three").stderr
    )


def test_a_server_log_names_no_token(cluster: Cluster, tmp_path: Path) -> None:
    log = cluster.standalone.log_text()
    assert cluster.token("root") not in log
    assert "strata.audit" in log or "PERMISSION_DENIED" in log
