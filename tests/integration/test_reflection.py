"""Server reflection in both versions (issue 14 item 1): ``grpc.reflection.v1`` (what current
tools ask first) and ``grpc.reflection.v1alpha`` list the services and serve the file
descriptors a client can be built from."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2

from tests.harness import Standalone

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_reflection_lists_services_and_serves_descriptors(
    standalone: Standalone, version: str
) -> None:
    path = f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo"
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="strata.v1.MessagingService"),
    ]
    with grpc.insecure_channel(standalone.address) as channel:
        call = channel.stream_stream(
            path,
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        listed, files = list(call(iter(requests), timeout=10))
    services = {s.name for s in listed.list_services_response.service}
    assert {
        "strata.v1.MessagingService",
        "strata.v1.AdminService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= services
    names = {
        descriptor_pb2.FileDescriptorProto.FromString(raw).name
        for raw in files.file_descriptor_response.file_descriptor_proto
    }
    assert "strata/v1/messaging.proto" in names


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_reflection_serves_the_proto_comments(standalone: Standalone, version: str) -> None:
    """A client built from reflection alone gets what the .proto comments say: here the batch
    encoding on MessageBatch and the permit rules on Flow."""
    path = f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo"
    request = reflection_pb2.ServerReflectionRequest(file_containing_symbol="strata.v1.Flow")
    with grpc.insecure_channel(standalone.address) as channel:
        call = channel.stream_stream(
            path,
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        (response,) = list(call(iter([request]), timeout=10))
    files = {
        proto.name: proto
        for proto in (
            descriptor_pb2.FileDescriptorProto.FromString(raw)
            for raw in response.file_descriptor_response.file_descriptor_proto
        )
    }
    messaging = files["strata/v1/messaging.proto"]
    comments = {
        tuple(location.path): location.leading_comments
        for location in messaging.source_code_info.location
    }
    message_index = {m.name: i for i, m in enumerate(messaging.message_type)}
    # Path [4, i] is the i-th message of the file (FileDescriptorProto.message_type = 4).
    batch_comment = comments[(4, message_index["MessageBatch"])]
    assert "encoded content of one producer batch" in batch_comment
    flow_comment = comments[(4, message_index["Flow"])]
    assert "the balance may go negative" in flow_comment
