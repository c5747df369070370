"""Key-ordered processing over a partitioned topic: messages with a key go to the partition
its hash picks, and a Key_Shared subscription gives each key to one consumer at a time, so
each key's messages are processed in order while keys spread over consumers.

    python examples/key_ordered.py --count 60

The topic needs its partitions first: ``strata admin topics create-partitioned-topic``; this
example creates them through the admin RPC.
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from collections.abc import Sequence

import grpc
from _common import parse

import strata
from strata.v1 import admin_pb2, admin_pb2_grpc

KEYS = ("alice", "bob", "carol", "dave")
PARTITIONS = 3
CONSUMERS = 2
RECEIVE_TIMEOUT_MS = 2_000


def create_partitioned(service_url: str, topic: str) -> None:
    with grpc.insecure_channel(service_url.removeprefix("pulsar://")) as channel:
        admin_pb2_grpc.AdminServiceStub(channel).CreatePartitionedTopic(
            admin_pb2.CreatePartitionedTopicRequest(name=topic, partitions=PARTITIONS),
            timeout=30,
        )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse("key-ordered processing over a partitioned topic", argv, count=60)
    topic = f"persistent://public/default/{args.topic_prefix}-orders"
    create_partitioned(args.service_url, topic)
    with strata.Client(args.service_url) as client:
        consumers = [
            client.subscribe(
                topic,
                "processors",
                consumer_type=strata.ConsumerType.KeyShared,
                consumer_name=f"processor-{i}",
            )
            for i in range(CONSUMERS)
        ]
        # Key-based batching: a batch holds one key's messages (Key_Shared needs that).
        producer = client.create_producer(topic, batching_type=strata.BatchingType.KeyBased)
        for index in range(args.count):
            key = KEYS[index % len(KEYS)]
            producer.send(f"{key}:{index}".encode(), partition_key=key)
        seen: dict[str, list[int]] = defaultdict(list)
        handled_by: dict[str, set[int]] = defaultdict(set)
        deadline = time.monotonic() + 60
        while sum(map(len, seen.values())) < args.count and time.monotonic() < deadline:
            for number, consumer in enumerate(consumers):
                try:
                    message = consumer.receive(RECEIVE_TIMEOUT_MS // CONSUMERS)
                except strata.Timeout:
                    continue
                received_key, number_text = message.data().decode().split(":")
                seen[received_key].append(int(number_text))
                handled_by[received_key].add(number)
                consumer.acknowledge(message)
        ok = sum(map(len, seen.values())) == args.count
        for key in KEYS:
            in_order = seen[key] == sorted(seen[key])
            ok = ok and in_order
            print(f"{key}: {len(seen[key])} messages, in order: {in_order}, "
                  f"by consumer {sorted(handled_by[key])}")  # fmt: skip
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
