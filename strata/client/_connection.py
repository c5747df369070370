"""The client's gRPC channels (one per broker), service URLs, and the reconnect loop.

A ``ConnectionPool`` belongs to one ``AsyncClient``: every producer, consumer and lookup of
that client opens its calls on the pool's channel to the broker concerned (gRPC multiplexes
them over one HTTP/2 connection, as pulsar-client multiplexes over one TCP connection per
broker). The service URL lists the brokers to ask first; lookups tell which broker serves a
topic (``strata.client._lookup``).

``Reconnector`` is the one reconnect loop of the SDK: producers and consumers hand it the
attempt of opening and serving their stream, and it finds the broker, retries with backoff
(tenacity) and stops when the owner says so.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import grpc
import grpc.aio
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_before_delay,
    wait_exponential_jitter,
)

from strata.auth.credentials import TokenSource, aio_interceptors
from strata.client._errors import (
    AuthenticationError,
    InternalError,
    InvalidArgument,
    ProtocolError,
    ResourceExhausted,
    ServiceUnavailable,
    StrataException,
    Timeout,
    TopicNotOwned,
    from_rpc_error,
)
from strata.client._lookup import lookup_topic, partition_count
from strata.v1 import messaging_pb2_grpc

if TYPE_CHECKING:
    from strata.v1.messaging_pb2_grpc import MessagingServiceAsyncStub

log = logging.getLogger("strata.client.connection")

_T = TypeVar("_T")

DEFAULT_SERVICE_URL = "localhost:6650"
DEFAULT_PORT = 6650
_PLAIN_SCHEMES = ("grpc://", "pulsar://")
TLS_SCHEMES = ("grpcs://", "pulsar+ssl://")
_SCHEMES = (*TLS_SCHEMES, *_PLAIN_SCHEMES)

# Batches of up to the broker's maximum message size (a few MiB) must fit in one gRPC
# message, with room for the request envelope.
MAX_GRPC_MESSAGE_BYTES = 8 * 1024 * 1024
# Consume streams can stay idle for a long time; a ping every 30 s keeps NATs and proxies
# from dropping them and detects a dead broker. The broker permits this interval.
KEEPALIVE_TIME_MS = 30_000
KEEPALIVE_TIMEOUT_MS = 10_000
# gRPC's own reconnect backoff starts at 1 s and grows to 120 s; a channel in backoff fails
# calls at once, so a broker back after a restart would stay unreachable for minutes. Ours
# stays within the SDK's reconnect backoff.
CHANNEL_INITIAL_RECONNECT_BACKOFF_MS = 100
CHANNEL_MAX_RECONNECT_BACKOFF_MS = 2_000
# A channel without calls for this long goes idle and stops reconnecting: the channel to a
# broker that died and whose topics moved costs nothing until the pool closes it.
CHANNEL_IDLE_TIMEOUT_MS = 300_000

# Channels a client keeps open at most: one per broker it talks to. Past this, idle channels
# (no stream or call on them) are closed, the least recently used first.
MAX_BROKER_CHANNELS = 64

# The admin CLI gives a broker of the service URL this long to accept a connection.
BROKER_PROBE_TIMEOUT_S = 5.0

RECONNECT_INITIAL_BACKOFF_S = 0.1
RECONNECT_MAX_BACKOFF_S = 2.0
RECONNECT_JITTER_FRACTION = 0.2


def _parse_target(part: str, service_url: str) -> str:
    """``host:port`` for one broker of a service URL (6650 when the port is missing)."""
    url = part.strip()
    for scheme in _SCHEMES:
        if url.startswith(scheme):
            url = url[len(scheme) :]
            break
    else:
        if "://" in url:
            raise InvalidArgument(
                f"service URL {service_url!r}: use host:port, grpc://host:port, "
                "pulsar://host:port, grpcs://host:port or pulsar+ssl://host:port"
            )
    url = url.rstrip("/")
    if not url or "/" in url:
        raise InvalidArgument(f"service URL {service_url!r} has an empty or malformed broker")
    host, sep, port = url.rpartition(":")
    if not sep or host.endswith(":") or not port.isdigit():
        # No port given: "host" or a bare IPv6 address.
        if url.startswith("[") or url.count(":") == 0:
            return f"{url}:{DEFAULT_PORT}"
        raise InvalidArgument(f"service URL {service_url!r} has no valid port")
    if not host:
        raise InvalidArgument(f"service URL {service_url!r} has no host")
    return url


def uses_tls(service_url: str) -> bool:
    """Whether the service URL asks for TLS (``grpcs://`` or ``pulsar+ssl://``); a URL may
    not mix TLS and plaintext brokers."""
    schemes = {
        scheme
        for part in service_url.split(",")
        for scheme in _SCHEMES
        if part.strip().startswith(scheme)
    }
    tls = bool(schemes & set(TLS_SCHEMES))
    if tls and schemes & set(_PLAIN_SCHEMES):
        raise InvalidArgument(f"service URL {service_url!r} mixes TLS and plaintext brokers")
    return tls


def parse_service_urls(service_url: str) -> tuple[str, ...]:
    """The brokers of a service URL, as gRPC targets, in the order given, without repeats.

    ``host:port[,host:port...]``, with an optional ``grpc://`` or ``pulsar://`` in front of
    the list (pulsar's spelling) or of each broker, ``grpcs://`` or ``pulsar+ssl://`` for TLS
    (``uses_tls``); a missing port means 6650. Raises ``InvalidArgument`` for other schemes
    and empty entries.
    """
    targets: list[str] = []
    text = service_url.strip()
    for scheme in _SCHEMES:
        if text.startswith(scheme):
            text = text[len(scheme) :]
            break
    for part in text.split(","):
        target = _parse_target(part, service_url)
        if target not in targets:
            targets.append(target)
    return tuple(targets)


def channel_options(keepalive_time_ms: int = KEEPALIVE_TIME_MS) -> list[tuple[str, Any]]:
    """Options of every channel; ``keepalive_time_ms`` is how often an open connection is
    pinged: a broker that does not answer within min(that, 10 s) counts as gone (a paused
    or cut-off broker is noticed only this way), and so does one that does not complete a
    connection attempt within that time (Pulsar's ``connectionTimeoutMs`` is 10 s)."""
    answer_within_ms = min(KEEPALIVE_TIMEOUT_MS, keepalive_time_ms)
    return [
        ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_BYTES),
        ("grpc.keepalive_time_ms", keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", answer_within_ms),
        # gRPC core waits for a ping's answer this long, whatever keepalive_timeout_ms says
        # (default 60 s): without it a paused broker is noticed only after a minute.
        ("grpc.http2.ping_timeout_ms", answer_within_ms),
        ("grpc.keepalive_permit_without_calls", 0),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.initial_reconnect_backoff_ms", CHANNEL_INITIAL_RECONNECT_BACKOFF_MS),
        ("grpc.max_reconnect_backoff_ms", CHANNEL_MAX_RECONNECT_BACKOFF_MS),
        # gRPC core's connection attempt deadline (default 20 s): a paused broker's listening
        # socket accepts the TCP connection but never answers the HTTP/2 handshake.
        ("grpc.min_reconnect_backoff_ms", answer_within_ms),
        ("grpc.client_idle_timeout_ms", CHANNEL_IDLE_TIMEOUT_MS),
    ]


def is_connection_failure(error: StrataException) -> bool:
    """Whether ``error`` says the broker could not be reached (or answered too late), as
    opposed to an answer: then another broker of the service URL is worth asking."""
    return isinstance(error, (ServiceUnavailable, Timeout))


class BrokerChannel:
    """The channel to one broker and its stub, with the number of its current users."""

    __slots__ = ("address", "channel", "messaging", "users")

    def __init__(
        self,
        address: str,
        keepalive_time_ms: int = KEEPALIVE_TIME_MS,
        token: TokenSource | None = None,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.address = address
        if credentials is None:
            self.channel = grpc.aio.insecure_channel(
                address,
                options=channel_options(keepalive_time_ms),
                interceptors=aio_interceptors(token),
            )
        else:
            self.channel = grpc.aio.secure_channel(
                address,
                credentials,
                options=channel_options(keepalive_time_ms),
                interceptors=aio_interceptors(token),
            )
        self.messaging = messaging_pb2_grpc.MessagingServiceStub(self.channel)
        self.users = 0


class ConnectionPool:
    """The channels one client holds: one per broker address, shared, bounded, closed last.

    Lifecycle: made by ``AsyncClient`` inside its event loop on first use. Every use of a
    channel is bracketed by ``acquire``/``release`` (a stream for its whole life, a lookup
    for one call), so that at most ``max_broker_channels`` stay open: past that, idle ones
    are closed, least recently used first, and when none is idle ``acquire`` raises
    ``ResourceExhausted`` (retriable: a reconnect loop tries again later). ``close`` ends
    every channel after the client has closed its producers and consumers.
    """

    def __init__(
        self,
        service_targets: tuple[str, ...],
        operation_timeout_s: float,
        max_broker_channels: int = MAX_BROKER_CHANNELS,
        keepalive_time_ms: int = KEEPALIVE_TIME_MS,
        token: TokenSource | None = None,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        assert service_targets, "a service URL names at least one broker"
        self._token = token
        self._credentials = credentials  # TLS for every broker, redirects included
        assert max_broker_channels >= 1
        self.service_targets = service_targets
        self.operation_timeout_s = operation_timeout_s
        self._keepalive_time_ms = keepalive_time_ms
        self._max_broker_channels = max_broker_channels
        # Insertion order is recency: a channel moves to the end when acquired.
        self._channels: dict[str, BrokerChannel] = {}
        # The service broker to ask first: the last one that answered.
        self._service_index = 0
        self._closed = False

    @property
    def open_channels(self) -> int:
        return len(self._channels)

    async def acquire(self, address: str) -> BrokerChannel:
        """The channel to ``address``, opened if needed; pair with ``release``."""
        if self._closed:
            raise ServiceUnavailable("the client's connections are closed")
        broker = self._channels.pop(address, None)
        if broker is None:
            await self._make_room()
            broker = BrokerChannel(address, self._keepalive_time_ms, self._token, self._credentials)
        self._channels[address] = broker
        broker.users += 1
        return broker

    def release(self, broker: BrokerChannel) -> None:
        assert broker.users > 0
        broker.users -= 1

    async def _make_room(self) -> None:
        while len(self._channels) >= self._max_broker_channels:
            idle = next((b for b in self._channels.values() if b.users == 0), None)
            if idle is None:
                raise ResourceExhausted(
                    f"all {self._max_broker_channels} broker channels of the client are in use"
                )
            del self._channels[idle.address]
            await idle.channel.close(grace=None)

    async def unary(
        self,
        address: str,
        call: Callable[[MessagingServiceAsyncStub], Awaitable[_T]],
    ) -> _T:
        """Run one unary ``call`` on the broker at ``address``; gRPC errors become SDK errors."""
        broker = await self.acquire(address)
        try:
            return await call(broker.messaging)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from None
        finally:
            self.release(broker)

    async def call_service_brokers(self, call: Callable[[str], Awaitable[_T]]) -> _T:
        """``call(address)`` on a broker of the service URL, the next one after a connection
        failure; raises the last error once every broker failed to answer."""
        count = len(self.service_targets)
        last_error: StrataException | None = None
        for step in range(count):
            index = (self._service_index + step) % count
            try:
                result = await call(self.service_targets[index])
            except StrataException as error:
                if not is_connection_failure(error):
                    raise
                log.debug("broker %s failed: %s", self.service_targets[index], error)
                last_error = error
                continue
            self._service_index = index
            return result
        assert last_error is not None
        if count == 1:
            raise last_error
        raise type(last_error)(
            f"no broker of {','.join(self.service_targets)} answered; last error: {last_error}",
            code=last_error.code,
            details=last_error.details,
        )

    async def lookup(self, topic: str) -> str:
        """The ``host:port`` of the broker that serves ``topic`` (see ``_lookup``)."""
        return await lookup_topic(self, topic)

    async def partition_count(self, topic: str) -> int:
        """How many partitions ``topic`` has; 0 when it is not partitioned."""
        return await partition_count(self, topic)

    async def close(self) -> None:
        self._closed = True
        channels = list(self._channels.values())
        self._channels.clear()
        await asyncio.gather(
            *(broker.channel.close(grace=None) for broker in channels), return_exceptions=True
        )


def backoff_delay_s(attempt: int) -> float:
    """Delay before reconnect ``attempt`` (0-based): doubling from 100 ms to 2 s, ±20 % jitter."""
    base = min(RECONNECT_MAX_BACKOFF_S, RECONNECT_INITIAL_BACKOFF_S * (2 ** min(attempt, 16)))
    jitter = random.uniform(1 - RECONNECT_JITTER_FRACTION, 1 + RECONNECT_JITTER_FRACTION)
    return float(base) * jitter


async def retry_until(timeout_s: float, call: Callable[..., Awaitable[_T]], *args: Any) -> _T:
    """``await call(*args)``, again after retriable errors with the reconnect backoff, for
    up to ``timeout_s``; then the last error is raised."""
    retrying = AsyncRetrying(
        retry=retry_if_exception(lambda e: isinstance(e, StrataException) and e.retriable),
        wait=wait_exponential_jitter(
            multiplier=RECONNECT_INITIAL_BACKOFF_S,
            max=RECONNECT_MAX_BACKOFF_S,
            jitter=RECONNECT_INITIAL_BACKOFF_S,
        ),
        stop=stop_before_delay(timeout_s),
        reraise=True,
    )
    result: _T = await retrying(call, *args)
    return result


class Reconnector:
    """Keeps one producer's or consumer's stream open on the broker that serves its topic.

    The owner (a producer, or one partition stream of a consumer) calls ``run(attempt)``
    from its stream task. ``attempt(broker)`` opens the stream on that broker's channel,
    calls ``opened()`` once the broker accepted it, and serves it until it fails: it never
    returns normally. Each attempt goes to the owner named by the last ``TopicNotOwned``
    (when it named one), else to the broker a lookup finds, so a topic that moved, a broker
    that died and a stale lookup are all handled alike.

    Between attempts it waits ``backoff_delay_s(n)``, n counting the failures since the
    last successful open (so a stream that served for an hour reconnects after ~100 ms,
    and a broker that keeps refusing is asked at most every 2 s). It stops, returning the
    error that ended it, when ``may_retry(error)`` says no (a non-retriable status, or the
    owner is closing), or when an attempt fails after ``deadline_s(down_since)`` (a
    monotonic time, None for none; ``down_since`` is when the stream last went down), so
    at most one backoff (2 s) past it. Cancelling the task ends it too.
    """

    def __init__(
        self,
        pool: ConnectionPool,
        topic: str,
        description: str,
        *,
        may_retry: Callable[[StrataException], bool],
        deadline_s: Callable[[float], float | None] = lambda down_since: None,
    ) -> None:
        self._pool = pool
        self._topic = topic
        self._description = description
        self._may_retry = may_retry
        self._deadline_s = deadline_s
        self._failures = 0
        self._down_since: float | None = None
        self._owner_hint: str | None = None
        self._ever_opened = False
        self._opened_in_attempt = False
        # The error of the last failed attempt, for messages such as a create's timeout.
        self.last_error: StrataException | None = None

    def opened(self) -> None:
        """The broker accepted the stream: the backoff starts afresh after the next failure."""
        self._failures = 0
        self._down_since = None
        self._ever_opened = True
        self._opened_in_attempt = True

    async def run(self, attempt: Callable[[BrokerChannel], Awaitable[None]]) -> StrataException:
        """Attempt, back off, attempt again...; return the error that ended retrying."""
        retrying = AsyncRetrying(
            retry=retry_if_exception(self._should_retry),
            wait=self._wait,
            stop=self._stop,
            before_sleep=self._log_retry,
            reraise=True,
        )
        try:
            await retrying(self._attempt_once, attempt)
        except StrataException as error:
            return error
        return ProtocolError(f"{self._description} ended without an error")

    async def _attempt_once(self, attempt: Callable[[BrokerChannel], Awaitable[None]]) -> None:
        self._opened_in_attempt = False
        try:
            address = self._owner_hint
            self._owner_hint = None
            if address is None:
                address = await self._pool.lookup(self._topic)
            broker = await self._pool.acquire(address)
            try:
                await attempt(broker)
            finally:
                self._pool.release(broker)
        except grpc.aio.AioRpcError as exc:
            error = self._broken_stream(from_rpc_error(exc))
            self._failed(error)
            raise error from None
        except StrataException as exc:
            error = self._broken_stream(exc)
            self._failed(error)
            if error is exc:
                raise
            raise error from None

    def _broken_stream(self, error: StrataException) -> StrataException:
        """INTERNAL or UNKNOWN on a stream the broker had accepted is how gRPC reports a
        server going away mid-stream (RST_STREAM, GOAWAY on shutdown): a broken connection
        like UNAVAILABLE, not a refusal, so it is retried. Before the open it stays fatal."""
        if self._opened_in_attempt and isinstance(error, InternalError) and error.code is not None:
            return ServiceUnavailable(
                f"the stream broke: {error}", code=error.code, details=error.details
            )
        # A broker ends an open stream whose token expired (Pulsar's refresh check): the
        # reconnect presents the token source's current token, and is refused if that one
        # is no better.
        if self._opened_in_attempt and isinstance(error, AuthenticationError):
            return ServiceUnavailable(
                f"the broker closed the stream: {error}", code=error.code, details=error.details
            )
        return error

    def _failed(self, error: StrataException) -> None:
        self.last_error = error
        self._failures += 1
        if self._down_since is None:
            self._down_since = time.monotonic()
        if isinstance(error, TopicNotOwned):
            self._owner_hint = error.owner

    def _should_retry(self, error: BaseException) -> bool:
        return isinstance(error, StrataException) and self._may_retry(error)

    def _wait(self, retry_state: RetryCallState) -> float:
        return backoff_delay_s(self._failures - 1)

    def _stop(self, retry_state: RetryCallState) -> bool:
        if self._down_since is None:
            return False
        deadline_s = self._deadline_s(self._down_since)
        return deadline_s is not None and time.monotonic() >= deadline_s

    def describe_last_error(self) -> str:
        """``"; last error: ..."`` when an attempt failed, else ``""``."""
        return "" if self.last_error is None else f"; last error: {self.last_error}"

    def _log_retry(self, retry_state: RetryCallState) -> None:
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None else None
        level = logging.WARNING if self._ever_opened else logging.DEBUG
        log.log(
            level,
            "%s failed (%s); reconnecting in %.2f s",
            self._description,
            error,
            retry_state.upcoming_sleep,
        )


async def write_request(call: grpc.aio.StreamStreamCall[Any, Any], request: Any) -> None:
    """``call.write(request)``, raising the stream's status as an SDK error if it ended.

    A write after the broker ended the stream raises ``InvalidStateError``, not the status;
    the status (UNAVAILABLE, TOPIC_NOT_OWNED...) is what the reconnect loop must see.
    """
    try:
        await call.write(request)
    except asyncio.InvalidStateError:
        code = await call.code()
        details = await call.details()
        if code is grpc.StatusCode.OK:
            raise ServiceUnavailable("the broker ended the stream") from None
        trailing_metadata = await call.trailing_metadata()
        error = grpc.aio.AioRpcError(
            code, grpc.aio.Metadata(), trailing_metadata or grpc.aio.Metadata(), details
        )
        raise from_rpc_error(error) from None


async def open_stream(
    call: grpc.aio.StreamStreamCall[Any, Any], request: Any, first: str, what: str
) -> Any:
    """Send a stream's opening ``request`` and return the ``first`` field of the broker's
    first answer (``opened``, ``subscribed``); the stream ``what`` names the errors."""
    await write_request(call, request)
    response: Any = await call.read()
    if response is grpc.aio.EOF:
        raise ServiceUnavailable(f"the broker ended the {what} stream before answering")
    if response.WhichOneof("response") != first:
        raise ProtocolError(f"the broker's first answer on the {what} stream was not {first!r}")
    return getattr(response, first)


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


def sync_channel_to_any(
    service_url: str, timeout_s: float, credentials: grpc.ChannelCredentials | None = None
) -> grpc.Channel:
    """A blocking channel to the first broker of ``service_url`` that accepts a connection.

    For the admin CLI, whose calls any broker answers. With one broker the channel connects
    lazily as before; with several, each is probed in turn for up to ``timeout_s`` (at most
    ``BROKER_PROBE_TIMEOUT_S``), and the first is used if none connects (its calls then
    report the failure).
    """
    targets = parse_service_urls(service_url)
    probe_timeout_s = min(timeout_s, BROKER_PROBE_TIMEOUT_S)

    def open_channel(target: str) -> grpc.Channel:
        if credentials is None:
            return grpc.insecure_channel(target, options=channel_options())
        return grpc.secure_channel(target, credentials, options=channel_options())

    if len(targets) > 1:
        for target in targets:
            channel = open_channel(target)
            if _connects(channel, probe_timeout_s):
                return channel
            channel.close()
    return open_channel(targets[0])


def _connects(channel: grpc.Channel, timeout_s: float) -> bool:
    """Whether ``channel`` gets connected within ``timeout_s``; a refused connection
    (TRANSIENT_FAILURE) answers at once rather than after the timeout."""
    settled = threading.Event()
    ready = False

    def on_state(state: grpc.ChannelConnectivity) -> None:
        nonlocal ready
        if state is grpc.ChannelConnectivity.READY:
            ready = True
            settled.set()
        elif state in (
            grpc.ChannelConnectivity.TRANSIENT_FAILURE,
            grpc.ChannelConnectivity.SHUTDOWN,
        ):
            settled.set()

    channel.subscribe(on_state, try_to_connect=True)
    try:
        settled.wait(timeout_s)
    finally:
        channel.unsubscribe(on_state)
    return ready
