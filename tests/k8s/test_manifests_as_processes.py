"""The production overlay as processes: each container's command, arguments and environment,
one process per replica (``tests/k8s/local_run.py``), then a produce/consume round trip
through the brokers. Proof that what the manifests say is what the code runs: the options,
the ports the probes check, the bookies' advertised names, the quorum 3/3/2, S3 offload on.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

import strata
from strata.v1 import admin_pb2, admin_pb2_grpc
from tests.etcd_server import EtcdServer
from tests.k8s.local_run import LocalDeployment, StandIn
from tests.k8s.manifests import environment, find, render
from tests.moto_server import MotoServer

pytestmark = pytest.mark.integration

MESSAGES = 2_000
RECEIVE_TIMEOUT_MS = 20_000
TOPIC = "persistent://public/default/manifests-as-processes"
ETCD_CLIENT_PORT = 2379
REGISTRATION_TIMEOUT_SECONDS = 30.0
QUORUM_FIELDS = ("ensemble_size", "write_quorum", "ack_quorum")


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[LocalDeployment]:
    docs = render("production")
    broker = find(docs, "Deployment", "strata-broker")["spec"]["template"]["spec"]
    bucket = environment(broker["containers"][0], docs)["STRATA_OFFLOAD_BUCKET"]
    with EtcdServer(tmp_path / "etcd") as etcd, MotoServer(tmp_path / "moto.log") as moto:
        moto.create_bucket(bucket)
        # The offload credentials and endpoint a pod's cloud identity would give it.
        stand_ins = {"strata-etcd": StandIn(etcd.endpoint, ETCD_CLIENT_PORT)}
        local = LocalDeployment(docs, tmp_path, stand_ins=stand_ins, extra_env=moto.env())
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


def test_production_overlay_as_processes_round_trip(deployment: LocalDeployment) -> None:
    bookies = deployment.pods_of("strata-bookie")
    brokers = deployment.pods_of("strata-broker")
    assert (len(bookies), len(brokers)) == (4, 3)
    # Each bookie advertises its pod's stable DNS name (here: the pod's address).
    for pod in bookies:
        assert pod.env["STRATA_ADVERTISED_ADDRESS"] == pod.address
    addresses = [f"{pod.address}:{pod.port('grpc')}" for pod in brokers]
    expected = {f"{pod.address}:{pod.port('grpc')}" for pod in bookies}
    deadline = time.monotonic() + REGISTRATION_TIMEOUT_SECONDS
    available: set[str] = set()
    while available != expected:
        assert time.monotonic() < deadline, f"bookies available: {available}, not {expected}"
        # Poll interval of a probe of cluster state, not a wait standing in for a condition.
        time.sleep(0.2)
        available = {b.id for b in list_bookies(addresses[0]) if b.available}
    # Each broker runs what its ConfigMap says: ledgers 3/3/2, S3 offload on.
    for address in addresses:
        config = runtime_config(address)
        quorum = [config[f"managed_ledger_default_{part}"] for part in QUORUM_FIELDS]
        assert (quorum, config["offload_driver"]) == ([3, 3, 2], "s3")
    received = asyncio.run(round_trip(",".join(addresses)))
    assert received == [str(index).encode() for index in range(MESSAGES)]
    # The topic's ledger was written on an ensemble of 3 of the 4 bookies.
    assert sum(bookie.ledger_count for bookie in list_bookies(addresses[0])) >= 3
