"""Token authentication against a real standalone (``--authentication-enabled true``).

One standalone for the module, its secret key made by ``strata tokens create-secret-key`` and
its valid tokens by ``strata tokens create`` (the CLI round trip), with an audience and a one
second refresh check so that expiry on open streams shows within seconds. Every refusal
variant is tried on a messaging RPC (unary and stream) and an admin RPC; the last test greps
the server's whole log for every token used.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from grpc_health.v1 import health_pb2, health_pb2_grpc

import strata
from strata.v1 import admin_pb2, admin_pb2_grpc, messaging_pb2, messaging_pb2_grpc
from tests.harness import Standalone

pytestmark = pytest.mark.integration

CLI_TIMEOUT_SECONDS = 120
AUDIENCE = "strata-test"
REFRESH_CHECK_SECONDS = 1
TOPIC = "persistent://public/default/auth-topic"


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "strata", *args],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_SECONDS,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
    )


@dataclass
class AuthServer:
    standalone: Standalone
    secret_file: Path
    secret: bytes
    tokens_used: list[str]

    def token(self, subject: str = "admin", expiry: str | None = None) -> str:
        args = ["tokens", "create", "--secret-key", f"file:{self.secret_file}"]
        args += ["--subject", subject, "--audience", AUDIENCE]
        if expiry:
            args += ["--expiry-time", expiry]
        created = run_cli(*args)
        assert created.returncode == 0, created.stderr
        token = created.stdout.strip()
        self.tokens_used.append(token)
        return token

    def signed(self, claims: dict[str, Any], key: bytes | None = None) -> str:
        token = jwt.encode({"aud": AUDIENCE, **claims}, key or self.secret, algorithm="HS256")
        self.tokens_used.append(token)
        return token


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthServer]:
    root = tmp_path_factory.mktemp("auth")
    secret_file = root / "secret.key"
    made = run_cli("tokens", "create-secret-key", "--output", str(secret_file))
    assert made.returncode == 0, made.stderr
    assert secret_file.stat().st_mode & 0o077 == 0, "the key file is the owner's only"
    standalone = Standalone(
        root / "data",
        "--authentication-enabled",
        "true",
        "--auth-token-secret-key",
        f"file:{secret_file}",
        "--auth-token-audience",
        AUDIENCE,
        "--authentication-refresh-check-seconds",
        str(REFRESH_CHECK_SECONDS),
    )
    # Readiness goes through the health service, which needs no token.
    standalone.start()
    try:
        yield AuthServer(standalone, secret_file, secret_file.read_bytes(), [])
    finally:
        standalone.stop()


def bearer(token: str | None) -> list[tuple[str, str]] | None:
    return None if token is None else [("authorization", f"Bearer {token}")]


def lookup(server: AuthServer, metadata: Any) -> Any:
    with grpc.insecure_channel(server.standalone.address) as channel:
        stub = messaging_pb2_grpc.MessagingServiceStub(channel)
        return stub.Lookup(messaging_pb2.LookupRequest(topic=TOPIC), metadata=metadata, timeout=10)


def list_tenants(server: AuthServer, metadata: Any) -> Any:
    with grpc.insecure_channel(server.standalone.address) as channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        return stub.ListTenants(admin_pb2.ListTenantsRequest(), metadata=metadata, timeout=10)


def open_producer(server: AuthServer, metadata: Any) -> Any:
    """The first answer of a Produce stream (``opened``), or the stream's error."""
    with grpc.insecure_channel(server.standalone.address) as channel:
        stub = messaging_pb2_grpc.MessagingServiceStub(channel)
        request = messaging_pb2.ProduceRequest(open=messaging_pb2.OpenProducer(topic=TOPIC))
        responses = stub.Produce(iter([request]), metadata=metadata, timeout=10)
        return next(iter(responses))


def rs256_token(claims: dict[str, Any]) -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return jwt.encode(claims, key, algorithm="RS256")


def hs256_with_key(key: bytes, claims: bytes) -> str:
    header = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=")
    body = base64.urlsafe_b64encode(claims).rstrip(b"=")
    signature = hmac.new(key, header + b"." + body, hashlib.sha256).digest()
    return (header + b"." + body + b"." + base64.urlsafe_b64encode(signature).rstrip(b"=")).decode()


# Each variant: (its name, a maker of the token (None: no metadata), the reason expected).
Variant = tuple[str, Callable[[AuthServer], str | None], str]
VARIANTS: list[Variant] = [
    ("missing", lambda s: None, "missing"),
    ("garbage", lambda s: "garbage", "malformed"),
    ("three dots", lambda s: "a.b.c", "malformed"),
    ("7 KB of garbage", lambda s: "x" * 7000, "malformed"),
    ("expired", lambda s: s.signed({"sub": "admin", "exp": int(time.time()) - 60}), "expired"),
    ("not yet valid", lambda s: s.signed({"sub": "a", "nbf": time.time() + 600}), "not yet valid"),
    ("wrong signature", lambda s: s.signed({"sub": "admin"}, b"k" * 32), "wrong signature"),
    (
        "alg none",
        lambda s: jwt.encode({"sub": "admin", "aud": AUDIENCE}, None, algorithm="none"),  # type: ignore[arg-type]
        "wrong algorithm",
    ),
    ("RS256 to an HS256 server", lambda s: rs256_token({"sub": "admin"}), "wrong algorithm"),
    ("wrong audience", lambda s: s.signed({"sub": "admin", "aud": "elsewhere"}), "wrong audience"),
    ("no subject", lambda s: s.signed({"role": "admin"}), "missing subject"),
]


@pytest.mark.parametrize(("name", "make", "reason"), VARIANTS, ids=[v[0] for v in VARIANTS])
def test_every_refusal_is_unauthenticated_with_its_reason(
    server: AuthServer, name: str, make: Callable[[AuthServer], str | None], reason: str
) -> None:
    token = make(server)
    if token is not None:
        server.tokens_used.append(token)
    for call in (lookup, list_tenants, open_producer):
        with pytest.raises(grpc.RpcError) as caught:
            call(server, bearer(token))
        error: Any = caught.value
        assert error.code() is grpc.StatusCode.UNAUTHENTICATED, (call.__name__, error)
        assert error.details() == f"authentication token {reason}" or error.details().startswith(
            f"authentication token {reason}:"
        ), error.details()
        assert token is None or token not in error.details()


def test_a_64_kib_token_is_refused_and_the_server_stays_up(server: AuthServer) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        lookup(server, bearer("y" * 64 * 1024))
    error: Any = caught.value
    # gRPC's metadata limit (16 KiB) answers before our check can.
    assert error.code() in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAUTHENTICATED)
    assert lookup(server, bearer(server.token())).result == messaging_pb2.LookupResponse.CONNECT


def test_the_hs256_key_confusion_token_is_refused(server: AuthServer) -> None:
    """An RS256 server is what the attack aims at; here the HS256 server at least refuses an
    HS256 token signed with some other 'key' (the public-key case is in the unit tests)."""
    token = hs256_with_key(b"-----BEGIN PUBLIC KEY-----", b'{"sub":"admin"}')
    with pytest.raises(grpc.RpcError) as caught:
        lookup(server, bearer(token))
    assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]


def test_a_valid_token_is_accepted_on_messaging_and_admin(server: AuthServer) -> None:
    token = server.token("admin", "1h")
    assert lookup(server, bearer(token)).result == messaging_pb2.LookupResponse.CONNECT
    assert "tenants/public" in [t.name for t in list_tenants(server, bearer(token)).tenants]
    assert open_producer(server, bearer(token)).WhichOneof("response") == "opened"


def test_health_is_open_without_credentials(server: AuthServer) -> None:
    with grpc.insecure_channel(server.standalone.address) as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=10
        )
    assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_needs_a_token(server: AuthServer) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(server.standalone.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        with pytest.raises(grpc.RpcError) as caught:
            list(stub.ServerReflectionInfo(iter([request]), timeout=10))
    assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]


# ---------------------------------------------------------------- the SDK


def test_sdk_with_a_token_string_and_with_a_callable(server: AuthServer) -> None:
    topic = "persistent://public/default/sdk-auth"
    token = server.token("app", "1h")
    asked = 0

    def supplier() -> str:
        nonlocal asked
        asked += 1
        return token

    with strata.Client(
        server.standalone.address, authentication=strata.AuthenticationToken(token)
    ) as client:
        consumer = client.subscribe(topic, "s", initial_position=strata.InitialPosition.Earliest)
        client.create_producer(topic).send(b"by-string")
        message = consumer.receive(timeout_millis=10_000)
        assert message.data() == b"by-string"
        consumer.acknowledge(message)
        consumer.flush_acknowledgements(wait_durable=True)
    with strata.Client(
        server.standalone.address, authentication=strata.AuthenticationToken(supplier)
    ) as client:
        client.create_producer(topic).send(b"by-callable")
        consumer = client.subscribe(topic, "s")
        assert consumer.receive(timeout_millis=10_000).data() == b"by-callable"
    assert asked >= 3  # asked per call: lookups, each stream open


def test_sdk_without_a_token_fails_fast_with_authentication_error(server: AuthServer) -> None:
    started = time.monotonic()
    with strata.Client(server.standalone.address, operation_timeout_seconds=20) as client:
        with pytest.raises(strata.AuthenticationError, match="authentication token missing"):
            client.create_producer("persistent://public/default/sdk-auth")
    assert time.monotonic() - started < 10, "a refusal is not retried until the timeout"


def test_authentication_token_rejects_an_empty_token() -> None:
    with pytest.raises(strata.InvalidArgument):
        strata.AuthenticationToken("  ")
    assert "secret" not in repr(strata.AuthenticationToken("secret"))


# ---------------------------------------------------------------- expiry on open streams


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        time.sleep(0.1)


def test_an_expired_token_ends_the_open_stream_and_its_reconnect(server: AuthServer) -> None:
    """Pulsar closes a connection whose token expired (authenticationRefreshCheckSeconds,
    CVE-2023-31007); what was acknowledged stays, and the reconnect with the same token is
    refused, so the producer fails with AuthenticationError."""
    topic = "persistent://public/default/expiring"
    reader_token = server.token("reader", "1h")
    short = server.signed({"sub": "writer", "exp": int(time.time()) + 3})
    with strata.Client(
        server.standalone.address, authentication=strata.AuthenticationToken(short)
    ) as client:
        producer = client.create_producer(topic, send_timeout_millis=5_000)
        receipted = producer.send(b"before expiry")

        def refused() -> bool:
            try:
                producer.send(b"after expiry")
            except strata.AuthenticationError:
                return True
            except strata.StrataException:
                return False  # the stream is down and reconnecting: try again
            return False

        wait_until(refused, 3 + REFRESH_CHECK_SECONDS + 15, "the producer refused")
    with strata.Client(
        server.standalone.address, authentication=strata.AuthenticationToken(reader_token)
    ) as client:
        consumer = client.subscribe(
            topic, "check", initial_position=strata.InitialPosition.Earliest
        )
        message = consumer.receive(timeout_millis=10_000)
        assert message.data() == b"before expiry"
        assert message.message_id() == receipted


def test_a_token_supplier_keeps_the_stream_past_expiry(server: AuthServer) -> None:
    """With a callable, each reconnect presents a fresh token: sends go on after the first
    token expired and its stream was closed."""
    topic = "persistent://public/default/rotating"
    issued: list[str] = []

    def supplier() -> str:
        token = server.signed({"sub": "writer", "exp": int(time.time()) + 3})
        issued.append(token)
        return token

    with strata.Client(
        server.standalone.address, authentication=strata.AuthenticationToken(supplier)
    ) as client:
        producer = client.create_producer(topic)
        producer.send(b"first")
        opened_with = len(issued)
        # Past the first token's expiry and a refresh check: the stream was reopened.
        wait_until(lambda: len(issued) > opened_with, 3 + REFRESH_CHECK_SECONDS + 15, "reopen")
        producer.send(b"second")
        consumer = client.subscribe(
            topic, "check", initial_position=strata.InitialPosition.Earliest
        )
        got = [consumer.receive(timeout_millis=10_000).data() for _ in range(2)]
    assert got == [b"first", b"second"]


# ---------------------------------------------------------------- the command line


def test_cli_with_auth_token_file_and_environment(server: AuthServer, tmp_path: Path) -> None:
    token = server.token("cli", "1h")
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    url = ["--service-url", server.standalone.address]
    produced = run_cli("produce", *url, "--auth-token-file", str(token_file), "cli-auth", "-m", "x")
    assert produced.returncode == 0, produced.stderr
    listed = run_cli("admin", "tenants", "list", *url, env={"STRATA_AUTH_TOKEN": token})
    assert listed.returncode == 0, listed.stderr
    assert "public" in listed.stdout
    consumed = run_cli(
        "consume",
        *url,
        "--auth-token",
        token,
        "cli-auth",
        "-s",
        "s",
        "-n",
        "1",
        "--initial-position",
        "earliest",
        "--timeout-seconds",
        "20",
    )
    assert consumed.returncode == 0, consumed.stderr
    assert consumed.stdout == "x\n"
    refused = run_cli("produce", *url, "cli-auth", "-m", "x")
    assert refused.returncode == 1
    assert "authentication token missing" in refused.stderr
    admin_refused = run_cli("admin", "tenants", "list", *url, "--auth-token", "garbage")
    assert admin_refused.returncode == 1
    assert "UNAUTHENTICATED" in admin_refused.stderr and "malformed" in admin_refused.stderr
    assert "Traceback" not in admin_refused.stderr
    for result in (produced, listed, consumed, refused, admin_refused):
        assert token not in result.stdout + result.stderr


def test_tokens_cli_round_trip_with_a_key_pair(tmp_path: Path) -> None:
    private, public = tmp_path / "private.pem", tmp_path / "public.pem"
    for algorithm in ("RS256", "ES256"):
        made = run_cli(
            "tokens",
            "create-key-pair",
            "--algorithm",
            algorithm,
            "--output-private-key",
            str(private),
            "--output-public-key",
            str(public),
        )
        assert made.returncode == 0, made.stderr
        assert private.stat().st_mode & 0o077 == 0
        serialization.load_pem_public_key(public.read_bytes())
        created = run_cli(
            "tokens", "create", "--private-key", f"file:{private}", "-s", "bob", "-e", "1h"
        )
        assert created.returncode == 0, created.stderr
        token = created.stdout.strip()
        assert jwt.get_unverified_header(token)["alg"] == algorithm
        valid = run_cli("tokens", "validate", token, "--public-key", f"file:{public}")
        assert valid.returncode == 0, valid.stderr
        assert "subject bob" in valid.stdout
        shown = run_cli("tokens", "show", token)
        assert '"sub": "bob"' in shown.stdout
    # A token of the other key pair (the last made was ES256; make a fresh pair).
    other_private, other_public = tmp_path / "o.pem", tmp_path / "o.pub"
    made = run_cli(
        "tokens",
        "create-key-pair",
        "--algorithm",
        "ES256",
        "--output-private-key",
        str(other_private),
        "--output-public-key",
        str(other_public),
    )
    assert made.returncode == 0, made.stderr
    invalid = run_cli("tokens", "validate", token, "--public-key", f"file:{other_public}")
    assert invalid.returncode == 1
    assert "error: authentication token wrong signature" in invalid.stderr
    assert token not in invalid.stderr


def test_tokens_validate_reports_expiry(server: AuthServer, tmp_path: Path) -> None:
    expired = server.signed({"sub": "a", "exp": int(time.time()) - 5})
    result = run_cli("tokens", "validate", expired, "--secret-key", f"file:{server.secret_file}")
    assert result.returncode == 1
    assert "authentication token expired" in result.stderr


def test_no_token_appears_in_the_server_log(server: AuthServer) -> None:
    """Runs last in this module: every token any test presented is absent from the log."""
    log = server.standalone.log_text()
    assert "strata standalone ready" in log
    # The expiry tests ended streams at the broker, not only at the client.
    assert "ended a stream of role 'writer': its token expired" in log
    assert server.tokens_used
    for token in server.tokens_used:
        assert token not in log
        # Nor the signature alone (the part that makes a token usable).
        assert token.rsplit(".", 1)[-1] not in log or len(token.rsplit(".", 1)[-1]) < 8


def test_an_rs256_broker_refuses_the_key_confusion_token(tmp_path: Path) -> None:
    """The attack aimed at public-key servers: HS256 signed with the public key's PEM bytes as
    the HMAC secret, and ``alg: none``. Both are "wrong algorithm"; the real RS256 token works."""
    private, public = tmp_path / "private.pem", tmp_path / "public.pem"
    made = run_cli(
        "tokens",
        "create-key-pair",
        "--output-private-key",
        str(private),
        "--output-public-key",
        str(public),
    )
    assert made.returncode == 0, made.stderr
    created = run_cli("tokens", "create", "--private-key", f"file:{private}", "-s", "admin")
    assert created.returncode == 0, created.stderr
    good = created.stdout.strip()
    standalone = Standalone(
        tmp_path / "data",
        "--authentication-enabled",
        "true",
        "--auth-token-public-key",
        f"file:{public}",
    ).start()
    try:
        server = AuthServer(standalone, public, b"", [])
        assert lookup(server, bearer(good)).result == messaging_pb2.LookupResponse.CONNECT
        confused = hs256_with_key(public.read_bytes(), b'{"sub":"admin"}')
        unsigned = jwt.encode({"sub": "admin"}, None, algorithm="none")  # type: ignore[arg-type]
        for token in (confused, unsigned):
            with pytest.raises(grpc.RpcError) as caught:
                lookup(server, bearer(token))
            error: Any = caught.value
            assert error.code() is grpc.StatusCode.UNAUTHENTICATED
            assert error.details().startswith("authentication token wrong algorithm")
    finally:
        standalone.stop()
    log = standalone.log_text()
    assert "token authentication on (RS256)" in log
    for token in (good, confused, unsigned):
        assert token.rsplit(".", 1)[-1] not in log or not token.rsplit(".", 1)[-1]
