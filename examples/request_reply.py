"""Request-reply over two topics: a client sends requests carrying a correlation id and the
topic to answer on; a service answers each on that topic with the same correlation id.

    python examples/request_reply.py --count 10
"""

from __future__ import annotations

import sys
import threading
import uuid
from collections.abc import Sequence

from _common import parse

import strata

RECEIVE_TIMEOUT_MS = 10_000


def serve(client: strata.Client, requests: str, count: int) -> None:
    """The service: answer ``count`` requests (upper-casing their text)."""
    consumer = client.subscribe(requests, "service", consumer_type=strata.ConsumerType.Shared)
    producers: dict[str, strata.Producer] = {}
    for _ in range(count):
        request = consumer.receive(RECEIVE_TIMEOUT_MS)
        properties = request.properties()
        reply_to = properties["reply-to"]
        if reply_to not in producers:
            producers[reply_to] = client.create_producer(reply_to)
        producers[reply_to].send(
            request.data().upper(), properties={"correlation-id": properties["correlation-id"]}
        )
        consumer.acknowledge(request)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse("request-reply over two topics", argv, count=10)
    requests, replies = f"{args.topic_prefix}-requests", f"{args.topic_prefix}-replies"
    with strata.Client(args.service_url) as client:
        replies_consumer = client.subscribe(replies, "client")
        client.subscribe(requests, "service", consumer_type=strata.ConsumerType.Shared).close()
        service = threading.Thread(target=serve, args=(client, requests, args.count))
        service.start()
        producer = client.create_producer(requests)
        sent: dict[str, str] = {}
        for index in range(args.count):
            correlation_id = uuid.uuid4().hex
            text = f"request {index}"
            sent[correlation_id] = text
            producer.send(
                text.encode(), properties={"correlation-id": correlation_id, "reply-to": replies}
            )
        answered = 0
        for _ in range(args.count):
            reply = replies_consumer.receive(RECEIVE_TIMEOUT_MS)
            question = sent.pop(reply.properties()["correlation-id"])
            assert reply.data() == question.upper().encode()
            answered += 1
            replies_consumer.acknowledge(reply)
        service.join(timeout=30)
    print(f"{answered} requests answered, each matched by its correlation id")
    return 0 if answered == args.count and not sent else 1


if __name__ == "__main__":
    sys.exit(main())
