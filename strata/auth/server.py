"""Token authentication at a server's door: one ``grpc.aio.ServerInterceptor`` for brokers,
standalones and bookies.

With ``--authentication-enabled`` every call but the gRPC health service (kept open for
probes, as Pulsar keeps its health check) must carry metadata ``authorization: Bearer <jwt>``.
A refused call is answered UNAUTHENTICATED with the reason (``strata.auth.tokens``), never the
token. An accepted call runs with the token's ``sub`` as its role (``acting_as``), set inside
the call's own task, so the servicer and the authorization check read it with
``current_role()``.

Open streams and expiring tokens (Pulsar's ``authenticationRefreshCheckSeconds``, and
CVE-2023-31007, where a connection outlived its expired credentials): every
``refresh_check_s`` a stream whose token has expired is ended with UNAUTHENTICATED. What the
broker had already acknowledged on it stays; the client's reconnect must present a valid token
(the SDK asks its token provider again), so a static expired token stops at the reconnect.

With ``superusers_only`` (a bookie with ``--authorization-enabled``) only superuser roles may
call anything but health: PERMISSION_DENIED names the role and the method.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import ipaddress
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from typing import Any, TypeAlias

import grpc
from grpc_health.v1 import health

from strata.auth.config import AuthConfig
from strata.auth.credentials import CredentialsError, server_client_token_source
from strata.auth.principal import acting_as
from strata.auth.tokens import (
    KeyLoadError,
    Principal,
    TokenRefused,
    TokenVerifier,
    verifier_for,
)

_log = logging.getLogger(__name__)

AUTHORIZATION_METADATA_KEY = "authorization"
# Services open without a token: probes must see a server's health.
OPEN_SERVICES = frozenset({health.SERVICE_NAME})
_Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
_Context = grpc.aio.ServicerContext[Any, Any]


def service_of(method: str) -> str:
    """``/pkg.Service/Method`` → ``pkg.Service``."""
    return method.lstrip("/").partition("/")[0]


def _metadata_value(metadata: Any, key: str) -> str | None:
    for item in metadata or ():
        if item[0] == key:
            value = item[1]
            if isinstance(value, bytes):
                return value.decode("utf-8", "replace")
            return str(value)
    return None


# Refused calls are summed up in one warning at most this often (a client retrying with a bad
# token must not flood the log), and at most this many distinct reasons are counted.
REFUSAL_LOG_INTERVAL_S = 10.0
MAX_REFUSAL_REASONS_COUNTED = 32


class RefusalLog:
    """Counts refused calls by reason; at most every ``REFUSAL_LOG_INTERVAL_S`` the next
    refusal logs one warning with the counts since the last one (never a token)."""

    def __init__(self, interval_s: float = REFUSAL_LOG_INTERVAL_S) -> None:
        self._interval_s = interval_s
        self._counts: dict[str, int] = {}
        self._last_logged = -interval_s  # the first refusal is logged at once

    def record(self, reason: str, now: float | None = None) -> None:
        if reason in self._counts or len(self._counts) < MAX_REFUSAL_REASONS_COUNTED:
            self._counts[reason] = self._counts.get(reason, 0) + 1
        now = time.monotonic() if now is None else now
        if now - self._last_logged < self._interval_s:
            return
        summary = ", ".join(f"{count} {reason}" for reason, count in sorted(self._counts.items()))
        _log.warning("refused calls since the last report: %s", summary)
        self._counts.clear()
        self._last_logged = now


class AuthenticationInterceptor(grpc.aio.ServerInterceptor):
    """Verifies each call's bearer token (see the module docstring)."""

    def __init__(
        self,
        verifier: TokenVerifier,
        *,
        refresh_check_s: float = 60.0,
        superusers_only: Collection[str] | None = None,
    ) -> None:
        assert refresh_check_s > 0
        self._verifier = verifier
        self._refresh_check_s = refresh_check_s
        self._superusers_only = None if superusers_only is None else frozenset(superusers_only)
        self._refusals = RefusalLog()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[_Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> _Handler | None:
        method: str = handler_call_details.method  # type: ignore[attr-defined]
        handler = await continuation(handler_call_details)
        if handler is None or service_of(method) in OPEN_SERVICES:
            return handler
        metadata = handler_call_details.invocation_metadata  # type: ignore[attr-defined]
        try:
            principal = self._verifier.verify_bearer(
                _metadata_value(metadata, AUTHORIZATION_METADATA_KEY)
            )
        except TokenRefused as refusal:
            _log.debug("refused %s: %s", method, refusal)
            self._refusals.record(refusal.reason)
            return _refusing(handler, grpc.StatusCode.UNAUTHENTICATED, str(refusal))
        if self._superusers_only is not None and principal.role not in self._superusers_only:
            message = (
                f"role {shown_role(principal.role)} may not call {method.rpartition('/')[2]}: "
                "this server serves superuser roles only"
            )
            _log.debug("refused %s to role %s", method, shown_role(principal.role))
            self._refusals.record(f"role {shown_role(principal.role)} not a superuser")
            return _refusing(handler, grpc.StatusCode.PERMISSION_DENIED, message)
        return _as_principal(handler, principal, self._refresh_check_s)


# A role is quoted in messages and logs up to this many characters (a token may hold a long
# sub; a message must stay short).
MAX_ROLE_SHOWN_CHARS = 128


def shown_role(role: str) -> str:
    """``'role'`` for messages and logs, cut at ``MAX_ROLE_SHOWN_CHARS``."""
    if len(role) <= MAX_ROLE_SHOWN_CHARS:
        return repr(role)
    return repr(role[:MAX_ROLE_SHOWN_CHARS]) + "..."


def _refusing(handler: _Handler, code: grpc.StatusCode, message: str) -> _Handler:
    async def refuse(request: Any, context: _Context) -> Any:
        await context.abort(code, message)

    return _replace_behavior(handler, refuse)


def _replace_behavior(handler: _Handler, behavior: Callable[..., Any]) -> _Handler:
    deserializer = handler.request_deserializer
    serializer = handler.response_serializer
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(behavior, deserializer, serializer)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(behavior, deserializer, serializer)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(behavior, deserializer, serializer)
    return grpc.unary_unary_rpc_method_handler(behavior, deserializer, serializer)


def _inner_behavior(handler: _Handler) -> Callable[..., Any]:
    if handler.request_streaming and handler.response_streaming:
        return handler.stream_stream  # type: ignore[return-value]
    if handler.request_streaming:
        return handler.stream_unary  # type: ignore[return-value]
    if handler.response_streaming:
        return handler.unary_stream  # type: ignore[return-value]
    return handler.unary_unary  # type: ignore[return-value]


def _as_principal(handler: _Handler, principal: Principal, refresh_check_s: float) -> _Handler:
    inner = _inner_behavior(handler)
    role = principal.role
    streaming = handler.request_streaming or handler.response_streaming

    if inspect.isasyncgenfunction(inner):

        async def generate(request: Any, context: _Context) -> AsyncIterator[Any]:
            # A generator handler is checked at each response it sends.
            with acting_as(role):
                async for response in inner(request, context):
                    if principal.expired():
                        await _abort_expired(context)
                    yield response

        return _replace_behavior(handler, generate)

    async def serve(request: Any, context: _Context) -> Any:
        with acting_as(role):
            result = inner(request, context)
            if not inspect.isawaitable(result):
                return result
            if not streaming or principal.expires_at_s is None:
                return await result
            return await _until_expired(result, context, principal, refresh_check_s)

    return _replace_behavior(handler, serve)


async def _until_expired(
    result: Awaitable[Any], context: _Context, principal: Principal, refresh_check_s: float
) -> Any:
    """Serve a stream in a task of its own (it inherits the role), ending it with
    UNAUTHENTICATED at the first check, every ``refresh_check_s``, that finds the token
    expired. The task is this call's: cancelled and awaited however the call ends."""
    task = asyncio.ensure_future(result)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=refresh_check_s)
            if done:
                return task.result()
            if principal.expired():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                _log.info(
                    "ended a stream of role %s: its token expired", shown_role(principal.role)
                )
                await _abort_expired(context)
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def _abort_expired(context: _Context) -> None:
    await context.abort(
        grpc.StatusCode.UNAUTHENTICATED, str(TokenRefused("expired", "the stream is closed"))
    )


def _beyond_loopback(host: str) -> bool:
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True


def server_interceptors(
    config: AuthConfig, *, listen_host: str, role: str, superusers_only: bool = False
) -> list[grpc.aio.ServerInterceptor]:
    """The interceptors a server with ``config`` runs (none when authentication is off; then
    a server listening beyond loopback logs a warning). ``superusers_only``: a bookie, whose
    ledger operations need a superuser when authorization is on. Raises ``KeyLoadError``."""
    verifier = verifier_for(config)
    if verifier is None:
        if _beyond_loopback(listen_host):
            _log.warning(
                "authentication is off and the %s listens on %s: anyone who can reach it may "
                "call it (turn on --authentication-enabled)",
                role,
                listen_host or "every address",
            )
        return []
    superusers = config.superusers if superusers_only and config.authorization_enabled else None
    _log.info(
        "token authentication on (%s%s)%s",
        verifier.algorithm,
        f", audience {config.auth_token_audience}" if config.auth_token_audience else "",
        "" if superusers is None else f"; superuser roles only: {sorted(superusers)}",
    )
    if superusers is not None and not superusers:
        _log.warning("authorization is on but --superuser-roles is empty: every call is refused")
    return [
        AuthenticationInterceptor(
            verifier,
            refresh_check_s=config.authentication_refresh_check_seconds,
            superusers_only=superusers,
        )
    ]


def check_auth_keys(parser: argparse.ArgumentParser, config: AuthConfig) -> None:
    """At start-up: a key or a client token that cannot be loaded is a usage error naming
    its option."""
    try:
        verifier_for(config)
        server_client_token_source(config)
    except KeyLoadError as exc:
        parser.error(str(exc))
    except CredentialsError as exc:
        parser.error(f"--broker-client-auth-token-file: {exc}")
