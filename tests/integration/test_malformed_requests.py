"""Bytes that are not protobuf, to every method of a standalone (issue 11 item 6): each is
INVALID_ARGUMENT naming the request type, never UNKNOWN or INTERNAL, and the server goes on
serving."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import grpc
import pytest

from strata.v1 import admin_pb2, admin_pb2_grpc, messaging_pb2, messaging_pb2_grpc
from tests.harness import Standalone

pytestmark = pytest.mark.integration

GARBAGE = b"\xff\xff\xff\xff\x0f"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Standalone]:
    """One standalone for every case: each must leave it serving."""
    standalone = Standalone(tmp_path_factory.mktemp("malformed") / "data").start()
    try:
        yield standalone
    finally:
        standalone.stop()


def methods() -> list[tuple[str, bool]]:
    found = []
    for module in (messaging_pb2, admin_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                path = f"/{service.full_name}/{method.name}"
                found.append((path, method.client_streaming))
    return found


@pytest.mark.parametrize(("path", "streaming"), methods(), ids=lambda v: str(v))
def test_garbage_is_invalid_argument(server: Standalone, path: str, streaming: bool) -> None:
    with grpc.insecure_channel(server.address) as channel:
        if streaming:
            call: grpc.StreamStreamMultiCallable[bytes, bytes] = channel.stream_stream(
                path, request_serializer=None, response_deserializer=None
            )
            responses = call(iter([GARBAGE]), timeout=10)
            with pytest.raises(grpc.RpcError) as raised:
                list(responses)
        else:
            unary: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
                path, request_serializer=None, response_deserializer=None
            )
            with pytest.raises(grpc.RpcError) as raised:
                unary(GARBAGE, timeout=10)
        error = raised.value
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (error.code(), error.details())
        details = error.details() or ""
        assert "is not a valid strata.v1." in details or "is not a valid protobuf" in details
        assert "Error" not in details and ".py" not in details
        # Still serving.
        lookup = channel.unary_unary(
            "/strata.v1.MessagingService/Lookup",
            request_serializer=messaging_pb2.LookupRequest.SerializeToString,
            response_deserializer=messaging_pb2.LookupResponse.FromString,
        )
        assert lookup(messaging_pb2.LookupRequest(topic="t"), timeout=10).broker_address


@pytest.mark.parametrize(
    ("topic", "code"),
    [
        ("orders-partition--1", grpc.StatusCode.INVALID_ARGUMENT),
        ("orders-partition-01", grpc.StatusCode.INVALID_ARGUMENT),
        ("orders-partition-4", grpc.StatusCode.NOT_FOUND),  # of 4
        ("plain-partition-0", grpc.StatusCode.NOT_FOUND),  # plain is not partitioned
        ("x" * 100_000, grpc.StatusCode.INVALID_ARGUMENT),  # refused, not echoed back
    ],
)
def test_bad_partition_names_open_no_topic(
    server: Standalone, topic: str, code: grpc.StatusCode
) -> None:
    with grpc.insecure_channel(server.address) as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        with contextlib.suppress(grpc.RpcError):  # the first case creates it; later, exists
            admin.CreatePartitionedTopic(
                admin_pb2.CreatePartitionedTopicRequest(
                    name="persistent://public/default/orders", partitions=4
                ),
                timeout=10,
            )
        stub = messaging_pb2_grpc.MessagingServiceStub(channel)
        responses = stub.Consume(
            iter(
                [
                    messaging_pb2.ConsumeRequest(
                        subscribe=messaging_pb2.Subscribe(topic=topic, subscription="s")
                    )
                ]
            ),
            timeout=10,
        )
        with pytest.raises(grpc.RpcError) as raised:
            list(responses)
        assert raised.value.code() == code, raised.value.details()
        assert len(raised.value.details() or "") < 500
        listed = admin.ListTopics(
            admin_pb2.ListTopicsRequest(parent="tenants/public/namespaces/default"), timeout=10
        )
        assert not any("partition-" in t.name and "orders" not in t.name for t in listed.topics)
        assert "persistent://public/default/orders-partition-4" not in [
            t.name for t in listed.topics
        ]
