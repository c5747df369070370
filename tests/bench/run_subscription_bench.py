"""``make bench-subscriptions``: consume throughput per subscription type on one standalone.

For each type a topic is filled with ``--messages`` 100-byte messages (Key_Shared's with
``--keys`` keys, key-based batches), then ``strata perf consume`` drains it from the earliest
message: one consumer for Exclusive, ``--consumers`` for Shared, Key_Shared and Failover
(Failover's standbys receive nothing). Types are interleaved over ``--repeats`` rounds on the
same standalone and the median msg/s reported with its ratio to Exclusive. Prints JSON lines;
figures for the closing notes, never asserted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from tests.bench.run_bench import last_json, perf
from tests.harness import Standalone

TYPES = ("exclusive", "shared", "key_shared", "failover")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=300_000)
    parser.add_argument("--keys", type=int, default=100)
    parser.add_argument("--consumers", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, list[float]] = {kind: [] for kind in TYPES}
    with tempfile.TemporaryDirectory(prefix="strata-bench-") as tmp:
        server = Standalone(Path(tmp) / "data").start()
        try:
            for repeat in range(args.repeats):
                for kind in TYPES:
                    topic = f"bench-{kind}-{repeat}"
                    keys = ["--keys", str(args.keys)] if kind == "key_shared" else []
                    produced = perf(
                        "produce", server.address, topic, "--messages", str(args.messages), *keys
                    )
                    # The subscription exists before the messages: created by a first drain.
                    last_json(produced)
                    consumers = "1" if kind == "exclusive" else str(args.consumers)
                    consumed = perf(
                        "consume",
                        server.address,
                        topic,
                        "-s",
                        "bench",
                        "--type",
                        kind,
                        "--consumers",
                        consumers,
                        "--messages",
                        str(args.messages),
                        "--initial-position",
                        "earliest",
                    )
                    results[kind].append(float(last_json(consumed)["msg_per_s"]))
        finally:
            server.stop()
    exclusive = statistics.median(results["exclusive"])
    for kind in TYPES:
        median = statistics.median(results[kind])
        row = {
            "type": kind,
            "consume_msg_per_s_median": round(median),
            "runs": [round(r) for r in results[kind]],
            "ratio_to_exclusive": round(median / exclusive, 2),
        }
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
