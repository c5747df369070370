"""The console's way to the admin RPC: the same ``AdminService`` the CLI calls, with the
caller's token, so that every page and action passes the same authorization.

Calls run on the HTTP server's threads over blocking gRPC channels: to this broker (by its
advertised address, with the TLS credentials its own broker-to-broker calls use), to the other
brokers ``ListBrokers`` names (for their topic summaries) and to the owner a
``TOPIC_NOT_OWNED`` refusal names (once per call, as pulsar-admin's redirect). The channels are
kept, at most ``MAX_CHANNELS``; the oldest is closed for a new one.

A refusal becomes ``ConsoleError`` with the HTTP status that matches its gRPC code and the
server's message, which the page shows as text.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf.message import Message

from strata.rpc_status import owner_named_by
from strata.v1 import admin_pb2_grpc, messaging_pb2_grpc

# Brokers the console keeps a channel to (this one, the others, owners named by redirects).
MAX_CHANNELS = 16
# One admin call from the console, end to end.
CALL_TIMEOUT_SECONDS = 10.0

# gRPC status → HTTP status of the console's JSON API.
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


class ConsoleError(Exception):
    """An API call that failed: ``status`` (HTTP), ``code`` (a gRPC code name or the console's
    own), ``message`` (for the page, shown as text)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def error_of(exc: grpc.RpcError) -> ConsoleError:
    code = exc.code() if callable(getattr(exc, "code", None)) else grpc.StatusCode.UNKNOWN
    details = exc.details() if callable(getattr(exc, "details", None)) else ""
    return ConsoleError(HTTP_STATUS.get(code, 502), code.name, details or code.name)


class AdminCalls:
    """Blocking admin calls with a caller's token. Lifecycle: built with the broker's address
    and client credentials; ``close()`` closes every channel."""

    def __init__(
        self,
        home_address: str,
        credentials: grpc.ChannelCredentials | None,
        timeout_s: float = CALL_TIMEOUT_SECONDS,
    ) -> None:
        self.home_address = home_address
        self._credentials = credentials
        self._timeout_s = timeout_s
        self._channels: OrderedDict[str, grpc.Channel] = OrderedDict()
        self._lock = threading.Lock()

    def _channel(self, address: str) -> grpc.Channel:
        with self._lock:
            channel = self._channels.get(address)
            if channel is None:
                if len(self._channels) >= MAX_CHANNELS:
                    _, oldest = self._channels.popitem(last=False)
                    oldest.close()
                channel = (
                    grpc.secure_channel(address, self._credentials)
                    if self._credentials is not None
                    else grpc.insecure_channel(address)
                )
                self._channels[address] = channel
            else:
                self._channels.move_to_end(address)
        return channel

    def call(
        self,
        method: str,
        request: Message,
        token: str,
        *,
        address: str | None = None,
        follow_owner: bool = False,
    ) -> Any:
        """``AdminService/method`` at ``address`` (default: this broker) with ``token`` (may
        be empty); with ``follow_owner``, a TOPIC_NOT_OWNED refusal is retried once at the
        owner it names."""
        target = address or self.home_address
        try:
            return self._invoke(target, method, request, token)
        except grpc.RpcError as exc:
            owner = owner_named_by(exc) if follow_owner else None
            if owner is None or owner == target:
                raise error_of(exc) from None
        try:
            return self._invoke(owner, method, request, token)
        except grpc.RpcError as exc:
            raise error_of(exc) from None

    def messaging_call(self, method: str, request: Message, token: str) -> Any:
        """``MessagingService/method`` at this broker (lookups and partition metadata)."""
        stub = messaging_pb2_grpc.MessagingServiceStub(self._channel(self.home_address))
        try:
            return self._send(getattr(stub, method), request, token)
        except grpc.RpcError as exc:
            raise error_of(exc) from None

    def _invoke(self, address: str, method: str, request: Message, token: str) -> Any:
        stub = admin_pb2_grpc.AdminServiceStub(self._channel(address))
        return self._send(getattr(stub, method), request, token)

    def _send(self, function: Callable[..., Any], request: Message, token: str) -> Any:
        metadata = (("authorization", f"Bearer {token}"),) if token else ()
        return function(request, timeout=self._timeout_s, metadata=metadata)

    def close(self) -> None:
        with self._lock:
            for channel in self._channels.values():
                channel.close()
            self._channels.clear()
