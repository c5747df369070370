"""Retention and message TTL (issue 13 items 2 and 3) on real standalones: consumed data kept
for a time (through offload and a restart) or up to a size; without a policy it is trimmed;
messages past their TTL are acknowledged by the broker and counted as expired."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import strata
from tests.harness import Standalone
from tests.integration.test_standalone_cli import cli
from tests.offload_workload import Admin

pytestmark = pytest.mark.integration

ENTRIES_PER_LEDGER = 10
RECEIVE_TIMEOUT_MS = 10_000
POLL_INTERVAL_S = 0.2


def admin(server: Standalone, *args: str) -> str:
    done = cli(server, "admin", *args)
    assert done.returncode == 0, done.stderr
    return done.stdout


def stats(server: Standalone, topic: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(admin(server, "topics", "stats", topic))
    return found


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout_s} s: {what}"
        time.sleep(POLL_INTERVAL_S)


def produce_and_consume_all(server: Standalone, topic: str, payloads: list[bytes]) -> None:
    """Subscription ``s`` exists first, then every payload is sent alone (one entry each, so
    the small ledgers roll over) and acknowledged durably."""
    with strata.Client(server.address) as client:
        consumer = client.subscribe(topic, "s", initial_position=strata.InitialPosition.Earliest)
        producer = client.create_producer(topic, batching_enabled=False)
        for payload in payloads:
            producer.send(payload)
        for _ in payloads:
            consumer.acknowledge(consumer.receive(RECEIVE_TIMEOUT_MS))
        consumer.flush_acknowledgements(wait_durable=True)
        consumer.close()


def read_from_earliest(server: Standalone, topic: str, subscription: str) -> list[bytes]:
    values: list[bytes] = []
    with strata.Client(server.address) as client:
        consumer = client.subscribe(
            topic, subscription, initial_position=strata.InitialPosition.Earliest
        )
        while True:
            try:
                message = consumer.receive(2_000)
            except strata.Timeout:
                return values
            values.append(message.data())
            consumer.acknowledge(message)


def retention_standalone(root: Path, *extra: str) -> Standalone:
    return Standalone(
        root / "data",
        "--managed-ledger-max-entries-per-ledger",
        str(ENTRIES_PER_LEDGER),
        "--housekeeping-interval-ms",
        "300",
        *extra,
    ).start()


def test_retention_by_time_keeps_consumed_data_through_offload_and_restart(
    tmp_path: Path,
) -> None:
    server = retention_standalone(
        tmp_path, "--offload-driver", "filesystem", "--offload-deletion-lag-ms", "0"
    )
    try:
        admin(server, "namespaces", "create", "public/kept")
        admin(server, "namespaces", "set-retention", "public/kept", "--time", "1h", "--size", "-1")
        assert json.loads(admin(server, "namespaces", "get-retention", "public/kept")) == {
            "retention_size_in_mb": -1,
            "retention_time_in_minutes": 60,
        }
        kept, trimmed = "persistent://public/kept/t", "persistent://public/default/t"
        payloads = [f"m{i}".encode() for i in range(100)]
        for topic in (kept, trimmed):
            produce_and_consume_all(server, topic, payloads)
        # Without a policy the consumed ledgers go; with one hour of retention they stay.
        wait_until(lambda: int(stats(server, trimmed)["ledgers_count"]) <= 2, 15, "trimmed")
        assert int(stats(server, kept)["ledgers_count"]) >= len(payloads) // ENTRIES_PER_LEDGER
        # Offload the kept ledgers, drop their bookie copies (lag 0), restart.
        admin(server, "topics", "offload", kept)
        Admin(server.address).wait_offloaded(kept, timeout_s=60)
        server.stop()
        server.start()
        assert read_from_earliest(server, kept, "new") == payloads
        assert read_from_earliest(server, trimmed, "new") == []
    finally:
        server.stop()


def test_retention_by_size_keeps_about_the_newest_bytes(tmp_path: Path) -> None:
    server = retention_standalone(tmp_path)
    try:
        admin(server, "namespaces", "create", "public/sized")
        admin(server, "namespaces", "set-retention", "public/sized", "--time", "-1", "--size", "1M")
        topic = "persistent://public/sized/t"
        payloads = [i.to_bytes(4, "big") + bytes(10 * 1024) for i in range(300)]  # ~3 MiB
        produce_and_consume_all(server, topic, payloads)
        mib = 1024 * 1024
        wait_until(lambda: int(stats(server, topic)["storage_size"]) <= mib, 15, "trimmed to 1 MiB")
        size = int(stats(server, topic)["storage_size"])
        # Whole ledgers of ~100 KiB go: between 1 MiB less one ledger and 1 MiB remain.
        assert mib - 2 * ENTRIES_PER_LEDGER * 10 * 1024 <= size <= mib
        kept = read_from_earliest(server, topic, "new")
        numbers = [int.from_bytes(value[:4], "big") for value in kept]
        assert numbers == list(range(300 - len(numbers), 300)), "the newest, in order"
        assert 80 <= len(numbers) <= 100
    finally:
        server.stop()


def test_message_ttl_expires_unacknowledged_messages(tmp_path: Path) -> None:
    server = Standalone(
        tmp_path / "data",
        "--housekeeping-interval-ms",
        "300",
        "--message-expiry-check-interval-seconds",
        "1",
    ).start()
    try:
        admin(server, "namespaces", "create", "public/ttl")
        admin(server, "namespaces", "set-message-ttl", "public/ttl", "--ttl", "2s")
        assert admin(server, "namespaces", "get-message-ttl", "public/ttl").strip() == "2"
        topic = "persistent://public/ttl/t"
        with strata.Client(server.address) as client:
            client.subscribe(topic, "slow").close()  # a subscription that never reads
            producer = client.create_producer(topic)
            for i in range(50):
                producer.send_async(f"m{i}".encode(), lambda *_: None)
            producer.flush()
        backlog = stats(server, topic)["subscriptions"]["slow"]["msg_backlog"]
        assert int(backlog) > 0, "not expired before its TTL"

        def expired() -> bool:
            sub = stats(server, topic)["subscriptions"]["slow"]
            return int(sub.get("msg_backlog", 0)) == 0

        wait_until(expired, 15, "the backlog expired")
        sub = stats(server, topic)["subscriptions"]["slow"]
        assert int(sub["total_msg_expired"]) == 50
        admin(server, "namespaces", "remove-message-ttl", "public/ttl")
        assert admin(server, "namespaces", "get-message-ttl", "public/ttl").strip() == "null"
    finally:
        server.stop()


def test_bad_policy_values_are_refused_naming_them(standalone: Standalone) -> None:
    done = cli(standalone, "admin", "namespaces", "set-retention", "public/default",
               "--time", "1x", "--size", "1G")  # fmt: skip
    assert done.returncode == 2 and "'1x' is not a duration" in done.stderr
    done = cli(standalone, "admin", "namespaces", "set-message-ttl", "public/default",
               "--ttl", "-1")  # fmt: skip
    assert done.returncode == 1
    assert "INVALID_ARGUMENT: message TTL must be 0..2147483647 seconds, got -1" in done.stderr
