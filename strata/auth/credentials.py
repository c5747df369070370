"""The token a caller presents: ``authorization: Bearer <jwt>`` on every call of a channel.

A ``TokenSource`` is asked for the token at each call, so a callable source (or a token file,
re-read) gives a rotated token to the next stream (re)connect, as Pulsar's token supplier
does. Channel interceptors carry it: one class for ``grpc.aio`` channels (the SDK, a broker
calling bookies) and one for blocking channels (the admin command line). Without a source,
no interceptor is added and calls cost nothing more.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import grpc

from strata.auth.config import AuthConfig

AUTHORIZATION_METADATA_KEY = "authorization"
AUTH_TOKEN_ENV = "STRATA_AUTH_TOKEN"
# Token files are small; a larger file is refused rather than read into memory.
MAX_TOKEN_FILE_BYTES = 64 * 1024

TokenSource = Callable[[], str]


class CredentialsError(ValueError):
    """A token that cannot be had (its message never holds the token)."""


def static_token(token: str) -> TokenSource:
    token = token.strip()
    if not token:
        raise CredentialsError("the authentication token is empty")
    return lambda: token


def token_file(path: str | Path) -> TokenSource:
    """A source that reads ``path`` at each use (a rotated file is picked up)."""
    location = Path(path)

    def read() -> str:
        try:
            with open(location, "rb") as file:
                data = file.read(MAX_TOKEN_FILE_BYTES + 1)
        except OSError as exc:
            raise CredentialsError(
                f"cannot read the token file {location} ({exc.strerror})"
            ) from None
        if len(data) > MAX_TOKEN_FILE_BYTES:
            raise CredentialsError(f"the token file {location} is too large")
        token = data.decode("utf-8", "replace").strip()
        if not token:
            raise CredentialsError(f"the token file {location} is empty")
        return token

    read()  # fail now, at configuration, rather than at the first call
    return read


def token_source(
    token: str = "", token_file_path: str = "", *, use_environment: bool = False
) -> TokenSource | None:
    """The source named by a ``--...-token`` / ``--...-token-file`` pair (at most one), else
    ``$STRATA_AUTH_TOKEN`` when ``use_environment``; None: no credentials."""
    if token and token_file_path:
        raise CredentialsError("give a token or a token file, not both")
    if token:
        return static_token(token)
    if token_file_path:
        return token_file(token_file_path)
    if use_environment and os.environ.get(AUTH_TOKEN_ENV, "").strip():
        return static_token(os.environ[AUTH_TOKEN_ENV])
    return None


def _bearer(source: TokenSource) -> tuple[str, str]:
    return (AUTHORIZATION_METADATA_KEY, f"Bearer {source()}")


class _CallDetails(NamedTuple):
    method: Any
    timeout: Any
    metadata: Any
    credentials: Any
    wait_for_ready: Any


def _with_token(details: Any, source: TokenSource) -> _CallDetails:
    metadata = [*(details.metadata or ()), _bearer(source)]
    return _CallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )


# A grpc.aio channel files each interceptor under the first call kind it implements (an
# if/elif chain), so each kind has its own class.
class _AioUnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, source: TokenSource) -> None:
        self._source = source

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_with_token(details, self._source), request)


class _AioUnaryStream(grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, source: TokenSource) -> None:
        self._source = source

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_with_token(details, self._source), request)


class _AioStreamUnary(grpc.aio.StreamUnaryClientInterceptor):
    def __init__(self, source: TokenSource) -> None:
        self._source = source

    async def intercept_stream_unary(
        self, continuation: Any, details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(_with_token(details, self._source), request_iterator)


class _AioStreamStream(grpc.aio.StreamStreamClientInterceptor):
    def __init__(self, source: TokenSource) -> None:
        self._source = source

    async def intercept_stream_stream(
        self, continuation: Any, details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(_with_token(details, self._source), request_iterator)


def aio_interceptors(source: TokenSource | None) -> list[grpc.aio.ClientInterceptor]:
    """The interceptors of a ``grpc.aio`` channel presenting ``source`` (none without)."""
    if source is None:
        return []
    return [
        _AioUnaryUnary(source),
        _AioUnaryStream(source),
        _AioStreamUnary(source),
        _AioStreamStream(source),
    ]


class _SyncCallDetails(NamedTuple):
    method: Any
    timeout: Any
    metadata: Any
    credentials: Any
    wait_for_ready: Any
    compression: Any


class _SyncTokenInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    def __init__(self, source: TokenSource) -> None:
        self._source = source

    def _details(self, details: Any) -> _SyncCallDetails:
        metadata = [*(details.metadata or ()), _bearer(self._source)]
        return _SyncCallDetails(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            details.wait_for_ready,
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)


def intercept_sync_channel(channel: grpc.Channel, source: TokenSource | None) -> grpc.Channel:
    """``channel`` presenting ``source`` on every call (itself without a source)."""
    if source is None:
        return channel
    return grpc.intercept_channel(channel, _SyncTokenInterceptor(source))


def server_client_token_source(config: AuthConfig) -> TokenSource | None:
    """What a broker (or a bookie's autorecovery) presents to the servers it calls:
    ``--broker-client-auth-token`` or ``--broker-client-auth-token-file``."""
    return token_source(config.broker_client_auth_token, config.broker_client_auth_token_file)
