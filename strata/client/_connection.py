"""The client's one gRPC channel, its settings, and helpers its streams share.

A ``Connection`` belongs to one ``AsyncClient``; every producer and consumer of that client
opens its stream on the connection's channel (gRPC multiplexes them over one HTTP/2
connection, as pulsar-client multiplexes over one TCP connection per broker).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Coroutine
from typing import Any, NoReturn

import grpc
import grpc.aio

from strata.client._errors import InvalidArgument, ProtocolError
from strata.v1 import messaging_pb2_grpc

DEFAULT_SERVICE_URL = "localhost:6650"
DEFAULT_PORT = 6650
_SCHEMES = ("grpc://", "pulsar://")

# Batches of up to the broker's maximum message size (a few MiB) must fit in one gRPC
# message, with room for the request envelope.
MAX_GRPC_MESSAGE_BYTES = 8 * 1024 * 1024
# Consume streams can stay idle for a long time; a ping every 30 s keeps NATs and proxies
# from dropping them and detects a dead broker. The broker permits this interval.
KEEPALIVE_TIME_MS = 30_000
KEEPALIVE_TIMEOUT_MS = 10_000

RECONNECT_INITIAL_BACKOFF_S = 0.1
RECONNECT_MAX_BACKOFF_S = 2.0


def parse_service_url(service_url: str) -> str:
    """The gRPC target for ``host:port``, ``grpc://host:port`` or ``pulsar://host:port``.

    A missing port means 6650. Raises ``InvalidArgument`` for other schemes (TLS is not
    supported yet) and for several hosts.
    """
    url = service_url.strip()
    for scheme in _SCHEMES:
        if url.startswith(scheme):
            url = url[len(scheme) :]
            break
    else:
        if "://" in url:
            raise InvalidArgument(
                f"service URL {service_url!r}: use host:port, grpc://host:port or "
                "pulsar://host:port"
            )
    url = url.rstrip("/")
    if not url or "," in url or "/" in url:
        raise InvalidArgument(f"service URL {service_url!r} must name exactly one host:port")
    host, sep, port = url.rpartition(":")
    if not sep or host.endswith(":") or not port.isdigit():
        # No port given: "host" or a bare IPv6 address.
        if url.startswith("[") or url.count(":") == 0:
            return f"{url}:{DEFAULT_PORT}"
        raise InvalidArgument(f"service URL {service_url!r} has no valid port")
    if not host:
        raise InvalidArgument(f"service URL {service_url!r} has no host")
    return url


def channel_options() -> list[tuple[str, Any]]:
    return [
        ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_BYTES),
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 0),
        ("grpc.http2.max_pings_without_data", 0),
    ]


class Connection:
    """The channel and settings shared by one client's producers and consumers.

    Lifecycle: made by ``AsyncClient`` inside its event loop on first use; ``close`` ends
    the channel after the client has closed every producer and consumer.
    """

    def __init__(self, target: str, operation_timeout_s: float) -> None:
        self.target = target
        self.operation_timeout_s = operation_timeout_s
        self.channel = grpc.aio.insecure_channel(target, options=channel_options())
        self.messaging = messaging_pb2_grpc.MessagingServiceStub(self.channel)

    async def close(self) -> None:
        await self.channel.close(grace=None)


def backoff_delay_s(attempt: int) -> float:
    """Delay before reconnect ``attempt`` (0-based): doubling from 100 ms to 2 s, ±20 % jitter."""
    base = min(RECONNECT_MAX_BACKOFF_S, RECONNECT_INITIAL_BACKOFF_S * (2 ** min(attempt, 16)))
    return float(base) * random.uniform(0.8, 1.2)


async def run_until_first_error(*coroutines: Coroutine[Any, Any, Any]) -> NoReturn:
    """Run a stream's reader and writer together until one fails; cancel the rest; raise.

    Both loops are owned here: whatever ends first (an error, or the caller being
    cancelled), the others are cancelled and awaited before this returns.
    """
    tasks = [asyncio.ensure_future(coroutine) for coroutine in coroutines]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in done:
        if not task.cancelled() and (error := task.exception()) is not None:
            raise error
    raise ProtocolError("stream loops ended without an error")
