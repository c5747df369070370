"""``GrpcBookieClient``: the ``BookieClient`` protocol over ``strata.storage.v1.BookieService``.

Adds are pipelined over one long-lived AddEntries stream (``AddStream``); every other call is a
unary RPC with a deadline. Failed calls raise the ``bookie.errors`` class the bookie raised,
recovered from the status and its reason (``bookie.status_map``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict, deque
from typing import Any

import grpc

from bookie.api import BookieInfo, LedgerEntry, LedgerState, refused_add
from bookie.errors import BadRequestError, BookieError, BookieUnavailableError
from bookie.status_map import ERROR_REASON_KEY, error_for_add_status, error_for_status
from strata.auth.credentials import TokenSource, aio_interceptors
from strata.storage.v1 import bookie_pb2, bookie_pb2_grpc

_log = logging.getLogger(__name__)

_MIB = 1024 * 1024

# AddEntries with requests the client encodes itself (``encode_add_request``): the
# generated stub would build and serialize an AddEntriesRequest per bookie.
_ADD_ENTRIES_METHOD = "/{}/AddEntries".format(
    bookie_pb2.DESCRIPTOR.services_by_name["BookieService"].full_name
)
# How many entries' encodings are kept for the rest of their write set (see ``AddEncodings``).
ENCODED_ADDS_KEPT = 8


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


class AddEncodings:
    """Each entry's AddEntry fields but the request id, serialized once for its write set.

    The ledger writer hands one payload object to the Qw bookies' clients in a row; each used
    to build and serialize an AddEntry and an AddEntriesRequest of its own (three copies of the
    payload per bookie: 0.3 ms per 128 KiB entry and bookie on this host's broker, the busiest
    thread of a cluster at max rate). The last ``ENCODED_ADDS_KEPT`` encodings are kept, keyed
    by the payload's identity and the other fields; the payload itself is held with its
    encoding, so its id cannot be reused while the key exists. Used from one event loop.
    """

    def __init__(self, max_kept: int = ENCODED_ADDS_KEPT) -> None:
        self._max_kept = max_kept
        self._kept: OrderedDict[tuple[int, int, int, int, bytes, bool], tuple[bytes, bytes]] = (
            OrderedDict()
        )

    def encode(
        self,
        ledger_id: int,
        entry_id: int,
        last_add_confirmed: int,
        payload: bytes,
        master_key: bytes,
        recovery_add: bool,
    ) -> bytes:
        key = (id(payload), ledger_id, entry_id, last_add_confirmed, master_key, recovery_add)
        kept = self._kept.get(key)
        if kept is not None and kept[0] is payload:
            return kept[1]
        encoded = bookie_pb2.AddEntry(
            ledger_id=ledger_id,
            entry_id=entry_id,
            last_add_confirmed=last_add_confirmed,
            payload=payload,
            master_key=master_key,
            recovery_add=recovery_add,
        ).SerializeToString()
        self._kept[key] = (payload, encoded)
        while len(self._kept) > self._max_kept:
            self._kept.popitem(last=False)
        return encoded


_ENCODINGS = AddEncodings()


def encode_add_request(adds: list[tuple[int, bytes]]) -> bytes:
    """The wire form of ``AddEntriesRequest(entries=...)`` for (request id, encoded fields)
    pairs: each entry is field 1 (length-delimited) holding its request id (field 1, varint)
    followed by the fields ``AddEncodings`` serialized; protobuf parses fields in any order."""
    parts: list[bytes] = []
    for request_id, fields in adds:
        request_id_field = b"\x08" + _varint(request_id)
        parts += (
            b"\x0a",
            _varint(len(request_id_field) + len(fields)),
            request_id_field,
            fields,
        )
    return b"".join(parts)


def _error_from_rpc(error: grpc.aio.AioRpcError) -> BookieError:
    reason = None
    for key, value in error.trailing_metadata() or ():
        if key == ERROR_REASON_KEY:
            reason = value if isinstance(value, str) else value.decode()
    return error_for_status(error.code(), error.details() or "", reason)


class AddStream:
    """One AddEntries call carrying many pipelined adds.

    ``submit`` queues an add (its request id and its encoded fields) and returns a future for
    its AddResult. An owned writer task packs everything queued into request messages of at
    most ``max_request_bytes`` (one larger entry travels alone); an owned reader task resolves
    futures by request id. When the stream ends or fails, the stream is dead: every pending
    future fails with BookieUnavailableError and the client opens a new stream for the next
    add.

    Lifecycle: created by the client on first use; ``close()`` cancels the call and awaits both
    tasks.
    """

    def __init__(
        self,
        add_entries: grpc.aio.StreamStreamMultiCallable[bytes, bookie_pb2.AddEntriesResponse],
        address: str,
        max_request_bytes: int,
    ) -> None:
        self._address = address
        self._max_request_bytes = max_request_bytes
        self._call = add_entries()
        self._queue: deque[tuple[int, bytes]] = deque()
        self._room_waiters: list[asyncio.Future[None]] = []
        self._pending: dict[int, asyncio.Future[None]] = {}
        self._queued = asyncio.Event()
        self.dead = False
        self._writer = asyncio.create_task(self._write_loop(), name="bookie-add-writer")
        self._reader = asyncio.create_task(self._read_loop(), name="bookie-add-reader")

    def submit(self, request_id: int, fields: bytes) -> asyncio.Future[None]:
        """Queue an add (``fields``: from ``AddEncodings``); the future resolves once the
        bookie stored it durably, or fails with the error its status maps to. Cancelling the
        future abandons the add."""
        if self.dead:
            raise BookieUnavailableError(f"add stream to {self._address} is closed")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        self._queue.append((request_id, fields))
        self._queued.set()
        return future

    def has_room(self, max_pending: int) -> bool:
        if len(self._pending) < max_pending:
            return True
        self._drop_abandoned()
        return len(self._pending) < max_pending

    def _drop_abandoned(self) -> None:
        """Forget adds whose caller gave up (cancelled futures): they hold no room."""
        for request_id in [key for key, future in self._pending.items() if future.done()]:
            del self._pending[request_id]

    async def wait_for_room(self, max_pending: int) -> None:
        """Wait while ``max_pending`` adds are unanswered (the stream's backpressure)."""
        while not self.has_room(max_pending) and not self.dead:
            waiter = asyncio.get_running_loop().create_future()
            self._room_waiters.append(waiter)
            await waiter

    def _wake_room_waiters(self) -> None:
        waiters, self._room_waiters = self._room_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def forget(self, request_id: int) -> None:
        """Stop waiting for one add (it timed out); a late result is ignored."""
        self._pending.pop(request_id, None)

    async def _write_loop(self) -> None:
        try:
            while True:
                await self._queued.wait()
                self._queued.clear()
                while self._queue:
                    batch: list[tuple[int, bytes]] = []
                    size = 0
                    while self._queue:
                        entry_size = len(self._queue[0][1]) + 16
                        if batch and size + entry_size > self._max_request_bytes:
                            break
                        batch.append(self._queue.popleft())
                        size += entry_size
                    await self._call.write(encode_add_request(batch))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._die(f"writing to {self._address} failed: {exc!r}")

    async def _read_loop(self) -> None:
        try:
            while True:
                response = await self._call.read()
                if response is grpc.aio.EOF:
                    self._die(f"the bookie at {self._address} ended the add stream")
                    return
                assert isinstance(response, bookie_pb2.AddEntriesResponse)
                for result in response.results:
                    future = self._pending.pop(result.request_id, None)
                    if future is not None and not future.done():
                        error = error_for_add_status(result.status, result.message)
                        if error is None:
                            future.set_result(None)
                        else:
                            future.set_exception(error)
                if self._room_waiters:
                    self._wake_room_waiters()
        except asyncio.CancelledError:
            raise
        except grpc.aio.AioRpcError as exc:
            self._die(f"add stream to {self._address} failed: {exc.code().name} {exc.details()}")
        except Exception as exc:
            self._die(f"add stream to {self._address} failed: {exc!r}")

    def _die(self, reason: str) -> None:
        if not self.dead:
            _log.info("%s", reason)
        self.dead = True
        error = BookieUnavailableError(reason)
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(error)
        self._queue.clear()
        self._wake_room_waiters()
        self._call.cancel()
        current = asyncio.current_task()
        for task in (self._writer, self._reader):
            if task is not current:
                task.cancel()

    async def close(self) -> None:
        self._die(f"add stream to {self._address} closed")
        for task in (self._writer, self._reader):
            with contextlib.suppress(asyncio.CancelledError):
                await task


class GrpcBookieClient:
    """``BookieClient`` for one remote bookie at ``address`` (``host:port``).

    Lifecycle: construct inside a running event loop; the channel connects lazily and the add
    stream is opened by the first add (and re-opened by the next add after it died).
    ``close()`` fails pending adds with BookieUnavailableError, stops the stream's tasks and
    closes the channel; later calls raise BookieUnavailableError.
    """

    def __init__(
        self,
        address: str,
        *,
        request_timeout_ms: int = 10_000,
        add_timeout_ms: int = 30_000,
        max_entry_size_bytes: int = 8 * _MIB,
        max_request_bytes: int = 1 * _MIB,
        max_pending_adds: int = 10_000,
        token: TokenSource | None = None,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self._address = address
        self._request_timeout_s = request_timeout_ms / 1000
        self._add_timeout_s = add_timeout_ms / 1000
        self._max_entry_size_bytes = max_entry_size_bytes
        self._max_request_bytes = max_request_bytes
        self._max_pending_adds = max_pending_adds
        options = [
            ("grpc.max_receive_message_length", -1),
            ("grpc.max_send_message_length", max_entry_size_bytes + _MIB),
            ("grpc.keepalive_time_ms", 20_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
        ]
        # The credentials a broker or autorecovery presents (--broker-client-auth-token), over
        # TLS when --broker-client-tls-enabled gives ``credentials``.
        if credentials is None:
            self._channel = grpc.aio.insecure_channel(
                address, options=options, interceptors=aio_interceptors(token)
            )
        else:
            self._channel = grpc.aio.secure_channel(
                address, credentials, options=options, interceptors=aio_interceptors(token)
            )
        self._stub = bookie_pb2_grpc.BookieServiceStub(self._channel)
        # Requests go as bytes the client encoded (``encode_add_request``).
        self._add_entries: grpc.aio.StreamStreamMultiCallable[
            bytes, bookie_pb2.AddEntriesResponse
        ] = self._channel.stream_stream(
            _ADD_ENTRIES_METHOD,
            request_serializer=None,
            response_deserializer=bookie_pb2.AddEntriesResponse.FromString,
        )
        self._stream: AddStream | None = None
        self._next_request_id = 1
        self._closed = False

    @property
    def address(self) -> str:
        return self._address

    def _check_open(self) -> None:
        if self._closed:
            raise BookieUnavailableError(f"client for {self._address} is closed")

    async def _open_stream(self) -> AddStream:
        stream = self._stream
        if stream is None or stream.dead:
            self._check_open()
            # Replace first, then await the old one: concurrent adds see the new stream.
            old, stream = (
                stream,
                AddStream(self._add_entries, self._address, self._max_request_bytes),
            )
            self._stream = stream
            if old is not None:
                await old.close()
        return stream

    def _add_problem(
        self, ledger_id: int, entry_id: int, last_add_confirmed: int, payload: bytes
    ) -> BadRequestError | None:
        """What is wrong with an add before it is sent, if anything."""
        if ledger_id < 0 or entry_id < 0 or last_add_confirmed < -1:
            return BadRequestError(
                f"invalid ledger {ledger_id} / entry {entry_id} / LAC {last_add_confirmed}"
            )
        if len(payload) > self._max_entry_size_bytes:
            # Checked here as well: an over-large message would fail the whole stream.
            return BadRequestError(
                f"entry of {len(payload)} bytes exceeds {self._max_entry_size_bytes} bytes"
            )
        return None

    async def add_entry(
        self,
        ledger_id: int,
        entry_id: int,
        last_add_confirmed: int,
        payload: bytes,
        master_key: bytes,
        *,
        recovery_add: bool = False,
    ) -> None:
        self._check_open()
        problem = self._add_problem(ledger_id, entry_id, last_add_confirmed, payload)
        if problem is not None:
            raise problem
        fields = _ENCODINGS.encode(
            ledger_id, entry_id, last_add_confirmed, payload, master_key, recovery_add
        )
        stream: AddStream | None = None
        request_id = 0
        try:
            async with asyncio.timeout(self._add_timeout_s):
                stream = await self._open_stream()
                await stream.wait_for_room(self._max_pending_adds)
                request_id = self._next_request_id
                self._next_request_id += 1
                await stream.submit(request_id, fields)
        except TimeoutError:
            if stream is not None and request_id:
                stream.forget(request_id)
            raise BookieUnavailableError(
                f"add of ledger {ledger_id} entry {entry_id} to {self._address} timed out"
            ) from None

    def send_add(
        self,
        ledger_id: int,
        entry_id: int,
        last_add_confirmed: int,
        payload: bytes,
        master_key: bytes,
        *,
        recovery_add: bool = False,
    ) -> asyncio.Future[None]:
        """``add_entry`` without a coroutine or a timer of its own, for the ledger writer (whose
        timeout monitor bounds every send): with the stream open and room on it, the add is
        queued at once and the stream's own future returned; otherwise a task runs
        ``add_entry``. Cancelling the future abandons the add."""
        stream = self._stream
        problem = self._add_problem(ledger_id, entry_id, last_add_confirmed, payload)
        if problem is not None:
            return refused_add(problem)
        if (
            self._closed
            or stream is None
            or stream.dead
            or not stream.has_room(self._max_pending_adds)
        ):
            # Opening the stream or waiting for room (or refusing: the client is closed).
            return asyncio.ensure_future(
                self.add_entry(
                    ledger_id,
                    entry_id,
                    last_add_confirmed,
                    payload,
                    master_key,
                    recovery_add=recovery_add,
                )
            )
        fields = _ENCODINGS.encode(
            ledger_id, entry_id, last_add_confirmed, payload, master_key, recovery_add
        )
        request_id = self._next_request_id
        self._next_request_id += 1
        return stream.submit(request_id, fields)

    async def _unary(self, method: Any, request: Any, timeout_s: float) -> Any:
        self._check_open()
        try:
            return await method(request, timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise _error_from_rpc(exc) from None

    async def read_entries(
        self, ledger_id: int, first_entry_id: int, last_entry_id: int, max_bytes: int = 0
    ) -> list[LedgerEntry]:
        if ledger_id < 0 or first_entry_id < 0 or last_entry_id < first_entry_id or max_bytes < 0:
            raise BadRequestError(
                f"invalid read of ledger {ledger_id} entries {first_entry_id}..{last_entry_id}"
            )
        response: bookie_pb2.ReadEntriesResponse = await self._unary(
            self._stub.ReadEntries,
            bookie_pb2.ReadEntriesRequest(
                ledger_id=ledger_id,
                first_entry_id=first_entry_id,
                last_entry_id=last_entry_id,
                max_bytes=max_bytes,
            ),
            self._request_timeout_s,
        )
        return [
            LedgerEntry(entry.entry_id, entry.last_add_confirmed, entry.payload)
            for entry in response.entries
        ]

    async def read_last_add_confirmed(
        self, ledger_id: int, previous_last_add_confirmed: int = -1, timeout_ms: int = 0
    ) -> LedgerState:
        if ledger_id < 0 or timeout_ms < 0 or previous_last_add_confirmed < -1:
            raise BadRequestError(f"invalid LAC read of ledger {ledger_id}")
        response: bookie_pb2.ReadLastAddConfirmedResponse = await self._unary(
            self._stub.ReadLastAddConfirmed,
            bookie_pb2.ReadLastAddConfirmedRequest(
                ledger_id=ledger_id,
                previous_last_add_confirmed=previous_last_add_confirmed,
                timeout_ms=min(timeout_ms, 0xFFFF_FFFF),
            ),
            self._request_timeout_s + timeout_ms / 1000,
        )
        return LedgerState(response.last_add_confirmed, response.last_entry_id, response.fenced)

    async def fence_ledger(self, ledger_id: int, master_key: bytes) -> LedgerState:
        if ledger_id < 0:
            raise BadRequestError(f"invalid ledger id {ledger_id}")
        response: bookie_pb2.FenceLedgerResponse = await self._unary(
            self._stub.FenceLedger,
            bookie_pb2.FenceLedgerRequest(ledger_id=ledger_id, master_key=master_key),
            self._request_timeout_s,
        )
        return LedgerState(response.last_add_confirmed, response.last_entry_id, True)

    async def delete_ledger(self, ledger_id: int) -> None:
        if ledger_id < 0:
            raise BadRequestError(f"invalid ledger id {ledger_id}")
        await self._unary(
            self._stub.DeleteLedger,
            bookie_pb2.DeleteLedgerRequest(ledger_id=ledger_id),
            self._request_timeout_s,
        )

    async def get_bookie_info(self) -> BookieInfo:
        response: bookie_pb2.GetBookieInfoResponse = await self._unary(
            self._stub.GetBookieInfo, bookie_pb2.GetBookieInfoRequest(), self._request_timeout_s
        )
        return BookieInfo(
            response.disk_used_bytes,
            response.disk_free_bytes,
            response.disk_total_bytes,
            response.ledgers_count,
        )

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._stream is not None:
            await self._stream.close()
        await self._channel.close()
