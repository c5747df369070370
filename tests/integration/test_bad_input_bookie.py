"""Hostile input to a real bookie (issue 11 item 6): bytes that are not protobuf and ids at
and past their bounds get a precise status and a clean message, and the bookie serves on."""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc

from strata.storage.v1 import bookie_pb2
from tests.cluster import Cluster

pytestmark = pytest.mark.integration

SERVICE = "/strata.storage.v1.BookieService/"
INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
OK = grpc.StatusCode.OK
U64_MAX = 2**64 - 1
ANSWER_WITHIN_SECONDS = 5.0
_LEAK = re.compile(r"Traceback|\.py\b|File \"|\b[A-Z][A-Za-z]*(Error|Exception)\b|<class ")

GARBAGE = {
    "invalid-varint": b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",
    "truncated-length": b"\x0a\x05ab",
    "length-past-end": b"\x0a\xff\xff\xff\xff\x0f",
    "end-group-without-start": b"\x0c",
    "wire-type-7": b"\x0f",
}


@pytest.fixture(scope="module")
def bookie(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("bad-input-bookie")
    cluster = Cluster(root, bookies=1, brokers=1, bookie_args=["--journal-fsync", "false"])
    with contextlib.closing(cluster):
        cluster.start()
        yield cluster.bookies[0].address
        logged = cluster.bookies[0].log_path.read_text(errors="replace")
        assert "Traceback" not in logged and "unexpected error" not in logged, logged[-2000:]


def _methods() -> list[tuple[str, bool]]:
    service = bookie_pb2.DESCRIPTOR.services_by_name["BookieService"]
    return [(SERVICE + m.name, m.client_streaming) for m in service.methods]


def _send(channel: grpc.Channel, path: str, streaming: bool, body: bytes) -> tuple[Any, str]:
    try:
        if streaming:
            stream: grpc.StreamStreamMultiCallable[bytes, bytes] = channel.stream_stream(
                path, request_serializer=None, response_deserializer=None
            )
            list(stream(iter([body]), timeout=10))
        else:
            unary: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
                path, request_serializer=None, response_deserializer=None
            )
            unary(body, timeout=10)
    except grpc.RpcError as error:
        return error.code(), error.details() or ""
    return OK, ""


def _check(bookie: str, send: Callable[[grpc.Channel], tuple[Any, str]], code: Any) -> str:
    with grpc.insecure_channel(bookie) as channel:
        started = time.monotonic()
        got, details = send(channel)
        assert time.monotonic() - started < ANSWER_WITHIN_SECONDS
        assert got == code, (got, details[:300])
        assert len(details) <= 500 and not _LEAK.search(details), details[:300]
        health = health_pb2_grpc.HealthStub(channel)
        served = health.Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert served.status == health_pb2.HealthCheckResponse.SERVING
    return details


@pytest.mark.parametrize("garbage", sorted(GARBAGE))
@pytest.mark.parametrize(("path", "streaming"), _methods(), ids=lambda v: str(v).rsplit("/")[-1])
def test_not_protobuf(bookie: str, path: str, streaming: bool, garbage: str) -> None:
    details = _check(bookie, lambda c: _send(c, path, streaming, GARBAGE[garbage]), INVALID)
    assert "not a valid" in details


def _add(**fields: Any) -> bookie_pb2.AddEntriesRequest:
    entry = bookie_pb2.AddEntry(request_id=1, ledger_id=77, entry_id=0, master_key=b"k")
    for name, value in fields.items():
        setattr(entry, name, value)
    return bookie_pb2.AddEntriesRequest(entries=[entry])


CASES: dict[str, tuple[str, Message, Any]] = {
    "read-ledger-2^63": ("ReadEntries", bookie_pb2.ReadEntriesRequest(ledger_id=2**63), INVALID),
    "read-entry-2^64-1": (
        "ReadEntries",
        bookie_pb2.ReadEntriesRequest(ledger_id=1, last_entry_id=U64_MAX),
        INVALID,
    ),
    "read-range-backwards": (
        "ReadEntries",
        bookie_pb2.ReadEntriesRequest(ledger_id=1, first_entry_id=5, last_entry_id=2),
        INVALID,
    ),
    "read-max-bytes-2^64-1": (
        "ReadEntries",
        bookie_pb2.ReadEntriesRequest(ledger_id=1, max_bytes=U64_MAX),
        INVALID,
    ),
    "read-unknown-ledger": (
        "ReadEntries",
        bookie_pb2.ReadEntriesRequest(ledger_id=123456, last_entry_id=0),
        NOT_FOUND,
    ),
    "lac-ledger-2^64-1": (
        "ReadLastAddConfirmed",
        bookie_pb2.ReadLastAddConfirmedRequest(ledger_id=U64_MAX),
        INVALID,
    ),
    "lac-previous-minus-2": (
        "ReadLastAddConfirmed",
        bookie_pb2.ReadLastAddConfirmedRequest(ledger_id=1, previous_last_add_confirmed=-2),
        INVALID,
    ),
    "fence-ledger-2^63": ("FenceLedger", bookie_pb2.FenceLedgerRequest(ledger_id=2**63), INVALID),
    "delete-ledger-2^64-1": (
        "DeleteLedger",
        bookie_pb2.DeleteLedgerRequest(ledger_id=U64_MAX),
        INVALID,
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_ids_out_of_range(bookie: str, case: str) -> None:
    method, request, code = CASES[case]
    body = request.SerializeToString()
    _check(bookie, lambda c: _send(c, SERVICE + method, False, body), code)


@pytest.mark.parametrize(
    ("case", "request_"),
    [
        ("entry-2^63", _add(entry_id=2**63)),
        ("ledger-2^64-1", _add(ledger_id=U64_MAX)),
        ("last-add-confirmed-minus-2", _add(last_add_confirmed=-2)),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_add_entries_out_of_range(
    bookie: str, case: str, request_: bookie_pb2.AddEntriesRequest
) -> None:
    """A refused add is answered in the stream (a per-entry status) or by ending it with
    INVALID_ARGUMENT; either way nothing is stored."""
    body = request_.SerializeToString()
    with grpc.insecure_channel(bookie) as channel:
        stream: grpc.StreamStreamMultiCallable[bytes, bytes] = channel.stream_stream(
            SERVICE + "AddEntries", request_serializer=None, response_deserializer=None
        )
        try:
            responses = [
                bookie_pb2.AddEntriesResponse.FromString(r)
                for r in stream(iter([body]), timeout=10)
            ]
        except grpc.RpcError as error:
            assert error.code() == INVALID, (error.code(), error.details())
        else:
            results = [r for response in responses for r in response.results]
            assert results and all(r.status == bookie_pb2.ADD_STATUS_BAD_REQUEST for r in results)
    read = bookie_pb2.ReadEntriesRequest(ledger_id=77, last_entry_id=0).SerializeToString()
    _check(bookie, lambda c: _send(c, SERVICE + "ReadEntries", False, read), NOT_FOUND)
