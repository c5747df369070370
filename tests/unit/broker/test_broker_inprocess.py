"""The broker end to end in one process: real gRPC server, memory store and memory bookie
(and, for a client that stops reading, a Consume stream driven through a stand-in call)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from bookie.ledger import LedgerManager
from broker.config import BrokerConfig
from broker.consumer_stream import MAX_QUEUED_DELIVERIES, ConsumerStream
from broker.entry_format import stored_entry_for
from broker.server import start_broker_server
from broker.service import BrokerService
from strata.metadata import MetadataStore, open_metadata_store
from strata.naming import TopicName
from strata.v1 import admin_pb2, admin_pb2_grpc, messaging_pb2, messaging_pb2_grpc
from tests.unit.bookie.fake_bookies import FakeBookie


@dataclass
class Env:
    broker: BrokerService
    store: MetadataStore
    bookie: FakeBookie
    channel: grpc.aio.Channel
    messaging: Any
    admin: Any


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    store = await open_metadata_store("memory://")
    bookie = FakeBookie()
    ledgers = LedgerManager(store, lambda: [bookie.address], lambda _a: bookie)
    config = BrokerConfig(
        port=0,
        data_dir=tmp_path,
        managed_ledger_max_entries_per_ledger=5,
        managed_ledger_default_ensemble_size=1,
        managed_ledger_default_write_quorum=1,
        managed_ledger_default_ack_quorum=1,
    )
    # What Lookup answers in single-broker mode (no test dials it).
    broker = BrokerService(config, store, ledgers, advertised_address="127.0.0.1:6650")
    await broker.initialize_defaults()
    server, port, _ = await start_broker_server(broker, "127.0.0.1", 0)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Env(
            broker,
            store,
            bookie,
            channel,
            messaging_pb2_grpc.MessagingServiceStub(channel),
            admin_pb2_grpc.AdminServiceStub(channel),
        )
    finally:
        await channel.close()
        await server.stop(0)
        await broker.close()
        await store.close()


def batch(seq: int, payloads: list[bytes]) -> messaging_pb2.ProducerBatch:
    body = messaging_pb2.MessageBatch(payloads=payloads).SerializeToString()
    return messaging_pb2.ProducerBatch(
        sequence_id=seq, num_messages=len(payloads), uncompressed_size=len(body), payload=body
    )


async def produce(env: Env, topic: str, batches: list[list[bytes]]) -> list[Any]:
    call = env.messaging.Produce()
    await call.write(messaging_pb2.ProduceRequest(open=messaging_pb2.OpenProducer(topic=topic)))
    opened = await call.read()
    assert opened.HasField("opened")
    seq = 0
    for payloads in batches:
        await call.write(
            messaging_pb2.ProduceRequest(
                publish=messaging_pb2.PublishBatches(batches=[batch(seq, payloads)])
            )
        )
        seq += len(payloads)
    receipts: list[Any] = []
    while len(receipts) < len(batches):
        response = await call.read()
        receipts.extend(response.receipts.receipts)
    await call.done_writing()
    assert await call.read() == grpc.aio.EOF
    return receipts


async def test_produce_then_consume_across_rollover(env: Env) -> None:
    batches = [[f"m{i}-{j}".encode() for j in range(3)] for i in range(12)]
    receipts = await produce(env, "t1", batches)
    assert [r.sequence_id for r in receipts] == [3 * i for i in range(12)]
    assert len({r.ledger_id for r in receipts}) >= 3  # rolled every 5 entries

    call = env.messaging.Consume()
    await call.write(
        messaging_pb2.ConsumeRequest(
            subscribe=messaging_pb2.Subscribe(
                topic="t1",
                subscription="s",
                initial_position=messaging_pb2.INITIAL_POSITION_EARLIEST,
            )
        )
    )
    assert (await call.read()).HasField("subscribed")
    await call.write(messaging_pb2.ConsumeRequest(flow=messaging_pb2.Flow(permits=1000)))
    got: list[bytes] = []
    ids = []
    while len(got) < 36:
        response = await call.read()
        for delivery in response.deliveries.deliveries:
            stored = messaging_pb2.StoredEntry.FromString(delivery.entry)
            got.extend(messaging_pb2.MessageBatch.FromString(stored.payload).payloads)
            ids.append(
                messaging_pb2.MessageIdData(
                    ledger_id=delivery.ledger_id, entry_id=delivery.entry_id, batch_index=-1
                )
            )
    assert got == [p for b in batches for p in b]
    await call.write(
        messaging_pb2.ConsumeRequest(ack=messaging_pb2.Ack(message_ids=ids, request_id=7))
    )
    receipt = await call.read()
    assert receipt.ack_receipt.request_id == 7
    stats = await env.admin.GetTopicStats(admin_pb2.GetTopicStatsRequest(name="t1"))
    assert stats.subscriptions["s"].msg_backlog == 0
    call.cancel()
    await env.broker.run_housekeeping_once()
    assert len(env.broker.topics["persistent://public/default/t1"].ledger.ledgers) == 1


async def test_bad_input_gets_precise_status(env: Env) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await produce(env, "a/b/c/d", [[b"x"]])
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await produce(env, "nope/ns/t", [[b"x"]])
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    call = env.messaging.Consume()
    await call.write(
        messaging_pb2.ConsumeRequest(subscribe=messaging_pb2.Subscribe(topic="t", subscription=""))
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call.read()
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # The broker still serves.
    assert len(await produce(env, "ok", [[b"x"]])) == 1


async def test_admin_tenants_namespaces_topics(env: Env) -> None:
    await env.admin.CreateTenant(admin_pb2.CreateTenantRequest(tenant_id="acme"))
    await env.admin.CreateNamespace(
        admin_pb2.CreateNamespaceRequest(parent="tenants/acme", namespace_id="orders")
    )
    await env.admin.CreateTopic(admin_pb2.CreateTopicRequest(name="acme/orders/new"))
    topics = await env.admin.ListTopics(
        admin_pb2.ListTopicsRequest(parent="tenants/acme/namespaces/orders")
    )
    assert [t.name for t in topics.topics] == ["persistent://acme/orders/new"]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await env.admin.DeleteTenant(admin_pb2.DeleteTenantRequest(name="tenants/acme"))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    await env.admin.DeleteTenant(admin_pb2.DeleteTenantRequest(name="tenants/acme", force=True))
    tenants = await env.admin.ListTenants(admin_pb2.ListTenantsRequest())
    assert [t.name for t in tenants.tenants] == ["tenants/public"]


async def test_lookup_in_single_broker_mode(env: Env) -> None:
    found = await env.messaging.Lookup(messaging_pb2.LookupRequest(topic="t"))
    assert found.result == messaging_pb2.LookupResponse.CONNECT
    assert found.broker_address == "127.0.0.1:6650"
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await env.messaging.Lookup(messaging_pb2.LookupRequest(topic="public/nope/t"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await env.messaging.Lookup(messaging_pb2.LookupRequest(topic="a/b/c/d"))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# ---- a Consume stream whose client stops reading ---------------------------------------------

STALLED_ENTRIES = 3 * MAX_QUEUED_DELIVERIES


class StalledCall:
    """The server side of a Consume call whose client sends requests and stops reading: every
    write after ``subscribed`` blocks, as it does once the client's flow-control window is full."""

    def __init__(self) -> None:
        self.requests: asyncio.Queue[Any] = asyncio.Queue(maxsize=STALLED_ENTRIES + 2)
        self.written: list[messaging_pb2.ConsumeResponse] = []
        self.reading = asyncio.Event()  # set: the client reads again

    async def read(self) -> Any:
        return await self.requests.get()

    async def write(self, response: messaging_pb2.ConsumeResponse) -> None:
        if self.written:
            await self.reading.wait()
        self.written.append(response)


async def wait_until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


async def settle() -> None:
    """Give every ready task (the dispatcher, the stream's reader) many turns."""
    for _ in range(500):
        await asyncio.sleep(0)


async def test_a_consumer_that_stops_reading_holds_a_bounded_number_of_deliveries(
    env: Env,
) -> None:
    topic = await env.broker.get_topic(TopicName.parse("t"))
    for _ in range(STALLED_ENTRIES):
        await topic.publish(stored_entry_for("p", messaging_pb2.ProducerBatch(num_messages=1)), 1)
    call = StalledCall()
    context: grpc.aio.ServicerContext[Any, Any] = call  # type: ignore[assignment]
    stream = asyncio.ensure_future(ConsumerStream(env.broker, context).run())
    subscribe = messaging_pb2.Subscribe(
        topic="t", subscription="s", initial_position=messaging_pb2.INITIAL_POSITION_EARLIEST
    )
    await call.requests.put(messaging_pb2.ConsumeRequest(subscribe=subscribe))
    # One permit at a time, each used before the next: every grant makes the dispatcher send
    # one Deliveries message, until the queue holds MAX_QUEUED_DELIVERIES of them.
    for _ in range(STALLED_ENTRIES):
        await call.requests.put(messaging_pb2.ConsumeRequest(flow=messaging_pb2.Flow(permits=1)))
        await wait_until(call.requests.empty)
        await settle()
    session = topic.subscriptions["s"].consumers[0]
    # The writer holds one, the queue MAX_QUEUED_DELIVERIES; the other permits wait unused.
    assert len(session.pending) == MAX_QUEUED_DELIVERIES + 1
    assert session.permits == STALLED_ENTRIES - MAX_QUEUED_DELIVERIES - 1

    # The client reads again: the dispatcher is woken and the rest goes out, in log order.
    call.reading.set()

    def positions() -> list[tuple[int, int]]:
        return [(d.ledger_id, d.entry_id) for r in call.written for d in r.deliveries.deliveries]

    await wait_until(lambda: len(positions()) == STALLED_ENTRIES)
    assert positions() == sorted(set(positions()))
    await call.requests.put(grpc.aio.EOF)
    await stream
