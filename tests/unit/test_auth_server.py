"""The authentication interceptor and the client credentials, on an in-process grpc.aio server
(loopback): the role a handler sees (``current_role()``) for each call kind, refusals,
superusers-only servers, the open health service, and streams ended when their token expires.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import jwt
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from strata.auth.config import AuthConfig
from strata.auth.credentials import TokenSource, aio_interceptors
from strata.auth.principal import current_role
from strata.auth.server import AuthenticationInterceptor, RefusalLog, server_interceptors
from strata.auth.tokens import TokenVerifier

SECRET = b"k" * 32
SERVICE = "test.Roles"
_Context = grpc.aio.ServicerContext[Any, Any]


def token(subject: str, **claims: Any) -> str:
    return jwt.encode({"sub": subject, **claims}, SECRET, algorithm="HS256")


def identity(data: bytes) -> bytes:
    return data


class Handlers:
    """One method per call kind; each answers the role it runs as."""

    def __init__(self) -> None:
        self.cancelled = asyncio.Event()

    async def unary(self, request: bytes, context: _Context) -> bytes:
        return (current_role() or "-").encode()

    async def server_stream(self, request: bytes, context: _Context) -> AsyncIterator[bytes]:
        for _ in range(2):
            yield (current_role() or "-").encode()

    async def bidi(self, requests: Any, context: _Context) -> None:
        # The read/write style of the broker's Produce and Consume streams.
        async for _ in requests:
            await context.write((current_role() or "-").encode())

    async def forever(self, requests: Any, context: _Context) -> None:
        await context.write((current_role() or "-").encode())
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise

    def generic(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Unary": grpc.unary_unary_rpc_method_handler(self.unary, identity, identity),
                "ServerStream": grpc.unary_stream_rpc_method_handler(
                    self.server_stream, identity, identity
                ),
                "Bidi": grpc.stream_stream_rpc_method_handler(self.bidi, identity, identity),
                "Forever": grpc.stream_stream_rpc_method_handler(self.forever, identity, identity),
            },
        )


class Served:
    def __init__(self, server: grpc.aio.Server, port: int, handlers: Handlers) -> None:
        self.server, self.port, self.handlers = server, port, handlers

    def channel(self, source: TokenSource | None) -> grpc.aio.Channel:
        return grpc.aio.insecure_channel(
            f"127.0.0.1:{self.port}", interceptors=aio_interceptors(source)
        )


async def serve(interceptor: AuthenticationInterceptor) -> Served:
    handlers = Handlers()
    server = grpc.aio.server(interceptors=[interceptor])
    server.add_generic_rpc_handlers([handlers.generic()])
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    return Served(server, port, handlers)


def method(channel: grpc.aio.Channel, name: str, kind: str) -> Callable[..., Any]:
    factory = getattr(channel, kind)
    made: Callable[..., Any] = factory(
        f"/{SERVICE}/{name}", request_serializer=identity, response_deserializer=identity
    )
    return made


async def test_every_call_kind_runs_as_the_tokens_subject() -> None:
    served = await serve(AuthenticationInterceptor(TokenVerifier.from_secret(SECRET)))
    try:
        async with served.channel(lambda: token("alice")) as channel:
            assert await method(channel, "Unary", "unary_unary")(b"") == b"alice"
            stream = method(channel, "ServerStream", "unary_stream")(b"")
            assert [r async for r in stream] == [b"alice", b"alice"]
            bidi = method(channel, "Bidi", "stream_stream")()
            await bidi.write(b"x")
            assert await bidi.read() == b"alice"
            await bidi.done_writing()
            assert await bidi.code() is grpc.StatusCode.OK
        assert current_role() is None  # nothing leaks into the caller's context
    finally:
        await served.server.stop(None)


async def test_refusals_and_the_open_health_service() -> None:
    served = await serve(AuthenticationInterceptor(TokenVerifier.from_secret(SECRET)))
    try:
        async with served.channel(None) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await method(channel, "Unary", "unary_unary")(b"")
            assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
            assert caught.value.details() == "authentication token missing"
            bidi = method(channel, "Bidi", "stream_stream")()
            assert await bidi.code() is grpc.StatusCode.UNAUTHENTICATED
            health_stub = health_pb2_grpc.HealthStub(channel)
            answer = await health_stub.Check(health_pb2.HealthCheckRequest(service=""))
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        expired = token("alice", exp=int(time.time()) - 5)
        async with served.channel(lambda: expired) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await method(channel, "Unary", "unary_unary")(b"")
            assert caught.value.details() == "authentication token expired"
            assert expired not in str(caught.value)
    finally:
        await served.server.stop(None)


async def test_superusers_only_names_the_role_and_the_method() -> None:
    verifier = TokenVerifier.from_secret(SECRET)
    served = await serve(AuthenticationInterceptor(verifier, superusers_only={"root"}))
    try:
        async with served.channel(lambda: token("app")) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await method(channel, "Unary", "unary_unary")(b"")
            assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
            assert "role 'app' may not call Unary" in (caught.value.details() or "")
        async with served.channel(lambda: token("root")) as channel:
            assert await method(channel, "Unary", "unary_unary")(b"") == b"root"
    finally:
        await served.server.stop(None)


async def test_a_stream_is_ended_when_its_token_expires() -> None:
    verifier = TokenVerifier.from_secret(SECRET)
    served = await serve(AuthenticationInterceptor(verifier, refresh_check_s=0.2))
    try:
        short = token("alice", exp=int(time.time()) + 1)
        async with served.channel(lambda: short) as channel:
            stream = method(channel, "Forever", "stream_stream")()
            assert await stream.read() == b"alice"
            started = time.monotonic()
            assert await asyncio.wait_for(stream.code(), 5) is grpc.StatusCode.UNAUTHENTICATED
            assert time.monotonic() - started < 2.5
            assert "expired" in (await stream.details() or "")
            # The handler was cancelled, not left running.
            await asyncio.wait_for(served.handlers.cancelled.wait(), 5)
        # A token without exp keeps its stream: the handler runs directly, no watcher.
        async with served.channel(lambda: token("bob")) as channel:
            stream = method(channel, "Forever", "stream_stream")()
            assert await stream.read() == b"bob"
            stream.cancel()
    finally:
        await served.server.stop(None)


def test_server_interceptors_off_warns_beyond_loopback(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "strata.auth.server"):
        assert server_interceptors(AuthConfig(), listen_host="127.0.0.1", role="broker") == []
        assert not caplog.records
        assert server_interceptors(AuthConfig(), listen_host="0.0.0.0", role="broker") == []
    assert "authentication is off" in caplog.text and "0.0.0.0" in caplog.text


def test_refusals_are_summed_up_at_most_every_interval(caplog: pytest.LogCaptureFixture) -> None:
    log = RefusalLog(interval_s=10)
    with caplog.at_level(logging.WARNING, "strata.auth.server"):
        log.record("expired", now=100.0)  # the first is reported at once
        for second in range(1, 10):
            log.record("expired", now=100.0 + second)
            log.record("wrong signature", now=100.0 + second)
        assert len(caplog.records) == 1
        log.record("expired", now=110.5)
    assert len(caplog.records) == 2
    assert "1 expired" in caplog.records[0].getMessage()
    assert "10 expired, 9 wrong signature" in caplog.records[1].getMessage()
