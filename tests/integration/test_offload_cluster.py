"""Tiered storage on a cluster: real etcd, three bookie processes, a broker offloading to moto's
S3 server over HTTP. Ledgers striped over the three bookies are offloaded, their bookie
copies deleted (on every bookie of their ensembles), and a new subscription reads everything
back from S3 — also after the broker restarts."""

from __future__ import annotations

from pathlib import Path

import pytest

from strata.v1 import admin_pb2
from tests.cluster import Cluster
from tests.moto_server import MotoServer
from tests.offload_workload import MIB, Admin, assert_identical, consume, pin, produce

pytestmark = pytest.mark.integration

BUCKET = "strata-offload-cluster"
SIZE_MB = 60


async def test_offload_with_three_bookies(moto_server: MotoServer, tmp_path: Path) -> None:
    moto_server.create_bucket(BUCKET)
    broker_args = [
        "--managed-ledger-max-entries-per-ledger",
        "10",
        "--managed-ledger-cache-size-bytes",
        str(1024 * 1024),
        "--offload-driver",
        "s3",
        "--offload-bucket",
        BUCKET,
        "--offload-prefix",
        "cluster-1",
        # The endpoint from configuration here; credentials and region from AWS_* variables.
        "--offload-endpoint-url",
        moto_server.url,
        "--offload-deletion-lag-ms",
        "0",
    ]
    environment = {k: v for k, v in moto_server.env().items() if k != "AWS_ENDPOINT_URL_S3"}
    with Cluster(tmp_path, bookies=3, brokers=1, broker_args=broker_args, env=environment) as c:
        address = c.broker_address()
        admin = Admin(address)
        admin._call(
            "SetPersistence",
            admin_pb2.SetPersistenceRequest(
                name="tenants/public/namespaces/default",
                persistence=admin_pb2.PersistencePolicies(
                    bookkeeper_ensemble=3, bookkeeper_write_quorum=2, bookkeeper_ack_quorum=2
                ),
            ),
        )
        topic = "persistent://public/default/offload-cluster"
        await pin(address, topic)
        produced = await produce(address, topic, SIZE_MB * MIB)
        ledgers = {ledger for ledger, _, _ in produced.ids}
        assert len(ledgers) >= 40
        bookies_before = c.list_bookies().bookies
        assert sum(b.ledger_count for b in bookies_before) >= 3 * (len(ledgers) - 1)

        admin.offload(topic)
        final = admin.wait_offloaded(topic, timeout_s=120)
        assert final.closed_ledgers >= len(ledgers) - 1
        keys = moto_server.list_keys(BUCKET)
        assert len(keys) == 2 * final.offloaded_ledgers
        assert all(k.startswith("cluster-1/public/default/offload-cluster/") for k in keys)
        # The offloaded ledgers leave every bookie (deleted one after the other once their
        # BOOKIE_DELETED is recorded): only the open ledger and at most one closed one remain.
        c.wait_for(
            lambda: sum(b.ledger_count for b in c.list_bookies().bookies),
            lambda count: count <= 6,
            30,
            "bookies without the offloaded ledgers",
        )

        count = len(produced.ids)
        assert_identical(produced, await consume(address, topic, "after-offload", count, 120))
        c.restart_broker()
        assert_identical(produced, await consume(address, topic, "after-restart", count, 120))
