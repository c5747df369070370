"""The gRPC service on a real grpc.aio server (127.0.0.1, port 0): batching, statuses, bad
input, health and reflection, and the client's behaviour when the stream dies."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from bookie.errors import BookieUnavailableError, NoSuchLedgerError
from bookie.grpc_client import GrpcBookieClient
from bookie.server import SERVICE_NAME, BookieServer, serve_bookie, start_bookie_server
from bookie.status_map import ERROR_REASON_KEY
from bookie.storage import Bookie
from bookie.storage.index import unpack_location
from strata.storage.v1 import bookie_pb2, bookie_pb2_grpc
from tests.unit.bookie.support import KEY, make_config

MAX_ENTRY = 64 * 1024


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[Bookie, BookieServer]]:
    bookie = await Bookie.open(make_config(tmp_path, max_entry_size_bytes=MAX_ENTRY))
    server = await start_bookie_server(bookie, "127.0.0.1", 0)
    try:
        yield bookie, server
    finally:
        await server.stop(None)
        await bookie.close()


@pytest.fixture
async def channel(served: tuple[Bookie, BookieServer]) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{served[1].port}") as channel:
        yield channel


def _add(request_id: int, ledger_id: int, entry_id: int, payload: bytes) -> bookie_pb2.AddEntry:
    return bookie_pb2.AddEntry(
        request_id=request_id,
        ledger_id=ledger_id,
        entry_id=entry_id,
        last_add_confirmed=entry_id - 1,
        payload=payload,
        master_key=KEY,
    )


async def test_results_are_answered_in_batches(channel: grpc.aio.Channel) -> None:
    stub = bookie_pb2_grpc.BookieServiceStub(channel)
    adds = [_add(i, 1, i, b"p" * 100) for i in range(200)]
    adds.append(_add(1000, 2, 0, b"x" * (MAX_ENTRY + 1)))  # refused
    adds.append(_add(1001, 2**63, 0, b"x"))  # out of range

    async def requests() -> AsyncIterator[bookie_pb2.AddEntriesRequest]:
        yield bookie_pb2.AddEntriesRequest(entries=adds[:100])
        yield bookie_pb2.AddEntriesRequest(entries=adds[100:])

    responses = [response async for response in stub.AddEntries(requests())]
    results = {r.request_id: r for response in responses for r in response.results}
    assert len(results) == 202
    assert all(results[i].status == bookie_pb2.ADD_STATUS_OK for i in range(200))
    assert results[1000].status == bookie_pb2.ADD_STATUS_BAD_REQUEST
    assert "exceeds" in results[1000].message
    assert results[1001].status == bookie_pb2.ADD_STATUS_BAD_REQUEST
    assert len(responses) < 20  # durable together, answered together


async def test_statuses_and_reasons(
    served: tuple[Bookie, BookieServer], channel: grpc.aio.Channel
) -> None:
    bookie, _ = served
    stub = bookie_pb2_grpc.BookieServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stub.ReadEntries(bookie_pb2.ReadEntriesRequest(ledger_id=5, last_entry_id=1))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert (ERROR_REASON_KEY, "NO_SUCH_LEDGER") in tuple(missing.value.trailing_metadata() or ())
    with pytest.raises(grpc.aio.AioRpcError) as empty_range:
        await stub.ReadEntries(
            bookie_pb2.ReadEntriesRequest(ledger_id=5, first_entry_id=3, last_entry_id=1)
        )
    assert empty_range.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as out_of_range:
        await stub.FenceLedger(bookie_pb2.FenceLedgerRequest(ledger_id=2**64 - 1))
    assert out_of_range.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    await bookie.add_entry(1, 0, -1, b"z" * 200, KEY)
    segment_id, offset = unpack_location(bookie._index.ledgers[1].entries[0])
    bookie._index.ledgers[1].cached.clear()
    with bookie.segment_file(segment_id).open("r+b") as file:
        file.seek(offset + 100)
        file.write(b"!")
    with pytest.raises(grpc.aio.AioRpcError) as corrupt:
        await stub.ReadEntries(bookie_pb2.ReadEntriesRequest(ledger_id=1, last_entry_id=0))
    assert corrupt.value.code() == grpc.StatusCode.DATA_LOSS
    assert "checksum" in (corrupt.value.details() or "")
    assert "Traceback" not in (corrupt.value.details() or "")


async def test_garbage_does_not_take_the_server_down(
    served: tuple[Bookie, BookieServer], channel: grpc.aio.Channel
) -> None:
    raw: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
        f"/{SERVICE_NAME}/ReadEntries"
    )
    for garbage in (b"\xff" * 64, b"\x0a\xff\xff\xff\xff\xff", b"\x08" * 3):
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await raw(garbage, timeout=5)
        assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert failure.value.details() == (
            "the request is not a valid strata.storage.v1.ReadEntriesRequest message"
        )
    raw_stream: grpc.aio.StreamStreamMultiCallable[bytes, bytes] = channel.stream_stream(
        f"/{SERVICE_NAME}/AddEntries"
    )
    call = raw_stream()
    await call.write(b"\xff\x00\xff\x00garbage")
    await call.done_writing()
    with pytest.raises(grpc.aio.AioRpcError) as malformed:
        async for _ in call:
            pass
    assert malformed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # Still serving.
    client = GrpcBookieClient(f"127.0.0.1:{served[1].port}")
    try:
        await client.add_entry(1, 0, -1, b"ok", KEY)
        assert (await client.read_entries(1, 0, 0))[0].payload == b"ok"
    finally:
        await client.close()


async def test_health_and_reflection(channel: grpc.aio.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", SERVICE_NAME):
        response = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert response.status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def ask() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    names: set[str] = set()
    async for response in reflection.ServerReflectionInfo(ask()):
        names.update(s.name for s in response.list_services_response.service)
    assert SERVICE_NAME in names


async def test_message_over_the_grpc_limit_fails_only_that_stream(
    served: tuple[Bookie, BookieServer],
) -> None:
    # The client is configured with a larger entry limit than the server's receive limit.
    client = GrpcBookieClient(f"127.0.0.1:{served[1].port}", max_entry_size_bytes=8 * 1024 * 1024)
    try:
        with pytest.raises(BookieUnavailableError):
            await client.add_entry(1, 0, -1, b"x" * (4 * 1024 * 1024), KEY)
        await client.add_entry(1, 0, -1, b"small", KEY)  # a new stream
        assert (await client.read_entries(1, 0, 0))[0].payload == b"small"
    finally:
        await client.close()


async def test_pending_adds_fail_when_the_server_goes_away(tmp_path: Path) -> None:
    bookie = await Bookie.open(make_config(tmp_path))
    server = await start_bookie_server(bookie, "127.0.0.1", 0)
    client = GrpcBookieClient(f"127.0.0.1:{server.port}", request_timeout_ms=2000)
    journal = bookie._journal
    assert journal is not None
    write_batch = journal._segments.write_batch
    release = threading.Event()

    def stalled_write_batch(chunks: Any) -> None:
        # Hold the journal's write (in its thread) so that the adds stay pending.
        release.wait(10)
        write_batch(chunks)

    try:
        await client.add_entry(1, 0, -1, b"x", KEY)
        journal._segments.write_batch = stalled_write_batch  # type: ignore[method-assign]
        adds = [asyncio.ensure_future(client.add_entry(1, i, i - 1, b"y", KEY)) for i in (1, 2)]
        await asyncio.sleep(0.1)
        assert not any(add.done() for add in adds)
        await server.server.stop(None)
        results = await asyncio.wait_for(asyncio.gather(*adds, return_exceptions=True), 5)
        assert all(isinstance(r, BookieUnavailableError) for r in results), results
        with pytest.raises(BookieUnavailableError):
            await client.read_entries(1, 0, 0)
    finally:
        release.set()
        await client.close()
        await bookie.close()


async def test_serve_bookie(tmp_path: Path) -> None:
    bookie = await Bookie.open(make_config(tmp_path))
    server = await serve_bookie(bookie, "127.0.0.1", 0)
    try:
        assert isinstance(server, grpc.aio.Server)
    finally:
        await server.stop(None)
        await bookie.close()
    with pytest.raises(NoSuchLedgerError):  # the error table round-trips reasons
        from bookie.status_map import error_for_status

        raise error_for_status(grpc.StatusCode.NOT_FOUND, "x", "NO_SUCH_LEDGER")


async def test_health_turns_not_serving_when_the_journal_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bookie = await Bookie.open(make_config(tmp_path, fsync=True))
    served = await start_bookie_server(bookie, "127.0.0.1", 0)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{served.port}") as channel:
            health_stub = health_pb2_grpc.HealthStub(channel)
            request = health_pb2.HealthCheckRequest(service=SERVICE_NAME)
            serving = health_pb2.HealthCheckResponse.SERVING
            assert (await health_stub.Check(request)).status == serving

            def failing_fdatasync(fd: int) -> None:
                raise OSError(5, "Input/output error (injected)")

            monkeypatch.setattr("bookie.storage.sync_slots.os.fdatasync", failing_fdatasync)
            with pytest.raises(Exception, match="journal fdatasync failed"):
                await bookie.add_entry(1, 0, -1, b"payload", KEY)
            not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
            async with asyncio.timeout(5):
                async for update in health_stub.Watch(request):
                    if update.status == not_serving:
                        break
            overall = await health_stub.Check(health_pb2.HealthCheckRequest(service=""))
            assert overall.status == not_serving
    finally:
        monkeypatch.undo()
        await served.stop(None)
        await bookie.close(checkpoint=False)


async def test_not_serving_and_unavailable_until_the_bookie_is_attached(tmp_path: Path) -> None:
    served = await start_bookie_server(None, "127.0.0.1", 0)
    bookie = None
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{served.port}") as channel:
            health_stub = health_pb2_grpc.HealthStub(channel)
            request = health_pb2.HealthCheckRequest(service=SERVICE_NAME)
            not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
            assert (await health_stub.Check(request)).status == not_serving
            client = GrpcBookieClient(f"127.0.0.1:{served.port}")
            try:
                with pytest.raises(BookieUnavailableError, match="replaying its journal"):
                    await client.add_entry(1, 0, -1, b"x", KEY)
                with pytest.raises(BookieUnavailableError, match="replaying its journal"):
                    await client.read_entries(1, 0, 0)
                # The journal replayed: the same server starts serving.
                bookie = await Bookie.open(make_config(tmp_path))
                await served.attach(bookie)
                serving = health_pb2.HealthCheckResponse.SERVING
                assert (await health_stub.Check(request)).status == serving
                await client.add_entry(1, 0, -1, b"x", KEY)
                assert [e.payload for e in await client.read_entries(1, 0, 0)] == [b"x"]
            finally:
                await client.close()
    finally:
        await served.stop(None)
        if bookie is not None:
            await bookie.close()


async def test_drain_answers_the_adds_in_flight_and_ends_add_streams_unavailable(
    served: tuple[Bookie, BookieServer], channel: grpc.aio.Channel
) -> None:
    bookie, server = served
    stub = bookie_pb2_grpc.BookieServiceStub(channel)
    sent = [_add(i, 7, i, b"d" * 500) for i in range(300)]
    first_answered = asyncio.Event()
    never_half_closed = asyncio.Event()

    async def requests() -> AsyncIterator[bookie_pb2.AddEntriesRequest]:
        for start in range(0, len(sent), 50):
            yield bookie_pb2.AddEntriesRequest(entries=sent[start : start + 50])
        await never_half_closed.wait()  # a writer's stream stays open

    call = stub.AddEntries(requests())
    answered: dict[int, bookie_pb2.AddResult] = {}

    async def read_answers() -> None:
        async for response in call:
            for result in response.results:
                answered[result.request_id] = result
            first_answered.set()

    reader = asyncio.create_task(read_answers())
    await first_answered.wait()
    assert await server.drain(10.0)
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await reader
    assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "shutting down" in (ended.value.details() or "")
    # Everything admitted was answered, and durably stored; nothing failed.
    assert answered and all(r.status == bookie_pb2.ADD_STATUS_OK for r in answered.values())
    stored = await bookie.read_entries(7, 0, len(answered) - 1)
    assert len(stored) == len(answered) == max(answered) + 1
    # No new add stream; health says so; reads are still served until the server stops.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        async for _ in stub.AddEntries(iter([bookie_pb2.AddEntriesRequest(entries=[sent[0]])])):
            pass
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    health_stub = health_pb2_grpc.HealthStub(channel)
    status = await health_stub.Check(health_pb2.HealthCheckRequest(service=""))
    assert status.status == health_pb2.HealthCheckResponse.NOT_SERVING
    read = await stub.ReadEntries(
        bookie_pb2.ReadEntriesRequest(ledger_id=7, first_entry_id=0, last_entry_id=0)
    )
    assert read.entries[0].payload == b"d" * 500
    never_half_closed.set()
