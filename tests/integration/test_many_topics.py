"""Many topics on one broker: each is created, written and read, loaded lazily, and unloaded
when idle. Prints the broker's memory per loaded idle topic and the topic-load time
(`-s` shows them; `make bench`-style figures, never asserted).

The soak run (``pytest -m soak``) uses the issue's 10,000 topics; the default suite 500 (1,000
until session 12: 42 s, the suite's slowest test).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import grpc
import pytest

import strata
from strata.v1 import admin_pb2, admin_pb2_grpc
from tests.harness import Standalone

pytestmark = pytest.mark.integration

T = TypeVar("T")
CONCURRENCY = 50
IDLE_UNLOAD_SECONDS = 2


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def touch(client: strata.AsyncClient, topic: str, load_times: list[float]) -> None:
    started = time.perf_counter()
    producer = await client.create_producer(topic)
    load_times.append(time.perf_counter() - started)
    await producer.send(topic.encode())
    await producer.close()


async def read_back(client: strata.AsyncClient, topic: str) -> bytes:
    consumer = await client.subscribe(
        topic, "check", initial_position=strata.InitialPosition.Earliest
    )
    message = await consumer.receive(timeout_millis=30_000)
    await consumer.acknowledge(message)
    await consumer.close()
    return message.data()


async def in_chunks(items: list[str], work: Callable[[str], Awaitable[T]]) -> list[T]:
    """Run ``work`` on every item, ``CONCURRENCY`` at a time."""
    results: list[T] = []
    for start in range(0, len(items), CONCURRENCY):
        chunk = items[start : start + CONCURRENCY]
        results.extend(await asyncio.gather(*(work(topic) for topic in chunk)))
    return results


async def test_many_topics_written_read_and_unloaded_when_idle(tmp_path: Path) -> None:
    await many_topics(tmp_path, 500)


@pytest.mark.soak
async def test_ten_thousand_topics(tmp_path: Path) -> None:
    await many_topics(tmp_path, 10_000)


async def many_topics(tmp_path: Path, count: int) -> None:
    server = Standalone(
        tmp_path / "data",
        "--journal-fsync",
        "false",
        "--topic-idle-unload-seconds",
        str(IDLE_UNLOAD_SECONDS),
        "--housekeeping-interval-ms",
        "500",
    ).start()
    try:
        assert server.process is not None
        topics = [f"public/default/many-{i}" for i in range(count)]
        client = strata.AsyncClient(server.address)
        try:
            baseline = rss_bytes(server.process.pid)
            load_times: list[float] = []
            started = time.perf_counter()
            await in_chunks(topics, lambda topic: touch(client, topic, load_times))
            write_s = time.perf_counter() - started
            loaded_rss = rss_bytes(server.process.pid)
            got = await in_chunks(topics, lambda topic: read_back(client, topic))
            assert got == [t.encode() for t in topics]
        finally:
            await client.close()

        # With no clients left, every topic unloads after the idle period.
        with grpc.insecure_channel(server.address) as channel:
            admin = admin_pb2_grpc.AdminServiceStub(channel)
            deadline = time.monotonic() + 60
            while True:
                loaded = admin.ListBrokers(admin_pb2.ListBrokersRequest(), timeout=10)
                if loaded.brokers[0].topics == 0:
                    break
                assert time.monotonic() < deadline, f"{loaded.brokers[0].topics} still loaded"
                await asyncio.sleep(0.5)  # poll interval of a state probe
        per_topic = (loaded_rss - baseline) / count
        print(
            f"\n{count} topics: write {write_s:.1f} s; topic load (producer open) "
            f"p50 {statistics.median(load_times) * 1000:.1f} ms, "
            f"max {max(load_times) * 1000:.1f} ms; RSS {baseline / 2**20:.0f} MiB -> "
            f"{loaded_rss / 2**20:.0f} MiB = {per_topic / 1024:.1f} KiB per loaded topic"
        )
    finally:
        server.stop()
