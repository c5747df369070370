"""Start a Strata cluster for the Node tests: etcd + 2 bookies + 2 brokers on loopback.

Reuses ``tests.cluster.Cluster`` (free ports, readiness through the health services and the
bookie registrations, processes ended by their PIDs). Creates the namespace ``public/spread``
with 16 bundles so that topics spread over both brokers, prints one line
``CLUSTER {"brokers": [...]}`` and keeps the cluster up until its standard input closes (or
SIGTERM), then stops everything it started.

Usage: ``.venv/bin/python clients/node/test/cluster_helper.py DIRECTORY`` (from the repository).
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

import grpc

from strata.v1 import admin_pb2, admin_pb2_grpc
from tests.cluster import Cluster

ADMIN_TIMEOUT_S = 10.0
NAMESPACE_BUNDLES = 16


def main() -> None:
    directory = Path(sys.argv[1])
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda _signum, _frame: stop.set())
    with Cluster(
        directory,
        bookies=2,
        brokers=2,
        bookie_args=["--journal-fsync", "false", "--autorecovery", "false"],
    ) as cluster:
        with grpc.insecure_channel(cluster.broker_address(0)) as channel:
            admin_pb2_grpc.AdminServiceStub(channel).CreateNamespace(
                admin_pb2.CreateNamespaceRequest(
                    parent="tenants/public", namespace_id="spread", bundles=NAMESPACE_BUNDLES
                ),
                timeout=ADMIN_TIMEOUT_S,
            )
        brokers = [broker.address for broker in cluster.brokers]
        print("CLUSTER " + json.dumps({"brokers": brokers}), flush=True)
        # Standard input closing (the Node test ended, or died) is the signal to stop.
        watcher = threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True)
        watcher.start()
        stop.wait()


if __name__ == "__main__":
    main()
