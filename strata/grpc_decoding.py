"""Requests that are not valid protobuf: INVALID_ARGUMENT on every method of every server.

Left to itself, grpc.aio answers a unary call whose bytes do not parse with UNKNOWN and the
Python exception class in the message, and a stream's ``context.read()`` raises the
``DecodeError`` into the handler. ``MalformedRequestInterceptor`` wraps each unary method's
request deserializer: a request that does not parse becomes a marker the wrapped behaviour
answers with INVALID_ARGUMENT before the servicer runs, naming the request type, never the
bytes. A stream's ``DecodeError`` is mapped to INVALID_ARGUMENT (``STREAM_REFUSAL``) by the
servers' error edges.

It is the innermost interceptor: authentication runs first, so an unauthenticated caller
learns nothing about what it sent.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias

import grpc
from google.protobuf.message import DecodeError

Deserializer = Callable[[bytes], Any]
_Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"


# What a stream message that does not parse is answered with.
STREAM_REFUSAL = "a request of the stream is not a valid protobuf message of its type"


class _Malformed:
    """A unary request that did not parse (what the wrapped deserializer returns)."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


def _type_name(deserializer: Deserializer) -> str:
    owner = getattr(deserializer, "__self__", None)
    descriptor = getattr(owner, "DESCRIPTOR", None)
    return str(getattr(descriptor, "full_name", "request"))


def _refusal(deserializer: Deserializer) -> str:
    return f"the request is not a valid {_type_name(deserializer)} message"


def _unary_deserializer(deserializer: Deserializer) -> Deserializer:
    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except (DecodeError, ValueError, TypeError):
            return _Malformed(_refusal(deserializer))

    return parse


def _refusing(
    behavior: Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Any],
) -> Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]:
    async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if isinstance(request, _Malformed):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        return await behavior(request, context)

    return call


class MalformedRequestInterceptor(grpc.aio.ServerInterceptor):
    """See the module docstring."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[_Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> _Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        deserializer = handler.request_deserializer
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _refusing(handler.unary_unary),  # type: ignore[arg-type]
                request_deserializer=_unary_deserializer(deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return handler  # only grpc's own health Watch; ours have none
        # Streams keep their deserializers: a message that does not parse surfaces in the
        # handler's read as a DecodeError, which the servers' error edges answer
        # INVALID_ARGUMENT (``STREAM_REFUSAL``).
        return handler
