"""The etcd metadata-store driver: the store every process of a Strata cluster shares.

URL: ``etcd://host:port[,host:port...][/root][?session_ttl_seconds=N]``, parsed by
:meth:`EtcdSettings.from_url`. The endpoints are tried in order; the optional root is a key
prefix that lets several clusters (or tests) share one etcd; ``session_ttl_seconds`` is the lease
TTL of every session (:data:`DEFAULT_SESSION_TTL_SECONDS`).

How the interface maps onto etcd's v3 API (aetcd's gRPC channel, stubs, leases and watches):

* The key ``/a/b`` is the etcd key ``<root>/a/b`` in UTF-8, so etcd's byte order is the
  interface's code-point order.
* ``Record.version`` is etcd's per-key ``version`` (1 on create, +1 per put, reset by a
  delete) and ``mod_revision`` is etcd's; revisions are etcd's store-wide revision.
* A put is one transaction: [compare ``version`` when an expected version is given, where
  ``version == 0`` is create-if-absent] then put and read back the new version (keys only).
  A conditional delete is the same shape. A failed compare reads the actual version in the
  same transaction, so :class:`BadVersionError` carries it without another round trip.
* Sessions: the store and every :meth:`EtcdMetadataStore.open_session` are separate sessions.
  A session grants its etcd lease on its first ephemeral put and refreshes it every TTL/3 in a
  keep-alive task it owns. Ephemeral keys are put with that lease, so etcd deletes them when
  the session closes (the lease is revoked) or when the process dies (the lease expires).
* Lease loss: when etcd reports the lease gone, or when the session could not refresh it for
  a whole TTL (measured from the last successful refresh *request*, so never later than
  etcd's own expiry), the session ends: every later call raises
  :class:`MetadataStoreClosedError`, its watches fail with that error, and it revokes the
  lease when it can so that its keys do not outlive it. A session that lost its lease never
  comes back: close it and open a new store, as after a ZooKeeper session expiry.
* Watches: one etcd prefix watch per :meth:`EtcdMetadataStore.watch`, started from the
  revision after the last one this store has seen (``watch()`` cannot wait for etcd, and so
  every change this process made before calling it is excluded and none made after it is
  missed). Events go into a bounded :class:`BufferedWatch`. After a disconnection the watch is
  re-created from the revision after the last event delivered, so nothing is lost or
  repeated. If etcd stays unreachable for ``watch_resume_max_seconds`` the watch fails with
  :class:`MetadataStoreUnavailableError`; if etcd compacted the revisions it needs, with
  :class:`WatchOverflowError` (the remedy is the same as after an overflow: watch, then list).
* Failures: reads, lease grants and revokes are retried (tenacity, bounded by
  :data:`CONNECT_RETRY_MAX_ATTEMPTS` and ``connect_retry_max_seconds``) on connection errors
  and timeouts. Writes are retried only when gRPC proves the request never left this process
  (no connection); any other failure of a write may or may not have taken effect and is
  raised at once. Either way :class:`MetadataStoreUnavailableError` reports what is left.
  With several endpoints a connection failure moves to the next one.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import ipaddress
import logging
import math
import re
import time
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import aetcd
import grpc
from aetcd import rpc
from aetcd.utils import prefix_range_end
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_before_delay,
    wait_exponential,
    wait_random,
)

from strata.metadata.base import (
    DEFAULT_MAX_PENDING_EVENTS,
    BadVersionError,
    BufferedWatch,
    EventType,
    MetadataError,
    MetadataStore,
    MetadataStoreClosedError,
    MetadataStoreUnavailableError,
    Record,
    Watch,
    WatchEvent,
    WatchOverflowError,
    check_expected_version,
    check_key,
    check_prefix,
    check_value,
)
from strata.metrics import (
    METADATA_STORE_READ_LATENCY_SECONDS,
    METADATA_STORE_SESSION_EXPIRATIONS,
    METADATA_STORE_WRITE_LATENCY_SECONDS,
)

_logger = logging.getLogger(__name__)

_T = TypeVar("_T")

# Sessions. Pulsar's metadata session timeout is 30 s as well; etcd raises a smaller TTL to
# its own minimum (2 s with default election settings) and the granted TTL is what counts.
DEFAULT_SESSION_TTL_SECONDS = 30
MIN_SESSION_TTL_SECONDS = 1
MAX_SESSION_TTL_SECONDS = 3600
# After a failed refresh the keep-alive task tries again this soon (or at TTL/3 if sooner).
KEEP_ALIVE_RETRY_INTERVAL_S = 0.25

# Requests and retries.
REQUEST_TIMEOUT_S = 5.0
MIN_ATTEMPT_TIMEOUT_S = 0.5
CONNECT_RETRY_MAX_ATTEMPTS = 40
CONNECT_RETRY_MAX_SECONDS = 10.0
CONNECT_RETRY_INITIAL_BACKOFF_S = 0.05
CONNECT_RETRY_MAX_BACKOFF_S = 1.0
CONNECT_RETRY_JITTER_S = 0.05
# Connecting at start may wait much longer (``--metadata-store-connect-timeout-seconds``: the
# roles of a cluster start in any order); an attempt fails at once while nothing listens, so
# the attempts are bounded by one per longest backoff, plus the usual budget.
CONNECT_WAIT_LOG_INTERVAL_S = 10.0
# Revoking the lease on close is a courtesy (the lease expires anyway), so it waits less.
CLOSE_REVOKE_MAX_S = 5.0

# Watches: how long one outage may last before a watch fails, and how many times in a row a
# re-created watch may break at once (without delivering anything) before it gives up.
WATCH_RESUME_MAX_SECONDS = 30.0
WATCH_RESUME_MAX_ATTEMPTS = 50
WATCH_STABLE_AFTER_S = 1.0

# Listing. A value is at most 1 MiB, so a page of records stays under the receive limit.
LIST_PAGE_RECORDS = 64
LIST_PAGE_KEYS = 1000
LIST_COMPACTED_MAX_ATTEMPTS = 3
MAX_RECEIVE_MESSAGE_BYTES = 96 * 1024 * 1024

# gRPC channel: reconnect within a second of etcd coming back (gRPC's default backoff grows to
# two minutes), and notice a dead peer on a quiet stream through HTTP/2 pings. etcd refuses
# pings more often than every 5 s (--grpc-keepalive-min-time) and without an active call.
_CHANNEL_OPTIONS: dict[str, Any] = {
    "grpc.initial_reconnect_backoff_ms": 100,
    "grpc.min_reconnect_backoff_ms": 100,
    "grpc.max_reconnect_backoff_ms": 1000,
    "grpc.keepalive_time_ms": 10_000,
    "grpc.keepalive_timeout_ms": 5_000,
    "grpc.max_receive_message_length": MAX_RECEIVE_MESSAGE_BYTES,
}

_TRANSIENT_CODES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
)
# gRPC fails a call with this message when the channel had no connection to send it on.
_NOT_SENT_MARKER = "failed to connect to all addresses"
_HOST_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")


# --- Settings and the URL -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EtcdEndpoint:
    """One etcd member's client address."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class EtcdSettings:
    """Where the etcd store is and how it behaves; validated on construction.

    The URL sets the endpoints, the root and the session TTL; the retry budgets keep their
    defaults there and exist as fields for callers (and tests) that must fail sooner.
    """

    endpoints: tuple[EtcdEndpoint, ...]
    root: str = ""
    session_ttl_seconds: int = DEFAULT_SESSION_TTL_SECONDS
    connect_retry_max_seconds: float = CONNECT_RETRY_MAX_SECONDS
    watch_resume_max_seconds: float = WATCH_RESUME_MAX_SECONDS

    def __post_init__(self) -> None:
        if not self.endpoints:
            raise ValueError("etcd settings name no endpoint")
        for endpoint in self.endpoints:
            _check_host(endpoint.host)
            if not 1 <= endpoint.port <= 65535:
                raise ValueError(f"etcd port {endpoint.port} is not in 1..65535")
        if self.root:
            check_key(self.root)
        if not MIN_SESSION_TTL_SECONDS <= self.session_ttl_seconds <= MAX_SESSION_TTL_SECONDS:
            raise ValueError(
                f"session_ttl_seconds must be in "
                f"{MIN_SESSION_TTL_SECONDS}..{MAX_SESSION_TTL_SECONDS}, "
                f"not {self.session_ttl_seconds}"
            )
        if not self.connect_retry_max_seconds > 0 or not self.watch_resume_max_seconds > 0:
            raise ValueError("connect_retry_max_seconds and watch_resume_max_seconds must be > 0")

    @classmethod
    def from_url(cls, url: str) -> EtcdSettings:
        """Parse ``etcd://host:port[,host:port...][/root][?session_ttl_seconds=N]``; ValueError
        if bad.

        Every endpoint needs an explicit port; IPv6 hosts go in brackets (``[::1]:2379``).
        """

        def refuse(reason: str) -> ValueError:
            return ValueError(f"metadata store URL {url!r}: {reason}")

        try:
            parts = urllib.parse.urlsplit(url)
        except ValueError as error:
            raise refuse(str(error)) from error
        if parts.scheme.lower() != "etcd":
            raise refuse("the scheme must be etcd://")
        if parts.fragment:
            raise refuse("a fragment is not allowed")
        if "@" in parts.netloc:
            raise refuse("credentials are not supported")
        if not parts.netloc:
            raise refuse("write etcd://host:port[,host:port...]")
        try:
            endpoints = tuple(_parse_endpoint(text) for text in parts.netloc.split(","))
        except ValueError as error:
            raise refuse(str(error)) from error
        root = urllib.parse.unquote(parts.path).rstrip("/")
        session_ttl_seconds = DEFAULT_SESSION_TTL_SECONDS
        if parts.query:
            try:
                options = urllib.parse.parse_qsl(
                    parts.query, keep_blank_values=True, strict_parsing=True
                )
            except ValueError as error:
                raise refuse(f"malformed query: {error}") from error
            for name, value in options:
                if name != "session_ttl_seconds":
                    raise refuse(f"unknown option {name!r}; the one option is session_ttl_seconds")
                if not value.isdigit():
                    raise refuse(
                        f"session_ttl_seconds must be a whole number of seconds, not {value!r}"
                    )
                session_ttl_seconds = int(value)
        try:
            return cls(endpoints, root=root, session_ttl_seconds=session_ttl_seconds)
        except ValueError as error:
            raise refuse(str(error)) from error

    def __str__(self) -> str:
        hosts = ",".join(str(endpoint) for endpoint in self.endpoints)
        return f"etcd://{hosts}{self.root}"


def _parse_endpoint(text: str) -> EtcdEndpoint:
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise ValueError(f"endpoint {text!r}: write [ipv6]:port")
        port_text = rest[1:]
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon:
            raise ValueError(f"endpoint {text!r} has no port; write host:port")
        if ":" in host:
            raise ValueError(f"endpoint {text!r}: write an IPv6 host in brackets, [ipv6]:port")
    if not port_text.isdigit():
        raise ValueError(f"endpoint {text!r}: port {port_text!r} is not a number")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"endpoint {text!r}: port {port} is not in 1..65535")
    _check_host(host)
    return EtcdEndpoint(host, port)


def _check_host(host: str) -> None:
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError as error:
            raise ValueError(f"host {host!r} is not a valid IPv6 address") from error
    elif not _HOST_NAME.match(host) or ".." in host:
        raise ValueError(f"host {host!r} is not a valid host name or IPv4 address")
    elif all(char.isdigit() or char == "." for char in host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError as error:
            raise ValueError(f"host {host!r} is not a valid IPv4 address") from error


# --- Errors from aetcd and gRPC ---------------------------------------------------------------


class _LeaseNotFoundError(MetadataError):
    """etcd does not know the session's lease any more (expired or revoked)."""


class _RevisionCompactedError(MetadataError):
    """etcd compacted the revision a read or a watch asked for."""


def _rpc_status(error: BaseException) -> tuple[grpc.StatusCode, str] | None:
    """The gRPC status behind ``error``: aetcd raises its own exceptions *from* gRPC's."""
    seen: BaseException | None = error
    for _ in range(3):  # aetcd wraps at most once or twice
        if seen is None:
            break
        if isinstance(seen, grpc.aio.AioRpcError):
            return seen.code(), seen.details() or ""
        seen = seen.__cause__
    return None


def _is_transient(error: BaseException) -> bool:
    """A connection failure or a timeout: the call may succeed if tried again."""
    if isinstance(
        error,
        aetcd.ConnectionFailedError
        | aetcd.ConnectionTimeoutError
        | aetcd.WatchTimeoutError
        | TimeoutError,
    ):
        return True
    status = _rpc_status(error)
    return status is not None and status[0] in _TRANSIENT_CODES


def _was_not_sent(error: BaseException) -> bool:
    """True when gRPC failed the call before sending it, so retrying a write is safe."""
    status = _rpc_status(error)
    details = status[1] if status is not None else str(error)
    return _NOT_SENT_MARKER in details.lower()


def _describe(error: BaseException) -> str:
    status = _rpc_status(error)
    if status is not None:
        return f"{status[0].name}: {status[1]}"
    if isinstance(error, TimeoutError):
        return "timed out"
    return f"{type(error).__name__}: {error}"


# --- The connection shared by a store's sessions ------------------------------------------------


class _EtcdConnection:
    """The aetcd client that a store's sessions share, with retries and endpoint failover.

    Lifecycle: created and started by :meth:`EtcdMetadataStore.open`; closed by the owning
    session's ``close()`` after every session ended. It talks to one endpoint at a time and
    moves to the next one (in the order of the URL, wrapping around) when a call to the
    current one fails to connect or times out. It also tracks the highest store revision any
    response carried, which is where new watches start.
    """

    def __init__(self, settings: EtcdSettings) -> None:
        self.settings = settings
        self.description = f"etcd metadata store {settings}"
        self.revision = 0
        self.sessions: builtins.list[EtcdMetadataStore] = []
        self.closed = False
        self._endpoint_index = 0
        self._client = self._new_client(settings.endpoints[0])
        # Clients left behind by a failover, closing in the background; close() awaits them.
        self._retiring: set[asyncio.Task[None]] = set()

    @staticmethod
    def _new_client(endpoint: EtcdEndpoint) -> Any:
        host = f"[{endpoint.host}]" if ":" in endpoint.host else endpoint.host
        # aetcd's timeout bounds its own calls (lease grant and revoke, watch creation).
        return aetcd.Client(
            host=host, port=endpoint.port, timeout=REQUEST_TIMEOUT_S, options=_CHANNEL_OPTIONS
        )

    @property
    def endpoint(self) -> EtcdEndpoint:
        return self.settings.endpoints[self._endpoint_index]

    def etcd_key(self, key: str) -> bytes:
        return (self.settings.root + key).encode("utf-8")

    def user_key(self, etcd_key: bytes) -> str:
        return etcd_key.decode("utf-8", errors="replace")[len(self.settings.root) :]

    def observe(self, header: Any) -> None:
        self.revision = max(self.revision, int(header.revision))

    def connection_failed(self, client: Any) -> None:
        """Move to the next endpoint after ``client`` failed, unless another call already did.

        With one endpoint there is nowhere to go: gRPC reconnects the channel by itself.
        """
        endpoints = self.settings.endpoints
        if len(endpoints) == 1 or client is not self._client or self.closed:
            return
        failed = self.endpoint
        self._endpoint_index = (self._endpoint_index + 1) % len(endpoints)
        self._client = self._new_client(self.endpoint)
        _logger.warning("%s: %s failed, switching to %s", self.description, failed, self.endpoint)
        task = asyncio.get_running_loop().create_task(self._close_client(client))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _close_client(self, client: Any) -> None:
        try:
            await asyncio.wait_for(client.close(), REQUEST_TIMEOUT_S)
        except Exception as error:  # the client is being dropped; nothing depends on it
            _logger.debug("%s: closing a client failed: %s", self.description, error)

    async def call(
        self,
        operation: str,
        function: Callable[[Any, float], Awaitable[_T]],
        *,
        idempotent: bool,
        max_s: float | None = None,
        max_attempts: int = CONNECT_RETRY_MAX_ATTEMPTS,
        before_sleep: Callable[[RetryCallState], None] | None = None,
    ) -> _T:
        """Run ``function(client, timeout_s)``, retrying connection failures within the limits.

        ``max_s`` defaults to the settings' ``connect_retry_max_seconds``. A write
        (``idempotent=False``) is retried only when it was never sent. MetadataError raised
        inside ``function`` passes through; other failures are translated.
        """
        if max_s is None:
            max_s = self.settings.connect_retry_max_seconds
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max_s

        def retriable(error: BaseException) -> bool:
            return _is_transient(error) and (idempotent or _was_not_sent(error))

        retrying = AsyncRetrying(
            # stop_before_delay: no attempt starts after the budget is spent.
            stop=stop_after_attempt(max_attempts) | stop_before_delay(max_s),
            wait=wait_exponential(
                multiplier=CONNECT_RETRY_INITIAL_BACKOFF_S, max=CONNECT_RETRY_MAX_BACKOFF_S
            )
            + wait_random(0, CONNECT_RETRY_JITTER_S),
            retry=retry_if_exception(retriable),
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    if self.closed:
                        raise MetadataStoreClosedError(f"{self.description} is closed")
                    client = self._client
                    timeout_s = min(
                        REQUEST_TIMEOUT_S, max(MIN_ATTEMPT_TIMEOUT_S, deadline - loop.time())
                    )
                    try:
                        await client.connect()
                        return await function(client, timeout_s)
                    except Exception as error:
                        if _is_transient(error):
                            self.connection_failed(client)
                        raise
        except MetadataError:
            raise
        except Exception as error:
            raise self._translate(operation, error, idempotent) from error
        raise AssertionError("unreachable: tenacity either returns or raises")

    def _translate(self, operation: str, error: Exception, idempotent: bool) -> MetadataError:
        detail = _describe(error)
        if _is_transient(error):
            outcome = ""
            if not idempotent and not _was_not_sent(error):
                outcome = "; the change may or may not have been applied, read before retrying"
            return MetadataStoreUnavailableError(
                f"{self.description}: {operation} failed at {self.endpoint}: {detail}{outcome}"
            )
        status = _rpc_status(error)
        if status is not None and status[0] == grpc.StatusCode.NOT_FOUND and "lease" in status[1]:
            return _LeaseNotFoundError(f"{self.description}: {operation}: {status[1]}")
        if isinstance(error, aetcd.RevisionCompactedError) or (
            status is not None and status[0] == grpc.StatusCode.OUT_OF_RANGE
        ):
            return _RevisionCompactedError(f"{self.description}: {operation}: {detail}")
        return MetadataError(f"{self.description}: {operation} failed: {detail}")

    async def range(self, operation: str, request: Any) -> Any:
        async def send(client: Any, timeout_s: float) -> Any:
            return await client.kvstub.Range(request, timeout=timeout_s, metadata=client.metadata)

        started = asyncio.get_running_loop().time()
        response = await self.call(operation, send, idempotent=True)
        METADATA_STORE_READ_LATENCY_SECONDS.observe(asyncio.get_running_loop().time() - started)
        self.observe(response.header)
        return response

    async def write(self, operation: str, method: str, request: Any) -> Any:
        """Send a KV write (``Txn`` or ``DeleteRange``); retried only if it was never sent."""

        async def send(client: Any, timeout_s: float) -> Any:
            stub_method = getattr(client.kvstub, method)
            return await stub_method(request, timeout=timeout_s, metadata=client.metadata)

        started = asyncio.get_running_loop().time()
        response = await self.call(operation, send, idempotent=False)
        METADATA_STORE_WRITE_LATENCY_SECONDS.observe(asyncio.get_running_loop().time() - started)
        self.observe(response.header)
        return response

    async def scan(self, prefix: str, *, keys_only: bool) -> builtins.list[Any]:
        """Every key-value under ``prefix``, sorted by key, all read at one revision.

        Pages keep each response small; the first page fixes the revision so that the pages
        form one consistent snapshot. If etcd compacts that revision mid-way, start again.
        """
        start = self.etcd_key(prefix)
        end = prefix_range_end(start)
        limit = LIST_PAGE_KEYS if keys_only else LIST_PAGE_RECORDS
        for attempt in range(LIST_COMPACTED_MAX_ATTEMPTS):
            kvs: builtins.list[Any] = []
            revision = 0
            key = start
            try:
                # Bounded: each page starts after the last key of the one before, inside a
                # snapshot that no longer changes.
                while True:
                    request = rpc.RangeRequest(
                        key=key, range_end=end, limit=limit, revision=revision, keys_only=keys_only
                    )
                    response = await self.range("list", request)
                    revision = revision or int(response.header.revision)
                    kvs.extend(response.kvs)
                    if not response.more or not response.kvs:
                        return kvs
                    key = response.kvs[-1].key + b"\x00"
            except _RevisionCompactedError:
                if attempt + 1 == LIST_COMPACTED_MAX_ATTEMPTS:
                    raise
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def start(self, max_s: float | None = None) -> None:
        """Check that etcd answers, and learn the current revision for the first watches.

        ``max_s`` (default: the settings' ``connect_retry_max_seconds``) is how long an
        unreachable etcd is retried: a process started before etcd waits up to that long,
        logging a warning every :data:`CONNECT_WAIT_LOG_INTERVAL_S` while it waits.
        """
        if max_s is None:
            max_s = self.settings.connect_retry_max_seconds
        request = rpc.RangeRequest(key=self.etcd_key("/"), keys_only=True)
        waiting = _ConnectWaitLog(self.description, max_s)

        async def send(client: Any, timeout_s: float) -> Any:
            return await client.kvstub.Range(request, timeout=timeout_s, metadata=client.metadata)

        response = await self.call(
            "connect",
            send,
            idempotent=True,
            max_s=max_s,
            max_attempts=connect_max_attempts(max_s),
            before_sleep=waiting.before_sleep,
        )
        self.observe(response.header)
        waiting.connected()

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            await self._close_client(self._client)
        finally:
            if self._retiring:
                await asyncio.gather(*tuple(self._retiring), return_exceptions=True)


def connect_max_attempts(max_s: float) -> int:
    """The attempts a connect may make within ``max_s``: one per longest backoff, and more."""
    return CONNECT_RETRY_MAX_ATTEMPTS + math.ceil(max_s / CONNECT_RETRY_MAX_BACKOFF_S)


class _ConnectWaitLog:
    """What a process waiting for etcd at start says: a warning on the first failed attempt
    and every ``CONNECT_WAIT_LOG_INTERVAL_S`` after, and once it is connected."""

    def __init__(self, description: str, max_s: float) -> None:
        self._description = description
        self._max_s = max_s
        self._started = time.monotonic()
        self._logged_at: float | None = None

    def before_sleep(self, state: RetryCallState) -> None:
        now = time.monotonic()
        if self._logged_at is not None and now - self._logged_at < CONNECT_WAIT_LOG_INTERVAL_S:
            return
        self._logged_at = now
        error = state.outcome.exception() if state.outcome is not None else None
        _logger.warning(
            "%s is not reachable yet (%s); retrying for up to %.0f s more",
            self._description,
            _describe(error) if error is not None else "no answer",
            max(0.0, self._max_s - (now - self._started)),
        )

    def connected(self) -> None:
        if self._logged_at is not None:
            _logger.info(
                "%s reachable after %.1f s", self._description, time.monotonic() - self._started
            )


# --- Sessions -------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Lease:
    """A session's etcd lease; ``valid_until`` is on the event loop's (monotonic) clock."""

    id: int
    ttl_s: int
    valid_until: float


class EtcdMetadataStore(MetadataStore):
    """One session on an etcd metadata store: the store object callers hold.

    Lifecycle: ``await EtcdMetadataStore.open(settings)`` (or ``open_metadata_store("etcd://
    ...")``) connects and returns the first session, which owns the connection; sessions made
    by :meth:`open_session` share it. A session grants its lease on its first ephemeral put
    and owns the task that keeps it alive and one task per watch. ``close()`` stops those
    tasks, ends the watches and revokes the lease (deleting the session's ephemeral keys);
    closing the first session closes every other one first, then the connection. A session
    whose lease is lost ends by itself; see the module docstring.
    """

    def __init__(self, connection: _EtcdConnection, *, owns_connection: bool) -> None:
        self._connection = connection
        self._owns_connection = owns_connection
        self._session_id = uuid.uuid4().hex
        self._lease: _Lease | None = None
        self._lease_lock = asyncio.Lock()
        self._keeper: asyncio.Task[None] | None = None
        self._watches: dict[BufferedWatch, asyncio.Task[None]] = {}
        # Watch tasks cancelled by a watch's close() and not finished yet; close() awaits them.
        self._stopping: set[asyncio.Task[None]] = set()
        self._lost_reason: str | None = None
        self._closed = False
        connection.sessions.append(self)

    @classmethod
    async def open(
        cls, settings: EtcdSettings, *, connect_timeout_seconds: float | None = None
    ) -> EtcdMetadataStore:
        """Connect to etcd; MetadataStoreUnavailableError if no endpoint answers within
        ``connect_timeout_seconds`` (default: the settings' ``connect_retry_max_seconds``)."""
        connection = _EtcdConnection(settings)
        try:
            await connection.start(connect_timeout_seconds)
        except BaseException:
            await connection.close()
            raise
        return cls(connection, owns_connection=True)

    @property
    def session_id(self) -> str:
        return self._session_id

    @property
    def settings(self) -> EtcdSettings:
        return self._connection.settings

    def __repr__(self) -> str:
        if self._closed:
            state = "closed"
        elif self._lost_reason is not None:
            state = "lost"
        else:
            state = "open"
        description = self._connection.description
        return f"<{type(self).__name__} {description} session={self._session_id} {state}>"

    # --- State ----------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed or self._connection.closed:
            raise MetadataStoreClosedError(
                f"{self._connection.description}: session {self._session_id} is closed"
            )
        lease = self._lease
        if (
            self._lost_reason is None
            and lease is not None
            and asyncio.get_running_loop().time() >= lease.valid_until
        ):
            # The keep-alive task would notice soon; a call must not act on a dead lease first.
            self._lose(f"its lease was not refreshed within its TTL of {lease.ttl_s} s")
        if self._lost_reason is not None:
            raise self._lost_error()

    def _lost_error(self) -> MetadataStoreClosedError:
        return MetadataStoreClosedError(
            f"{self._connection.description}: session {self._session_id} ended because "
            f"{self._lost_reason}; its ephemeral keys are gone or going: close it and open a "
            "new store"
        )

    def _lose(self, reason: str) -> None:
        """End the session after its lease was lost: fail its watches and later calls."""
        if self._lost_reason is not None or self._closed:
            return
        self._lost_reason = reason
        METADATA_STORE_SESSION_EXPIRATIONS.inc()
        _logger.warning(
            "%s: session %s ended: %s", self._connection.description, self._session_id, reason
        )
        error = self._lost_error()
        for watch in tuple(self._watches):
            watch.fail(error)

    # --- Leases ---------------------------------------------------------------------------------

    async def _lease_id(self) -> int:
        """The session's lease, granted (and its keep-alive task started) on first use."""
        async with self._lease_lock:
            self._check_open()
            if self._lease is not None:
                return self._lease.id
            loop = asyncio.get_running_loop()
            sent = loop.time()
            ttl_s = self._connection.settings.session_ttl_seconds

            async def grant(client: Any, timeout_s: float) -> Any:
                return await asyncio.wait_for(client.lease(ttl_s), timeout_s)

            # A grant whose answer was lost leaves an unused lease that expires by itself, so
            # retrying a grant is harmless.
            granted = await self._connection.call("grant a session lease", grant, idempotent=True)
            lease = _Lease(int(granted.id), int(granted.ttl), sent + int(granted.ttl))
            if self._closed:
                await self._revoke(lease)
                self._check_open()
            self._lease = lease
            self._keeper = loop.create_task(
                self._keep_alive(lease), name=f"strata-etcd-lease-{self._session_id}"
            )
            return lease.id

    async def _keep_alive(self, lease: _Lease) -> None:
        """Refresh ``lease`` every TTL/3 until the session closes or the lease is lost.

        Each refresh is bounded by the time the lease has left; a failed one is retried after
        :data:`KEEP_ALIVE_RETRY_INTERVAL_S`. The lease counts as lost when etcd says so or when
        no refresh succeeded for a whole TTL, counted from the last successful request.
        """
        try:
            await self._refresh_until_lost(lease)
        except Exception as error:
            # A keep-alive that died would let the lease expire unnoticed: end the session.
            _logger.exception("%s: lease keep-alive failed", self._connection.description)
            self._lose(f"its lease keep-alive failed: {_describe(error)}")
        if self._lost_reason is not None and not self._closed:
            # etcd may still hold the lease (it extends leases across its own restarts): revoke
            # it so that the keys of a session that has given up do not linger.
            await self._revoke(lease)

    async def _refresh_until_lost(self, lease: _Lease) -> None:
        loop = asyncio.get_running_loop()
        interval_s = lease.ttl_s / 3
        next_refresh = lease.valid_until - lease.ttl_s + interval_s
        # Bounded: the loop ends when the lease is lost, and close() cancels it.
        while self._lost_reason is None and not self._closed:
            now = loop.time()
            if now >= lease.valid_until:
                self._lose(f"its lease was not refreshed within its TTL of {lease.ttl_s} s")
                break
            await asyncio.sleep(max(0.0, min(next_refresh, lease.valid_until) - now))
            sent = loop.time()
            if self._lost_reason is not None or sent >= lease.valid_until:
                continue

            async def refresh(client: Any, timeout_s: float) -> Any:
                return await asyncio.wait_for(client.refresh_lease(lease.id), timeout_s)

            try:
                reply = await self._connection.call(
                    "refresh the session lease",
                    refresh,
                    idempotent=True,
                    max_s=max(MIN_ATTEMPT_TIMEOUT_S, lease.valid_until - sent),
                    max_attempts=1,
                )
            except MetadataStoreUnavailableError as error:
                _logger.info("%s: %s", self._connection.description, error)
                next_refresh = loop.time() + min(interval_s, KEEP_ALIVE_RETRY_INTERVAL_S)
                continue
            except MetadataError as error:
                self._lose(f"refreshing its lease failed: {error}")
                break
            if reply is None or reply.TTL <= 0:
                self._lose("etcd reports its lease expired or revoked")
                break
            self._connection.observe(reply.header)
            lease.valid_until = sent + int(reply.TTL)
            next_refresh = sent + interval_s

    async def _revoke(self, lease: _Lease) -> None:
        """Revoke ``lease`` if etcd can be reached soon; otherwise it expires within its TTL."""
        if self._connection.closed:
            return

        async def revoke(client: Any, timeout_s: float) -> Any:
            return await asyncio.wait_for(client.revoke_lease(lease.id), timeout_s)

        try:
            await self._connection.call(
                "revoke the session lease",
                revoke,
                idempotent=True,
                max_s=min(CLOSE_REVOKE_MAX_S, self._connection.settings.connect_retry_max_seconds),
            )
        except _LeaseNotFoundError:
            pass  # already expired or revoked: the keys are gone
        except MetadataError as error:
            _logger.warning(
                "%s: session %s: %s; its ephemeral keys expire within %d s",
                self._connection.description,
                self._session_id,
                error,
                lease.ttl_s,
            )

    # --- Reads and writes -----------------------------------------------------------------------

    async def get(self, key: str) -> Record | None:
        check_key(key)
        self._check_open()
        response = await self._connection.range(
            "get", rpc.RangeRequest(key=self._connection.etcd_key(key))
        )
        if not response.kvs:
            return None
        kv = response.kvs[0]
        return Record(key, kv.value, int(kv.version), int(kv.mod_revision))

    async def put(
        self,
        key: str,
        value: bytes,
        *,
        expected_version: int | None = None,
        ephemeral: bool = False,
    ) -> Record:
        check_key(key)
        value = check_value(value)
        check_expected_version(expected_version)
        self._check_open()
        # Lease 0 is no lease: a put without one detaches the key from any session's lease.
        lease_id = await self._lease_id() if ephemeral else 0
        etcd_key = self._connection.etcd_key(key)
        read_back = rpc.RequestOp(request_range=rpc.RangeRequest(key=etcd_key, keys_only=True))
        request = rpc.TxnRequest(
            compare=_version_compare(etcd_key, expected_version),
            success=[
                rpc.RequestOp(
                    request_put=rpc.PutRequest(key=etcd_key, value=value, lease=lease_id)
                ),
                read_back,
            ],
            failure=[read_back],
        )
        try:
            response = await self._connection.write("put", "Txn", request)
        except _LeaseNotFoundError as error:
            self._lose(f"etcd no longer knows its lease ({error})")
            raise self._lost_error() from error
        if not response.succeeded:
            assert expected_version is not None, "an unconditional transaction cannot fail"
            raise BadVersionError(key, expected_version, _read_version(response.responses[0]))
        kv = response.responses[1].response_range.kvs[0]
        return Record(key, value, int(kv.version), int(kv.mod_revision))

    async def delete(self, key: str, *, expected_version: int | None = None) -> bool:
        check_key(key)
        check_expected_version(expected_version)
        self._check_open()
        etcd_key = self._connection.etcd_key(key)
        if expected_version is None:
            deleted = await self._connection.write(
                "delete", "DeleteRange", rpc.DeleteRangeRequest(key=etcd_key)
            )
            return int(deleted.deleted) > 0
        request = rpc.TxnRequest(
            compare=_version_compare(etcd_key, expected_version),
            success=[rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=etcd_key))],
            failure=[rpc.RequestOp(request_range=rpc.RangeRequest(key=etcd_key, keys_only=True))],
        )
        response = await self._connection.write("delete", "Txn", request)
        if not response.succeeded:
            raise BadVersionError(key, expected_version, _read_version(response.responses[0]))
        # Version 0 ("absent") holds only when there is nothing to delete.
        return int(response.responses[0].response_delete_range.deleted) > 0

    async def list(self, prefix: str) -> builtins.list[Record]:
        check_prefix(prefix)
        self._check_open()
        user_key = self._connection.user_key
        return [
            Record(user_key(kv.key), kv.value, int(kv.version), int(kv.mod_revision))
            for kv in await self._connection.scan(prefix, keys_only=False)
        ]

    async def list_keys(self, prefix: str) -> builtins.list[str]:
        check_prefix(prefix)
        self._check_open()
        user_key = self._connection.user_key
        return [user_key(kv.key) for kv in await self._connection.scan(prefix, keys_only=True)]

    # --- Watches --------------------------------------------------------------------------------

    def watch(self, prefix: str, *, max_pending_events: int = DEFAULT_MAX_PENDING_EVENTS) -> Watch:
        check_prefix(prefix)
        self._check_open()
        watch = BufferedWatch(
            prefix, max_pending_events=max_pending_events, on_close=self._forget_watch
        )
        # Every revision this store has seen is a change made before this call: start after.
        start_revision = self._connection.revision + 1
        self._watches[watch] = asyncio.get_running_loop().create_task(
            self._follow(watch, start_revision), name=f"strata-etcd-watch-{prefix}"
        )
        return watch

    def _forget_watch(self, watch: BufferedWatch) -> None:
        task = self._watches.pop(watch, None)
        if task is not None and task is not asyncio.current_task() and not task.done():
            task.cancel()
            self._stopping.add(task)
            task.add_done_callback(self._stopping.discard)

    async def _follow(self, watch: BufferedWatch, start_revision: int) -> None:
        """Feed ``watch`` from etcd, re-creating the etcd watch after each disconnection.

        Owned by this session: it ends when the watch ends, and close() cancels it. A failure
        that is not a disconnection fails the watch, so that its consumer never hangs.
        """
        next_revision = start_revision
        started = False
        quick_breaks = 0
        loop = asyncio.get_running_loop()
        try:
            # Bounded: each pass waits for a connection within WATCH_RESUME_MAX_SECONDS, and passes
            # that break at once are counted against WATCH_RESUME_MAX_ATTEMPTS.
            while not watch.ended:
                etcd_watch, client, next_revision = await self._create_watch(
                    watch.prefix, next_revision, resuming=started
                )
                started = True
                created = loop.time()
                delivered = False
                try:
                    async for event in etcd_watch:
                        watch.deliver(self._watch_event(event))
                        delivered = True
                        next_revision = int(event.kv.mod_revision) + 1
                        if watch.ended:
                            return
                except aetcd.RevisionCompactedError as error:
                    raise WatchOverflowError(
                        f"{self._connection.description}: etcd compacted revision "
                        f"{next_revision} before the watch on {watch.prefix!r} read it; "
                        "watch again, then list()"
                    ) from error
                except Exception as error:
                    if not _is_transient(error):
                        raise
                    self._connection.connection_failed(client)
                finally:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(etcd_watch.cancel(), REQUEST_TIMEOUT_S)
                # The stream broke (or its client was closed by a failover): resume after the
                # last event delivered.
                if delivered or loop.time() - created >= WATCH_STABLE_AFTER_S:
                    quick_breaks = 0
                else:
                    quick_breaks += 1
                    if quick_breaks >= WATCH_RESUME_MAX_ATTEMPTS:
                        raise MetadataStoreUnavailableError(
                            f"{self._connection.description}: the watch on {watch.prefix!r} "
                            f"broke {quick_breaks} times in a row; watch again, then list()"
                        )
                    await asyncio.sleep(
                        min(
                            CONNECT_RETRY_MAX_BACKOFF_S,
                            CONNECT_RETRY_INITIAL_BACKOFF_S * quick_breaks,
                        )
                    )
                _logger.info(
                    "%s: watch on %r disconnected; resuming from revision %d",
                    self._connection.description,
                    watch.prefix,
                    next_revision,
                )
        except asyncio.CancelledError:
            raise
        except MetadataError as error:
            watch.fail(error)
        except Exception as error:
            _logger.exception("%s: watch on %r failed", self._connection.description, watch.prefix)
            watch.fail(
                MetadataError(
                    f"{self._connection.description}: watch on {watch.prefix!r} failed: "
                    f"{_describe(error)}"
                )
            )

    async def _create_watch(
        self, prefix: str, start_revision: int, *, resuming: bool
    ) -> tuple[Any, Any, int]:
        """Create the etcd watch; return it, its client and the revision it starts from."""
        revision = start_revision

        async def create(client: Any, timeout_s: float) -> tuple[Any, Any]:
            nonlocal revision
            try:
                etcd_watch = await client.watch_prefix(
                    self._connection.etcd_key(prefix), start_revision=revision
                )
            except aetcd.RevisionCompactedError as error:
                if resuming:
                    raise WatchOverflowError(
                        f"{self._connection.description}: the watch on {prefix!r} needs "
                        f"revision {revision}, which etcd compacted (oldest kept: "
                        f"{error.compacted_revision}); watch again, then list()"
                    ) from error
                # Not started yet: the compacted revisions are older than the compaction,
                # which came before this watch was created; start at the oldest one kept.
                revision = int(error.compacted_revision)
                etcd_watch = await client.watch_prefix(
                    self._connection.etcd_key(prefix), start_revision=revision
                )
            return etcd_watch, client

        etcd_watch, client = await self._connection.call(
            f"{'resume' if resuming else 'start'} the watch on {prefix!r}",
            create,
            idempotent=True,
            max_s=self._connection.settings.watch_resume_max_seconds,
            max_attempts=WATCH_RESUME_MAX_ATTEMPTS,
        )
        return etcd_watch, client, revision

    def _watch_event(self, event: Any) -> WatchEvent:
        kv = event.kv
        key = self._connection.user_key(kv.key)
        revision = int(kv.mod_revision)
        if event.kind == "PUT":
            record = Record(key, kv.value, int(kv.version), revision)
            return WatchEvent(EventType.PUT, key, record, revision)
        # A DELETE event's key-value carries the revision of the delete.
        return WatchEvent(EventType.DELETE, key, None, revision)

    # --- Sessions ---------------------------------------------------------------------------------

    async def open_session(self) -> EtcdMetadataStore:
        self._check_open()
        return EtcdMetadataStore(self._connection, owns_connection=False)

    async def close(self) -> None:
        try:
            if self._owns_connection:
                # Other sessions first, together (each may wait to revoke its lease), while the
                # connection is still open.
                others = [s for s in self._connection.sessions if s is not self]
                results = await asyncio.gather(
                    *(session.close() for session in others), return_exceptions=True
                )
                for result in results:
                    if isinstance(result, BaseException):
                        raise result
            await self._end_session()
        finally:
            if self._owns_connection:
                await self._connection.close()

    async def _end_session(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self._keeper is not None and not self._keeper.done():
                self._keeper.cancel()
                self._stopping.add(self._keeper)
                self._keeper.add_done_callback(self._stopping.discard)
            for watch in tuple(self._watches):
                watch.end()
            if self._stopping:
                await asyncio.gather(*tuple(self._stopping), return_exceptions=True)
            if self._lease is not None:
                await self._revoke(self._lease)
        finally:
            self._connection.sessions.remove(self)


def _version_compare(etcd_key: bytes, expected_version: int | None) -> builtins.list[Any]:
    """The transaction's condition: none, or ``version == expected`` (0 meaning absent)."""
    if expected_version is None:
        return []
    return [
        rpc.Compare(
            key=etcd_key,
            target=rpc.Compare.VERSION,
            result=rpc.Compare.EQUAL,
            version=expected_version,
        )
    ]


def _read_version(response_op: Any) -> int:
    """The version a keys-only read inside a transaction found (0 if the key is absent)."""
    kvs = response_op.response_range.kvs
    return int(kvs[0].version) if kvs else 0
