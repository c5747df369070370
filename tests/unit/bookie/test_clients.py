"""The BookieClient contract, run against both implementations: in-process and over gRPC.

Both must raise the same bookie.errors classes for the same conditions.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bookie.api import BookieClient, LedgerState
from bookie.errors import (
    BadRequestError,
    BookieUnavailableError,
    CorruptEntryError,
    LedgerDeletedError,
    LedgerFencedError,
    NoSuchEntryError,
    NoSuchLedgerError,
)
from bookie.grpc_client import GrpcBookieClient
from bookie.local import LocalBookieClient
from bookie.server import start_bookie_server
from bookie.storage import Bookie
from bookie.storage.index import unpack_location
from bookie.storage.record import HEADER_SIZE
from tests.unit.bookie.support import KEY, make_config


@pytest.fixture(params=["local", "grpc"])
async def client_and_bookie(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[BookieClient, Bookie]]:
    bookie = await Bookie.open(make_config(tmp_path, max_entry_size_bytes=64 * 1024))
    client: BookieClient
    if request.param == "local":
        client = LocalBookieClient(bookie)
        yield client, bookie
        await client.close()
    else:
        server = await start_bookie_server(bookie, "127.0.0.1", 0)
        client = GrpcBookieClient(f"127.0.0.1:{server.port}", max_entry_size_bytes=1024 * 1024)
        try:
            yield client, bookie
        finally:
            await client.close()
            await server.stop(None)
    await bookie.close()


async def test_round_trip(client_and_bookie: tuple[BookieClient, Bookie]) -> None:
    client, _ = client_and_bookie
    await asyncio.gather(
        *(client.add_entry(7, i, i - 1, f"entry {i}".encode(), KEY) for i in range(50))
    )
    entries = await client.read_entries(7, 0, 49)
    assert [e.payload for e in entries] == [f"entry {i}".encode() for i in range(50)]
    assert [e.last_add_confirmed for e in entries] == list(range(-1, 49))
    assert len(await client.read_entries(7, 0, 49, max_bytes=20)) == 2
    assert await client.read_last_add_confirmed(7) == LedgerState(48, 49, False)


async def test_errors(client_and_bookie: tuple[BookieClient, Bookie]) -> None:
    client, _ = client_and_bookie
    await client.add_entry(1, 0, -1, b"x", KEY)
    with pytest.raises(BadRequestError):  # over the bookie's limit, under the client's
        await client.add_entry(1, 1, 0, b"x" * (64 * 1024 + 1), KEY)
    with pytest.raises(BadRequestError):
        await client.add_entry(1, 1, 0, b"x", b"wrong key")
    with pytest.raises(NoSuchLedgerError):
        await client.read_entries(2, 0, 0)
    with pytest.raises(NoSuchEntryError):
        await client.read_entries(1, 1, 1)
    with pytest.raises(NoSuchLedgerError):
        await client.read_last_add_confirmed(2)
    with pytest.raises(BadRequestError):
        await client.read_entries(1, 3, 2)
    with pytest.raises(BadRequestError):
        await client.fence_ledger(1, b"wrong key")
    assert await client.fence_ledger(1, KEY) == LedgerState(-1, 0, True)
    with pytest.raises(LedgerFencedError):
        await client.add_entry(1, 1, 0, b"late", KEY)
    await client.add_entry(1, 1, 0, b"recovered", KEY, recovery_add=True)
    await client.delete_ledger(1)
    with pytest.raises(LedgerDeletedError):
        await client.read_entries(1, 0, 0)
    with pytest.raises(LedgerDeletedError):
        await client.add_entry(1, 2, 1, b"x", KEY)
    # The client is still usable after all those failures.
    await client.add_entry(3, 0, -1, b"fine", KEY)
    assert (await client.read_entries(3, 0, 0))[0].payload == b"fine"


async def test_send_add_fails_its_future_as_add_entry_raises(
    client_and_bookie: tuple[BookieClient, Bookie],
) -> None:
    """The ledger writer's form: a future started at once, refused adds fail it (never raise)."""
    client, _ = client_and_bookie
    await client.add_entry(4, 0, -1, b"opens", KEY)  # the gRPC client's stream is open now
    sends = [client.send_add(4, i, i - 1, f"entry {i}".encode(), KEY) for i in range(1, 20)]
    await asyncio.gather(*sends)
    assert [e.payload for e in await client.read_entries(4, 1, 19)] == [
        f"entry {i}".encode() for i in range(1, 20)
    ]
    with pytest.raises(BadRequestError):
        await client.send_add(4, 20, 19, b"x", b"wrong key")
    with pytest.raises(BadRequestError):
        await client.send_add(-1, 0, -1, b"x", KEY)
    await client.fence_ledger(4, KEY)
    with pytest.raises(LedgerFencedError):
        await client.send_add(4, 20, 19, b"late", KEY)
    await client.send_add(4, 20, 19, b"recovered", KEY, recovery_add=True)


async def test_corrupt_entry(client_and_bookie: tuple[BookieClient, Bookie]) -> None:
    client, bookie = client_and_bookie
    await client.add_entry(1, 0, -1, b"a" * 100, KEY)
    await client.add_entry(1, 1, 0, b"b" * 100, KEY)
    segment_id, offset = unpack_location(bookie._index.ledgers[1].entries[0])
    bookie._index.ledgers[1].cached.clear()  # force a disk read
    with bookie.segment_file(segment_id).open("r+b") as file:
        file.seek(offset + HEADER_SIZE + 50)
        file.write(b"c")
    with pytest.raises(CorruptEntryError):
        await client.read_entries(1, 0, 1)
    assert (await client.read_entries(1, 1, 1))[0].payload == b"b" * 100


async def test_long_poll(client_and_bookie: tuple[BookieClient, Bookie]) -> None:
    client, _ = client_and_bookie
    await client.add_entry(1, 0, -1, b"x", KEY)
    poll = asyncio.ensure_future(client.read_last_add_confirmed(1, -1, timeout_ms=5000))
    await asyncio.sleep(0.05)
    assert not poll.done()
    await client.add_entry(1, 1, 0, b"y", KEY)
    assert (await asyncio.wait_for(poll, 2)).last_add_confirmed == 0
    state = await client.read_last_add_confirmed(1, 0, timeout_ms=50)
    assert state.last_add_confirmed == 0


async def test_closed_client_refuses_calls(client_and_bookie: tuple[BookieClient, Bookie]) -> None:
    client, _ = client_and_bookie
    await client.close()
    with pytest.raises(BookieUnavailableError):
        await client.add_entry(1, 0, -1, b"x", KEY)
    with pytest.raises(BookieUnavailableError):
        await client.read_entries(1, 0, 0)
