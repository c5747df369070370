"""The SDK's channels give up on a broker that accepts TCP but never answers (a paused
process) within min(keep-alive interval, 10 s), not gRPC core's default of 20 s."""

from __future__ import annotations

import socket
import time

import grpc
import pytest

from strata.client._connection import channel_options

KEEPALIVE_MS = 2_000
# Well below gRPC core's 20 s connection deadline, well above the 2 s asked for.
GIVES_UP_WITHIN_S = 10.0


async def test_a_silent_broker_fails_the_call_after_the_keepalive_bound() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel completes the handshake; nobody speaks HTTP/2
        port = silent.getsockname()[1]
        options = channel_options(KEEPALIVE_MS)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
            started = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
                    "/strata.test.Silent/Call"
                )
                await call(b"")
            elapsed_s = time.monotonic() - started
    assert raised.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "connection attempt timed out" in (raised.value.details() or "")
    assert elapsed_s < GIVES_UP_WITHIN_S, f"gave up after {elapsed_s:.1f} s"
