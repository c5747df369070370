"""Before/after: ``make bench`` in two checkouts, interleaved, medians side by side.

Issue 15 asks for the bench's before/after figures "in one table, medians of 3, same run,
interleaved so host noise falls on both". Given two checkouts, each installed (``make
install``), this runs ``tests.bench.run_bench --repeats 1`` in the ``--before`` checkout, then
in the ``--after`` one, ``--rounds`` times (before, after, before, after, ...), collects every
row of each run's ``data/bench/results.json`` and prints one table of medians per case and
deployment, before and after, with the ratio. The table also goes to
``data/bench/before_after.json`` in this checkout.

    git worktree add /tmp/before <rev>   # or a clone; then `make install` in it
    python -m tests.bench.compare_checkouts --before /tmp/before --after . \\
        --deployments standalone,cluster

``--stages`` does the same with ``make bench-stages`` (``tests.bench.run_stage_breakdown``):
one row per deployment, process and stage, p50 / p99 / p99.9 before and after, to
``data/bench/stages_before_after.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

RUN_TIMEOUT_S = 3600
KEYS = (
    "e2e_msg_per_s",
    "publish_p50_ms",
    "publish_p99_ms",
    "publish_p999_ms",
    "publish_max_ms",
    "e2e_p50_ms",
    "e2e_p99_ms",
)


def run_bench(checkout: Path, deployments: str, extra: list[str]) -> list[dict[str, Any]]:
    command = [
        str(checkout / ".venv" / "bin" / "python"),
        "-m",
        "tests.bench.run_bench",
        "--repeats",
        "1",
        "--deployments",
        deployments,
        *extra,
    ]
    subprocess.run(command, cwd=checkout, check=True, timeout=RUN_TIMEOUT_S)
    rows: list[dict[str, Any]] = json.loads(
        (checkout / "data" / "bench" / "results.json").read_text()
    )
    return [row for row in rows if "deployment" in row]


def case_of(row: dict[str, Any]) -> tuple[str, int, str, bool]:
    return (row["deployment"], row["size_bytes"], str(row["rate"]), row["after_burst"])


def medians(runs: list[list[dict[str, Any]]]) -> dict[tuple[str, int, str, bool], dict[str, float]]:
    by_case: dict[tuple[str, int, str, bool], list[dict[str, Any]]] = {}
    for rows in runs:
        for row in rows:
            by_case.setdefault(case_of(row), []).append(row)
    return {
        case: {key: statistics.median(row[key] for row in rows) for key in KEYS if key in rows[0]}
        for case, rows in by_case.items()
    }


def run_stages(checkout: Path) -> list[dict[str, Any]]:
    command = [
        str(checkout / ".venv" / "bin" / "python"),
        "-m",
        "tests.bench.run_stage_breakdown",
        "--repeats",
        "1",
    ]
    subprocess.run(command, cwd=checkout, check=True, timeout=RUN_TIMEOUT_S)
    rows: list[dict[str, Any]] = json.loads(
        (checkout / "data" / "bench" / "stages.json").read_text()
    )
    return rows


def compare_stages(before_dir: Path, after_dir: Path, rounds: int) -> list[dict[str, Any]]:
    found: dict[tuple[str, str, str], dict[str, list[dict[str, Any]]]] = {}
    for round_number in range(rounds):
        for label, checkout in (("before", before_dir), ("after", after_dir)):
            print(f"round {round_number + 1}: {label} ({checkout})", file=sys.stderr, flush=True)
            for row in run_stages(checkout.resolve()):
                where = (row["deployment"], row["process"], row["stage"])
                found.setdefault(where, {}).setdefault(label, []).append(row)
    table = []
    for (deployment, process, stage), by_label in sorted(found.items()):
        line: dict[str, Any] = {"deployment": deployment, "process": process, "stage": stage}
        for label, rows in by_label.items():
            for key in ("count", "p50_ms", "p99_ms", "p999_ms"):
                line[f"{key}_{label}"] = statistics.median(r[key] for r in rows)
        table.append(line)
        print(json.dumps(line), flush=True)
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--before", type=Path, required=True)
    parser.add_argument("--after", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--deployments", default="standalone,cluster")
    parser.add_argument(
        "--after-args", default="", help="extra run_bench arguments for the after checkout"
    )
    parser.add_argument(
        "--stages", action="store_true", help="compare make bench-stages instead of make bench"
    )
    args = parser.parse_args()
    if args.stages:
        stages = compare_stages(args.before, args.after, args.rounds)
        out = Path("data/bench")
        out.mkdir(parents=True, exist_ok=True)
        (out / "stages_before_after.json").write_text(json.dumps(stages, indent=2))
        return 0
    runs: dict[str, list[list[dict[str, Any]]]] = {"before": [], "after": []}
    for round_number in range(args.rounds):
        for label, checkout, extra in (
            ("before", args.before, []),
            ("after", args.after, args.after_args.split()),
        ):
            print(f"round {round_number + 1}: {label} ({checkout})", file=sys.stderr, flush=True)
            runs[label].append(run_bench(checkout.resolve(), args.deployments, extra))
    before, after = medians(runs["before"]), medians(runs["after"])
    table = []
    for case in sorted(set(before) | set(after), key=str):
        row: dict[str, Any] = {
            "deployment": case[0],
            "size_bytes": case[1],
            "rate": case[2],
            "after_burst": case[3],
        }
        for key in KEYS:
            old, new = before.get(case, {}).get(key), after.get(case, {}).get(key)
            row[f"{key}_before"], row[f"{key}_after"] = old, new
            if old and new:
                row[f"{key}_ratio"] = round(new / old, 2)
        table.append(row)
        print(json.dumps(row), flush=True)
    out = Path("data/bench")
    out.mkdir(parents=True, exist_ok=True)
    (out / "before_after.json").write_text(json.dumps({"runs": runs, "medians": table}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
