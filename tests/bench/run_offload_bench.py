"""Tiered-storage benchmark: offload MB/s, and catch-up read MB/s from object storage side by
side with reading the same data from the bookies, in one run on one machine.

Per repeat and driver, against a fresh ``strata standalone`` (fsync on) and, for S3, a fresh
moto server over HTTP:

1. produce ``--megabytes`` of 16 KiB messages into ledgers of about 10 MiB;
2. catch-up read from the bookies: a new subscription from the earliest position reads it all
   (the broker's entry cache is 1 MiB, so the reads go to the bookie);
3. offload: ``OffloadTopic``, timed until every closed ledger is offloaded and verified (MB/s
   of ledger bytes; the upload and the read-back verification both count);
4. deletion lag 0: the bookie copies are deleted; the standalone restarts (cold caches);
5. catch-up read from object storage: another new subscription reads it all, checked
   byte-identical.

Medians of ``--repeats`` runs go to stdout and to ``data/bench/offload_results.json``.
Run: ``.venv/bin/python -m tests.bench.run_offload_bench [--megabytes 200 --repeats 3]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from strata.v1 import admin_pb2
from tests.harness import Standalone
from tests.moto_server import MotoServer
from tests.offload_workload import MIB, Admin, assert_identical, consume, pin, produce

BUCKET = "strata-offload-bench"
TOPIC = "persistent://public/default/offload-bench"
TIMEOUT_S = 600.0


@contextlib.contextmanager
def object_store(driver: str, tmp: Path) -> Iterator[tuple[list[str], dict[str, str]]]:
    """The offload flags and environment of a standalone for ``driver``."""
    if driver == "filesystem":
        yield ["--offload-driver", "filesystem", "--offload-directory", str(tmp / "offload")], {}
        return
    with MotoServer(tmp / "moto.log") as moto:
        moto.create_bucket(BUCKET)
        yield ["--offload-driver", "s3", "--offload-bucket", BUCKET], moto.env()


async def run_once(driver: str, megabytes: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="strata-offload-bench-") as directory:
        tmp = Path(directory)
        with object_store(driver, tmp) as (flags, env):
            server = Standalone(
                tmp / "data",
                "--managed-ledger-max-entries-per-ledger",
                "80",
                "--managed-ledger-cache-size-bytes",
                str(1024 * 1024),
                "--housekeeping-interval-ms",
                "500",
                *flags,
                env=env,
            ).start()
            try:
                return await measure(server, megabytes)
            finally:
                server.stop()


async def measure(server: Standalone, megabytes: int) -> dict[str, float]:
    await pin(server.address, TOPIC)
    produced = await produce(server.address, TOPIC, megabytes * MIB)
    count = len(produced.ids)
    server.restart()
    from_bookies = await consume(server.address, TOPIC, "from-bookies", count, TIMEOUT_S)
    assert_identical(produced, from_bookies)

    admin = Admin(server.address)
    started = time.monotonic()
    admin.offload(TOPIC)
    offloaded = admin.wait_offloaded(TOPIC, TIMEOUT_S, bookie_deleted=False)
    offload_seconds = time.monotonic() - started

    admin._call(
        "SetOffloadDeletionLag",
        admin_pb2.SetOffloadDeletionLagRequest(
            name="tenants/public/namespaces/default", deletion_lag_ms=0
        ),
    )
    admin.wait_offloaded(TOPIC, TIMEOUT_S, bookie_deleted=True)
    server.restart()
    from_objects = await consume(server.address, TOPIC, "from-objects", count, TIMEOUT_S)
    assert_identical(produced, from_objects)
    return {
        "offloaded_mb": offloaded.offloaded_bytes / MIB,
        "offload_mb_per_s": offloaded.offloaded_bytes / MIB / offload_seconds,
        "read_bookies_mb_per_s": from_bookies.total_bytes / MIB / from_bookies.seconds,
        "read_object_store_mb_per_s": from_objects.total_bytes / MIB / from_objects.seconds,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--megabytes", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--drivers", default="s3,filesystem", help="comma-separated: s3, filesystem"
    )
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    runs: dict[str, list[dict[str, float]]] = {}
    for _ in range(args.repeats):  # interleaved, so both drivers see the same machine noise
        for driver in args.drivers.split(","):
            result = asyncio.run(run_once(driver, args.megabytes))
            print(json.dumps({"driver": driver, **result}), flush=True)
            runs.setdefault(driver, []).append(result)
    for driver, results in runs.items():
        row: dict[str, Any] = {"driver": driver, "megabytes": args.megabytes, "runs": len(results)}
        for key in results[0]:
            row[f"median_{key}"] = round(statistics.median(r[key] for r in results), 1)
        rows.append(row)
    print("\nmedians:")
    for row in rows:
        print(json.dumps(row))
    out = Path("data/bench")
    out.mkdir(parents=True, exist_ok=True)
    (out / "offload_results.json").write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
