"""The storage tier is not a public door (issue 11, item 4): a cluster (etcd, two bookies, two
brokers) with authentication and authorization on everywhere (role ``app`` administers
tenant ``public``). The broker
presents a superuser token to the bookies, so produce and consume work; a client holding a
valid token of an ordinary role, calling the bookie API directly, is refused
PERMISSION_DENIED on every ledger operation, and without a token UNAUTHENTICATED. Health
stays open. No process logs a token.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import strata
from strata.storage.v1 import bookie_pb2, bookie_pb2_grpc
from strata.v1 import admin_pb2, admin_pb2_grpc, messaging_pb2, messaging_pb2_grpc
from tests.cluster import Cluster

pytestmark = pytest.mark.integration

TOPIC = "persistent://public/default/closed-bookies"
BROKER_ROLE = "broker-superuser"


def run_cli(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "strata", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@dataclass
class SecuredCluster:
    cluster: Cluster
    broker_token: str
    app_token: str
    ledger_id: int
    stranger_token: str


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredCluster]:
    root = tmp_path_factory.mktemp("secured")
    secret = root / "secret.key"
    run_cli("tokens", "create-secret-key", "--output", str(secret))
    broker_token = run_cli(
        "tokens", "create", "--secret-key", f"file:{secret}", "--subject", BROKER_ROLE
    )
    app_token = run_cli("tokens", "create", "--secret-key", f"file:{secret}", "--subject", "app")
    stranger_token = run_cli(
        "tokens", "create", "--secret-key", f"file:{secret}", "--subject", "stranger"
    )
    token_file = root / "broker.token"
    token_file.write_text(broker_token)
    authentication = [
        "--authentication-enabled",
        "true",
        "--auth-token-secret-key",
        f"file:{secret}",
        "--broker-client-auth-token-file",
        str(token_file),
    ]
    cluster = Cluster(
        root,
        bookies=2,
        brokers=2,
        bookie_args=[
            "--journal-fsync",
            "false",
            *authentication,
            "--authorization-enabled",
            "true",
            "--superuser-roles",
            BROKER_ROLE,
        ],
        broker_args=[
            *authentication,
            "--authorization-enabled",
            "true",
            "--superuser-roles",
            BROKER_ROLE,
        ],
        admin_token=broker_token,
    )
    with contextlib.closing(cluster):
        cluster.start()
        # Authorization is on at the brokers too: role "app" administers tenant public.
        with grpc.insecure_channel(cluster.broker_address(0)) as channel:
            admin_pb2_grpc.AdminServiceStub(channel).UpdateTenant(
                admin_pb2.UpdateTenantRequest(
                    tenant=admin_pb2.Tenant(name="tenants/public", admin_roles=["app"])
                ),
                metadata=bearer(broker_token),
                timeout=30,
            )
        with strata.Client(
            cluster.service_url, authentication=strata.AuthenticationToken(app_token)
        ) as client:
            message_id = client.create_producer(TOPIC).send(b"stored on closed bookies")
        yield SecuredCluster(
            cluster, broker_token, app_token, message_id.ledger_id(), stranger_token
        )


def bearer(token: str | None) -> Any:
    return None if token is None else [("authorization", f"Bearer {token}")]


def ledger_calls(ledger_id: int) -> list[tuple[str, Any]]:
    """Each bookie operation as (its name, a call taking a stub and metadata)."""

    def add(stub: Any, metadata: Any) -> Any:
        entry = bookie_pb2.AddEntry(
            request_id=1, ledger_id=ledger_id, entry_id=99, payload=b"forged", master_key=b"k"
        )
        request = bookie_pb2.AddEntriesRequest(entries=[entry])
        return list(stub.AddEntries(iter([request]), metadata=metadata, timeout=10))

    return [
        ("AddEntries", add),
        (
            "ReadEntries",
            lambda stub, md: stub.ReadEntries(
                bookie_pb2.ReadEntriesRequest(
                    ledger_id=ledger_id, first_entry_id=0, last_entry_id=0
                ),
                metadata=md,
                timeout=10,
            ),
        ),
        (
            "ReadLastAddConfirmed",
            lambda stub, md: stub.ReadLastAddConfirmed(
                bookie_pb2.ReadLastAddConfirmedRequest(ledger_id=ledger_id),
                metadata=md,
                timeout=10,
            ),
        ),
        (
            "FenceLedger",
            lambda stub, md: stub.FenceLedger(
                bookie_pb2.FenceLedgerRequest(ledger_id=ledger_id, master_key=b"k"),
                metadata=md,
                timeout=10,
            ),
        ),
        (
            "DeleteLedger",
            lambda stub, md: stub.DeleteLedger(
                bookie_pb2.DeleteLedgerRequest(ledger_id=ledger_id), metadata=md, timeout=10
            ),
        ),
    ]


@pytest.mark.parametrize("bookie", [0, 1])
def test_an_ordinary_role_is_denied_every_ledger_operation(
    secured: SecuredCluster, bookie: int
) -> None:
    address = secured.cluster.bookie_id(bookie)
    with grpc.insecure_channel(address) as channel:
        stub = bookie_pb2_grpc.BookieServiceStub(channel)
        for name, call in ledger_calls(secured.ledger_id):
            with pytest.raises(grpc.RpcError) as caught:
                call(stub, bearer(secured.app_token))
            error: Any = caught.value
            assert error.code() is grpc.StatusCode.PERMISSION_DENIED, (name, error)
            assert "role 'app'" in error.details() and name in error.details()
            with pytest.raises(grpc.RpcError) as caught:
                call(stub, None)
            error = caught.value
            assert error.code() is grpc.StatusCode.UNAUTHENTICATED, (name, error)
            assert error.details() == "authentication token missing"


def test_the_data_is_intact_and_the_superuser_reads_it(secured: SecuredCluster) -> None:
    """The refused calls changed nothing (no fence, no delete): the entry is still there for
    the broker's role, and a consumer still gets the message through the broker."""
    read = 0
    for bookie in range(2):
        with grpc.insecure_channel(secured.cluster.bookie_id(bookie)) as channel:
            stub = bookie_pb2_grpc.BookieServiceStub(channel)
            try:
                response = stub.ReadEntries(
                    bookie_pb2.ReadEntriesRequest(
                        ledger_id=secured.ledger_id, first_entry_id=0, last_entry_id=0
                    ),
                    metadata=bearer(secured.broker_token),
                    timeout=10,
                )
            except grpc.RpcError as exc:
                assert exc.code() is grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
                continue
            assert len(response.entries) == 1
            read += 1
    assert read >= 1, "the entry is on its ensemble's bookies"
    with strata.Client(
        secured.cluster.service_url, authentication=strata.AuthenticationToken(secured.app_token)
    ) as client:
        consumer = client.subscribe(TOPIC, "s", initial_position=strata.InitialPosition.Earliest)
        assert consumer.receive(timeout_millis=15_000).data() == b"stored on closed bookies"
        # The producer keeps working: the ledger was not fenced by the refused FenceLedger.
        client.create_producer(TOPIC).send(b"after")
        assert consumer.receive(timeout_millis=15_000).data() == b"after"


def test_bookie_health_is_open(secured: SecuredCluster) -> None:
    with grpc.insecure_channel(secured.cluster.bookie_id(0)) as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=10
        )
    assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_the_broker_refuses_clients_without_a_token(secured: SecuredCluster) -> None:
    with strata.Client(secured.cluster.service_url, operation_timeout_seconds=10) as client:
        with pytest.raises(strata.AuthenticationError):
            client.create_producer(TOPIC)


def test_no_process_logs_a_token(secured: SecuredCluster) -> None:
    logs = [p.log_text() for p in [*secured.cluster.brokers, *secured.cluster.bookies]]
    assert all(logs)
    for token in (secured.broker_token, secured.app_token):
        signature = token.rsplit(".", 1)[-1]
        for log in logs:
            assert signature not in log


def test_a_broker_forwards_an_unload_to_the_owner_with_its_token(secured: SecuredCluster) -> None:
    """Broker to broker: an unload asked of the broker that does not own the topic's bundle is
    forwarded to the owner, which requires a token too; the forwarding broker presents its
    own (``--broker-client-auth-token-file``)."""
    app = bearer(secured.app_token)
    first = secured.cluster.broker_address(0)
    with grpc.insecure_channel(first) as channel:
        answer = messaging_pb2_grpc.MessagingServiceStub(channel).Lookup(
            messaging_pb2.LookupRequest(topic=TOPIC, authoritative=False),
            metadata=app,
            timeout=10,
        )
    owner = answer.broker_address
    brokers = [secured.cluster.broker_address(i) for i in range(2)]
    assert owner in brokers
    other = next(address for address in brokers if address != owner)
    with grpc.insecure_channel(other) as channel:
        admin_pb2_grpc.AdminServiceStub(channel).UnloadNamespace(
            admin_pb2.UnloadNamespaceRequest(name="tenants/public/namespaces/default"),
            metadata=app,
            timeout=30,
        )
    # The owner let go of the bundle: the topic is served again after a fresh lookup.
    with strata.Client(
        secured.cluster.service_url, authentication=strata.AuthenticationToken(secured.app_token)
    ) as client:
        client.create_producer(TOPIC).send(b"after the unload")


def test_every_broker_denies_a_role_without_grants(secured: SecuredCluster) -> None:
    """Authorization on both brokers: a valid token without grants is refused on produce and
    on tenant administration, whichever broker it reaches first."""
    with strata.Client(
        secured.cluster.service_url,
        authentication=strata.AuthenticationToken(secured.stranger_token),
        operation_timeout_seconds=10,
    ) as client:
        with pytest.raises(strata.AuthorizationError, match="role 'stranger' may not look up"):
            client.create_producer(TOPIC)
    for index in range(2):
        with grpc.insecure_channel(secured.cluster.broker_address(index)) as channel:
            with pytest.raises(grpc.RpcError) as caught:
                admin_pb2_grpc.AdminServiceStub(channel).UnloadNamespace(
                    admin_pb2.UnloadNamespaceRequest(name="tenants/public/namespaces/default"),
                    metadata=bearer(secured.stranger_token),
                    timeout=30,
                )
            assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]


def test_a_missing_broker_token_file_is_a_usage_error(tmp_path: Path) -> None:
    secret = tmp_path / "secret.key"
    run_cli("tokens", "create-secret-key", "--output", str(secret))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "strata",
            "bookie",
            "--metadata-url",
            "etcd://127.0.0.1:1",
            "--data-dir",
            str(tmp_path / "b"),
            "--authentication-enabled",
            "true",
            "--auth-token-secret-key",
            f"file:{secret}",
            "--broker-client-auth-token-file",
            str(tmp_path / "absent.token"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "--broker-client-auth-token-file" in done.stderr
    assert "Traceback" not in done.stderr
