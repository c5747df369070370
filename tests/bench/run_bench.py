"""``make bench``: ``strata perf`` against a standalone with fsync on; ``make bench-cluster``
also against etcd + 3 bookies + 1 broker as processes with E/Qw/Qa 3/3/2, side by side.

For 100-byte and 1 KiB messages it measures, in one run on one machine:
- throughput: a producer and a consumer running together, end-to-end msg/s and MB/s, over
  ``--throughput-messages`` (by default 1,500,000 of 100 B and 500,000 of 1 KiB: several
  seconds even for the standalone, so that a run's ramp-up does not set its rate);
- latency at a fixed 5,000 msg/s: publish p50/p99/p99.9 (send call → receipt) and end-to-end
  p50/p99 (send call → receive), as pulsar-perf and the OpenMessaging Benchmark measure them,
  and the publish delay p99 (how late the paced send calls were against their schedule) and
  the publish p99 measured from the schedule instead of the send call.
Each case runs ``--repeats`` times against a fresh deployment and the median is reported.
Before it measures, a warm-up run loads the topic and creates the subscription; the time its
producer took to connect, look up and load the topic (``topic_load_ms``) is reported on its
own. The latency cases run twice: on a fresh process, and after a burst of
``--burst-messages`` (200,000) at full speed, consumed (``after_burst``), because a fresh
process hides what a burst leaves behind.
The fresh latency cases also run against Redis Streams with ``appendfsync always``
(``tests/bench/redis_peer.py``, deployment ``redis-always``; ``--peers ''`` leaves it out),
interleaved with the others, and the bench prints the ratio of each deployment's end-to-end
p99 to Redis's (issue 15: the standalone's must be at or below 1.0).
Results go to stdout as a table and to ``data/bench/results.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc

from strata.auth.tokens import create_token
from strata.v1 import admin_pb2, admin_pb2_grpc
from tests.bench import redis_peer
from tests.cluster import Cluster
from tests.harness import Standalone
from tests.tls_certs import make_tls_files

PERF_TIMEOUT_SECONDS = 300


def perf(kind: str, address: str, topic: str, *args: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "strata", "perf", kind, topic, "--service-url", address, *args]
    # The token of a deployment with authentication on, if this address is one (never argv).
    env = {**os.environ, **_CLIENT_ENV.get(address, {})}
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
    )


# Environment of the perf clients per service address (a deployment with authentication).
_CLIENT_ENV: dict[str, dict[str, str]] = {}


@contextlib.contextmanager
def authenticated_standalone(tmp: Path) -> Iterator[str]:
    """A standalone with token authentication on; perf presents a token (STRATA_AUTH_TOKEN),
    so the cost measured is the authentication's per connection and per call."""
    secret = tmp / "secret.key"
    secret.write_bytes(os.urandom(32))
    token = create_token(secret.read_bytes(), "HS256", "bench")
    server = Standalone(
        tmp / "data",
        "--authentication-enabled",
        "true",
        "--auth-token-secret-key",
        f"file:{secret}",
    ).start()
    _CLIENT_ENV[server.address] = {"STRATA_AUTH_TOKEN": token}
    try:
        yield server.address
    finally:
        _CLIENT_ENV.pop(server.address, None)
        server.stop()


@contextlib.contextmanager
def secured_standalone(tmp: Path) -> Iterator[str]:
    """Token authentication and TLS on (a CA made here); perf dials grpcs:// with the CA and
    a token, so the cost measured is both's, per connection and per call."""
    files = make_tls_files(tmp / "certs")
    secret = tmp / "secret.key"
    secret.write_bytes(os.urandom(32))
    token = create_token(secret.read_bytes(), "HS256", "bench")
    server = Standalone(
        tmp / "data",
        "--authentication-enabled",
        "true",
        "--auth-token-secret-key",
        f"file:{secret}",
        "--tls-cert-file",
        str(files.server_cert),
        "--tls-key-file",
        str(files.server_key),
    )
    server.health_credentials = grpc.ssl_channel_credentials(files.ca.read_bytes())
    server.start()
    url = f"grpcs://{server.address}"
    _CLIENT_ENV[url] = {"STRATA_AUTH_TOKEN": token, "STRATA_TLS_TRUST_CERTS_FILE": str(files.ca)}
    try:
        yield url
    finally:
        _CLIENT_ENV.pop(url, None)
        server.stop()


def last_json(process: subprocess.Popen[str]) -> dict[str, Any]:
    out, _ = process.communicate(timeout=PERF_TIMEOUT_SECONDS)
    if process.returncode != 0:
        raise RuntimeError(f"perf exited with {process.returncode}: {out[-500:]}")
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


@contextlib.contextmanager
def deployment(kind: str, tmp: Path) -> Iterator[str]:
    """Start a fresh deployment and yield its service address."""
    if kind == "standalone-auth":
        with authenticated_standalone(tmp) as address:
            yield address
        return
    if kind == "standalone-auth-tls":
        with secured_standalone(tmp) as address:
            yield address
        return
    if kind in ("standalone", "standalone-dedup"):
        extra = ["--broker-deduplication-enabled", "true"] if kind == "standalone-dedup" else []
        server = Standalone(tmp / "data", *extra).start()
        try:
            yield server.address
        finally:
            server.stop()
        return
    with Cluster(
        tmp / "cluster", bookies=3, brokers=1, bookie_args=["--autorecovery", "false"]
    ) as cluster:
        write_to_three_bookies(cluster.broker_address())
        yield cluster.broker_address()


def write_to_three_bookies(broker_address: str) -> None:
    """public/default at E/Qw/Qa 3/3/2, the cluster benchmarks' persistence."""
    with grpc.insecure_channel(broker_address) as channel:
        admin_pb2_grpc.AdminServiceStub(channel).SetPersistence(
            admin_pb2.SetPersistenceRequest(
                name="tenants/public/namespaces/default",
                persistence=admin_pb2.PersistencePolicies(
                    bookkeeper_ensemble=3, bookkeeper_write_quorum=3, bookkeeper_ack_quorum=2
                ),
            ),
            timeout=30,
        )


# The peer deployment: Redis Streams with appendfsync always (tests/bench/redis_peer.py).
REDIS = "redis-always"
WARMUP_MESSAGES = 2_000
BURST_MESSAGES = 200_000
# Max-rate runs of 4-10 s on this host (300,000 of 100 B took the standalone under 1 s, so
# the rate measured its ramp-up as much as its steady state).
THROUGHPUT_MESSAGES = {100: 1_500_000, 1024: 500_000}


def produce_and_consume(
    address: str, topic: str, size: int, messages: int, rate: int
) -> dict[str, Any]:
    """One perf run on ``topic``: a consumer on subscription ``bench`` (created at earliest by
    the first run, resumed by later ones) and a producer together."""
    consumer = perf(
        "consume",
        address,
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
    producer = perf("produce", address, topic, *producer_args)
    produced = last_json(producer)
    consumed = last_json(consumer)
    return {"produce": produced, "consume": consumed}


def run_redis_case(size: int, messages: int, rate: int) -> dict[str, Any]:
    """The peer: a fresh redis-server, a warm-up run, then the measured one."""
    with tempfile.TemporaryDirectory(prefix="strata-bench-redis-") as tmp:
        with redis_peer.redis_always(Path(tmp)) as port:
            redis_peer.run(port, size, rate, WARMUP_MESSAGES)
            result = redis_peer.run(port, size, rate, messages)
    result["topic_load_ms"] = 0.0
    return result


def run_case(
    kind: str,
    size: int,
    messages: int,
    rate: int,
    *,
    after_burst: bool = False,
    burst_messages: int = BURST_MESSAGES,
) -> dict[str, Any]:
    """A fresh deployment; a warm-up run loads the topic and creates the subscription (the
    time its producer took to connect and load the topic is reported on its own); with
    ``after_burst``, a burst of ``burst_messages`` at full speed, consumed, comes before the
    measured run, which then shows what a burst leaves behind."""
    if kind == REDIS:
        return run_redis_case(size, messages, rate)
    with tempfile.TemporaryDirectory(prefix="strata-bench-") as tmp:
        with deployment(kind, Path(tmp)) as address:
            topic = f"bench-{size}-{rate}"
            warmup = produce_and_consume(address, topic, size, WARMUP_MESSAGES, 0)
            if after_burst:
                produce_and_consume(address, topic, size, burst_messages, 0)
            result = produce_and_consume(address, topic, size, messages, rate)
    result["topic_load_ms"] = warmup["produce"]["setup_ms"]
    return result


def peer_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each deployment's end-to-end p99 over Redis's, per fresh latency case measured with
    the peer (below 1.0: lower than Redis with appendfsync always)."""
    ratios = []
    for peer in (row for row in rows if row["deployment"] == REDIS):
        for row in rows:
            same_case = all(row[key] == peer[key] for key in ("size_bytes", "rate", "after_burst"))
            if row["deployment"] == REDIS or not same_case or not peer["e2e_p99_ms"]:
                continue
            ratios.append(
                {
                    "comparison": f"{row['deployment']} e2e p99 / {REDIS} e2e p99",
                    "size_bytes": row["size_bytes"],
                    "rate": row["rate"],
                    "e2e_p99_ms": row["e2e_p99_ms"],
                    "peer_e2e_p99_ms": peer["e2e_p99_ms"],
                    "ratio": round(row["e2e_p99_ms"] / peer["e2e_p99_ms"], 2),
                }
            )
    return ratios


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--throughput-messages",
        type=int,
        default=None,
        help="messages of each max-rate run (default: by size, see THROUGHPUT_MESSAGES)",
    )
    parser.add_argument("--latency-seconds", type=int, default=12)
    parser.add_argument("--burst-messages", type=int, default=BURST_MESSAGES)
    parser.add_argument(
        "--deployments",
        default="standalone",
        help="comma-separated: standalone, standalone-dedup (deduplication on), "
        "standalone-auth (token authentication on), standalone-auth-tls (and TLS), "
        "cluster (3 bookies, 3/3/2)",
    )
    parser.add_argument(
        "--peers",
        default=REDIS,
        help=f"comma-separated peers run beside the fresh latency cases: {REDIS} "
        "(Redis Streams, appendfsync always), or '' for none",
    )
    args = parser.parse_args()
    if args.throughput_messages is not None and args.throughput_messages < 1:
        parser.error(f"--throughput-messages: must be at least 1, not {args.throughput_messages}")
    peers = [peer for peer in args.peers.split(",") if peer]
    if any(peer != REDIS for peer in peers):
        parser.error(f"--peers: unknown peer in {args.peers!r} (known: {REDIS})")
    rows = []
    cases = [(size, rate, False) for size in (100, 1024) for rate in (0, 5000)]
    # The latency cases again after a burst: a fresh process hides what a burst leaves behind.
    cases += [(size, 5000, True) for size in (100, 1024)]
    for size, rate, after_burst in cases:
        if rate:
            messages = rate * args.latency_seconds
        elif args.throughput_messages is not None:
            messages = args.throughput_messages
        else:
            messages = THROUGHPUT_MESSAGES[size]
        # Interleaved repeats, so that both deployments see the same machine noise.
        runs_by_kind: dict[str, list[dict[str, Any]]] = {}
        kinds = args.deployments.split(",")
        if rate and not after_burst:
            kinds += peers
        for _ in range(args.repeats):
            for kind in kinds:
                runs_by_kind.setdefault(kind, []).append(
                    run_case(
                        kind,
                        size,
                        messages,
                        rate,
                        after_burst=after_burst,
                        burst_messages=args.burst_messages,
                    )
                )
        for kind, runs in runs_by_kind.items():
            row = {
                "deployment": kind,
                "size_bytes": size,
                "rate": rate or "max",
                "after_burst": after_burst,
                "topic_load_ms": statistics.median(r["topic_load_ms"] for r in runs),
                "e2e_msg_per_s": statistics.median(r["consume"]["msg_per_s"] for r in runs),
                "e2e_mb_per_s": statistics.median(r["consume"]["mb_per_s"] for r in runs),
                "publish_msg_per_s": statistics.median(r["produce"]["msg_per_s"] for r in runs),
                "publish_p50_ms": statistics.median(r["produce"]["p50_ms"] for r in runs),
                "publish_p99_ms": statistics.median(r["produce"]["p99_ms"] for r in runs),
                "publish_p999_ms": statistics.median(r["produce"]["p999_ms"] for r in runs),
                "publish_max_ms": statistics.median(r["produce"]["max_ms"] for r in runs),
                "e2e_p50_ms": statistics.median(r["consume"]["p50_ms"] for r in runs),
                "e2e_p99_ms": statistics.median(r["consume"]["p99_ms"] for r in runs),
                "e2e_p999_ms": statistics.median(r["consume"]["p999_ms"] for r in runs),
                "e2e_max_ms": statistics.median(r["consume"]["max_ms"] for r in runs),
            }
            if rate:
                for key in ("publish_delay_p99_ms", "from_schedule_p99_ms"):
                    if all(key in r["produce"] for r in runs):
                        row[key] = statistics.median(r["produce"][key] for r in runs)
            rows.append(row)
            print(json.dumps(row), flush=True)
    for row in peer_ratios(rows):
        rows.append(row)
        print(json.dumps(row), flush=True)
    out = Path("data/bench")
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
