"""``make bench-stages``: where a publish's time goes, stage by stage (issue 15 item 1).

Against a standalone and against etcd + 3 bookies + 1 broker (E/Qw/Qa 3/3/2), both with fsync
on and their metrics endpoints on, side by side and interleaved (``--repeats``, medians): a
warm-up loads the topic, then ``strata perf produce --rate 5000`` (100-byte messages) runs for
``--seconds`` while ``strata.stage_report`` reads ``strata_write_stage_seconds`` (and the
event-loop lag) from every process over the middle of the run. Prints one row per deployment,
process and stage (count, p50, p99, p99.9 in ms) and the perf's own publish p50/p99; writes
``data/bench/stages.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from strata import stage_report
from tests.bench.run_bench import last_json, perf, write_to_three_bookies
from tests.cluster import Cluster
from tests.harness import ServerProcess, Standalone

RATE = 5000
SIZE = 100
WARMUP_MESSAGES = 2_000
# The stages are read over the run less this much at each end (start-up, drain).
EDGE_SECONDS = 1.0


def metrics_url(process: ServerProcess) -> str:
    return f"http://127.0.0.1:{process.metrics_port()}/metrics"


@contextlib.contextmanager
def deployment(kind: str, tmp: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """Start a fresh deployment; yield its service address and {process name: metrics URL}."""
    if kind == "standalone":
        server = Standalone(tmp / "data", "--metrics-port", "0").start()
        try:
            yield server.address, {"standalone": metrics_url(server)}
        finally:
            server.stop()
        return
    with Cluster(
        tmp / "cluster",
        bookies=3,
        brokers=1,
        bookie_args=["--autorecovery", "false", "--metrics-port", "0"],
        broker_args=["--metrics-port", "0"],
    ) as cluster:
        write_to_three_bookies(cluster.broker_address())
        urls = {"broker": metrics_url(cluster.brokers[0])}
        for index, bookie in enumerate(cluster.bookies):
            urls[f"bookie-{index}"] = metrics_url(bookie)
        yield cluster.broker_address(), urls


def run_once(kind: str, seconds: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="strata-stages-") as tmp:
        with deployment(kind, Path(tmp)) as (address, urls):
            topic = "stages"
            last_json(perf("produce", address, topic, "--messages", str(WARMUP_MESSAGES)))
            producer = perf(
                "produce",
                address,
                topic,
                "--size",
                str(SIZE),
                "--rate",
                str(RATE),
                "--messages",
                str(int(RATE * seconds)),
            )
            before = {name: stage_report.scrape(url) for name, url in urls.items()}
            time.sleep(seconds - 2 * EDGE_SECONDS)
            rows = []
            for name, url in urls.items():
                observed = stage_report.delta(before[name], stage_report.scrape(url))
                rows += stage_report.summarize(name, observed)
            produced = last_json(producer)
    return {"perf": produced, "stages": rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--deployments", default="standalone,cluster")
    args = parser.parse_args()
    if args.seconds <= 2 * EDGE_SECONDS + 1:
        parser.error(f"--seconds must be over {2 * EDGE_SECONDS + 1:g}")
    runs: dict[str, list[dict[str, Any]]] = {}
    for _ in range(args.repeats):
        for kind in args.deployments.split(","):
            runs.setdefault(kind, []).append(run_once(kind, args.seconds))
    table = []
    for kind, kind_runs in runs.items():
        keys = sorted({(r.endpoint, r.stage) for run in kind_runs for r in run["stages"]})
        for endpoint, stage in keys:
            found = [
                r
                for run in kind_runs
                for r in run["stages"]
                if (r.endpoint, r.stage) == (endpoint, stage)
            ]
            table.append(
                {
                    "deployment": kind,
                    "process": endpoint,
                    "stage": stage,
                    "count": statistics.median(r.count for r in found),
                    "p50_ms": round(statistics.median(r.p50_ms for r in found), 3),
                    "p99_ms": round(statistics.median(r.p99_ms for r in found), 3),
                    "p999_ms": round(statistics.median(r.p999_ms for r in found), 3),
                }
            )
        table.append(
            {
                "deployment": kind,
                "process": "perf produce",
                "stage": "publish (send → receipt)",
                "count": statistics.median(run["perf"]["messages"] for run in kind_runs),
                **{
                    key: round(statistics.median(run["perf"][key] for run in kind_runs), 3)
                    for key in ("p50_ms", "p99_ms", "p999_ms")
                },
            }
        )
    header = ("deployment", "process", "stage", "count", "p50", "p99", "p99.9")
    print("{:<11} {:<13} {:<26} {:>8} {:>7} {:>7} {:>7}".format(*header))
    for row in table:
        print(
            f"{row['deployment']:<11} {row['process']:<13} {row['stage']:<26} {row['count']:>8} "
            + " ".join(f"{row[k]:>7.3f}" for k in ("p50_ms", "p99_ms", "p999_ms"))
        )
    out = Path("data/bench")
    out.mkdir(parents=True, exist_ok=True)
    (out / "stages.json").write_text(json.dumps(table, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
