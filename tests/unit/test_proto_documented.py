"""The protocol is written down in the .proto (issue 14 item 1): every message, field, enum,
enum value and RPC of the public messaging API carries a comment, so that a client can be
written from ``messaging.proto`` alone (and from server reflection, which serves these
comments). Read from the descriptor set ``make`` generates with source info."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from importlib import resources

from google.protobuf import descriptor_pb2

PUBLIC_FILE = "strata/v1/messaging.proto"
# FileDescriptorProto / DescriptorProto / EnumDescriptorProto / ServiceDescriptorProto tags.
MESSAGE_TYPE, ENUM_TYPE, SERVICE = 4, 5, 6
FIELD, NESTED_TYPE, NESTED_ENUM = 2, 3, 4
ENUM_VALUE, METHOD = 2, 2


def public_file() -> descriptor_pb2.FileDescriptorProto:
    raw = resources.files("strata.v1").joinpath("api_descriptors.binpb").read_bytes()
    (found,) = [
        f for f in descriptor_pb2.FileDescriptorSet.FromString(raw).file if f.name == PUBLIC_FILE
    ]
    return found


def elements(
    file: descriptor_pb2.FileDescriptorProto,
) -> Iterator[tuple[str, tuple[int, ...]]]:
    """(name, source path) of every element that must carry a comment."""

    def enums(
        values: Sequence[descriptor_pb2.EnumDescriptorProto], prefix: str, path: tuple[int, ...]
    ) -> Iterator[tuple[str, tuple[int, ...]]]:
        for i, enum in enumerate(values):
            yield f"{prefix}{enum.name}", (*path, i)
            for j, value in enumerate(enum.value):
                yield f"{prefix}{enum.name}.{value.name}", (*path, i, ENUM_VALUE, j)

    def messages(
        values: Sequence[descriptor_pb2.DescriptorProto], prefix: str, path: tuple[int, ...]
    ) -> Iterator[tuple[str, tuple[int, ...]]]:
        for i, message in enumerate(values):
            if message.options.map_entry:
                continue  # map<k, v> entries are generated, not written
            here = (*path, i)
            yield f"{prefix}{message.name}", here
            for j, field in enumerate(message.field):
                yield f"{prefix}{message.name}.{field.name}", (*here, FIELD, j)
            inner = f"{prefix}{message.name}."
            yield from messages(message.nested_type, inner, (*here, NESTED_TYPE))
            yield from enums(message.enum_type, inner, (*here, NESTED_ENUM))

    yield from messages(file.message_type, "", (MESSAGE_TYPE,))
    yield from enums(file.enum_type, "", (ENUM_TYPE,))
    for i, service in enumerate(file.service):
        yield service.name, (SERVICE, i)
        for j, method in enumerate(service.method):
            yield f"{service.name}.{method.name}", (SERVICE, i, METHOD, j)


def test_every_element_of_the_messaging_api_is_documented() -> None:
    file = public_file()
    comments = {
        tuple(location.path): (location.leading_comments + location.trailing_comments).strip()
        for location in file.source_code_info.location
    }
    listed = list(elements(file))
    assert len(listed) > 150  # the walk reached the whole file
    undocumented = [name for name, path in listed if not comments.get(path)]
    assert not undocumented, f"{len(undocumented)} without a comment: {undocumented}"
