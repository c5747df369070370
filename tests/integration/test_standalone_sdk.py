"""A real ``strata standalone`` process driven by the SDK: exactly-once delivery at volume."""

from __future__ import annotations

import asyncio
import collections

import pytest

import strata
from tests.harness import Standalone

pytestmark = pytest.mark.integration

MESSAGES = 100_000
RECEIVE_TIMEOUT_MS = 20_000


async def produce_numbered(address: str, topic: str, count: int) -> None:
    client = strata.AsyncClient(address)
    try:
        producer = await client.create_producer(
            topic, block_if_queue_full=True, max_pending_messages=20_000
        )
        for i in range(count):
            if producer.pending_messages >= 20_000:
                await producer.wait_for_space()
            producer.send_nowait(str(i).encode())
        await producer.flush()
        await producer.close()
    finally:
        await client.close()


async def consume_all(
    consumer: strata.AsyncConsumer,
    seen: list[bytes],
    stop: asyncio.Event,
    total: collections.Counter[str],
) -> None:
    while not stop.is_set():
        try:
            messages = await consumer.receive_many(1000, timeout_millis=500)
        except strata.Timeout:
            continue
        for message in messages:
            seen.append(message.data())
        consumer.acknowledge_many(messages)
        total["n"] += len(messages)
        if total["n"] >= MESSAGES:
            stop.set()


async def test_exclusive_100k_exactly_once(standalone: Standalone) -> None:
    client = strata.AsyncClient(standalone.address)
    try:
        consumer = await client.subscribe(
            "exclusive-100k", "sub", initial_position=strata.InitialPosition.Earliest
        )
        producing = asyncio.ensure_future(
            produce_numbered(standalone.address, "exclusive-100k", MESSAGES)
        )
        seen: list[bytes] = []
        stop = asyncio.Event()
        total: collections.Counter[str] = collections.Counter()
        await asyncio.wait_for(consume_all(consumer, seen, stop, total), 180)
        await asyncio.wait_for(producing, 60)
        # In order, each exactly once.
        assert seen == [str(i).encode() for i in range(MESSAGES)]
        with pytest.raises(strata.Timeout):
            await consumer.receive(timeout_millis=300)
        await consumer.flush_acknowledgements()
        await consumer.close()
    finally:
        await client.close()


async def test_shared_three_consumers_each_message_once(standalone: Standalone) -> None:
    client = strata.AsyncClient(standalone.address)
    try:
        consumers = [
            await client.subscribe(
                "shared-100k",
                "shared-sub",
                consumer_type=strata.ConsumerType.Shared,
                initial_position=strata.InitialPosition.Earliest,
                receiver_queue_size=1000,
            )
            for _ in range(3)
        ]
        await produce_numbered(standalone.address, "shared-100k", MESSAGES)
        seen: list[list[bytes]] = [[], [], []]
        stop = asyncio.Event()
        total: collections.Counter[str] = collections.Counter()
        await asyncio.wait_for(
            asyncio.gather(
                *(consume_all(c, s, stop, total) for c, s in zip(consumers, seen, strict=True))
            ),
            180,
        )
        everything = [m for s in seen for m in s]
        assert len(everything) == MESSAGES
        assert set(everything) == {str(i).encode() for i in range(MESSAGES)}
        assert all(len(s) > 0 for s in seen), [len(s) for s in seen]
        for consumer in consumers:
            await consumer.close()
    finally:
        await client.close()


async def test_message_fields_and_ids(standalone: Standalone) -> None:
    client = strata.AsyncClient(standalone.address)
    try:
        consumer = await client.subscribe("fields", "s")
        producer = await client.create_producer("fields")
        sent = await producer.send(b"hello", properties={"k": "v"}, partition_key="key-1")
        message = await consumer.receive(timeout_millis=RECEIVE_TIMEOUT_MS)
        assert message.data() == b"hello"
        assert message.properties() == {"k": "v"}
        assert message.partition_key() == "key-1"
        assert message.message_id() == sent
        assert message.redelivery_count() == 0
        assert message.publish_timestamp() > 0
        restored = strata.MessageId.deserialize(sent.serialize())
        assert restored == sent
        await consumer.acknowledge(message)
        await consumer.flush_acknowledgements()
        await producer.close()
        await consumer.close()
    finally:
        await client.close()


async def test_bad_input_is_refused_and_the_server_stays_up(standalone: Standalone) -> None:
    client = strata.AsyncClient(standalone.address)
    try:
        with pytest.raises(strata.InvalidArgument):
            await client.create_producer("persistent://a/b/c/d")
        with pytest.raises(strata.NotFound):
            await client.create_producer("no-such-tenant/ns/t")
        with pytest.raises(strata.InvalidArgument):
            await client.subscribe("t", "")
        producer = await client.create_producer("big")
        with pytest.raises(strata.MessageTooBig):
            await producer.send(b"x" * (5 * 1024 * 1024 + 1))
        consumer = await client.subscribe("t", "s1")
        with pytest.raises(strata.ConsumerBusy):
            await client.subscribe("t", "s1")
        await consumer.close()
        # Still serving, nothing lost.
        sent = await producer.send(b"after")
        assert sent.entry_id() >= 0
        await producer.close()
    finally:
        await client.close()


FAIR_REPETITIONS = 20
FAIR_BATCH = 1000


async def _drain(consumer: strata.AsyncConsumer, counts: list[int], index: int) -> None:
    """Receive and acknowledge until cancelled (the SDK grants new permits as it goes)."""
    while True:
        try:
            messages = await consumer.receive_many(FAIR_BATCH, timeout_millis=50)
        except strata.Timeout:
            continue
        counts[index] += len(messages)
        consumer.acknowledge_many(messages)


async def test_shared_dispatch_takes_turns_over_every_consumer(standalone: Standalone) -> None:
    """Issue 12's trial: three Shared consumers, three batches of 1,000 messages: each consumer
    gets one batch, every time. The first consumer acknowledges at once and so has permits
    again when the third batch comes; the second and third wait. A rotation over the consumers
    that have permits *now* gives the third batch to the first consumer again (the defect:
    splits 2000/1000/0); Pulsar's rotation over every consumer gives it to the third."""
    client = strata.AsyncClient(standalone.address)
    try:
        splits = []
        for repetition in range(FAIR_REPETITIONS):
            topic = f"fair-{repetition}"
            consumers = [
                await client.subscribe(
                    topic,
                    "shared-sub",
                    consumer_type=strata.ConsumerType.Shared,
                    receiver_queue_size=FAIR_BATCH,
                )
                for _ in range(3)
            ]
            producer = await client.create_producer(
                topic,
                batching_max_messages=FAIR_BATCH,
                batching_max_publish_delay_ms=1000,
                max_pending_messages=FAIR_BATCH,
            )
            await asyncio.sleep(0.2)  # the consumers' Flow permits reach the broker
            received = [0, 0, 0]
            eager = asyncio.ensure_future(_drain(consumers[0], received, 0))
            for batch in range(3):
                for i in range(FAIR_BATCH):
                    producer.send_nowait(f"{batch}:{i}".encode())
                await producer.flush()
                await asyncio.sleep(0.2)  # dispatched, and the first consumer's permits back
            late = [asyncio.ensure_future(_drain(consumers[i], received, i)) for i in (1, 2)]
            for _ in range(600):  # at most 30 s
                if sum(received) >= 3 * FAIR_BATCH:
                    break
                await asyncio.sleep(0.05)
            for task in (eager, *late):
                task.cancel()
            await asyncio.gather(eager, *late, return_exceptions=True)
            splits.append(received)
            await producer.close()
            for consumer in consumers:
                await consumer.close()
        assert splits == [[FAIR_BATCH] * 3] * FAIR_REPETITIONS, splits
    finally:
        await client.close()


async def test_shared_dispatch_without_batching_is_even(standalone: Standalone) -> None:
    """Issue 12's trial with --disable-batching: 3,000 one-message entries over three Shared
    consumers, each within 10 % of a third."""
    topic = "fair-unbatched"
    async with strata.AsyncClient(standalone.address) as client:
        consumers = [
            await client.subscribe(topic, "shared-sub", consumer_type=strata.ConsumerType.Shared)
            for _ in range(3)
        ]
        await asyncio.sleep(0.2)  # the consumers' Flow permits reach the broker
        producer = await client.create_producer(
            topic, batching_enabled=False, max_pending_messages=3 * FAIR_BATCH
        )
        for i in range(3 * FAIR_BATCH):
            producer.send_nowait(str(i).encode())
        await producer.flush()
        received = [0, 0, 0]
        tasks = [asyncio.ensure_future(_drain(c, received, i)) for i, c in enumerate(consumers)]
        for _ in range(600):  # at most 30 s
            if sum(received) >= 3 * FAIR_BATCH:
                break
            await asyncio.sleep(0.05)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert sum(received) == 3 * FAIR_BATCH
        assert all(900 <= n <= 1100 for n in received), received
