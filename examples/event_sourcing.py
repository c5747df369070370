"""Event sourcing: the topic is the log of an account's events; the current state is not
stored anywhere, it is rebuilt by replaying the log from the earliest event with a reader.

    python examples/event_sourcing.py --count 20
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from _common import parse

import strata

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
    return 0 if balances == expected and events == args.count else 1


if __name__ == "__main__":
    sys.exit(main())
