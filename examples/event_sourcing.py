"""Event sourcing: the topic is the log of an account's events; the current state is not
stored anywhere, it is rebuilt by replaying the log from the earliest event with a reader.
Then the state goes to a compacted state topic (the latest balance per account), which a
compacted reader reads without the history.

    python examples/event_sourcing.py --count 20
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence

import grpc
from _common import parse

import strata
from strata.v1 import admin_pb2, admin_pb2_grpc

READ_TIMEOUT_MS = 2_000


def apply(balances: dict[str, int], event: dict[str, object]) -> None:
    account = str(event["account"])
    amount = int(str(event["amount"]))
    balances[account] = balances.get(account, 0) + amount


def replay(client: strata.Client, topic: str) -> tuple[dict[str, int], int]:
    """The state after every event of the log, and how many events that was."""
    reader = client.create_reader(topic, strata.MessageId.earliest)
    balances: dict[str, int] = {}
    events = 0
    while True:
        try:
            message = reader.read_next(READ_TIMEOUT_MS)
        except strata.Timeout:
            reader.close()
            return balances, events
        apply(balances, json.loads(message.data()))
        events += 1


def snapshot_state(
    client: strata.Client, service_url: str, topic: str, state: dict[str, int]
) -> dict[str, int]:
    """Publish each account's balance to a state topic (one message per update, keyed by the
    account), compact it, and read the compacted view: the latest balance per account."""
    producer = client.create_producer(topic)
    for account, balance in state.items():
        producer.send(str(balance - 1).encode(), partition_key=account)  # an older value
        producer.send(str(balance).encode(), partition_key=account)
    producer.flush()
    with grpc.insecure_channel(service_url) as channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        name = f"persistent://public/default/{topic}"
        stub.CompactTopic(admin_pb2.CompactTopicRequest(name=name), timeout=30)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status = stub.GetCompactionStatus(
                admin_pb2.GetCompactionStatusRequest(name=name), timeout=30
            )
            if status.status != "RUNNING":
                break
            time.sleep(0.2)
    reader = client.create_reader(topic, strata.MessageId.earliest, is_read_compacted=True)
    latest: dict[str, int] = {}
    while True:
        try:
            message = reader.read_next(READ_TIMEOUT_MS)
        except strata.Timeout:
            return latest
        latest[message.partition_key()] = int(message.data())


def main(argv: Sequence[str] | None = None) -> int:
    args = parse("event sourcing with replay from the earliest event", argv)
    topic = f"{args.topic_prefix}-account-events"
    expected: dict[str, int] = {}
    with strata.Client(args.service_url) as client:
        producer = client.create_producer(topic)
        for index in range(args.count):
            event = {"account": f"acct-{index % 3}", "amount": index if index % 4 else -index}
            producer.send(json.dumps(event).encode(), partition_key=str(event["account"]))
            apply(expected, event)
        balances, events = replay(client, topic)
        print(f"replayed {events} events: {json.dumps(balances, sort_keys=True)}")
        # A compacted state topic: the latest balance per account, without the history.
        state = snapshot_state(
            client, args.service_url, f"{args.topic_prefix}-account-state", balances
        )
    print(f"compacted state topic: {json.dumps(state, sort_keys=True)}")
    return 0 if balances == expected == state and events == args.count else 1


if __name__ == "__main__":
    sys.exit(main())
