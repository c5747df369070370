"""The overlays as processes: each container's command, arguments and environment, one
process per replica (``tests/k8s/local_run.py``), then a produce/consume round trip through
the brokers. Proof that what the manifests say is what the code runs: the options, the ports
the probes check, the bookies' advertised names, the ledger quorum (production 3/3/2 on 4
bookies, dev 1/1/1), S3 offload on, and every family the Grafana dashboard graphs served on
the pods' metrics ports, which the ServiceMonitor scrapes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

import strata
from strata.v1 import admin_pb2, admin_pb2_grpc
from tests.etcd_server import EtcdServer
from tests.k8s.local_run import LocalDeployment, Pod, StandIn
from tests.k8s.manifests import dashboard_families, environment, find, render
from tests.moto_server import MotoServer

pytestmark = pytest.mark.integration

MESSAGES = 2_000
RECEIVE_TIMEOUT_MS = 20_000
TOPIC = "persistent://public/default/manifests-as-processes"
ETCD_CLIENT_PORT = 2379
MINIO_PORT = 9000
REGISTRATION_TIMEOUT_SECONDS = 30.0
QUORUM_FIELDS = ("ensemble_size", "write_quorum", "ack_quorum")


@contextlib.contextmanager
def overlay_as_processes(overlay: str, directory: Path) -> Iterator[LocalDeployment]:
    """``overlay`` run locally: etcd stood in for by one member, S3 by moto (the production
    overlay reaches AWS through the pod's cloud identity, here moto's variables; dev reaches
    its MinIO Service, here moto at that name). The bucket is made as dev's bucket Job would."""
    docs = render(overlay)
    broker = find(docs, "Deployment", "strata-broker")["spec"]["template"]["spec"]
    bucket = environment(broker["containers"][0], docs)["STRATA_OFFLOAD_BUCKET"]
    with EtcdServer(directory / "etcd") as etcd, MotoServer(directory / "moto.log") as moto:
        moto.create_bucket(bucket)
        stand_ins = {
            "strata-etcd": StandIn(etcd.endpoint, ETCD_CLIENT_PORT),
            "strata-minio": StandIn(moto.url.removeprefix("http://"), MINIO_PORT),
        }
        cloud_identity = moto.env() if overlay == "production" else {}
        local = LocalDeployment(docs, directory, stand_ins=stand_ins, extra_env=cloud_identity)
        with local.running():
            yield local


def list_bookies(address: str) -> list[admin_pb2.Bookie]:
    with grpc.insecure_channel(address) as channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        response = stub.ListBookies(admin_pb2.ListBookiesRequest(), timeout=10)
        return list(response.bookies)


def runtime_config(address: str) -> dict[str, Any]:
    with grpc.insecure_channel(address) as channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        response = stub.GetRuntimeConfig(admin_pb2.GetRuntimeConfigRequest(), timeout=10)
        assert response.broker == address
        config: dict[str, Any] = json.loads(response.config_json)
        return config


async def round_trip(service_url: str) -> list[bytes]:
    client = strata.AsyncClient(service_url)
    try:
        consumer = await client.subscribe(
            TOPIC, "round-trip", initial_position=strata.InitialPosition.Earliest
        )
        producer = await client.create_producer(TOPIC, max_pending_messages=MESSAGES)
        for index in range(MESSAGES):
            producer.send_nowait(str(index).encode())
        await producer.flush()
        received: list[bytes] = []
        while len(received) < MESSAGES:
            messages = await consumer.receive_many(1000, timeout_millis=RECEIVE_TIMEOUT_MS)
            received.extend(message.data() for message in messages)
            consumer.acknowledge_many(messages)
        await consumer.flush_acknowledgements()
        return received
    finally:
        await client.close()


def scraped_families(pod: Pod) -> set[str]:
    """The metric families on the pod's metrics port (prometheus_client's own names)."""
    url = f"http://{pod.address}:{pod.port('metrics')}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    # The text format names a counter's family with its _total suffix.
    names = re.findall(r"^# TYPE (strata_\w+) ", text, re.MULTILINE)
    return {name.removesuffix("_total") for name in names}


def wait_bookies_available(broker: str, bookies: list[Pod]) -> None:
    """Until every bookie is registered under its advertised name."""
    expected = {f"{pod.address}:{pod.port('grpc')}" for pod in bookies}
    deadline = time.monotonic() + REGISTRATION_TIMEOUT_SECONDS
    available: set[str] = set()
    while available != expected:
        assert time.monotonic() < deadline, f"bookies available: {available}, not {expected}"
        # Poll interval of a probe of cluster state, not a wait standing in for a condition.
        time.sleep(0.2)
        available = {b.id for b in list_bookies(broker) if b.available}


@pytest.mark.parametrize(
    ("overlay", "bookies", "brokers", "quorum"),
    [("production", 4, 3, [3, 3, 2]), ("dev", 1, 1, [1, 1, 1])],
)
def test_overlay_as_processes_round_trip(
    tmp_path: Path, overlay: str, bookies: int, brokers: int, quorum: list[int]
) -> None:
    with overlay_as_processes(overlay, tmp_path) as local:
        bookie_pods = local.pods_of("strata-bookie")
        broker_pods = local.pods_of("strata-broker")
        assert (len(bookie_pods), len(broker_pods)) == (bookies, brokers)
        # Each bookie advertises its pod's stable DNS name (here: the pod's address).
        for pod in bookie_pods:
            assert pod.env["STRATA_ADVERTISED_ADDRESS"] == pod.address
        addresses = [f"{pod.address}:{pod.port('grpc')}" for pod in broker_pods]
        wait_bookies_available(addresses[0], bookie_pods)
        # Each broker runs what its ConfigMap says: the ledger quorum, S3 offload on.
        for address in addresses:
            config = runtime_config(address)
            running = [config[f"managed_ledger_default_{part}"] for part in QUORUM_FIELDS]
            assert (running, config["offload_driver"]) == (quorum, "s3")
        received = asyncio.run(round_trip(",".join(addresses)))
        assert received == [str(index).encode() for index in range(MESSAGES)]
        # The topic's ledger was written on an ensemble of E bookies.
        assert sum(bookie.ledger_count for bookie in list_bookies(addresses[0])) >= quorum[0]
        # What the ServiceMonitor scrapes (each pod's `metrics` port) serves what the
        # dashboard graphs.
        served = set().union(*(scraped_families(pod) for pod in [*bookie_pods, *broker_pods]))
        missing = dashboard_families(local.docs) - served
        assert not missing, f"the dashboard graphs families no pod serves: {missing}"
