"""``strata.storage.v1.BookieService`` over gRPC (grpc.aio), serving one ``Bookie``.

Requests are validated here, at the edge (``check_*_request``); errors are answered through the
one table in ``bookie.status_map``; anything unexpected is logged once, here, and answered
INTERNAL without a stack trace. A malformed request fails alone: the server keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from bookie.errors import BadRequestError, BookieError, BookieUnavailableError
from bookie.status_map import ERROR_REASON_KEY, add_status_for, status_for
from bookie.storage import Bookie
from bookie.storage.config import DEFAULT_MAX_ENTRY_SIZE_BYTES
from strata.grpc_decoding import MalformedRequestInterceptor
from strata.metrics import STAGE_BOOKIE_REPLY
from strata.storage.v1 import bookie_pb2, bookie_pb2_grpc

_log = logging.getLogger(__name__)

SERVICE_NAME = bookie_pb2.DESCRIPTOR.services_by_name["BookieService"].full_name
_MAX_INT64 = (1 << 63) - 1
# Request messages may carry several small entries, a master key and framing around the
# largest entry: the receive limit is the entry limit plus this much.
RECEIVE_MARGIN_BYTES = 1024 * 1024
_Context = grpc.aio.ServicerContext[Any, Any]


def check_add_entry(add: bookie_pb2.AddEntry) -> str | None:
    """What is wrong with one AddEntry, or None. (The bookie checks sizes and keys itself.)"""
    if add.ledger_id > _MAX_INT64 or add.entry_id > _MAX_INT64:
        return f"ledger {add.ledger_id} / entry {add.entry_id} out of range"
    if add.last_add_confirmed < -1:
        return f"invalid last_add_confirmed {add.last_add_confirmed}"
    return None


def check_read_entries_request(request: bookie_pb2.ReadEntriesRequest) -> None:
    if request.ledger_id > _MAX_INT64 or request.last_entry_id > _MAX_INT64:
        raise BadRequestError("ledger or entry id out of range")
    if request.last_entry_id < request.first_entry_id:
        raise BadRequestError(
            f"empty entry range {request.first_entry_id}..{request.last_entry_id}"
        )
    if request.max_bytes > _MAX_INT64:
        raise BadRequestError("max_bytes out of range")


def check_ledger_id(ledger_id: int) -> None:
    if ledger_id > _MAX_INT64:
        raise BadRequestError(f"ledger id {ledger_id} out of range")


def check_read_last_add_confirmed_request(
    request: bookie_pb2.ReadLastAddConfirmedRequest,
) -> None:
    check_ledger_id(request.ledger_id)
    if request.previous_last_add_confirmed < -1:
        raise BadRequestError(
            f"invalid previous_last_add_confirmed {request.previous_last_add_confirmed}"
        )


async def _abort(context: _Context, error: BaseException) -> NoReturn:
    if isinstance(error, BookieError):
        code, reason = status_for(error)
        await context.abort(code, str(error), trailing_metadata=((ERROR_REASON_KEY, reason),))
    _log.error("unexpected error serving a bookie request", exc_info=error)
    await context.abort(grpc.StatusCode.INTERNAL, "internal error in the bookie")


class AddEntriesStream:
    """One AddEntries call: the pipelined add path of one writer.

    An owned reader task takes AddEntry items from the request stream and submits each to the
    bookie without a coroutine per add; completions land in a ready list, and the response
    loop sends everything ready as one AddEntriesResponse. Entries made durable by the same
    group commit are therefore answered in one message, whatever their request order.
    At most ``max_pending_adds`` adds are in flight per stream: beyond that the reader stops
    reading, and gRPC flow control pushes back on the writer.

    Lifecycle: ``responses()`` runs for the whole call; it ends once the client half-closed and
    every admitted add is answered, or when the call is cancelled (the reader task is then
    cancelled and awaited). ``stop_admitting()`` (the bookie is shutting down) stops the
    reader: later adds are never admitted, the admitted ones are still answered, and then
    ``responses()`` ends with ``stopped`` set, for the servicer to end the call UNAVAILABLE.
    """

    def __init__(self, bookie: Bookie, max_pending_adds: int) -> None:
        self._bookie = bookie
        self._max_pending_adds = max_pending_adds
        self.stopped = False
        self._pending = 0
        self._ready: list[bookie_pb2.AddResult] = []
        self._ready_since = 0.0  # when the first result of the next response became ready
        self._changed = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._reading = True
        # Set when the request stream held a message that does not parse.
        self.malformed_request: str | None = None

    async def responses(
        self, requests: AsyncIterator[bookie_pb2.AddEntriesRequest]
    ) -> AsyncIterator[bookie_pb2.AddEntriesResponse]:
        reader = asyncio.create_task(self._read(requests), name="bookie-add-stream-reader")
        try:
            while True:
                if self._ready:
                    batch, self._ready = self._ready, []
                    STAGE_BOOKIE_REPLY.observe(time.monotonic() - self._ready_since)
                    yield bookie_pb2.AddEntriesResponse(results=batch)
                    continue
                if self.stopped and self._reading:
                    await _cancel_and_wait(reader)
                if not self._reading and self._pending == 0:
                    return
                self._changed.clear()
                await self._changed.wait()
        finally:
            await _cancel_and_wait(reader)

    def stop_admitting(self) -> None:
        """Admit no more adds; answer those admitted, then end (see the class docstring)."""
        self.stopped = True
        self._changed.set()

    async def _read(self, requests: AsyncIterator[bookie_pb2.AddEntriesRequest]) -> None:
        try:
            async for request in requests:
                for add in request.entries:
                    while self._pending >= self._max_pending_adds:
                        self._room.clear()
                        await self._room.wait()
                    if not self._bookie.has_add_capacity:
                        try:
                            await self._bookie.wait_for_add_capacity()
                        except BookieError as error:
                            self._answer(add, add_status_for(error), str(error))
                            continue
                    self._submit(add)
        except asyncio.CancelledError:
            raise
        except DecodeError:
            self.malformed_request = (
                "a request of the stream is not a valid strata.storage.v1.AddEntriesRequest"
            )
        except Exception as exc:  # the client went away
            _log.debug("AddEntries request stream ended: %r", exc)
        finally:
            self._reading = False
            self._changed.set()

    def _submit(self, add: bookie_pb2.AddEntry) -> None:
        problem = check_add_entry(add)
        if problem is not None:
            self._answer(add, bookie_pb2.ADD_STATUS_BAD_REQUEST, problem)
            return
        try:
            future = self._bookie.submit_add(
                add.ledger_id,
                add.entry_id,
                add.last_add_confirmed,
                add.payload,
                add.master_key,
                recovery_add=add.recovery_add,
            )
        except BookieError as error:
            self._answer(add, add_status_for(error), str(error))
            return
        except Exception:
            _log.exception("unexpected error admitting an add")
            self._answer(add, bookie_pb2.ADD_STATUS_ERROR, "internal error in the bookie")
            return
        self._pending += 1
        future.add_done_callback(
            functools.partial(self._on_durable, add.request_id, add.ledger_id, add.entry_id)
        )

    def _on_durable(
        self, request_id: int, ledger_id: int, entry_id: int, future: asyncio.Future[None]
    ) -> None:
        self._pending -= 1
        if self._pending < self._max_pending_adds:
            self._room.set()
        status: bookie_pb2.AddStatus.ValueType = bookie_pb2.ADD_STATUS_OK
        message = ""
        if future.cancelled():
            status, message = bookie_pb2.ADD_STATUS_ERROR, "add cancelled"
        else:
            error = future.exception()
            if isinstance(error, BookieError):
                status, message = add_status_for(error), str(error)
            elif error is not None:
                _log.error("unexpected error completing an add", exc_info=error)
                status, message = bookie_pb2.ADD_STATUS_ERROR, "internal error in the bookie"
        if not self._ready:
            self._ready_since = time.monotonic()
        self._ready.append(
            bookie_pb2.AddResult(
                request_id=request_id,
                ledger_id=ledger_id,
                entry_id=entry_id,
                status=status,
                message=message,
            )
        )
        self._changed.set()

    def _answer(
        self, add: bookie_pb2.AddEntry, status: bookie_pb2.AddStatus.ValueType, message: str
    ) -> None:
        if not self._ready:
            self._ready_since = time.monotonic()
        self._ready.append(
            bookie_pb2.AddResult(
                request_id=add.request_id,
                ledger_id=add.ledger_id,
                entry_id=add.entry_id,
                status=status,
                message=message,
            )
        )
        self._changed.set()


async def _cancel_and_wait(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


class BookieServicer(bookie_pb2_grpc.BookieServiceServicer):
    """The BookieService handlers over one open ``Bookie`` (which it does not own or close).

    Lifecycle: created and registered by ``start_bookie_server``; lives as long as the server.
    ``drain()`` (a graceful stop) refuses new AddEntries calls and stops every open one from
    admitting adds; it returns once the adds in flight are answered and those calls ended
    UNAVAILABLE, so that their writers replace this bookie by an ensemble change.
    """

    def __init__(self, bookie: Bookie | None, *, max_pending_adds_per_stream: int = 8192) -> None:
        # None while the process replays its journal: every call is then UNAVAILABLE.
        self._ready: Bookie | None = bookie
        self._max_pending_adds_per_stream = max_pending_adds_per_stream
        self._add_streams: set[AddEntriesStream] = set()
        self._draining = False
        self._drained = asyncio.Event()
        self._drained.set()

    def attach(self, bookie: Bookie) -> None:
        self._ready = bookie

    async def drain(self) -> None:
        self._draining = True
        for stream in self._add_streams:
            stream.stop_admitting()
        await self._drained.wait()

    @property
    def _bookie(self) -> Bookie:
        bookie = self._ready
        if bookie is None:
            raise BookieUnavailableError("the bookie is starting: it is replaying its journal")
        return bookie

    async def AddEntries(
        self,
        request_iterator: AsyncIterator[bookie_pb2.AddEntriesRequest],
        context: _Context,
    ) -> AsyncIterator[bookie_pb2.AddEntriesResponse]:
        try:
            bookie = self._bookie
            if self._draining:
                raise BookieUnavailableError("the bookie is shutting down")
        except BookieUnavailableError as error:
            await _abort(context, error)
        stream = AddEntriesStream(bookie, self._max_pending_adds_per_stream)
        self._add_streams.add(stream)
        self._drained.clear()
        try:
            async for response in stream.responses(request_iterator):
                yield response
        finally:
            self._add_streams.discard(stream)
            if not self._add_streams:
                self._drained.set()
        if stream.stopped:
            # Every add admitted before the stop was answered above; the writer resends the
            # others to a replacement bookie.
            await _abort(context, BookieUnavailableError("the bookie is shutting down"))
        if stream.malformed_request is not None:
            # Every add admitted before the bad message was answered above.
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, stream.malformed_request)

    async def ReadEntries(
        self, request: bookie_pb2.ReadEntriesRequest, context: _Context
    ) -> bookie_pb2.ReadEntriesResponse:
        try:
            check_read_entries_request(request)
            entries = await self._bookie.read_entries(
                request.ledger_id, request.first_entry_id, request.last_entry_id, request.max_bytes
            )
        except Exception as error:
            await _abort(context, error)
        return bookie_pb2.ReadEntriesResponse(
            entries=[
                bookie_pb2.StoredLedgerEntry(
                    entry_id=entry.entry_id,
                    last_add_confirmed=entry.last_add_confirmed,
                    payload=entry.payload,
                )
                for entry in entries
            ]
        )

    async def ReadLastAddConfirmed(
        self, request: bookie_pb2.ReadLastAddConfirmedRequest, context: _Context
    ) -> bookie_pb2.ReadLastAddConfirmedResponse:
        try:
            check_read_last_add_confirmed_request(request)
            state = await self._bookie.read_last_add_confirmed(
                request.ledger_id, request.previous_last_add_confirmed, request.timeout_ms
            )
        except Exception as error:
            await _abort(context, error)
        return bookie_pb2.ReadLastAddConfirmedResponse(
            last_add_confirmed=state.last_add_confirmed,
            last_entry_id=state.last_entry_id,
            fenced=state.fenced,
        )

    async def FenceLedger(
        self, request: bookie_pb2.FenceLedgerRequest, context: _Context
    ) -> bookie_pb2.FenceLedgerResponse:
        try:
            check_ledger_id(request.ledger_id)
            state = await self._bookie.fence_ledger(request.ledger_id, request.master_key)
        except Exception as error:
            await _abort(context, error)
        return bookie_pb2.FenceLedgerResponse(
            last_add_confirmed=state.last_add_confirmed, last_entry_id=state.last_entry_id
        )

    async def DeleteLedger(
        self, request: bookie_pb2.DeleteLedgerRequest, context: _Context
    ) -> bookie_pb2.DeleteLedgerResponse:
        try:
            check_ledger_id(request.ledger_id)
            await self._bookie.delete_ledger(request.ledger_id)
        except Exception as error:
            await _abort(context, error)
        return bookie_pb2.DeleteLedgerResponse()

    async def GetBookieInfo(
        self, request: bookie_pb2.GetBookieInfoRequest, context: _Context
    ) -> bookie_pb2.GetBookieInfoResponse:
        try:
            info = await asyncio.to_thread(self._bookie.info)
        except Exception as error:
            await _abort(context, error)
        return bookie_pb2.GetBookieInfoResponse(
            disk_used_bytes=info.disk_used_bytes,
            disk_free_bytes=info.disk_free_bytes,
            disk_total_bytes=info.disk_total_bytes,
            ledgers_count=info.ledgers_count,
        )


def server_options(max_entry_size_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", max_entry_size_bytes + RECEIVE_MARGIN_BYTES),
        ("grpc.max_send_message_length", -1),
        # Writers keep one AddEntries stream open for long and ping it to detect dead peers.
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
        ("grpc.http2.max_ping_strikes", 0),
    ]


@dataclass(slots=True)
class BookieServer:
    """A running bookie gRPC server and the port it bound (useful with port 0)."""

    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    servicer: BookieServicer
    # Turns health to NOT_SERVING when the bookie's journal fails; cancelled by ``stop``.
    failure_watch: asyncio.Task[None] | None = None

    async def attach(self, bookie: Bookie) -> None:
        """Start serving ``bookie`` (opened after the server started): health turns SERVING,
        and back to NOT_SERVING for good if its journal fails."""
        self.servicer.attach(bookie)
        await _set_health(self.health, health_pb2.HealthCheckResponse.SERVING)

        async def report_failure() -> None:
            error = await bookie.wait_failed()
            _log.error("bookie failed, health is now NOT_SERVING: %s", error)
            await _set_health(self.health, health_pb2.HealthCheckResponse.NOT_SERVING)

        self.failure_watch = asyncio.get_running_loop().create_task(
            report_failure(), name="bookie-health"
        )

    async def drain(self, timeout_s: float) -> bool:
        """A graceful stop's first step: report NOT_SERVING, take no more adds, and wait (at
        most ``timeout_s``) until the adds in flight are answered; False if time ran out.
        Reads are still served until ``stop``."""
        await self.health.enter_graceful_shutdown()
        try:
            async with asyncio.timeout(timeout_s):
                await self.servicer.drain()
        except TimeoutError:
            return False
        return True

    async def stop(self, grace_s: float | None = 1.0) -> None:
        """Report NOT_SERVING, then stop (in-flight calls get ``grace_s``). The bookie itself is
        closed by its owner afterwards."""
        if self.failure_watch is not None:
            self.failure_watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.failure_watch
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)


async def _set_health(servicer: health.aio.HealthServicer, status: Any) -> None:
    await servicer.set("", status)
    await servicer.set(SERVICE_NAME, status)


async def start_bookie_server(
    bookie: Bookie | None,
    host: str,
    port: int,
    *,
    max_pending_adds_per_stream: int = 8192,
    max_entry_size_bytes: int = DEFAULT_MAX_ENTRY_SIZE_BYTES,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    credentials: grpc.ServerCredentials | None = None,
) -> BookieServer:
    """Serve ``bookie`` on ``host:port`` (0: any free port) with health and reflection.

    With ``bookie=None`` the server starts NOT_SERVING and answers every call UNAVAILABLE until
    ``attach`` hands it the opened bookie (a bookie process replaying its journal)."""
    if bookie is not None:
        max_entry_size_bytes = bookie.config.max_entry_size_bytes
    server = grpc.aio.server(
        options=server_options(max_entry_size_bytes),
        interceptors=[*interceptors, MalformedRequestInterceptor()],
    )
    servicer = BookieServicer(bookie, max_pending_adds_per_stream=max_pending_adds_per_stream)
    bookie_pb2_grpc.add_BookieServiceServicer_to_server(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    address = f"{host}:{port}"
    if credentials is None:
        bound_port = server.add_insecure_port(address)
    else:
        bound_port = server.add_secure_port(address, credentials)
    if bound_port == 0:
        raise OSError(f"cannot bind the bookie server to {host}:{port}")
    await server.start()
    served = BookieServer(server, bound_port, health_servicer, servicer)
    if bookie is None:
        await _set_health(health_servicer, health_pb2.HealthCheckResponse.NOT_SERVING)
    else:
        await served.attach(bookie)
    _log.info("bookie serving on %s:%d", host, bound_port)
    return served


async def serve_bookie(bookie: Bookie, host: str, port: int) -> grpc.aio.Server:
    """Serve ``bookie`` on ``host:port`` and return the started server (see
    ``start_bookie_server`` to learn the port bound for port 0)."""
    return (await start_bookie_server(bookie, host, port)).server
