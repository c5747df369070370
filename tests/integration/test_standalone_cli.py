"""The ``strata`` CLI against a real standalone process."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from tests.harness import Standalone

pytestmark = pytest.mark.integration

CLI_TIMEOUT_SECONDS = 120


def cli(
    standalone: Standalone, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "strata", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_SECONDS,
        env={"STRATA_SERVICE_URL": standalone.address, "PATH": "/usr/bin:/bin"},
    )


def test_produce_and_consume(standalone: Standalone) -> None:
    produced = cli(standalone, "produce", "cli-topic", "-m", "hello", "-n", "5")
    assert produced.returncode == 0, produced.stderr
    assert "5" in produced.stderr
    lines = "\n".join(f"line-{i}" for i in range(20)) + "\n"
    produced = cli(standalone, "produce", "cli-topic", stdin=lines)
    assert produced.returncode == 0, produced.stderr
    consumed = cli(
        standalone,
        "consume",
        "cli-topic",
        "-s",
        "sub",
        "-n",
        "25",
        "--initial-position",
        "earliest",
        "--timeout-seconds",
        "20",
    )
    assert consumed.returncode == 0, consumed.stderr
    assert consumed.stdout.splitlines() == ["hello"] * 5 + [f"line-{i}" for i in range(20)]
    # Acknowledged and durable: a second consume finds nothing.
    again = cli(
        standalone, "consume", "cli-topic", "-s", "sub", "-n", "0", "--timeout-seconds", "1"
    )
    assert again.returncode == 0, again.stderr
    assert again.stdout == ""


def test_admin_verbs(standalone: Standalone) -> None:
    tenants = cli(standalone, "admin", "tenants", "list")
    assert tenants.stdout.split() == ["public"]
    assert cli(standalone, "admin", "tenants", "create", "acme").returncode == 0
    assert cli(standalone, "admin", "namespaces", "create", "acme/orders").returncode == 0
    assert cli(standalone, "admin", "namespaces", "list", "acme").stdout.split() == ["acme/orders"]
    assert cli(standalone, "admin", "topics", "create", "acme/orders/new").returncode == 0
    assert cli(standalone, "produce", "acme/orders/new", "-m", "x", "-n", "3").returncode == 0
    listed = cli(standalone, "admin", "topics", "list", "acme/orders")
    assert listed.stdout.split() == ["persistent://acme/orders/new"]
    stats = cli(standalone, "admin", "topics", "stats", "acme/orders/new")
    assert stats.returncode == 0, stats.stderr
    body = json.loads(stats.stdout)
    assert int(body["msg_in_counter"]) == 3
    duplicate = cli(standalone, "admin", "tenants", "create", "acme")
    assert duplicate.returncode != 0
    assert "ALREADY_EXISTS" in duplicate.stderr
    missing = cli(standalone, "admin", "topics", "stats", "acme/orders/nope")
    assert missing.returncode != 0 and "NOT_FOUND" in missing.stderr
    refused = cli(standalone, "admin", "tenants", "delete", "acme")
    assert refused.returncode != 0
    assert cli(standalone, "admin", "tenants", "delete", "acme", "--force").returncode == 0


def test_persistence_and_bookies_verbs(standalone: Standalone) -> None:
    bookies = cli(standalone, "admin", "bookies", "list")
    assert bookies.returncode == 0, bookies.stderr
    listed = json.loads(bookies.stdout)
    assert [(b["id"], b["available"]) for b in listed["bookies"]] == [("local", True)]
    assert listed["under_replicated_ledger_count"] == 0
    empty = cli(standalone, "admin", "namespaces", "get-persistence", "public/default")
    assert empty.returncode == 0 and json.loads(empty.stdout) == {}
    # A standalone has one bookie: 2 copies cannot be written, and producers are told so.
    set_two = cli(
        standalone, "admin", "namespaces", "set-persistence", "public/default", "-e", "2",
        "-w", "2", "-a", "2",
    )  # fmt: skip
    assert set_two.returncode == 0, set_two.stderr
    shown = json.loads(
        cli(standalone, "admin", "namespaces", "get-persistence", "public/default").stdout
    )
    assert shown == {
        "bookkeeper_ensemble": 2,
        "bookkeeper_write_quorum": 2,
        "bookkeeper_ack_quorum": 2,
    }
    refused = cli(standalone, "produce", "needs-two", "-m", "x", "--operation-timeout-seconds", "3")
    assert refused.returncode != 0
    assert "UNAVAILABLE" in refused.stderr and "bookies" in refused.stderr, refused.stderr
    bad = cli(
        standalone, "admin", "namespaces", "set-persistence", "public/default", "-e", "1",
        "-w", "2", "-a", "1",
    )  # fmt: skip
    assert bad.returncode != 0 and "INVALID_ARGUMENT" in bad.stderr


def test_perf_produce_and_consume_report_latencies(standalone: Standalone) -> None:
    produced = cli(
        standalone, "perf", "produce", "perf-topic", "--rate", "2000", "-m", "2000", "--size", "64"
    )
    assert produced.returncode == 0, produced.stderr
    publish = json.loads(produced.stdout.splitlines()[-1])
    assert publish["messages"] == 2000 and publish["errors"] == 0
    assert 0 < publish["p50_ms"] <= publish["p99_ms"] <= publish["max_ms"]
    assert publish["setup_ms"] > 0
    # Paced: how late the send calls were is reported apart, and measured from the schedule
    # every message's latency is at least its latency from the send call.
    assert 0 <= publish["publish_delay_p50_ms"] <= publish["publish_delay_max_ms"]
    assert publish["from_schedule_p50_ms"] >= publish["p50_ms"]
    assert publish["from_schedule_p99_ms"] >= publish["p99_ms"]
    consumed = cli(
        standalone,
        "perf",
        "consume",
        "perf-topic",
        "-s",
        "perf-sub",
        "--messages",
        "2000",
        "--initial-position",
        "earliest",
    )
    assert consumed.returncode == 0, consumed.stderr
    received = json.loads(consumed.stdout.splitlines()[-1])
    assert received["messages"] == 2000
    # Consumed after the fact: end-to-end latency includes the wait since the send call.
    assert 0 < received["p50_ms"] <= received["max_ms"]
    assert "publish_delay_p99_ms" not in received


def test_produce_delayed_and_consume_shared(standalone: Standalone) -> None:
    subscribed = cli(
        standalone,
        "consume",
        "cli-delayed",
        "-s",
        "sub",
        "--type",
        "shared",
        "-n",
        "0",
        "--timeout-seconds",
        "0.5",
    )
    assert subscribed.returncode == 0, subscribed.stderr  # the subscription exists now
    started = time.monotonic()
    produced = cli(
        standalone, "produce", "cli-delayed", "-m", "later", "-n", "3", "--deliver-after-ms", "1500"
    )
    assert produced.returncode == 0, produced.stderr
    consumed = cli(
        standalone,
        "consume",
        "cli-delayed",
        "-s",
        "sub",
        "--type",
        "shared",
        "-n",
        "3",
        "--timeout-seconds",
        "20",
    )
    assert consumed.returncode == 0, consumed.stderr
    assert consumed.stdout.splitlines() == ["later"] * 3
    assert time.monotonic() - started >= 1.5
    refused = cli(standalone, "produce", "cli-delayed", "-m", "x", "--deliver-after-ms", "-1")
    assert refused.returncode == 2
    assert "--deliver-after-ms must not be negative" in refused.stderr


def test_read_from_a_position_leaves_no_subscription(standalone: Standalone) -> None:
    produced = cli(standalone, "produce", "cli-read", stdin="".join(f"m{i}\n" for i in range(5)))
    assert produced.returncode == 0, produced.stderr
    everything = cli(standalone, "read", "cli-read", "--start-message-id", "earliest")
    assert everything.returncode == 0, everything.stderr
    assert everything.stdout.splitlines() == [f"m{i}" for i in range(5)]
    two = cli(standalone, "read", "cli-read", "-n", "2")
    assert two.stdout.splitlines() == ["m0", "m1"]
    latest = cli(standalone, "read", "cli-read", "--start-message-id", "latest")
    assert latest.returncode == 0 and latest.stdout == ""
    bad = cli(standalone, "read", "cli-read", "--start-message-id", "../x")
    assert bad.returncode == 2 and "--start-message-id must be" in bad.stderr
    stats = cli(standalone, "admin", "topics", "stats", "cli-read")
    assert stats.returncode == 0, stats.stderr
    assert json.loads(stats.stdout).get("subscriptions", {}) == {}


def test_consume_takes_the_subscription_options(standalone: Standalone) -> None:
    produced = cli(standalone, "produce", "cli-options", "-m", "x", "-n", "2")
    assert produced.returncode == 0, produced.stderr
    consumed = cli(
        standalone,
        "consume",
        "cli-options",
        "-s",
        "s",
        "--type",
        "key_shared",
        "-n",
        "2",
        "--initial-position",
        "earliest",
        "--ack-timeout-ms",
        "5000",
        "--max-redeliveries",
        "3",
        "--dead-letter-topic",
        "cli-options-dead",
        "--timeout-seconds",
        "20",
    )
    assert consumed.returncode == 0, consumed.stderr
    assert consumed.stdout.splitlines() == ["x", "x"]
    refused = cli(
        standalone,
        "consume",
        "cli-options",
        "-s",
        "s",
        "--ack-timeout-ms",
        "10",
        "--timeout-seconds",
        "1",
    )
    assert refused.returncode == 1
    assert "unacked_messages_timeout_ms must be at least 1000" in refused.stderr
