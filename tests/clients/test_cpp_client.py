"""The C++ client example (``clients/cpp``, issue 14 item 4) built with CMake and run against a
real standalone: it produces with receipts and consumes with acknowledgements, and it agrees
with the Python SDK both ways on payloads, keys, properties and message ids.

``make test`` installs the Debian packages first (``clients/cpp/install-deps.sh``); this test
configures and builds ``clients/cpp/build`` (incremental after the first time), bounded in
time. A missing tool fails the test: nothing is skipped silently.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import strata
from tests.clients.processes import run_bounded
from tests.harness import Standalone

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CPP_DIR = ROOT / "clients" / "cpp"
BUILD_DIR = CPP_DIR / "build"
BINARY = BUILD_DIR / "strata-cpp"
BUILD_TIMEOUT_S = 900
RUN_TIMEOUT_S = 120
CLI_TIMEOUT_S = 60
MESSAGES = 1000
RECEIVE_TIMEOUT_MS = 20_000


@pytest.fixture(scope="module")
def strata_cpp() -> Path:
    for tool in ("cmake", "protoc", "grpc_cpp_plugin", "pkg-config", "g++"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing: `make test` installs it (clients/cpp/install-deps.sh)")
    configured = run_bounded(
        ["cmake", "-S", str(CPP_DIR), "-B", str(BUILD_DIR), "-DCMAKE_BUILD_TYPE=RelWithDebInfo"],
        BUILD_TIMEOUT_S,
    )
    assert configured.returncode == 0, configured.stdout + configured.stderr
    built = run_bounded(["cmake", "--build", str(BUILD_DIR), "-j2"], BUILD_TIMEOUT_S)
    assert built.returncode == 0, built.stdout[-20_000:] + built.stderr[-20_000:]
    assert BINARY.exists()
    return BINARY


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Standalone]:
    standalone = Standalone(tmp_path_factory.mktemp("cpp") / "data").start()
    try:
        yield standalone
    finally:
        standalone.stop()


def cpp(
    binary: Path, server: Standalone, command: str, *args: str
) -> subprocess.CompletedProcess[str]:
    return run_bounded(
        [str(binary), command, "--service-url", server.address, *args], RUN_TIMEOUT_S
    )


def lines(done: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def id_tuple(message_id: dict[str, Any]) -> tuple[int, int, int]:
    return (message_id["ledger_id"], message_id["entry_id"], message_id["batch_index"])


def subscription_stats(server: Standalone, topic: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "strata", "admin", "topics", "stats", topic],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        env={**os.environ, "STRATA_SERVICE_URL": server.address},
    )
    assert done.returncode == 0, done.stderr
    found: dict[str, Any] = json.loads(done.stdout)["subscriptions"]
    return found


@pytest.mark.parametrize("compression", ["none", "lz4", "zstd"])
def test_cpp_produces_and_the_python_sdk_reads_the_same_messages(
    strata_cpp: Path, server: Standalone, compression: str
) -> None:
    topic = f"cpp-to-python-{compression}"
    receipts = lines(
        cpp(
            strata_cpp,
            server,
            "produce",
            "--topic",
            topic,
            "--messages",
            str(MESSAGES),
            "--keys",
            "7",
            "--property",
            "origin=c++",
            "--compression",
            compression,
            "--batch-size",
            "100",
        )
    )
    assert [r["index"] for r in receipts] == list(range(MESSAGES))
    assert [r["sequence_id"] for r in receipts] == list(range(MESSAGES))
    # Ten entries of 100 messages: ids (ledger, entry, i) in order.
    assert (
        len({(r["message_id"]["ledger_id"], r["message_id"]["entry_id"]) for r in receipts}) == 10
    )
    assert all(r["message_id"]["batch_size"] == 100 for r in receipts)

    with strata.Client(server.address) as client:
        consumer = client.subscribe(
            topic, "python", initial_position=strata.InitialPosition.Earliest
        )
        seen = []
        for _ in range(MESSAGES):
            message = consumer.receive(timeout_millis=RECEIVE_TIMEOUT_MS)
            seen.append(message)
            consumer.acknowledge(message)
        consumer.close()
    assert [m.data() for m in seen] == [f"message-{i}".encode() for i in range(MESSAGES)]
    assert [m.partition_key() for m in seen] == [f"key-{i % 7}" for i in range(MESSAGES)]
    assert [m.properties() for m in seen] == [
        {"origin": "c++", "index": str(i)} for i in range(MESSAGES)
    ]
    python_ids = [
        (m.message_id().ledger_id(), m.message_id().entry_id(), m.message_id().batch_index())
        for m in seen
    ]
    assert python_ids == [id_tuple(r["message_id"]) for r in receipts]


def test_python_produces_and_cpp_consumes_shared_with_acks(
    strata_cpp: Path, server: Standalone
) -> None:
    topic = "python-to-cpp"
    receipts: list[tuple[int, int, int]] = []

    def on_receipt(result: strata.Result, message_id: strata.MessageId | None) -> None:
        assert result == strata.Result.Ok and message_id is not None, result
        receipts.append((message_id.ledger_id(), message_id.entry_id(), message_id.batch_index()))

    with strata.Client(server.address) as client:
        producer = client.create_producer(
            topic, compression_type=strata.CompressionType.ZSTD, batching_max_messages=64
        )
        for i in range(MESSAGES):
            producer.send_async(
                f"from python {i}".encode(),
                on_receipt,
                properties={"n": str(i), "quote": 'say "hi"\n'},
                partition_key=f"k{i % 5}",
            )
        producer.flush()
        producer.close()
    assert len(receipts) == MESSAGES

    consumed = lines(
        cpp(
            strata_cpp,
            server,
            "consume",
            "--topic",
            topic,
            "--subscription",
            "cpp-shared",
            "--type",
            "shared",
            "--messages",
            str(MESSAGES),
            "--timeout-s",
            "60",
        )
    )
    assert [m["payload"] for m in consumed] == [f"from python {i}" for i in range(MESSAGES)]
    assert [m["partition_key"] for m in consumed] == [f"k{i % 5}" for i in range(MESSAGES)]
    assert [m["properties"] for m in consumed] == [
        {"n": str(i), "quote": 'say "hi"\n'} for i in range(MESSAGES)
    ]
    assert sorted(id_tuple(m["message_id"]) for m in consumed) == sorted(receipts)
    assert all(m["redelivery_count"] == 0 for m in consumed)

    # Every message acknowledged (the AckReceipt came back clean, and the cursor says so).
    last_ledger, last_entry, _ = max(receipts)
    cursor = subscription_stats(server, topic)["cpp-shared"]
    assert cursor["mark_delete_position"] == f"{last_ledger}:{last_entry}"
    assert cursor["type"] == "Shared"


def test_cpp_round_trip_a_refused_ack_keeps_the_stream(
    strata_cpp: Path, server: Standalone
) -> None:
    topic = "cpp-round-trip"
    receipts = lines(
        cpp(strata_cpp, server, "produce", "--topic", topic, "--messages", "3", "--batch-size", "1")
    )
    # One message per entry: the whole entry, batch_index -1.
    assert [r["message_id"]["batch_index"] for r in receipts] == [-1, -1, -1]
    done = cpp(
        strata_cpp,
        server,
        "consume",
        "--topic",
        topic,
        "--subscription",
        "cpp",
        "--messages",
        "3",
        "--ack-also",
        "999999:0",
    )
    consumed = lines(done)
    assert [m["payload"] for m in consumed] == ["message-0", "message-1", "message-2"]
    assert [m["message_id"] for m in consumed] == [r["message_id"] for r in receipts]
    assert "ack receipt: acknowledgement of unknown message id 999999:0" in done.stderr
    # The three real acks were applied on the same stream.
    last = receipts[-1]["message_id"]
    cursor = subscription_stats(server, topic)["cpp"]
    assert cursor["mark_delete_position"] == f"{last['ledger_id']}:{last['entry_id']}"


def test_cpp_reports_refusals_with_their_status(strata_cpp: Path, server: Standalone) -> None:
    bad_name = cpp(strata_cpp, server, "produce", "--topic", "a/b/c/d/e", "--messages", "1")
    assert bad_name.returncode == 1
    assert "error: status 3 " in bad_name.stderr  # INVALID_ARGUMENT
    busy_topic = "cpp-exclusive"
    with strata.Client(server.address) as client:
        holder = client.subscribe(busy_topic, "only")
        refused = cpp(
            strata_cpp,
            server,
            "consume",
            "--topic",
            busy_topic,
            "--subscription",
            "only",
            "--messages",
            "1",
            "--timeout-s",
            "2",
        )
        holder.close()
    assert refused.returncode == 1
    assert "error: status 9 " in refused.stderr  # FAILED_PRECONDITION
    assert "[CONSUMER_BUSY]" in refused.stderr  # the ErrorInfo reason, from google/rpc protos
    typo = cpp(strata_cpp, server, "produce", "--topic", "t", "--mesages", "1")
    assert typo.returncode == 2
    assert "unknown option --mesages" in typo.stderr
