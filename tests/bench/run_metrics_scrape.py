"""The size and duration of a standalone's ``/metrics`` scrape with many loaded topics, with
topic-level metrics on and off (``--expose-topic-level-metrics``).

Each topic gets one subscription and one message, so every per-topic and per-subscription
family has a sample. Prints one JSON line per case; figures for the closing notes, never
asserted. ``python -m tests.bench.run_metrics_scrape --topics 1000,10000``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import urllib.request
from pathlib import Path

import strata
from tests.harness import Standalone

CONCURRENCY = 50
SCRAPE_TIMEOUT_SECONDS = 60


async def touch(client: strata.AsyncClient, topic: str) -> None:
    consumer = await client.subscribe(topic, "sub")
    producer = await client.create_producer(topic)
    await producer.send(b"x" * 100)
    await producer.close()
    await consumer.close()


async def load_topics(address: str, count: int) -> None:
    client = strata.AsyncClient(address)
    try:
        topics = [f"scrape-{i}" for i in range(count)]
        for start in range(0, count, CONCURRENCY):
            await asyncio.gather(*(touch(client, t) for t in topics[start : start + CONCURRENCY]))
    finally:
        await client.close()


def scrape(port: int) -> tuple[int, float]:
    started = time.perf_counter()
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT_SECONDS) as response:
        size = len(response.read())
    return size, time.perf_counter() - started


def run_case(count: int, topic_level: bool) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="strata-scrape-") as tmp:
        server = Standalone(
            Path(tmp) / "data",
            "--journal-fsync",
            "false",
            "--metrics-port",
            "0",
            "--expose-topic-level-metrics",
            str(topic_level).lower(),
        ).start()
        try:
            started = time.perf_counter()
            asyncio.run(load_topics(server.address, count))
            load_seconds = time.perf_counter() - started
            port = server.metrics_port()
            scrape(port)  # the first scrape starts the rate windows
            sizes = [scrape(port) for _ in range(3)]
        finally:
            server.stop()
    return {
        "topics": count,
        "topic_level": topic_level,
        "scrape_bytes": sizes[-1][0],
        "scrape_seconds_median": sorted(s for _, s in sizes)[1],
        "load_seconds": round(load_seconds, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--topics", default="1000", help="comma-separated topic counts")
    args = parser.parse_args()
    for count in (int(c) for c in args.topics.split(",")):
        for topic_level in (True, False):
            print(json.dumps(run_case(count, topic_level)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
