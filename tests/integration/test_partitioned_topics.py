"""Partitioned topics end to end against a real ``strata standalone``.

The admin CLI creates a 4-partition topic; the SDK produces 10,000 keyed messages and one
subscription consumes them across the partitions: every key stays in the partition its
Murmur3 hash names, in order. ``topics lookup`` prints the standalone's address, and the
client commands work with a service URL that lists a dead broker first.
"""

from __future__ import annotations

import asyncio
import collections
import json
import subprocess
import sys

import pytest

import strata
from strata.client._producer import SendCallback
from strata.client._routing import partition_for_key
from tests.harness import Standalone, free_port

pytestmark = pytest.mark.integration

CLI_TIMEOUT_SECONDS = 120
MESSAGES = 10_000
KEYS = 200
PARTITIONS = 4
RECEIVE_TIMEOUT_MS = 20_000
TOPIC = "persistent://public/default/partitioned-orders"


def cli(service_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "strata", *args],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_SECONDS,
        env={"STRATA_SERVICE_URL": service_url, "PATH": "/usr/bin:/bin"},
    )


def create_partitioned(standalone: Standalone, topic: str, partitions: int) -> None:
    created = cli(
        standalone.address,
        "admin",
        "topics",
        "create-partitioned-topic",
        topic,
        "-p",
        str(partitions),
    )
    assert created.returncode == 0, created.stderr


async def produce_keyed(service_url: str) -> dict[str, list[strata.MessageId]]:
    """10,000 messages over 200 keys, ``key:n`` with n counting per key."""
    ids: dict[str, list[strata.MessageId]] = collections.defaultdict(list)
    failures: list[strata.Result] = []

    def on_receipt(key: str) -> SendCallback:
        def callback(result: strata.Result, message_id: strata.MessageId | None) -> None:
            if result is not strata.Result.Ok or message_id is None:
                failures.append(result)
            else:
                ids[key].append(message_id)

        return callback

    async with strata.AsyncClient(service_url) as client:
        producer = await client.create_producer(TOPIC, max_pending_messages=5000)
        assert producer.topic() == TOPIC
        sent: collections.Counter[str] = collections.Counter()
        for i in range(MESSAGES):
            key = f"customer-{i % KEYS}"
            if producer.pending_messages >= 5000:
                await producer.wait_for_space()
            producer.send_nowait(
                f"{key}:{sent[key]}".encode(), partition_key=key, callback=on_receipt(key)
            )
            sent[key] += 1
            if i % 500 == 0:
                await asyncio.sleep(0)
        await producer.flush()
    assert failures == []
    return ids


async def test_keyed_messages_over_four_partitions(standalone: Standalone) -> None:
    create_partitioned(standalone, TOPIC, PARTITIONS)
    # A dead broker first in the service URL: the SDK moves on to the live one.
    service_url = f"pulsar://127.0.0.1:{free_port()},{standalone.address}"
    async with strata.AsyncClient(service_url) as client:
        assert await client.get_topic_partitions(TOPIC) == [
            f"{TOPIC}-partition-{i}" for i in range(PARTITIONS)
        ]
        consumer = await client.subscribe(
            TOPIC, "all-keys", initial_position=strata.InitialPosition.Earliest
        )
        assert consumer.topic() == TOPIC
        ids = await asyncio.wait_for(produce_keyed(service_url), 120)

        received: list[strata.Message] = []
        while len(received) < MESSAGES:
            messages = await consumer.receive_many(1000, timeout_millis=RECEIVE_TIMEOUT_MS)
            received += messages
            consumer.acknowledge_many(messages)
        await consumer.flush_acknowledgements()
        with pytest.raises(strata.Timeout):
            await consumer.receive(timeout_millis=500)

    # Receipts: each key's messages in one partition, the one its hash names, in order.
    assert sum(len(key_ids) for key_ids in ids.values()) == MESSAGES
    for key, key_ids in ids.items():
        assert {m.partition() for m in key_ids} == {partition_for_key(key, PARTITIONS)}
        assert key_ids == sorted(key_ids)
    assert {m.partition() for key_ids in ids.values() for m in key_ids} == set(range(PARTITIONS))

    # Deliveries: every message exactly once, each key from one partition, in order.
    per_key: dict[str, list[int]] = collections.defaultdict(list)
    partitions_of_key: dict[str, set[int]] = collections.defaultdict(set)
    for message in received:
        key, _, number = message.data().decode().partition(":")
        assert message.partition_key() == key
        per_key[key].append(int(number))
        partitions_of_key[key].add(message.message_id().partition())
        assert message.topic_name() == f"{TOPIC}-partition-{message.message_id().partition()}"
    assert len(received) == MESSAGES
    assert len(per_key) == KEYS
    for key, numbers in per_key.items():
        assert numbers == list(range(MESSAGES // KEYS)), key
        assert partitions_of_key[key] == {partition_for_key(key, PARTITIONS)}


def test_topics_lookup_prints_the_owner(standalone: Standalone) -> None:
    looked_up = cli(standalone.address, "admin", "topics", "lookup", "plain-topic")
    assert looked_up.returncode == 0, looked_up.stderr
    assert looked_up.stdout.strip() == standalone.address
    # A dead broker listed first changes nothing.
    with_dead = cli(
        f"127.0.0.1:{free_port()},{standalone.address}", "admin", "topics", "lookup", "t"
    )
    assert with_dead.returncode == 0, with_dead.stderr
    assert with_dead.stdout.strip() == standalone.address
    create_partitioned(standalone, "cli-partitioned", 3)
    per_partition = cli(
        standalone.address, "admin", "topics", "partitioned-lookup", "cli-partitioned"
    )
    assert per_partition.returncode == 0, per_partition.stderr
    assert [line.split() for line in per_partition.stdout.splitlines()] == [
        [f"persistent://public/default/cli-partitioned-partition-{i}", standalone.address]
        for i in range(3)
    ]
    bad_name = cli(standalone.address, "admin", "topics", "lookup", "a/b/c/d")
    assert bad_name.returncode == 1
    assert bad_name.stderr.startswith("error: ")


def test_cli_produce_consume_perf_on_a_partitioned_topic(standalone: Standalone) -> None:
    create_partitioned(standalone, "cli-orders", 3)
    create_partitioned(standalone, "perf-orders", 3)
    service_url = f"pulsar://127.0.0.1:{free_port()},{standalone.address}"
    lines = [f"line-{i}" for i in range(30)]
    produced = subprocess.run(
        [sys.executable, "-m", "strata", "produce", "cli-orders", "--key", "k"],
        input="\n".join(lines) + "\n",
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_SECONDS,
        env={"STRATA_SERVICE_URL": service_url, "PATH": "/usr/bin:/bin"},
    )
    assert produced.returncode == 0, produced.stderr
    assert "persistent://public/default/cli-orders" in produced.stderr
    produced = cli(service_url, "produce", "cli-orders", "-m", "unkeyed", "-n", "9")
    assert produced.returncode == 0, produced.stderr
    consumed = cli(
        service_url,
        "consume",
        "cli-orders",
        "-s",
        "sub",
        "-n",
        "39",
        "--initial-position",
        "earliest",
        "--timeout-seconds",
        "20",
    )
    assert consumed.returncode == 0, consumed.stderr
    out = consumed.stdout.splitlines()
    # One key is one partition: the keyed lines keep their order among the rest.
    assert [line for line in out if line.startswith("line-")] == lines
    assert out.count("unkeyed") == 9

    perf = cli(service_url, "perf", "produce", "perf-orders", "-m", "300")
    assert perf.returncode == 0, perf.stderr
    assert json.loads(perf.stdout.splitlines()[-1])["messages"] == 300
    perf = cli(
        service_url,
        "perf",
        "consume",
        "perf-orders",
        "-m",
        "300",
        "--initial-position",
        "earliest",
        "--timeout-seconds",
        "20",
    )
    assert perf.returncode == 0, perf.stderr
    assert json.loads(perf.stdout.splitlines()[-1])["messages"] == 300
