"""Partitioned topics in the SDK: routing (pure) and producers/consumers over a fake cluster.

Routing is pulsar's: a key goes to ``(murmur3_32(key) & 0x7FFFFFFF) % N``, messages without
a key go round robin, one batch at a time when batching is on. A producer on a partitioned
topic opens one stream per partition; a consumer subscribes to every partition, merges
their deliveries, and routes acknowledgements and negative acknowledgements back to the
partition each message came from.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator

import mmh3
import pytest

import strata
from strata.client._partitioned import PartitionedProducer
from strata.client._producer import SendCallback
from strata.client._routing import RoundRobinRouter, partition_for_key
from strata.naming import TopicName
from tests.unit.test_sdk_cluster import FakeCluster, canonical, wait_until

pytestmark = pytest.mark.timeout(60)

TOPIC = "persistent://public/default/orders"
RECEIVE_TIMEOUT_MS = 5000


@pytest.fixture
async def cluster() -> AsyncIterator[FakeCluster]:
    fake = FakeCluster()
    try:
        yield fake
    finally:
        await fake.close()


def partition_of(topic: str) -> int:
    return TopicName.parse(topic).partition_index


# ------------------------------------------------------------------ routing, pure


def test_key_routing_is_pulsars_murmur3_scheme() -> None:
    # MurmurHash3_x86_32("hello", seed 0) = 0x248bfa47 (the reference test vector).
    assert mmh3.hash("hello", 0, signed=False) == 0x248BFA47
    assert partition_for_key("hello", 10) == 0x248BFA47 % 10
    assert partition_for_key("", 7) == 0
    # The sign bit is cleared before the modulo, as in pulsar's Murmur3_32Hash.
    high = next(k for k in (f"k{i}" for i in range(1000)) if mmh3.hash(k, 0, signed=False) >> 31)
    assert partition_for_key(high, 3) == (mmh3.hash(high, 0, signed=False) & 0x7FFFFFFF) % 3
    # Keys are hashed as UTF-8.
    key = "ключ-🔑"
    expected = (mmh3.hash(key.encode(), 0, signed=False) & 0x7FFFFFFF) % 5
    assert partition_for_key(key, 5) == expected


def test_same_key_same_partition_and_keys_spread() -> None:
    assert {partition_for_key("customer-42", 8) for _ in range(100)} == {
        partition_for_key("customer-42", 8)
    }
    counts = collections.Counter(partition_for_key(f"key-{i}", 4) for i in range(4000))
    assert set(counts) == {0, 1, 2, 3}
    assert min(counts.values()) > 800


def test_round_robin_without_batching_is_per_message() -> None:
    router = RoundRobinRouter(4, batching_enabled=False, first_partition=2)
    assert [router.choose(10) for _ in range(9)] == [2, 3, 0, 1, 2, 3, 0, 1, 2]


def test_round_robin_with_batching_moves_on_per_batch() -> None:
    now = [0.0]
    router = RoundRobinRouter(
        3,
        batching_max_messages=3,
        batching_max_bytes=100,
        batching_max_publish_delay_ms=10,
        clock=lambda: now[0],
        first_partition=0,
    )
    # A batch's worth of messages, then the next partition.
    assert [router.choose(1) for _ in range(7)] == [0, 0, 0, 1, 1, 1, 2]
    # A batch's worth of bytes.
    assert [router.choose(60), router.choose(60)] == [2, 0]
    # The batch delay.
    now[0] += 0.011
    assert router.choose(1) == 1
    assert router.choose(1) == 1


def test_round_robin_starts_on_a_random_partition() -> None:
    firsts = {RoundRobinRouter(8, batching_enabled=False).choose(1) for _ in range(200)}
    assert len(firsts) > 4


# ------------------------------------------------------------------- producer


async def test_keyed_messages_land_in_their_keys_partition(cluster: FakeCluster) -> None:
    broker = await cluster.start_broker()
    cluster.partitions[TOPIC] = 4
    ids: dict[str, list[strata.MessageId]] = collections.defaultdict(list)

    def on_receipt(key: str) -> SendCallback:
        def callback(result: strata.Result, message_id: strata.MessageId | None) -> None:
            assert result is strata.Result.Ok and message_id is not None
            ids[key].append(message_id)

        return callback

    async with strata.AsyncClient(broker.address) as client:
        producer = await client.create_producer(TOPIC, max_pending_messages=5000)
        assert isinstance(producer, PartitionedProducer)
        assert producer.topic() == TOPIC
        for round_ in range(25):
            for k in range(40):
                key = f"key-{k}"
                producer.send_nowait(b"%d" % round_, partition_key=key, callback=on_receipt(key))
        await producer.flush()
        assert producer.pending_messages == 0
        name = producer.producer_name()
        assert name
        assert producer.is_connected()
    assert broker.opens[0].topic == f"{TOPIC}-partition-0"
    assert sorted(open_.topic for open_ in broker.opens) == [
        f"{TOPIC}-partition-{i}" for i in range(4)
    ]
    # Partition 0 first, then the others with the name it was given: one producer name.
    assert [open_.producer_name for open_ in broker.opens[1:]] == [name] * 3
    for key, key_ids in ids.items():
        assert {m.partition() for m in key_ids} == {partition_for_key(key, 4)}
        assert key_ids == sorted(key_ids)  # per-key order
        assert len(key_ids) == 25
    used = {m.partition() for key_ids in ids.values() for m in key_ids}
    assert used == {0, 1, 2, 3}
    # What the broker stored per partition, in order, holds each key's messages in order.
    for i in range(4):
        records = cluster.entries[f"{TOPIC}-partition-{i}"]
        assert [r.entry_id for r in records] == list(range(len(records)))


async def test_messages_without_a_key_go_round_robin(cluster: FakeCluster) -> None:
    broker = await cluster.start_broker()
    cluster.partitions[TOPIC] = 4
    async with strata.AsyncClient(broker.address) as client:
        unbatched = await client.create_producer(TOPIC, batching_enabled=False)
        ids = await asyncio.gather(*[await unbatched.send_async(b"x") for _ in range(400)])
        assert collections.Counter(m.partition() for m in ids) == {p: 100 for p in range(4)}
        start = ids[0].partition()
        assert [m.partition() for m in ids[:8]] == [(start + i) % 4 for i in range(8)]
        batched = await client.create_producer(
            TOPIC, batching_max_messages=10, batching_max_publish_delay_ms=1000
        )
        futures = [await batched.send_async(b"y") for _ in range(400)]
        batched_ids = await asyncio.gather(*futures)
    # Ten messages (a full batch) per partition in turn: batches are not cut four ways.
    partitions = [m.partition() for m in batched_ids]
    assert collections.Counter(partitions) == {p: 100 for p in range(4)}
    assert all(len(set(partitions[i : i + 10])) == 1 for i in range(0, 400, 10))
    assert all(m.batch_size() == 10 for m in batched_ids)


async def test_max_pending_messages_bounds_all_partitions_together(
    cluster: FakeCluster,
) -> None:
    broker = await cluster.start_broker()
    cluster.partitions[TOPIC] = 3
    async with strata.AsyncClient(broker.address) as client:
        producer = await client.create_producer(
            TOPIC, max_pending_messages=6, batching_enabled=False, send_timeout_millis=300
        )
        assert isinstance(producer, PartitionedProducer)
        broker.hold_receipts = True
        futures = [await producer.send_async(b"%d" % i) for i in range(6)]
        assert {p.pending_messages for p in producer._partitions} == {2}
        with pytest.raises(strata.ProducerQueueIsFull):
            producer.send_nowait(b"too many")
        assert producer.pending_messages == 6
        blocking = await client.create_producer(
            TOPIC, max_pending_messages=2, block_if_queue_full=True, send_timeout_millis=300
        )
        await blocking.send_async(b"a")
        await blocking.send_async(b"b")
        waiting = asyncio.ensure_future(blocking.send_async(b"c"))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        # The held receipts never come: the send timeout frees the room.
        await asyncio.wait_for(waiting, 5)
        for future in futures:
            with pytest.raises(strata.Timeout):
                await future
        assert producer.pending_messages == 0
        broker.hold_receipts = False


async def test_sync_producer_and_consumer_on_a_partitioned_topic(cluster: FakeCluster) -> None:
    broker = await cluster.start_broker()
    cluster.partitions[TOPIC] = 3

    def run() -> tuple[list[strata.Result], list[tuple[bytes, int]]]:
        results: list[strata.Result] = []
        with strata.Client(broker.address) as client:
            assert client.get_topic_partitions(TOPIC) == [
                f"{TOPIC}-partition-{i}" for i in range(3)
            ]
            consumer = client.subscribe(TOPIC, "s", receiver_queue_size=50)
            producer = client.create_producer(
                TOPIC, block_if_queue_full=True, max_pending_messages=10
            )
            for i in range(60):
                producer.send_async(
                    b"%d" % i, lambda r, m: results.append(r), partition_key=f"k{i % 6}"
                )
            producer.flush()
            assert producer.topic() == TOPIC
            got: list[tuple[bytes, int]] = []
            while len(got) < 60:
                message = consumer.receive(timeout_millis=RECEIVE_TIMEOUT_MS)
                got.append((message.data(), message.message_id().partition()))
                consumer.acknowledge(message)
            consumer.flush_acknowledgements()
            assert consumer.topic() == TOPIC
        return results, got

    results, got = await asyncio.to_thread(run)
    assert results == [strata.Result.Ok] * 60
    assert sorted(int(data) for data, _ in got) == list(range(60))
    for data, partition in got:
        assert partition == partition_for_key(f"k{int(data) % 6}", 3)


# ------------------------------------------------------------------- consumer


def seed_partitions(cluster: FakeCluster, partitions: int, per_partition: int) -> None:
    cluster.partitions[TOPIC] = partitions
    for p in range(partitions):
        for j in range(per_partition):
            cluster.add_entry(f"{TOPIC}-partition-{p}", [b"p%d-%d" % (p, j)], ledger_id=10 + p)


async def receive_n(consumer: strata.AsyncConsumer, count: int) -> list[strata.Message]:
    messages: list[strata.Message] = []
    while len(messages) < count:
        messages += await consumer.receive_many(count - len(messages), RECEIVE_TIMEOUT_MS)
    return messages


async def test_partitioned_consumer_merges_every_partition(cluster: FakeCluster) -> None:
    broker = await cluster.start_broker()
    seed_partitions(cluster, partitions=3, per_partition=10)
    async with strata.AsyncClient(broker.address) as client:
        consumer = await client.subscribe(TOPIC, "s", receiver_queue_size=4)
        assert consumer.topic() == TOPIC
        assert consumer.num_partitions == 3
        messages = await receive_n(consumer, 30)
        with pytest.raises(strata.Timeout):
            await consumer.receive(timeout_millis=50)
    assert sorted(m.data() for m in messages) == sorted(
        b"p%d-%d" % (p, j) for p in range(3) for j in range(10)
    )
    for message in messages:
        partition = int(message.data()[1:2])
        assert message.message_id().partition() == partition
        assert message.topic_name() == f"{TOPIC}-partition-{partition}"
        assert message.message_id().ledger_id() == 10 + partition
    # Each partition's messages arrive in that partition's order.
    for p in range(3):
        mine = [m.data() for m in messages if m.message_id().partition() == p]
        assert mine == [b"p%d-%d" % (p, j) for j in range(10)]
    # One stream per partition, each with its own permits (refilled at half).
    subscribed = sorted(record.subscribe.topic for record in broker.consumes)
    assert subscribed == [f"{TOPIC}-partition-{p}" for p in range(3)]
    for record in broker.consumes:
        assert record.flows[0] == 4
        assert sum(record.flows) >= 10


async def test_acks_and_negative_acks_go_to_their_partition(cluster: FakeCluster) -> None:
    broker = await cluster.start_broker()
    seed_partitions(cluster, partitions=3, per_partition=4)
    async with strata.AsyncClient(broker.address) as client:
        consumer = await client.subscribe(
            TOPIC, "s", negative_ack_redelivery_delay_ms=10, receiver_queue_size=100
        )
        messages = await receive_n(consumer, 12)
        to_nack = next(m for m in messages if m.message_id().partition() == 1)
        consumer.acknowledge_many(m for m in messages if m is not to_nack)
        consumer.negative_acknowledge(to_nack)
        await consumer.flush_acknowledgements()
        again = await consumer.receive(timeout_millis=RECEIVE_TIMEOUT_MS)
        assert again.data() == to_nack.data()
        assert again.message_id() == to_nack.message_id()
        await consumer.acknowledge(again)
        with pytest.raises(strata.InvalidArgument):
            consumer.acknowledge_nowait(strata.MessageId(1, 2, -1, partition=7))
        with pytest.raises(strata.InvalidArgument):
            consumer.negative_acknowledge(strata.MessageId(1, 2, -1, partition=-1))
        # A MessageId naming a partition is routed like a message.
        consumer.acknowledge_nowait(to_nack.message_id())
        await consumer.flush_acknowledgements()
    by_topic = {record.subscribe.topic: record for record in broker.consumes}
    for p in range(3):
        record = by_topic[f"{TOPIC}-partition-{p}"]
        acked = [i for ack in record.acks for i in ack.message_ids]
        assert acked and {i.partition for i in acked} == {p}
        assert {i.ledger_id for i in acked} == {10 + p}
        assert {i.entry_id for i in acked} == set(range(4))
        # flush_acknowledgements asked every partition for a receipt.
        assert any(ack.request_id for ack in record.acks)
        redelivered = [i for r in record.redelivers for i in r.message_ids]
        if p == 1:
            assert [(i.partition, i.entry_id) for i in redelivered] == [
                (1, to_nack.message_id().entry_id())
            ]
        else:
            assert redelivered == []
    # Everything is acknowledged: a new consumer of the subscription gets nothing.
    async with strata.AsyncClient(broker.address) as client:
        consumer = await client.subscribe(TOPIC, "s")
        with pytest.raises(strata.Timeout):
            await consumer.receive(timeout_millis=100)


async def test_a_partition_named_directly_is_a_plain_topic(cluster: FakeCluster) -> None:
    broker = await cluster.start_broker()
    seed_partitions(cluster, partitions=3, per_partition=2)
    async with strata.AsyncClient(broker.address) as client:
        name = f"{TOPIC}-partition-2"
        consumer = await client.subscribe(name, "s")
        assert consumer.topic() == name and consumer.num_partitions == 0
        messages = await receive_n(consumer, 2)
        assert [m.message_id().partition() for m in messages] == [2, 2]
        consumer.acknowledge_many(messages)
        await consumer.flush_acknowledgements()
        producer = await client.create_producer(name)
        assert (await producer.send(b"direct")).partition() == 2
    assert broker.metadata_requests == []  # a partition's name needs no metadata
    (record,) = [r for r in broker.consumes if r.subscribe.topic == name]
    assert {i.partition for ack in record.acks for i in ack.message_ids} == {2}


async def test_one_partition_moves_while_the_others_keep_going(cluster: FakeCluster) -> None:
    steady = await cluster.start_broker()
    moving = await cluster.start_broker()
    cluster.partitions[TOPIC] = 3
    moved = canonical(f"{TOPIC}-partition-1")
    cluster.owners[moved] = moving.address
    async with strata.AsyncClient(f"{steady.address},{moving.address}") as client:
        consumer = await client.subscribe(TOPIC, "s")
        producer = await client.create_producer(TOPIC, batching_enabled=False)
        keys = [next(f"k{i}" for i in range(100) if partition_for_key(f"k{i}", 3) == p)
                for p in range(3)]  # fmt: skip
        first = [await producer.send(b"a-%d" % p, partition_key=keys[p]) for p in range(3)]
        assert [m.partition() for m in first] == [0, 1, 2]
        assert first[1].ledger_id() == moving.ledger_id
        await cluster.kill(moving)
        cluster.owners[moved] = steady.address
        second = [await producer.send(b"b-%d" % p, partition_key=keys[p]) for p in range(3)]
        assert second[1].ledger_id() == steady.ledger_id
        received: set[bytes] = set()
        while not {b"a-0", b"a-2", b"b-0", b"b-1", b"b-2"} <= received:
            messages = await consumer.receive_many(10, RECEIVE_TIMEOUT_MS)
            consumer.acknowledge_many(messages)
            received |= {m.data() for m in messages}
        await wait_until(consumer.is_connected)
        assert producer.is_connected()
