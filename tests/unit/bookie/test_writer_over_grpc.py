"""The ledger writer over ``GrpcBookieClient.send_add`` (a future per send, no task and no
timer): bookies that answer out of order, a reply that never comes, and error statuses.

The bookies are scripted ``BookieService`` servers on loopback ports (real gRPC, real streams):
each stores what it is sent and answers as its script says, so the order and the loss of
replies are the test's choice.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

from bookie.errors import LedgerFencedError
from bookie.grpc_client import GrpcBookieClient
from bookie.ledger import LedgerManager
from strata.metadata import InMemoryMetadataStore
from strata.storage.v1 import bookie_pb2, bookie_pb2_grpc
from tests.unit.bookie.fake_bookies import FAST_CONFIG, payload

WAIT_S = 5.0


@dataclass
class Script:
    """How one scripted bookie answers adds."""

    # Answer the adds in groups of this many, newest first (1: in order, as sent).
    reverse_groups_of: int = 1
    # Entries never answered (stored, like a reply lost on the way back).
    dropped: set[int] = field(default_factory=set)
    # Entries answered FENCED.
    fenced: set[int] = field(default_factory=set)


class ScriptedBookie(bookie_pb2_grpc.BookieServiceServicer):
    """AddEntries only (the writer sends nothing else here; the rest is UNIMPLEMENTED)."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.entries: dict[tuple[int, int], bytes] = {}

    async def AddEntries(  # type: ignore[override]  # a handler writing through context
        self, request_iterator: Any, context: Any
    ) -> None:
        held: list[bookie_pb2.AddResult] = []
        async for request in request_iterator:
            for add in request.entries:
                self.entries[(add.ledger_id, add.entry_id)] = add.payload
                if add.entry_id in self.script.dropped:
                    continue
                status = (
                    bookie_pb2.ADD_STATUS_FENCED
                    if add.entry_id in self.script.fenced
                    else bookie_pb2.ADD_STATUS_OK
                )
                held.append(
                    bookie_pb2.AddResult(
                        request_id=add.request_id,
                        ledger_id=add.ledger_id,
                        entry_id=add.entry_id,
                        status=status,
                        message="fenced by the script"
                        if status != bookie_pb2.ADD_STATUS_OK
                        else "",
                    )
                )
                if len(held) >= self.script.reverse_groups_of:
                    await context.write(bookie_pb2.AddEntriesResponse(results=held[::-1]))
                    held = []


@dataclass
class Bookies:
    servers: list[grpc.aio.Server]
    servicers: dict[str, ScriptedBookie]
    clients: dict[str, GrpcBookieClient]


@contextlib.asynccontextmanager
async def scripted_bookies(*scripts: Script) -> AsyncIterator[Bookies]:
    bookies = Bookies([], {}, {})
    try:
        for script in scripts:
            server = grpc.aio.server()
            servicer = ScriptedBookie(script)  # type: ignore[abstract]
            bookie_pb2_grpc.add_BookieServiceServicer_to_server(servicer, server)
            port = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            address = f"127.0.0.1:{port}"
            bookies.servers.append(server)
            bookies.servicers[address] = servicer
            bookies.clients[address] = GrpcBookieClient(address)
        yield bookies
    finally:
        for client in bookies.clients.values():
            await client.close()
        for server in bookies.servers:
            await server.stop(None)


async def _manager(bookies: Bookies) -> LedgerManager:
    store = await InMemoryMetadataStore.open()
    addresses = list(bookies.clients)
    return LedgerManager(store, lambda: addresses, bookies.clients.__getitem__, FAST_CONFIG)


async def test_answers_out_of_order_complete_in_entry_order() -> None:
    async with scripted_bookies(*(Script(reverse_groups_of=5) for _ in range(3))) as bookies:
        handle = await (await _manager(bookies)).create_ledger(3, 3, 2)
        completed: list[int] = []
        futures = [handle.add_entry(payload(i)) for i in range(20)]
        for future in futures:
            future.add_done_callback(lambda done: completed.append(done.result()))
        async with asyncio.timeout(WAIT_S):
            assert await asyncio.gather(*futures) == list(range(20))
        assert completed == list(range(20))
        assert handle.last_add_confirmed == 19
        # Adds complete at Qa = 2: the third bookie's writes may still be in flight until the
        # close, which waits for them.
        await handle.close()
        for servicer in bookies.servicers.values():
            assert sorted(entry for _, entry in servicer.entries) == list(range(20))


async def test_a_reply_that_never_comes_times_out_and_the_bookie_is_replaced() -> None:
    """The ensemble's first bookie stores entry 3 but its reply is lost: the send times out
    (the writer's monitor, no timer per send), the position goes to the spare, and entry 3 and
    every later entry complete with a full write quorum; the abandoned add frees its room on
    the stream."""
    async with scripted_bookies(*(Script() for _ in range(4))) as bookies:
        handle = await (await _manager(bookies)).create_ledger(3, 3, 3)
        first = handle.ensemble[0]
        (spare,) = set(bookies.clients) - set(handle.ensemble)
        bookies.servicers[first].script.dropped.add(3)
        async with asyncio.timeout(WAIT_S):
            assert await asyncio.gather(*(handle.add_entry(payload(i)) for i in range(8))) == list(
                range(8)
            )
        assert handle.ensemble_changes == 1
        assert first not in handle.ensemble and spare in handle.ensemble
        assert sorted(entry for _, entry in bookies.servicers[spare].entries) == list(range(3, 8))
        stream = bookies.clients[first]._stream
        assert stream is not None and stream.has_room(1)  # the abandoned add holds no room
        await handle.close()


async def test_send_add_maps_a_status_to_its_error() -> None:
    async with scripted_bookies(Script(fenced={1})) as bookies:
        (client,) = bookies.clients.values()
        await client.add_entry(5, 0, -1, b"opens the stream", b"key")
        await client.send_add(5, 2, 0, b"fine", b"key")
        with pytest.raises(LedgerFencedError, match="fenced by the script"):
            await client.send_add(5, 1, 0, b"refused", b"key")
