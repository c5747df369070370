"""Hypothesis strategies for any protobuf message, built by walking its descriptor.

``messages(descriptor)`` draws a message of that type with every field possibly set: integers
at and past their bounds, enums in and out of range, strings that are names the server knows,
hostile text (control characters, '/', '..', unicode, very long) or arbitrary text, bytes,
nested messages to a bounded depth, repeated and map fields with a few entries, oneofs with
any member. Used by the fuzz test of the broker's RPCs (tests/integration/test_fuzz.py).
"""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import strategies as st

MAX_DEPTH = 3
MAX_REPEATED = 4

# Names that exist on a fresh standalone, so that drawn requests often get past the name
# checks and reach the deeper ones.
KNOWN_STRINGS = [
    "t",
    "plain",
    "persistent://public/default/t",
    "persistent://public/default/plain",
    "public/default/t",
    "orders-partition-0",
    "public",
    "tenants/public",
    "public/default",
    "tenants/public/namespaces/default",
    "s",
    "earliest",
    "latest",
    "0:0",
    "0x00000000_0x40000000",
]
HOSTILE_STRINGS = [
    "",
    ".",
    "..",
    "../..",
    "/",
    "a/b",
    "\\",
    "\x00",
    "a\nb",
    "\r\n",
    "\u202e",
    "名前",
    "%2e%2e",
    "t-partition--1",
    "t-partition-01",
    "-1:-1",
    f"{2**64}:0",
    "x" * 300,
    "x" * 100_000,
]


def _int_strategy(bits: int, signed: bool) -> st.SearchStrategy[int]:
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    edges = sorted(
        {v for v in (lo, lo + 1, -2, -1, 0, 1, 2, 100, 2**31 - 1, hi - 1, hi) if lo <= v <= hi}
    )
    return st.one_of(st.sampled_from(edges), st.integers(min_value=lo, max_value=hi))


def _weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of ``choices``, each drawn with its weight."""
    table = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.integers(min_value=0, max_value=len(table) - 1).flatmap(lambda i: table[i])


_SCALARS: dict[int, st.SearchStrategy[Any]] = {
    FieldDescriptor.TYPE_INT32: _int_strategy(32, True),
    FieldDescriptor.TYPE_SINT32: _int_strategy(32, True),
    FieldDescriptor.TYPE_SFIXED32: _int_strategy(32, True),
    FieldDescriptor.TYPE_INT64: _int_strategy(64, True),
    FieldDescriptor.TYPE_SINT64: _int_strategy(64, True),
    FieldDescriptor.TYPE_SFIXED64: _int_strategy(64, True),
    FieldDescriptor.TYPE_UINT32: _int_strategy(32, False),
    FieldDescriptor.TYPE_FIXED32: _int_strategy(32, False),
    FieldDescriptor.TYPE_UINT64: _int_strategy(64, False),
    FieldDescriptor.TYPE_FIXED64: _int_strategy(64, False),
    FieldDescriptor.TYPE_BOOL: st.booleans(),
    FieldDescriptor.TYPE_DOUBLE: st.floats(allow_nan=True),
    FieldDescriptor.TYPE_FLOAT: st.floats(width=32, allow_nan=True),
    # Mostly names the server knows (to reach the checks past the name), else hostile text.
    FieldDescriptor.TYPE_STRING: _weighted(
        (7, st.sampled_from(KNOWN_STRINGS)),
        (2, st.sampled_from(HOSTILE_STRINGS)),
        (1, st.text(max_size=40)),
    ),
    FieldDescriptor.TYPE_BYTES: st.one_of(st.binary(max_size=64), st.just(b"\x00" * 70_000)),
}


def _enum_strategy(field: FieldDescriptor) -> st.SearchStrategy[int]:
    assert field.enum_type is not None
    values = [v.number for v in field.enum_type.values]
    return st.one_of(st.sampled_from(values), st.sampled_from([-1, 99, 2**31 - 1]))


def _value_strategy(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return messages(_message_type(field), depth + 1)
    if field.type == FieldDescriptor.TYPE_ENUM:
        return _enum_strategy(field)
    return _SCALARS[field.type]


def _message_type(field: FieldDescriptor) -> Descriptor:
    assert field.message_type is not None
    return field.message_type


def _is_map(field: FieldDescriptor) -> bool:
    message_type = field.message_type
    return message_type is not None and message_type.GetOptions().map_entry


def messages(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    """A message of ``descriptor``'s type with any subset of its fields set."""
    cls = GetMessageClass(descriptor)
    if depth >= MAX_DEPTH:
        return st.just(cls())
    field_strategies: dict[str, st.SearchStrategy[Any]] = {}
    for field in descriptor.fields:
        if _is_map(field):
            key = _value_strategy(_message_type(field).fields_by_name["key"], depth)
            value = _value_strategy(_message_type(field).fields_by_name["value"], depth)
            field_strategies[field.name] = st.dictionaries(key, value, max_size=MAX_REPEATED)
        elif field.is_repeated:
            field_strategies[field.name] = st.lists(
                _value_strategy(field, depth), max_size=MAX_REPEATED
            )
        else:
            field_strategies[field.name] = _value_strategy(field, depth)

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        message = cls()
        chosen = (
            draw(st.sets(st.sampled_from(sorted(field_strategies)))) if field_strategies else set()
        )
        for name in sorted(chosen):
            value = draw(field_strategies[name])
            field = descriptor.fields_by_name[name]
            if _is_map(field):
                target = getattr(message, name)
                for k, v in value.items():
                    if (
                        _message_type(field).fields_by_name["value"].type
                        == FieldDescriptor.TYPE_MESSAGE
                    ):
                        target[k].CopyFrom(v)
                    else:
                        target[k] = v
            elif field.is_repeated:
                if field.type == FieldDescriptor.TYPE_MESSAGE:
                    getattr(message, name).extend(value)
                else:
                    getattr(message, name).extend(value)
            elif field.type == FieldDescriptor.TYPE_MESSAGE:
                getattr(message, name).CopyFrom(value)
            else:
                setattr(message, name, value)
        return message

    return build()
