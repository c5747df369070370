"""Backlog quotas (issue 13 item 4) on a real standalone, one namespace per policy: a
subscription that never reads builds a 2 MiB backlog over a 1 MiB quota, then
``producer_exception`` refuses producers and sends at once, ``producer_request_hold`` holds a
send until the backlog is consumed (or refuses it after the hold timeout), and
``consumer_backlog_eviction`` moves the idle subscription forward, refusing nothing."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import strata
from tests.harness import Standalone
from tests.integration.test_standalone_cli import cli

pytestmark = pytest.mark.integration

MIB = 1024 * 1024
PADDING = bytes(10 * 1024)
BACKLOG_MESSAGES = 200  # 2 MiB
HOLD_TIMEOUT_S = 3
POLL_INTERVAL_S = 0.2


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Standalone]:
    standalone = Standalone(
        tmp_path_factory.mktemp("quota") / "data",
        "--housekeeping-interval-ms",
        "300",
        "--backlog-quota-hold-timeout-seconds",
        str(HOLD_TIMEOUT_S),
    ).start()
    try:
        yield standalone
    finally:
        standalone.stop()


def admin(server: Standalone, *args: str) -> str:
    done = cli(server, "admin", *args)
    assert done.returncode == 0, done.stderr
    return done.stdout


def stats(server: Standalone, topic: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(admin(server, "topics", "stats", topic))
    return found


def numbered(index: int) -> bytes:
    return index.to_bytes(4, "big") + PADDING


def backlog(server: Standalone, topic: str) -> int:
    return int(stats(server, topic).get("backlog_size", 0))  # JSON omits a zero


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout_s} s: {what}"
        time.sleep(POLL_INTERVAL_S)


def over_quota(server: Standalone, namespace: str, policy: str) -> tuple[str, strata.Client]:
    """A namespace with a 1 MiB quota and ``policy``; its topic holds a 2 MiB backlog on an
    idle subscription. Returns the topic and an open client."""
    admin(server, "namespaces", "create", namespace)
    admin(server, "namespaces", "set-backlog-quota", namespace, "--limit", "1M", "--policy", policy)
    assert json.loads(admin(server, "namespaces", "get-backlog-quotas", namespace)) == {
        "limit_size": MIB,
        "limit_time": -1,
        "policy": policy,
    }
    topic = f"persistent://{namespace}/t"
    client = strata.Client(server.address, operation_timeout_seconds=30)
    client.subscribe(topic, "idle").close()
    producer = client.create_producer(topic, batching_enabled=False)
    for index in range(BACKLOG_MESSAGES):
        producer.send_async(numbered(index), lambda *_: None)
    producer.flush()
    producer.close()
    if policy != "consumer_backlog_eviction":  # eviction may already have run
        assert backlog(server, topic) > MIB
    return topic, client


def test_producer_exception_refuses_at_once(server: Standalone) -> None:
    topic, client = over_quota(server, "public/q-exception", "producer_exception")
    with client:

        def refused() -> bool:
            try:
                client.create_producer(topic).close()
            except strata.ResourceExhausted as exc:
                assert "exceeds its backlog quota of 1048576 bytes" in str(exc)
                return True
            return False

        wait_until(refused, 10, "a new producer refused over quota")
        started = time.monotonic()
        with pytest.raises(strata.ResourceExhausted):
            client.create_producer(topic)
        assert time.monotonic() - started < HOLD_TIMEOUT_S, "refused at once, not held"
        # Consuming the backlog lifts the refusal within a housekeeping pass or two.
        consumer = client.subscribe(topic, "idle")
        for _ in range(BACKLOG_MESSAGES):
            consumer.acknowledge(consumer.receive(10_000))
        consumer.flush_acknowledgements(wait_durable=True)

        def accepted() -> bool:
            try:
                client.create_producer(topic).send(b"after")
            except strata.ResourceExhausted:
                return False
            return True

        wait_until(accepted, 10, "producers accepted again under quota")


def test_producer_request_hold_waits_then_refuses(server: Standalone) -> None:
    topic, client = over_quota(server, "public/q-hold", "producer_request_hold")
    with client:
        wait_until(
            lambda: (
                stats(server, topic).get("backlog_size") is not None
                and backlog(server, topic) > MIB
            ),
            10,
            "over quota",
        )
        time.sleep(1)  # a housekeeping pass has seen it
        producer = client.create_producer(topic, send_timeout_millis=30_000)
        started = time.monotonic()
        with pytest.raises(strata.ResourceExhausted, match=f"held {HOLD_TIMEOUT_S} s"):
            producer.send(b"held")
        assert time.monotonic() - started >= HOLD_TIMEOUT_S - 0.5
        # Held, then released when a consumer catches up.
        producer = client.create_producer(topic, send_timeout_millis=30_000)
        results: list[strata.Result] = []
        producer.send_async(b"released", lambda result, _id: results.append(result))
        time.sleep(1)
        assert results == [], "held while over quota"
        consumer = client.subscribe(topic, "idle")
        for _ in range(BACKLOG_MESSAGES):
            consumer.acknowledge(consumer.receive(10_000))
        consumer.flush_acknowledgements(wait_durable=True)
        producer.flush()
        assert results == [strata.Result.Ok]
        assert consumer.receive(10_000).data() == b"released"


def test_consumer_backlog_eviction_moves_the_idle_subscription(server: Standalone) -> None:
    topic, client = over_quota(server, "public/q-evict", "consumer_backlog_eviction")
    with client:
        wait_until(lambda: backlog(server, topic) <= MIB, 15, "evicted under quota")
        producer = client.create_producer(topic)  # never refused
        producer.send(b"still accepted")
        consumer = client.subscribe(topic, "idle")
        first = int.from_bytes(consumer.receive(10_000).data()[:4], "big")
        # The oldest half went; about the newest 1 MiB (~100 messages) stays.
        assert BACKLOG_MESSAGES - 110 <= first <= BACKLOG_MESSAGES - 50, first
    admin(server, "namespaces", "remove-backlog-quota", "public/q-evict")
    assert admin(server, "namespaces", "get-backlog-quotas", "public/q-evict").strip() == "null"


def test_a_bad_quota_policy_is_refused(server: Standalone, tmp_path: Path) -> None:
    done = cli(server, "admin", "namespaces", "set-backlog-quota", "public/default",
               "--limit", "1G", "--policy", "drop_everything")  # fmt: skip
    assert done.returncode == 2 and "invalid choice: 'drop_everything'" in done.stderr


def test_an_age_limit_refuses_once_the_oldest_message_is_too_old(server: Standalone) -> None:
    """``--limit-time``: the quota counts the age of the oldest unacknowledged message."""
    namespace = "public/q-age"
    admin(server, "namespaces", "create", namespace)
    admin(server, "namespaces", "set-backlog-quota", namespace, "--limit-time", "2s",
          "--policy", "producer_exception")  # fmt: skip
    topic = f"persistent://{namespace}/t"
    with strata.Client(server.address, operation_timeout_seconds=30) as client:
        client.subscribe(topic, "idle").close()
        client.create_producer(topic).send(b"aging")  # accepted: young

        def refused() -> bool:
            try:
                client.create_producer(topic).close()
            except strata.ResourceExhausted as exc:
                assert "oldest unacknowledged message is" in str(exc)
                return True
            return False

        wait_until(refused, 15, "refused once the oldest message is over 2 s old")
