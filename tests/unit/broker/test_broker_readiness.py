"""A cluster broker's health: NOT_SERVING until it has joined the cluster, then SERVING, and
NOT_SERVING again once it starts leaving (what readiness probes read)."""

from __future__ import annotations

from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bookie.ledger import LedgerManager
from broker.config import BrokerConfig
from broker.server import BROKER_SERVICE_NAMES, bind_broker_server, report_ready, serve_broker
from broker.service import BrokerService
from strata.metadata import open_metadata_store
from tests.unit.bookie.fake_bookies import FakeBookie

NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVING = health_pb2.HealthCheckResponse.SERVING


async def test_not_ready_until_reported_then_not_ready_when_leaving(tmp_path: Path) -> None:
    store = await open_metadata_store("memory://")
    bookies = {"b1": FakeBookie("b1")}
    ledgers = LedgerManager(store, lambda: sorted(bookies), bookies.__getitem__)
    broker = BrokerService(BrokerConfig(port=0, data_dir=tmp_path), store, ledgers)
    server, port = bind_broker_server("127.0.0.1", 0, broker.config.max_message_size_bytes)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    stub = health_pb2_grpc.HealthStub(channel)

    async def statuses() -> list[int]:
        names = ("", *BROKER_SERVICE_NAMES)
        return [
            (await stub.Check(health_pb2.HealthCheckRequest(service=name))).status for name in names
        ]

    try:
        health = await serve_broker(server, broker, ready=False)
        assert await statuses() == [NOT_SERVING] * 3
        await report_ready(health)
        assert await statuses() == [SERVING] * 3
        await health.enter_graceful_shutdown()
        assert await statuses() == [NOT_SERVING] * 3
    finally:
        await channel.close()
        await server.stop(0)
        await broker.close()
        await store.close()
