"""Publish-subscribe fan-out: every subscription of a topic receives every message, each at
its own pace (a billing, an audit and a search index service, say).

    python examples/fan_out.py --count 20
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from _common import parse

import strata

SUBSCRIPTIONS = ("billing", "audit", "search-index")
RECEIVE_TIMEOUT_MS = 10_000


def main(argv: Sequence[str] | None = None) -> int:
    args = parse("pub-sub fan-out to several subscriptions", argv)
    topic = f"{args.topic_prefix}-events"
    with strata.Client(args.service_url) as client:
        # Subscriptions exist before the first message, so each gets all of them.
        consumers = {name: client.subscribe(topic, name) for name in SUBSCRIPTIONS}
        producer = client.create_producer(topic)
        for index in range(args.count):
            producer.send(f"event-{index}".encode())
        ok = True
        for name, consumer in consumers.items():
            received = []
            for _ in range(args.count):
                message = consumer.receive(RECEIVE_TIMEOUT_MS)
                received.append(message.data().decode())
                consumer.acknowledge(message)
            complete = received == [f"event-{i}" for i in range(args.count)]
            ok = ok and complete
            print(f"{name}: {len(received)} events, all in order: {complete}")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
