"""kill -9 of a standalone in the middle of producing and consuming: nothing receipted is lost,
no acknowledgement confirmed as durable is undone, everything unacknowledged comes again."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path

import pytest

import strata
from tests.harness import Standalone

pytestmark = [pytest.mark.integration, pytest.mark.fault]

RECEIPTS_BEFORE_KILL = 20_000
MAX_MESSAGES = 200_000
RECEIVE_TIMEOUT_MS = 3000


async def produce_until_killed(
    server: Standalone, topic: str, receipted: set[int], attempted: list[int]
) -> int:
    """Produce until ``RECEIPTS_BEFORE_KILL`` receipts, then kill -9 the server; returns how
    many messages awaited their receipt at the kill (0 after an earlier failure)."""
    client = strata.AsyncClient(server.address, operation_timeout_seconds=5)
    producer = await client.create_producer(
        topic, send_timeout_millis=3000, max_pending_messages=5000
    )

    def on_receipt(index: int) -> Callable[[strata.Result, strata.MessageId | None], None]:
        def callback(result: strata.Result, _message_id: strata.MessageId | None) -> None:
            if result == strata.Result.Ok:
                receipted.add(index)

        return callback

    try:
        for index in range(MAX_MESSAGES):
            if len(receipted) >= RECEIPTS_BEFORE_KILL:
                # The crash, while batches are in flight; what was receipted is what counts
                # (sending on would only time out, message by message, for minutes).
                in_flight = producer.pending_messages
                server.kill()
                return in_flight
            while producer.pending_messages >= 5000:
                try:
                    await asyncio.wait_for(producer.wait_for_space(), 5)
                except (strata.StrataException, TimeoutError):
                    return 0
            try:
                producer.send_nowait(str(index).encode(), callback=on_receipt(index))
            except strata.StrataException:
                return 0
            attempted.append(index)
            if index % 500 == 0:
                await asyncio.sleep(0)
        return 0
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(producer.close(), 5)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.close(), 5)


async def drain(consumer: strata.AsyncConsumer) -> list[strata.Message]:
    got: list[strata.Message] = []
    while True:
        try:
            got.extend(await consumer.receive_many(1000, timeout_millis=RECEIVE_TIMEOUT_MS))
        except strata.Timeout:
            return got


async def test_kill9_while_producing_loses_no_receipted_message(tmp_path: Path) -> None:
    server = Standalone(tmp_path / "data").start()
    try:
        receipted: set[int] = set()
        attempted: list[int] = []
        in_flight = await asyncio.wait_for(
            produce_until_killed(server, "crash", receipted, attempted), 120
        )
        assert len(receipted) >= RECEIPTS_BEFORE_KILL
        assert in_flight > 0, "the kill came with no batch in flight"
        server.start()  # same data directory, same port
        client = strata.AsyncClient(server.address)
        try:
            consumer = await client.subscribe(
                "crash", "after", initial_position=strata.InitialPosition.Earliest
            )
            got = [int(m.data()) for m in await drain(consumer)]
            missing = receipted - set(got)
            assert not missing, f"{len(missing)} receipted lost, e.g. {sorted(missing)[:5]}"
            assert len(got) == len(set(got)), "a message was stored twice"
            await consumer.close()
        finally:
            await client.close()
    finally:
        server.stop()


async def test_kill9_keeps_durable_acks_and_redelivers_the_rest(tmp_path: Path) -> None:
    server = Standalone(tmp_path / "data").start()
    try:
        client = strata.AsyncClient(server.address)
        consumer = await client.subscribe(
            "acks", "s", initial_position=strata.InitialPosition.Earliest
        )
        producer = await client.create_producer("acks")
        for index in range(5000):
            producer.send_nowait(str(index).encode())
            if index % 1000 == 999:
                await producer.flush()
        await producer.flush()
        # Acknowledge every other message and wait until that is durable.
        acked: set[int] = set()
        seen = 0
        while seen < 5000:
            for message in await consumer.receive_many(1000, timeout_millis=10_000):
                seen += 1
                value = int(message.data())
                if value % 2 == 0:
                    acked.add(value)
                    consumer.acknowledge_nowait(message)
        await consumer.flush_acknowledgements(wait_durable=True)
        server.kill()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.close(), 5)
        server.start()
        client = strata.AsyncClient(server.address)
        try:
            consumer = await client.subscribe("acks", "s")
            again = {int(m.data()) for m in await drain(consumer)}
            assert not (again & acked), "a durable acknowledgement was undone"
            assert again == set(range(5000)) - acked
            await consumer.close()
        finally:
            await client.close()
    finally:
        server.stop()
