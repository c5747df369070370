"""Readers and seek on a real standalone (issue 12 item 7): readers start where asked and
leave nothing behind; seek by id and by publish time land on the right message."""

from __future__ import annotations

import asyncio
import time

import pytest

import strata
from tests.harness import Standalone
from tests.integration.test_metrics import topic_stats

pytestmark = pytest.mark.integration

RECEIVE_TIMEOUT_MS = 10_000


async def produce(
    client: strata.AsyncClient, topic: str, first: int, count: int
) -> list[strata.MessageId]:
    producer = await client.create_producer(topic, batching_max_messages=5)
    futures = [await producer.send_async(str(i).encode()) for i in range(first, first + count)]
    ids = list(await asyncio.gather(*futures))
    await producer.close()
    return ids


async def read_values(reader: strata.AsyncReader, count: int) -> list[int]:
    return [int((await reader.read_next(RECEIVE_TIMEOUT_MS)).data()) for _ in range(count)]


async def test_readers_start_where_asked_and_leave_nothing_behind(standalone: Standalone) -> None:
    topic = "persistent://public/default/readers"
    async with strata.AsyncClient(standalone.address) as client:
        ids = await produce(client, topic, 0, 20)  # batches of 5
        earliest = await client.create_reader(topic, strata.MessageId.earliest)
        assert await earliest.has_message_available()
        assert await read_values(earliest, 20) == list(range(20))
        assert not await earliest.has_message_available()
        # From an id inside a batch: exclusive starts after it, inclusive at it.
        after = await client.create_reader(topic, ids[7])
        assert await read_values(after, 3) == [8, 9, 10]
        at = await client.create_reader(topic, ids[7], start_message_id_inclusive=True)
        assert await read_values(at, 2) == [7, 8]
        latest = await client.create_reader(topic, strata.MessageId.latest)
        assert not await latest.has_message_available()
        await produce(client, topic, 20, 1)
        assert await read_values(latest, 1) == [20]
        assert await read_values(earliest, 1) == [20]  # a tailing reader
        stats = topic_stats(standalone.address, topic)
        assert len([s for s in stats.subscriptions if s.startswith("reader-")]) == 4
        for reader in (earliest, after, at, latest):
            await reader.close()
        for _ in range(50):  # the broker forgets them as their streams end
            if not topic_stats(standalone.address, topic).subscriptions:
                break
            await asyncio.sleep(0.1)
        assert dict(topic_stats(standalone.address, topic).subscriptions) == {}


async def test_seek_by_id_and_by_publish_time(standalone: Standalone) -> None:
    topic = "persistent://public/default/seek"
    async with strata.AsyncClient(standalone.address) as client:
        consumer = await client.subscribe(
            topic, "s", initial_position=strata.InitialPosition.Earliest
        )
        ids = await produce(client, topic, 0, 10)
        await asyncio.sleep(0.05)
        middle_ms = int(time.time() * 1000)
        await asyncio.sleep(0.05)
        await produce(client, topic, 10, 10)
        received = [await consumer.receive(RECEIVE_TIMEOUT_MS) for _ in range(20)]
        for message in received:
            consumer.acknowledge_nowait(message)
        await consumer.flush_acknowledgements()
        # Back to message 3 (a whole batch comes again from its start: seek is per entry).
        await consumer.seek(ids[3])
        message = await consumer.receive(RECEIVE_TIMEOUT_MS)
        assert int(message.data()) == 0  # the batch of 0..4 holds 3
        # By publish time: the first message published after middle_ms is 10.
        await consumer.seek(middle_ms)
        message = await consumer.receive(RECEIVE_TIMEOUT_MS)
        assert int(message.data()) == 10
        await consumer.seek(strata.MessageId.earliest)
        assert int((await consumer.receive(RECEIVE_TIMEOUT_MS)).data()) == 0
        # A reader seeks too, and a Shared subscription with two consumers may not.
        reader = await client.create_reader(topic, strata.MessageId.latest)
        await reader.seek(middle_ms)
        assert await read_values(reader, 2) == [10, 11]
        await reader.close()
        shared = [
            await client.subscribe(topic, "two", consumer_type=strata.ConsumerType.Shared)
            for _ in range(2)
        ]
        with pytest.raises(strata.FailedPrecondition, match="single consumer may seek"):
            await shared[0].seek(middle_ms)


async def test_a_reader_goes_on_after_a_broker_restart(standalone: Standalone) -> None:
    topic = "persistent://public/default/reader-restart"
    async with strata.AsyncClient(standalone.address) as client:
        await produce(client, topic, 0, 20)
        reader = await client.create_reader(topic, strata.MessageId.earliest)
        assert await read_values(reader, 7) == list(range(7))
        standalone.restart()  # kill -9: the broker forgets the reader's subscription
        # The reader reconnects after the last message it read.
        assert await read_values(reader, 13) == list(range(7, 20))
        await reader.close()
