"""The offload admin API over a real in-process gRPC server: namespace offload policies,
``OffloadTopic`` and ``GetOffloadStatus``, and their errors; the automatic trigger from the
namespace threshold through the broker's housekeeping."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest

from bookie.ledger import LedgerManager
from broker.config import BrokerConfig
from broker.server import start_broker_server
from broker.service import BrokerService
from strata.metadata import open_metadata_store
from strata.naming import TopicName
from strata.v1 import admin_pb2, admin_pb2_grpc, messaging_pb2
from tests.unit.broker.memory_bookie import MemoryBookieClient
from tests.unit.tiered.support import small_config
from tiered import FilesystemOffloader

if TYPE_CHECKING:
    from strata.v1.admin_pb2_grpc import AdminServiceAsyncStub as AdminStub

NAMESPACE = "tenants/public/namespaces/default"


@dataclass
class Setup:
    broker: BrokerService
    admin: AdminStub
    bookie: MemoryBookieClient


async def start(tmp_path: Path, offloading: bool) -> tuple[Setup, list[object]]:
    store = await open_metadata_store("memory://")
    bookie = MemoryBookieClient()
    ledgers = LedgerManager(store, lambda: [bookie.address], lambda _a: bookie)
    config = BrokerConfig(
        port=0,
        data_dir=tmp_path,
        managed_ledger_max_entries_per_ledger=5,
        managed_ledger_default_ensemble_size=1,
        managed_ledger_default_write_quorum=1,
        managed_ledger_default_ack_quorum=1,
        managed_ledger_cache_size_bytes=0,
        offload_deletion_lag_ms=3_600_000,
    )
    offloader = FilesystemOffloader(small_config("filesystem", tmp_path)) if offloading else None
    broker = BrokerService(config, store, ledgers, offloader=offloader)
    await broker.initialize_defaults()
    server, port, _ = await start_broker_server(broker, "127.0.0.1", 0)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    return Setup(broker, admin_pb2_grpc.AdminServiceStub(channel), bookie), [
        channel,
        server,
        broker,
        offloader,
        store,
    ]


async def stop(resources: list[object]) -> None:
    channel, server, broker, offloader, store = resources
    await channel.close()  # type: ignore[attr-defined]
    await server.stop(0)  # type: ignore[attr-defined]
    await broker.close()  # type: ignore[attr-defined]
    if offloader is not None:
        await offloader.close()  # type: ignore[attr-defined]
    await store.close()  # type: ignore[attr-defined]


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    environment, resources = await start(tmp_path, offloading=True)
    try:
        yield environment
    finally:
        await stop(resources)


async def publish(broker: BrokerService, topic: str, count: int) -> None:
    loaded = await broker.get_topic(TopicName.parse(topic))
    for i in range(count):
        entry = messaging_pb2.StoredEntry(num_messages=1, payload=b"m%d" % i * 50)
        await loaded.publish(entry.SerializeToString(), 1)


async def wait_status(
    admin: AdminStub, topic: str, done: object, timeout_s: float = 10
) -> admin_pb2.OffloadStatus:
    async with asyncio.timeout(timeout_s):
        while True:
            status = await admin.GetOffloadStatus(admin_pb2.GetOffloadStatusRequest(name=topic))
            if status.status == done:
                return status
            await asyncio.sleep(0.02)


async def test_namespace_offload_policies(setup: Setup) -> None:
    admin = setup.admin
    namespace = await admin.GetNamespace(admin_pb2.GetNamespaceRequest(name=NAMESPACE))
    assert namespace.offload.threshold_bytes == -1  # off by default
    assert namespace.offload.deletion_lag_ms == 3_600_000  # the broker's
    namespace = await admin.SetOffloadThreshold(
        admin_pb2.SetOffloadThresholdRequest(name=NAMESPACE, threshold_bytes=10 * 1024 * 1024)
    )
    assert namespace.offload.threshold_bytes == 10 * 1024 * 1024
    namespace = await admin.SetOffloadDeletionLag(
        admin_pb2.SetOffloadDeletionLagRequest(name=NAMESPACE, deletion_lag_ms=0)
    )
    assert namespace.offload.deletion_lag_ms == 0
    assert namespace.offload.threshold_bytes == 10 * 1024 * 1024
    fetched = await admin.GetNamespace(admin_pb2.GetNamespaceRequest(name=NAMESPACE))
    assert fetched.offload == namespace.offload
    # Unset: back to the broker's lag.
    namespace = await admin.SetOffloadDeletionLag(
        admin_pb2.SetOffloadDeletionLagRequest(name=NAMESPACE)
    )
    assert namespace.offload.deletion_lag_ms == 3_600_000
    for request, code in (
        (admin_pb2.SetOffloadThresholdRequest(name=NAMESPACE, threshold_bytes=-5), "INVALID"),
        (
            admin_pb2.SetOffloadThresholdRequest(name="tenants/x/namespaces/y", threshold_bytes=1),
            "NOT",
        ),
        (admin_pb2.SetOffloadThresholdRequest(name="bad/name/here", threshold_bytes=1), "INVALID"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await admin.SetOffloadThreshold(request)
        assert failure.value.code().name.startswith(code)
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await admin.SetOffloadDeletionLag(
            admin_pb2.SetOffloadDeletionLagRequest(name=NAMESPACE, deletion_lag_ms=-1)
        )
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_offload_topic_and_status(setup: Setup) -> None:
    admin, broker = setup.admin, setup.broker
    topic = "persistent://public/default/off"
    await publish(broker, topic, 23)
    status = await admin.GetOffloadStatus(admin_pb2.GetOffloadStatusRequest(name=topic))
    assert status.status == admin_pb2.OFFLOAD_RUN_STATUS_NOT_RUN
    assert status.closed_ledgers == 4 and status.offloaded_ledgers == 0
    started = await admin.OffloadTopic(admin_pb2.OffloadTopicRequest(name=topic))
    assert started.status in (
        admin_pb2.OFFLOAD_RUN_STATUS_RUNNING,
        admin_pb2.OFFLOAD_RUN_STATUS_SUCCESS,
    )
    done = await wait_status(admin, topic, admin_pb2.OFFLOAD_RUN_STATUS_SUCCESS)
    assert done.trigger == "manual" and done.error == ""
    assert done.run_ledgers_offloaded == 4 and done.offloaded_ledgers == 4
    assert done.bookie_deleted_ledgers == 0  # the broker's lag is an hour
    assert done.offloaded_bytes > 0 and done.run_bytes_offloaded > done.offloaded_bytes

    # With a size threshold only the older ledgers go.
    other = "persistent://public/default/partly"
    await publish(broker, other, 23)
    await admin.OffloadTopic(
        admin_pb2.OffloadTopicRequest(name=other, size_threshold_bytes=2 * 5 * 160)
    )
    partly = await wait_status(admin, other, admin_pb2.OFFLOAD_RUN_STATUS_SUCCESS)
    assert 0 < partly.offloaded_ledgers < 4

    for request, code in (
        (admin_pb2.OffloadTopicRequest(name="persistent://public/default/missing"), "NOT_FOUND"),
        (admin_pb2.OffloadTopicRequest(name="a/b/c/d"), "INVALID_ARGUMENT"),
        (admin_pb2.OffloadTopicRequest(name=topic, size_threshold_bytes=-1), "INVALID_ARGUMENT"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await admin.OffloadTopic(request)
        assert failure.value.code().name == code


async def test_automatic_offload_from_the_namespace_threshold(setup: Setup) -> None:
    admin, broker = setup.admin, setup.broker
    await admin.SetOffloadThreshold(
        admin_pb2.SetOffloadThresholdRequest(name=NAMESPACE, threshold_bytes=0)
    )
    await admin.SetOffloadDeletionLag(
        admin_pb2.SetOffloadDeletionLagRequest(name=NAMESPACE, deletion_lag_ms=0)
    )
    topic = "persistent://public/default/auto"
    await publish(broker, topic, 12)  # two rollovers trigger passes
    async with asyncio.timeout(10):
        while True:
            await broker.run_housekeeping_once()
            status = await admin.GetOffloadStatus(admin_pb2.GetOffloadStatusRequest(name=topic))
            if status.bookie_deleted_ledgers == 2:
                break
            await asyncio.sleep(0.02)
    assert status.trigger == "automatic"
    loaded = await broker.get_topic(TopicName.parse(topic))
    for info in loaded.ledger.ledgers[:2]:
        assert info.ledger_id not in setup.bookie.entries


async def test_offload_needs_a_configured_offloader(tmp_path: Path) -> None:
    environment, resources = await start(tmp_path, offloading=False)
    try:
        await publish(environment.broker, "t", 3)
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await environment.admin.OffloadTopic(admin_pb2.OffloadTopicRequest(name="t"))
        assert failure.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "--offload-driver" in (failure.value.details() or "")
    finally:
        await stop(resources)
