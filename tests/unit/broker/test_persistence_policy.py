"""Namespace persistence policies: E/Qw/Qa set by the admin API decide new ledgers' quorums."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest

from bookie.ledger import LedgerManager
from broker.config import BrokerConfig
from broker.server import start_broker_server
from broker.service import BrokerService
from strata.metadata import MetadataStore, open_metadata_store
from strata.naming import TopicName
from strata.v1 import admin_pb2, admin_pb2_grpc
from tests.unit.bookie.fake_bookies import FakeBookie

if TYPE_CHECKING:
    from strata.v1.admin_pb2_grpc import AdminServiceAsyncStub as AdminStub


@pytest.fixture
async def setup(
    tmp_path: Path,
) -> AsyncIterator[tuple[BrokerService, MetadataStore, AdminStub]]:
    store = await open_metadata_store("memory://")
    bookies = {name: FakeBookie(name) for name in ("b1", "b2", "b3", "b4")}
    ledgers = LedgerManager(store, lambda: sorted(bookies), bookies.__getitem__)
    broker = BrokerService(BrokerConfig(port=0, data_dir=tmp_path), store, ledgers)
    await broker.initialize_defaults()
    server, port, _ = await start_broker_server(broker, "127.0.0.1", 0)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield broker, store, admin_pb2_grpc.AdminServiceStub(channel)
    finally:
        await channel.close()
        await server.stop(0)
        await broker.close()
        await store.close()


async def _ensemble_of_current_ledger(broker: BrokerService, topic: str) -> tuple[int, int, int]:
    loaded = await broker.get_topic(TopicName.parse(topic))
    metadata = await broker.ledgers.read_metadata(loaded.ledger.ledgers[-1].ledger_id)
    assert metadata is not None
    return metadata.ensemble_size, metadata.write_quorum, metadata.ack_quorum


async def test_defaults_then_namespace_policy(
    setup: tuple[BrokerService, MetadataStore, AdminStub],
) -> None:
    broker, _store, admin = setup
    # The broker defaults: Pulsar's 2/2/2.
    assert await _ensemble_of_current_ledger(broker, "before") == (2, 2, 2)
    name = "tenants/public/namespaces/default"
    namespace = await admin.SetPersistence(
        admin_pb2.SetPersistenceRequest(
            name=name,
            persistence=admin_pb2.PersistencePolicies(
                bookkeeper_ensemble=4, bookkeeper_write_quorum=3, bookkeeper_ack_quorum=2
            ),
        )
    )
    assert namespace.persistence.bookkeeper_write_quorum == 3
    fetched = await admin.GetNamespace(admin_pb2.GetNamespaceRequest(name=name))
    assert fetched.persistence == namespace.persistence
    # Topics loaded from now on create their ledgers with the policy.
    assert await _ensemble_of_current_ledger(broker, "after") == (4, 3, 2)


@pytest.mark.parametrize(
    ("e", "qw", "qa"), [(2, 3, 2), (3, 2, 3), (0, 0, 0), (3, 3, 0), (65, 2, 2)]
)
async def test_bad_quorums_are_refused(
    setup: tuple[BrokerService, MetadataStore, AdminStub],
    e: int,
    qw: int,
    qa: int,
) -> None:
    _broker, _store, admin = setup
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await admin.SetPersistence(
            admin_pb2.SetPersistenceRequest(
                name="tenants/public/namespaces/default",
                persistence=admin_pb2.PersistencePolicies(
                    bookkeeper_ensemble=e, bookkeeper_write_quorum=qw, bookkeeper_ack_quorum=qa
                ),
            )
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_unknown_namespace_and_missing_policy(
    setup: tuple[BrokerService, MetadataStore, AdminStub],
) -> None:
    _broker, _store, admin = setup
    policies = admin_pb2.PersistencePolicies(
        bookkeeper_ensemble=1, bookkeeper_write_quorum=1, bookkeeper_ack_quorum=1
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await admin.SetPersistence(
            admin_pb2.SetPersistenceRequest(
                name="tenants/public/namespaces/nope", persistence=policies
            )
        )
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await admin.SetPersistence(
            admin_pb2.SetPersistenceRequest(name="tenants/public/namespaces/default")
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_list_bookies_in_a_cluster_without_cookies(
    setup: tuple[BrokerService, MetadataStore, AdminStub],
) -> None:
    _broker, _store, admin = setup
    response = await admin.ListBookies(admin_pb2.ListBookiesRequest())
    assert list(response.bookies) == []
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await admin.DecommissionBookie(admin_pb2.DecommissionBookieRequest(id=""))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await admin.DecommissionBookie(admin_pb2.DecommissionBookieRequest(id="10.0.0.1:3181"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
