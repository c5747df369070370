"""A bookie killed in a cluster with no spare (issue 15, the soak's fault): 3 bookies at
E/Qw/Qa 3/3/2, so no bookie can take the dead one's place.

With delayed ensemble change (the ledger client's default, BookKeeper's delayEnsembleChange)
the ledger gives the position up and goes on at Qa, and a full ledger keeps taking writes
while no new one can be placed: publishing never stops. Every receipted message is consumed
afterwards, in order, exactly once — after the bookie came back and after it was killed for
good. The ledger's metadata keeps the dead bookie in its ensemble (no ensemble change).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from strata.metadata import open_metadata_store
from strata.v1 import admin_pb2, admin_pb2_grpc
from tests.cluster import Cluster
from tests.faults.test_cluster_bookies import (
    TOPIC,
    assert_all_receipted_in_order,
    consume_all,
    ledger_ids,
    produce,
    read_ledger,
)

pytestmark = [pytest.mark.integration, pytest.mark.fault]

MESSAGES = 30_000


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    with Cluster(
        tmp_path,
        bookies=3,
        brokers=1,
        bookie_args=["--journal-fsync", "false", "--autorecovery", "false"],
        # Small ledgers, so that rollovers fall due while the bookie is down.
        broker_args=["--managed-ledger-max-entries-per-ledger", "2000"],
    ) as running:
        async with grpc.aio.insecure_channel(running.broker_address()) as channel:
            await admin_pb2_grpc.AdminServiceStub(channel).SetPersistence(
                admin_pb2.SetPersistenceRequest(
                    name="tenants/public/namespaces/default",
                    persistence=admin_pb2.PersistencePolicies(
                        bookkeeper_ensemble=3, bookkeeper_write_quorum=3, bookkeeper_ack_quorum=2
                    ),
                )
            )
        yield running


async def test_publishing_goes_on_without_a_spare_bookie(cluster: Cluster) -> None:
    killed = cluster.bookie_id(0)
    receipted = await produce(cluster.service_url, MESSAGES, lambda: cluster.kill_bookie(0))
    assert len(receipted) == MESSAGES, "every message got its receipt while a bookie was down"
    store = await open_metadata_store(cluster.metadata_url)
    try:
        ids = await ledger_ids(store, TOPIC)
        last = await read_ledger(store, ids[-1])
        assert killed in last.all_bookies() and len(last.ensembles) == 1
    finally:
        await store.close()
    # A second subscription from the earliest entry, made now: nothing is trimmed before it
    # has read everything too.
    async with grpc.aio.insecure_channel(cluster.broker_address()) as channel:
        await admin_pb2_grpc.AdminServiceStub(channel).CreateSubscription(
            admin_pb2.CreateSubscriptionRequest(
                topic=TOPIC, subscription="again", message_id="earliest"
            )
        )
    cluster.restart_bookie(0)
    assert_all_receipted_in_order(receipted, await consume_all(cluster.service_url))
    cluster.kill_bookie(0)  # and for good: the two left hold every entry
    assert_all_receipted_in_order(receipted, await consume_all(cluster.service_url, "again"))
