"""A work queue: workers share one Shared subscription; a task that fails is retried (a
negative acknowledgement redelivers it) and, after three tries, parked on a dead-letter topic.

    python examples/work_queue.py --count 20

Tasks whose number is a multiple of 7 always fail here, so they end on the dead-letter topic.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

from _common import parse

import strata

MAX_TRIES = 3
RECEIVE_TIMEOUT_MS = 10_000
IDLE_MS = 2_000  # no task for this long: the queue is drained


def handle(task: int) -> None:
    if task % 7 == 0:
        raise ValueError(f"task {task} cannot be done")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse("a work queue with retries and a dead-letter topic", argv)
    tasks, dead = f"{args.topic_prefix}-tasks", f"{args.topic_prefix}-tasks-dead"
    with strata.Client(args.service_url) as client:
        worker = client.subscribe(
            tasks,
            "workers",
            consumer_type=strata.ConsumerType.Shared,
            negative_ack_redelivery_delay_ms=100,
            dead_letter_policy=strata.ConsumerDeadLetterPolicy(
                max_redeliver_count=MAX_TRIES - 1,
                dead_letter_topic=dead,
                initial_subscription_name="inspect",
            ),
        )
        producer = client.create_producer(tasks)
        for task in range(args.count):
            producer.send(str(task).encode())
        expected_failures = sum(1 for t in range(args.count) if t % 7 == 0)
        done: set[int] = set()
        deadline = time.monotonic() + 60
        # Work until nothing more comes: the failing tasks come back after each negative
        # acknowledgement until the consumer moves them to the dead-letter topic.
        while time.monotonic() < deadline:
            try:
                message = worker.receive(IDLE_MS)
            except strata.Timeout:
                break
            task = int(message.data())
            try:
                handle(task)
            except ValueError as exc:
                print(f"try {message.redelivery_count() + 1} of task {task} failed: {exc}")
                worker.negative_acknowledge(message)
                continue
            done.add(task)
            worker.acknowledge(message)
        # The failing tasks keep being redelivered until they reach the dead-letter topic.
        parked_consumer = client.subscribe(dead, "inspect")
        parked = sorted(
            int(parked_consumer.receive(RECEIVE_TIMEOUT_MS).data())
            for _ in range(expected_failures)
        )
        print(f"done: {len(done)} tasks; dead-lettered after {MAX_TRIES} tries: {parked}")
        return 0 if parked == [t for t in range(args.count) if t % 7 == 0] else 1


if __name__ == "__main__":
    sys.exit(main())
