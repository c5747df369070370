"""Message deduplication (issue 13 item 1) on real standalones: a resent sequence id is stored
once, across reconnects, a ``kill -9`` and a graceful restart; the policy verbs; a policy
change reaches a loaded topic without a reload; ``strata produce --producer-name`` re-run
after being killed mid-way stores each input line once. The failover case (three brokers, the
owner killed five times) is ``tests/faults/test_deduplication_failover.py``."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import strata
from tests.harness import Standalone
from tests.integration.test_standalone_cli import cli

pytestmark = pytest.mark.integration

RECEIVE_TIMEOUT_MS = 10_000
POLL_INTERVAL_S = 0.1


@pytest.fixture
def dedup_standalone(tmp_path: Path) -> Iterator[Standalone]:
    """Deduplication on by default, snapshots every 7 entries (so both the snapshot and the
    replay after it are exercised), policies applied every 300 ms."""
    server = Standalone(
        tmp_path / "data",
        "--broker-deduplication-enabled",
        "true",
        "--broker-deduplication-entries-interval",
        "7",
        "--housekeeping-interval-ms",
        "300",
    ).start()
    try:
        yield server
    finally:
        server.stop()


def read_all(address: str, topic: str, expected: int) -> list[bytes]:
    """Every message of the topic from the earliest, with a reader (nothing is acked)."""
    with strata.Client(address) as client:
        reader = client.create_reader(topic, strata.MessageId.earliest)
        values = [reader.read_next(RECEIVE_TIMEOUT_MS).data() for _ in range(expected)]
        with pytest.raises(strata.Timeout):
            reader.read_next(500)  # and nothing more
    return values


def send_ids(address: str, topic: str, name: str, ids: range) -> tuple[int, list[int]]:
    """Open producer ``name``, send each id as its own sequence id (payload: the id); return
    the last sequence id the broker announced at open and the ids receipted as duplicates."""
    with strata.Client(address) as client:
        producer = client.create_producer(topic, producer_name=name)
        announced = producer.last_sequence_id()
        duplicates = [
            i for i in ids if producer.send(str(i).encode(), sequence_id=i).ledger_id() == -1
        ]
        producer.close()
    return announced, duplicates


def test_a_resent_sequence_id_is_stored_once_across_kill9_and_restart(
    dedup_standalone: Standalone,
) -> None:
    topic = "persistent://public/default/dedup"
    address = dedup_standalone.address
    assert send_ids(address, topic, "p", range(20)) == (-1, [])
    announced, duplicates = send_ids(address, topic, "p", range(10, 30))
    assert announced == 19 and duplicates == list(range(10, 20))
    dedup_standalone.kill()  # kill -9: the state comes back from the snapshot and the replay
    dedup_standalone.start()
    announced, duplicates = send_ids(address, topic, "p", range(25, 35))
    assert announced == 29 and duplicates == list(range(25, 30))
    dedup_standalone.stop()  # graceful: the last snapshot is written at close
    dedup_standalone.start()
    announced, duplicates = send_ids(address, topic, "p", range(30, 40))
    assert announced == 34 and duplicates == list(range(30, 35))
    assert read_all(address, topic, 40) == [str(i).encode() for i in range(40)]
    assert "deduplication of persistent://public/default/dedup replayed" in (
        dedup_standalone.log_text()
    )


def test_batches_resent_by_the_sdk_after_a_reconnect_are_stored_once(
    dedup_standalone: Standalone,
) -> None:
    """Batched sends (auto-numbered) in flight while the standalone is killed: the SDK resends
    every batch without a receipt; each message is stored once."""
    topic = "persistent://public/default/dedup-batched"
    address = dedup_standalone.address
    count = 3000
    with strata.Client(address, operation_timeout_seconds=60) as client:
        producer = client.create_producer(
            topic,
            producer_name="batched",
            send_timeout_millis=60_000,
            batching_max_messages=50,
            block_if_queue_full=True,
        )
        results: list[strata.Result] = []
        for i in range(count):
            producer.send_async(str(i).encode(), lambda result, _id: results.append(result))
            if i == count // 2:
                dedup_standalone.kill()
                dedup_standalone.start()
        producer.flush()
        assert results.count(strata.Result.Ok) == count
    values = read_all(address, topic, count)
    assert values == [str(i).encode() for i in range(count)]


def test_without_deduplication_a_resend_is_stored_twice(standalone: Standalone) -> None:
    """The control: the default standalone (deduplication off) stores a resent id again."""
    topic = "persistent://public/default/no-dedup"
    send_ids(standalone.address, topic, "p", range(5))
    _, duplicates = send_ids(standalone.address, topic, "p", range(5))
    assert duplicates == []
    assert len(read_all(standalone.address, topic, 10)) == 10


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout_s} s: {what}"
        time.sleep(POLL_INTERVAL_S)


def admin(standalone: Standalone, *args: str) -> str:
    done = cli(standalone, "admin", *args)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_policy_verbs_reach_a_loaded_topic_without_a_reload(tmp_path: Path) -> None:
    server = Standalone(tmp_path / "data", "--housekeeping-interval-ms", "300").start()
    try:
        address = server.address
        namespace = "public/default"
        topic = "persistent://public/default/switched"
        assert json.loads(admin(server, "namespaces", "get-deduplication", namespace)) == {
            "enabled": None,
            "effective": False,
        }
        with strata.Client(address) as client:
            keeper = client.create_producer(topic)  # keeps the topic loaded throughout

            def status() -> str:
                stats = json.loads(admin(server, "topics", "stats", topic))
                return str(stats.get("deduplication_status", ""))

            assert status() == "Disabled"
            admin(server, "namespaces", "set-deduplication", namespace, "--enable")
            assert json.loads(admin(server, "namespaces", "get-deduplication", namespace)) == {
                "enabled": True,
                "effective": True,
            }
            wait_until(lambda: status() == "Enabled", 10, "deduplication on for the topic")
            send_ids(address, topic, "r", range(5))
            assert send_ids(address, topic, "r", range(5)) == (4, [0, 1, 2, 3, 4])
            admin(server, "namespaces", "set-deduplication", namespace, "--disable")
            wait_until(lambda: status() == "Disabled", 10, "deduplication off for the topic")
            assert send_ids(address, topic, "r", range(2))[1] == []
            admin(server, "namespaces", "remove-deduplication", namespace)
            assert json.loads(admin(server, "namespaces", "get-deduplication", namespace)) == {
                "enabled": None,
                "effective": False,
            }
            keeper.close()
        assert len(read_all(address, topic, 7)) == 7
    finally:
        server.stop()


def test_cli_produce_rerun_after_a_kill_stores_each_line_once(
    dedup_standalone: Standalone, tmp_path: Path
) -> None:
    topic = "persistent://public/default/cli-dedup"
    lines = 20_000
    source = tmp_path / "input.txt"
    source.write_text("".join(f"line-{i}\n" for i in range(lines)))
    command = [
        sys.executable, "-m", "strata", "produce", topic,
        "--service-url", dedup_standalone.address, "--producer-name", "cli-run",
    ]  # fmt: skip
    # A first run, slowed down and killed mid-way.
    with source.open("rb") as stdin:
        first = subprocess.Popen(
            [*command, "--rate", "4000"],
            stdin=stdin,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            time.sleep(1.5)
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=30)
    stored = -1

    def reopened() -> bool:
        # The broker may not have seen the killed client's stream end yet: then the name is
        # still connected and the open is refused; it clears up within moments.
        nonlocal stored
        with strata.Client(dedup_standalone.address) as client:
            try:
                producer = client.create_producer(topic, producer_name="cli-run")
            except strata.StrataException:
                return False
            stored = producer.last_sequence_id()
            producer.close()
            return True

    wait_until(reopened, 30, "the killed run's producer name is free")
    assert 0 < stored < lines - 1, "the first run was killed part-way"
    # The re-run on the same input: the lines the first run stored are not stored again.
    with source.open("rb") as stdin:
        again = subprocess.run(command, stdin=stdin, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert f"({stored + 1} stored before, not again)" in again.stderr
    values = read_all(dedup_standalone.address, topic, lines)
    assert values == [f"line-{i}".encode() for i in range(lines)]


def test_initial_sequence_id_needs_a_producer_name(dedup_standalone: Standalone) -> None:
    done = cli(dedup_standalone, "produce", "t", "-m", "x", "--initial-sequence-id", "5")
    assert done.returncode == 2
    assert "--initial-sequence-id needs --producer-name" in done.stderr
