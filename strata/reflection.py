"""Server reflection in both protocol versions, with the .proto comments (issue 14 item 1).

grpcio-reflection serves only ``grpc.reflection.v1alpha`` and builds its file descriptors with
``CopyToProto``, which drops ``source_code_info``: a client generated from reflection alone
would miss what the comments say (the batch encoding, ids, flow permits). So the servicer gets
a view of the default descriptor pool whose files copy themselves with their comments, taken
from ``strata/v1/api_descriptors.binpb`` — a descriptor set with source info that ``make``
(and the Dockerfile) generate beside the stubs. ``grpc.reflection.v1`` is the same protocol
under a new package name, field for field, so the v1alpha servicer answers it too.
"""

from __future__ import annotations

import functools
from importlib import resources
from typing import Any

import grpc
from google.protobuf import descriptor, descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2

REFLECTION_V1_SERVICE_NAME = "grpc.reflection.v1.ServerReflection"
DESCRIPTOR_SET = "api_descriptors.binpb"


@functools.cache
def source_code_infos() -> dict[str, descriptor_pb2.SourceCodeInfo]:
    """File name -> its comments, from the descriptor set generated with the stubs."""
    raw = resources.files("strata.v1").joinpath(DESCRIPTOR_SET).read_bytes()
    files = descriptor_pb2.FileDescriptorSet.FromString(raw).file
    return {f.name: f.source_code_info for f in files if f.HasField("source_code_info")}


class _CommentedFile:
    """A FileDescriptor as the reflection servicer uses it (name, dependencies, CopyToProto),
    copying itself with its source_code_info."""

    def __init__(self, file: descriptor.FileDescriptor) -> None:
        self._file = file
        self.name = file.name

    @property
    def dependencies(self) -> list[_CommentedFile]:
        return [_CommentedFile(dependency) for dependency in self._file.dependencies]

    def CopyToProto(self, proto: descriptor_pb2.FileDescriptorProto) -> None:
        self._file.CopyToProto(proto)
        info = source_code_infos().get(self.name)
        if info is not None:
            proto.source_code_info.CopyFrom(info)


class CommentedPool:
    """The default pool, its files with their comments (the five methods reflection calls)."""

    def __init__(self, pool: descriptor_pool.DescriptorPool | None = None) -> None:
        self._pool = pool or descriptor_pool.Default()

    def FindFileByName(self, name: str) -> _CommentedFile:
        return _CommentedFile(self._pool.FindFileByName(name))

    def FindFileContainingSymbol(self, symbol: str) -> _CommentedFile:
        return _CommentedFile(self._pool.FindFileContainingSymbol(symbol))

    def FindMessageTypeByName(self, name: str) -> descriptor.Descriptor:
        return self._pool.FindMessageTypeByName(name)

    def FindExtensionByNumber(
        self, message: descriptor.Descriptor, number: int
    ) -> descriptor.FieldDescriptor:
        return self._pool.FindExtensionByNumber(message, number)

    def FindAllExtensions(self, message: descriptor.Descriptor) -> Any:
        return self._pool.FindAllExtensions(message)


def enable_reflection(service_names: tuple[str, ...], server: grpc.aio.Server) -> None:
    """Serve ``grpc.reflection.v1alpha`` and ``grpc.reflection.v1`` for ``service_names``."""
    source_code_infos()  # a build without the descriptor set fails here, at start
    servicer = reflection.aio.ReflectionServicer(service_names, pool=CommentedPool())
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        tuple(
            grpc.method_handlers_generic_handler(name, {"ServerReflectionInfo": handler})
            for name in (reflection.SERVICE_NAME, REFLECTION_V1_SERVICE_NAME)
        )
    )
