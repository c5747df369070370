"""``make bench``: ``strata perf`` against a standalone with fsync on.

For 100-byte and 1 KiB messages it measures, in one run on one machine:
- throughput: a producer and a consumer running together, end-to-end msg/s and MB/s;
- latency at a fixed 5,000 msg/s: publish p50/p99/p99.9 (publish → receipt) and end-to-end
  p50/p99 (publish → receive).
Each case runs ``--repeats`` times against a fresh standalone and the median is reported.
Results go to stdout as a table and to ``data/bench/results.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from tests.harness import Standalone

PERF_TIMEOUT_SECONDS = 300


def perf(kind: str, address: str, topic: str, *args: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "strata", "perf", kind, topic, "--service-url", address, *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def last_json(process: subprocess.Popen[str]) -> dict[str, Any]:
    out, _ = process.communicate(timeout=PERF_TIMEOUT_SECONDS)
    if process.returncode != 0:
        raise RuntimeError(f"perf exited with {process.returncode}: {out[-500:]}")
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def run_case(size: int, messages: int, rate: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="strata-bench-") as tmp:
        server = Standalone(Path(tmp) / "data").start()
        try:
            topic = f"bench-{size}-{rate}"
            consumer = perf(
                "consume",
                server.address,
                topic,
                "-s",
                "bench",
                "--messages",
                str(messages),
                "--initial-position",
                "earliest",
            )
            producer_args = ["--size", str(size), "--messages", str(messages)]
            if rate:
                producer_args += ["--rate", str(rate)]
            producer = perf("produce", server.address, topic, *producer_args)
            produced = last_json(producer)
            consumed = last_json(consumer)
        finally:
            server.stop()
    return {"produce": produced, "consume": consumed}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--throughput-messages", type=int, default=300_000)
    parser.add_argument("--latency-seconds", type=int, default=12)
    args = parser.parse_args()
    rows = []
    for size in (100, 1024):
        for rate in (0, 5000):
            messages = args.throughput_messages if rate == 0 else rate * args.latency_seconds
            runs = [run_case(size, messages, rate) for _ in range(args.repeats)]
            row = {
                "size_bytes": size,
                "rate": rate or "max",
                "e2e_msg_per_s": statistics.median(r["consume"]["msg_per_s"] for r in runs),
                "e2e_mb_per_s": statistics.median(r["consume"]["mb_per_s"] for r in runs),
                "publish_msg_per_s": statistics.median(r["produce"]["msg_per_s"] for r in runs),
                "publish_p50_ms": statistics.median(r["produce"]["p50_ms"] for r in runs),
                "publish_p99_ms": statistics.median(r["produce"]["p99_ms"] for r in runs),
                "publish_p999_ms": statistics.median(r["produce"]["p999_ms"] for r in runs),
                "e2e_p50_ms": statistics.median(r["consume"]["p50_ms"] for r in runs),
                "e2e_p99_ms": statistics.median(r["consume"]["p99_ms"] for r in runs),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    out = Path("data/bench")
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
