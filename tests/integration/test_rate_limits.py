"""Publish and dispatch rate limits (issue 13 item 5) on a real standalone: producers and
consumers are slowed to the namespace's rate, never refused, and the waits show in stats.

The rates are checked loosely (a shared machine): at most 20 % above the limit — the limit
works — and at least half of it — it does not over-throttle. The measured figures are
printed for the closing note; ``make bench`` is where performance is measured."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

import strata
from tests.harness import Standalone
from tests.integration.test_standalone_cli import cli

pytestmark = pytest.mark.integration

PUBLISH_RATE = 1000
DISPATCH_RATE = 500


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Standalone]:
    standalone = Standalone(
        tmp_path_factory.mktemp("rates") / "data", "--housekeeping-interval-ms", "300"
    ).start()
    try:
        yield standalone
    finally:
        standalone.stop()


def admin(server: Standalone, *args: str) -> str:
    done = cli(server, "admin", *args)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_publish_rate_slows_producers(server: Standalone) -> None:
    admin(server, "namespaces", "create", "public/pub-rate")
    admin(server, "namespaces", "set-publish-rate", "public/pub-rate",
          "--msg-rate", str(PUBLISH_RATE))  # fmt: skip
    assert json.loads(admin(server, "namespaces", "get-publish-rate", "public/pub-rate")) == {
        "msg_rate": PUBLISH_RATE,
        "byte_rate": -1,
    }
    topic = "persistent://public/pub-rate/t"
    count = 6 * PUBLISH_RATE
    with strata.Client(server.address) as client:
        producer = client.create_producer(
            topic, batching_max_messages=100, block_if_queue_full=True
        )
        producer.send(b"warm")  # loaded, bucket full again within a second
        time.sleep(1.1)
        started = time.monotonic()
        for _ in range(count):
            producer.send_async(b"x" * 100, lambda *_: None)
        producer.flush()
        elapsed = time.monotonic() - started
    # The bucket holds one second's worth at the start: the rest goes at the limit.
    rate = (count - PUBLISH_RATE) / elapsed
    print(f"\npublish rate limited to {PUBLISH_RATE} msg/s: measured {rate:.0f} msg/s")
    assert 0.5 * PUBLISH_RATE <= rate <= 1.2 * PUBLISH_RATE
    stats = json.loads(admin(server, "topics", "stats", topic))
    assert int(stats["publish_rate_limited_times"]) > 0
    admin(server, "namespaces", "remove-publish-rate", "public/pub-rate")
    assert admin(server, "namespaces", "get-publish-rate", "public/pub-rate").strip() == "null"


def test_dispatch_rate_slows_each_subscription(server: Standalone) -> None:
    admin(server, "namespaces", "create", "public/disp-rate")
    admin(server, "namespaces", "set-dispatch-rate", "public/disp-rate",
          "--msg-rate", str(DISPATCH_RATE))  # fmt: skip
    topic = "persistent://public/disp-rate/t"
    count = 4 * DISPATCH_RATE
    with strata.Client(server.address) as client:
        client.subscribe(topic, "slow").close()
        producer = client.create_producer(topic, batching_enabled=False, block_if_queue_full=True)
        for _ in range(count):
            producer.send_async(b"y", lambda *_: None)
        producer.flush()
        time.sleep(1.1)  # the bucket is full: one second's worth goes at once
        consumer = client.subscribe(topic, "slow", receiver_queue_size=100)
        started = time.monotonic()
        for _ in range(count):
            consumer.acknowledge(consumer.receive(20_000))
        elapsed = time.monotonic() - started
    rate = (count - DISPATCH_RATE) / elapsed
    print(f"\ndispatch rate limited to {DISPATCH_RATE} msg/s: measured {rate:.0f} msg/s")
    assert 0.5 * DISPATCH_RATE <= rate <= 1.2 * DISPATCH_RATE
    stats = json.loads(admin(server, "topics", "stats", topic))
    assert int(stats["subscriptions"]["slow"]["dispatch_throttled_times"]) > 0
