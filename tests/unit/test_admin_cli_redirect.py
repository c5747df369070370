"""``strata admin``: a topic operation that reaches a broker not serving the topic is asked
again of the owner the broker names (TOPIC_NOT_OWNED), once, keeping the service URL's TLS
and the command's TLS files. No sockets: the admin connection is replaced by a recorder."""

from __future__ import annotations

import argparse
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from strata import admin_cli, cli
from strata.admin_cli import owner_service_url

TOPIC = "persistent://public/default/t"


@pytest.mark.parametrize(
    ("service_url", "expected"),
    [
        ("grpcs://a:6651", "grpcs://b:6651"),
        ("pulsar+ssl://a:6651,c:6651", "grpcs://b:6651"),
        ("grpcs://a:6651,grpcs://c:6651", "grpcs://b:6651"),
        ("grpc://a:6650", "b:6651"),
        ("pulsar://a:6650", "b:6651"),
        ("a:6650", "b:6651"),
    ],
)
def test_the_owner_is_dialled_with_the_scheme_of_the_service_url(
    service_url: str, expected: str
) -> None:
    assert owner_service_url(service_url, "b:6651") == expected


class NotOwned(grpc.RpcError):
    """A failed call as grpc raises it: FAILED_PRECONDITION with an ErrorInfo naming the
    owner in the status details (the wire contract of ``messaging.proto``)."""

    def __init__(self, owner: str) -> None:
        detail = any_pb2.Any()
        detail.Pack(
            error_details_pb2.ErrorInfo(
                reason="TOPIC_NOT_OWNED", domain="strata.io", metadata={"owner": owner}
            )
        )
        status = rpc_status.to_status(
            status_pb2.Status(
                code=code_pb2.FAILED_PRECONDITION,
                message=f"topic {TOPIC} is served by broker {owner}",
                details=[detail],
            )
        )
        self._code: grpc.StatusCode = status.code
        self._details: str = status.details
        self._trailing_metadata: Any = status.trailing_metadata

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> Any:
        return self._trailing_metadata


class Recorder:
    """Stands in for ``admin_cli._Admin``: records the arguments each connection was made
    with; ``close`` is counted."""

    opened: list[argparse.Namespace] = []
    closed = 0

    def __init__(self, args: argparse.Namespace) -> None:
        Recorder.opened.append(args)

    def close(self) -> None:
        Recorder.closed += 1


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> type[Recorder]:
    Recorder.opened = []
    Recorder.closed = 0
    monkeypatch.setattr(admin_cli, "_Admin", Recorder)
    return Recorder


def admin_args(service_url: str, *more: str) -> argparse.Namespace:
    argv = ["admin", "topics", "unload", TOPIC, "--service-url", service_url, *more]
    return cli.build_parser({}).parse_args(argv)


TLS_FILES = ["--tls-trust-certs-file", "ca.pem", "--tls-cert-file", "c.pem"]
TLS_FILES += ["--tls-key-file", "c.key"]


@pytest.mark.parametrize(
    ("service_url", "retried_at"),
    [
        ("grpcs://a:6651", "grpcs://b:6651"),
        ("pulsar+ssl://a:6651", "grpcs://b:6651"),
        ("grpc://a:6650", "b:6651"),
    ],
)
def test_a_redirect_keeps_tls_and_the_tls_files(
    recorder: type[Recorder], service_url: str, retried_at: str
) -> None:
    calls: list[str] = []

    def handler(admin: Any, args: argparse.Namespace) -> None:
        calls.append(recorder.opened[-1].service_url)
        if len(calls) == 1:
            raise NotOwned("b:6651")

    args = admin_args(service_url, *TLS_FILES)
    args.admin_handler = handler
    assert admin_cli._run_admin(args) == 0
    assert calls == [service_url, retried_at]
    retried = recorder.opened[1]
    assert (retried.tls_trust_certs_file, retried.tls_cert_file, retried.tls_key_file) == (
        "ca.pem",
        "c.pem",
        "c.key",
    )
    assert recorder.closed == 2


def test_a_redirect_is_followed_once(
    recorder: type[Recorder], capsys: pytest.CaptureFixture[str]
) -> None:
    def handler(admin: Any, args: argparse.Namespace) -> None:
        raise NotOwned("b:6651")

    args = admin_args("grpcs://a:6651")
    args.admin_handler = handler
    assert admin_cli._run_admin(args) == 1
    assert [a.service_url for a in recorder.opened] == ["grpcs://a:6651", "grpcs://b:6651"]
    assert capsys.readouterr().err == (
        f"error: FAILED_PRECONDITION: topic {TOPIC} is served by broker b:6651\n"
    )
