"""The SDK against a fake cluster: several in-process brokers sharing topics and ownership.

``FakeCluster`` runs ``ClusterBroker``s (grpc.aio ``MessagingService`` servers on 127.0.0.1,
port 0) over one shared state: who owns each topic, the partition counts, every topic's
entries and every subscription's durable acknowledgements. Each broker answers ``Lookup``
with CONNECT when it owns the topic and REDIRECT (authoritative) to the owner otherwise,
refuses producers and consumers of topics it does not own with FAILED_PRECONDITION and a
``TOPIC_NOT_OWNED`` ErrorInfo (the wire contract of ``messaging.proto``), and can be killed
(``server.stop``), which ends its streams as a crash would. The tests check multi-broker
service URLs, redirects and their bound, TOPIC_NOT_OWNED handling, failover with resends in
order, consumer resumption from the durable cursor, and the channel pool.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio
import pytest
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

import strata
from broker.entry_format import num_messages_of, stored_entry_for
from strata.client import _batch
from strata.client._connection import ConnectionPool, parse_service_urls
from strata.client._errors import from_rpc_error
from strata.client._lookup import MAX_LOOKUP_REDIRECTS
from strata.client._producer import TopicProducer
from strata.naming import TopicName
from strata.v1 import messaging_pb2 as pb
from strata.v1 import messaging_pb2_grpc
from tests.harness import free_port

pytestmark = pytest.mark.timeout(60)

WAIT_TIMEOUT_S = 10.0


def canonical(topic: str) -> str:
    return str(TopicName.parse(topic))


async def wait_until(condition: Callable[[], bool], timeout_s: float = WAIT_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


@dataclass
class StoredEntryRecord:
    ledger_id: int
    entry_id: int
    entry: bytes  # as the broker stores it: broker.entry_format.stored_entry_for


@dataclass
class ConsumeRecord:
    """One consume stream a broker accepted: what the client sent on it."""

    subscribe: pb.Subscribe
    flows: list[int] = field(default_factory=list)
    acks: list[pb.Ack] = field(default_factory=list)
    redelivers: list[pb.RedeliverUnacknowledged] = field(default_factory=list)


class FakeCluster:
    """Brokers sharing ownership, partition counts, entries and durable acks."""

    def __init__(self) -> None:
        self.brokers: list[ClusterBroker] = []
        self.servers: dict[str, grpc.aio.Server] = {}
        self.owners: dict[str, str] = {}
        self.default_owner = ""
        # When False, TOPIC_NOT_OWNED carries no owner address (the client looks up again).
        self.tell_owner = True
        self.partitions: dict[str, int] = {}
        self.entries: dict[str, list[StoredEntryRecord]] = {}
        self.acked: dict[tuple[str, str], set[tuple[int, int]]] = {}
        self.watchers: set[asyncio.Event] = set()

    async def start_broker(self) -> ClusterBroker:
        broker = ClusterBroker(self, ledger_id=len(self.brokers) + 1)
        server = grpc.aio.server()
        messaging_pb2_grpc.add_MessagingServiceServicer_to_server(broker, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        broker.address = f"127.0.0.1:{port}"
        self.brokers.append(broker)
        self.servers[broker.address] = server
        if not self.default_owner:
            self.default_owner = broker.address
        return broker

    async def kill(self, broker: ClusterBroker) -> None:
        """Stop the broker's server at once: its streams end, its port refuses connections."""
        await self.servers.pop(broker.address).stop(grace=None)

    def owner_of(self, topic: str) -> str:
        return self.owners.get(topic, self.default_owner)

    def append(self, topic: str, ledger_id: int, entry: bytes) -> int:
        records = self.entries.setdefault(topic, [])
        entry_id = len(records)
        records.append(StoredEntryRecord(ledger_id, entry_id, entry))
        for watcher in self.watchers:
            watcher.set()
        return entry_id

    def add_entry(self, topic: str, payloads: list[bytes], ledger_id: int = 99) -> None:
        payload, size = _batch.encode_batch(payloads, None, pb.COMPRESSION_TYPE_NONE)
        batch = pb.ProducerBatch(
            sequence_id=len(self.entries.get(canonical(topic), [])),
            num_messages=len(payloads),
            compression=pb.COMPRESSION_TYPE_NONE,
            uncompressed_size=size,
            publish_time_ms=1234,
            payload=payload,
        )
        self.append(canonical(topic), ledger_id, stored_entry_for("seed", batch))

    async def close(self) -> None:
        for server in list(self.servers.values()):
            await server.stop(grace=None)
        self.servers.clear()


class ClusterBroker(messaging_pb2_grpc.MessagingServiceServicer):
    """One broker of a ``FakeCluster``; records what clients asked of it."""

    def __init__(self, cluster: FakeCluster, ledger_id: int) -> None:
        self.cluster = cluster
        self.ledger_id = ledger_id
        self.address = ""
        self.lookups: list[pb.LookupRequest] = []
        # Answers a lookup before the cluster's ownership does, when it returns one.
        self.lookup_override: Callable[[pb.LookupRequest], pb.LookupResponse | None] | None = None
        self.metadata_requests: list[str] = []
        self.opens: list[pb.OpenProducer] = []
        self.publish_requests: list[tuple[str, pb.PublishBatches]] = []
        self.hold_receipts = False
        self.consumes: list[ConsumeRecord] = []

    async def Lookup(self, request: pb.LookupRequest, context: Any) -> pb.LookupResponse:
        self.lookups.append(request)
        if self.lookup_override is not None:
            response = self.lookup_override(request)
            if response is not None:
                return response
        owner = self.cluster.owner_of(canonical(request.topic))
        if owner == self.address:
            return pb.LookupResponse(result=pb.LookupResponse.CONNECT, broker_address=owner)
        return pb.LookupResponse(
            result=pb.LookupResponse.REDIRECT, broker_address=owner, authoritative=True
        )

    async def GetPartitionedTopicMetadata(
        self, request: pb.PartitionedTopicMetadataRequest, context: Any
    ) -> pb.PartitionedTopicMetadata:
        self.metadata_requests.append(request.topic)
        return pb.PartitionedTopicMetadata(
            partitions=self.cluster.partitions.get(canonical(request.topic), 0)
        )

    async def GetTopicsOfNamespace(
        self, request: pb.GetTopicsOfNamespaceRequest, context: Any
    ) -> pb.GetTopicsOfNamespaceResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "topic listing is not implemented")
        raise AssertionError("unreachable")

    async def _refuse_unless_owner(self, topic: str, context: Any) -> None:
        owner = self.cluster.owner_of(topic)
        if owner == self.address:
            return
        info = error_details_pb2.ErrorInfo(
            reason="TOPIC_NOT_OWNED",
            domain="strata.io",
            metadata={"owner": owner} if self.cluster.tell_owner else {},
        )
        detail = any_pb2.Any()
        detail.Pack(info)
        status = rpc_status.to_status(
            status_pb2.Status(
                code=code_pb2.FAILED_PRECONDITION,
                message=f"broker: topic {topic} is not owned by {self.address}",
                details=[detail],
            )
        )
        await context.abort(status.code, status.details, status.trailing_metadata)

    # The context.read()/write() style of a grpc.aio stream handler returns None, which the
    # generated stub (typed for iterator handlers) does not know.
    async def Produce(self, request_iterator: Any, context: Any) -> None:  # type: ignore[override]
        first = await context.read()
        topic = canonical(first.open.topic)
        self.opens.append(first.open)
        await self._refuse_unless_owner(topic, context)
        name = first.open.producer_name or f"producer-{self.ledger_id}-{len(self.opens)}"
        await context.write(
            pb.ProduceResponse(
                opened=pb.ProducerOpened(topic=topic, producer_name=name, last_sequence_id=-1)
            )
        )
        while (request := await context.read()) is not grpc.aio.EOF:
            self.publish_requests.append((topic, request.publish))
            receipts = []
            for batch in request.publish.batches:
                entry_id = self.cluster.append(topic, self.ledger_id, stored_entry_for(name, batch))
                receipts.append(
                    pb.SendReceipt(
                        sequence_id=batch.sequence_id,
                        ledger_id=self.ledger_id,
                        entry_id=entry_id,
                        num_messages=batch.num_messages,
                    )
                )
            if not self.hold_receipts:
                await context.write(pb.ProduceResponse(receipts=pb.SendReceipts(receipts=receipts)))

    async def Consume(self, request_iterator: Any, context: Any) -> None:  # type: ignore[override]
        first = await context.read()
        subscribe = first.subscribe
        topic = canonical(subscribe.topic)
        await self._refuse_unless_owner(topic, context)
        record = ConsumeRecord(subscribe)
        self.consumes.append(record)
        acked = self.cluster.acked.setdefault((topic, subscribe.subscription), set())
        write_lock = asyncio.Lock()
        wakeup = asyncio.Event()
        sent: set[tuple[int, int]] = set()
        permits = 0
        await context.write(
            pb.ConsumeResponse(
                subscribed=pb.Subscribed(
                    topic=topic,
                    subscription=subscribe.subscription,
                    consumer_name=subscribe.consumer_name or f"consumer-{self.ledger_id}",
                )
            )
        )

        async def dispatch() -> None:
            # Everything not acknowledged and not yet sent on this stream, in log order:
            # a new stream starts again from the durable cursor.
            nonlocal permits
            while True:
                await wakeup.wait()
                wakeup.clear()
                batch = []
                for stored in self.cluster.entries.get(topic, []):
                    if permits <= 0:
                        break
                    position = (stored.ledger_id, stored.entry_id)
                    if position in acked or position in sent:
                        continue
                    sent.add(position)
                    permits -= num_messages_of(stored.entry)
                    batch.append(
                        pb.Delivery(
                            ledger_id=stored.ledger_id,
                            entry_id=stored.entry_id,
                            entry=stored.entry,
                        )
                    )
                if batch:
                    async with write_lock:
                        await context.write(
                            pb.ConsumeResponse(deliveries=pb.Deliveries(deliveries=batch))
                        )

        self.cluster.watchers.add(wakeup)
        dispatcher = asyncio.ensure_future(dispatch())
        try:
            while (request := await context.read()) is not grpc.aio.EOF:
                kind = request.WhichOneof("request")
                if kind == "flow":
                    record.flows.append(request.flow.permits)
                    permits += request.flow.permits
                    wakeup.set()
                elif kind == "ack":
                    record.acks.append(request.ack)
                    for message_id in request.ack.message_ids:
                        if message_id.batch_index < 0:
                            acked.add((message_id.ledger_id, message_id.entry_id))
                    if request.ack.request_id:
                        async with write_lock:
                            await context.write(
                                pb.ConsumeResponse(
                                    ack_receipt=pb.AckReceipt(request_id=request.ack.request_id)
                                )
                            )
                elif kind == "redeliver":
                    record.redelivers.append(request.redeliver)
                    for message_id in request.redeliver.message_ids:
                        sent.discard((message_id.ledger_id, message_id.entry_id))
                    wakeup.set()
        finally:
            self.cluster.watchers.discard(wakeup)
            dispatcher.cancel()
            await asyncio.gather(dispatcher, return_exceptions=True)


@pytest.fixture
async def cluster() -> AsyncIterator[FakeCluster]:
    fake = FakeCluster()
    try:
        yield fake
    finally:
        await fake.close()


def dead_address() -> str:
    """A loopback address nothing listens on: connections are refused."""
    return f"127.0.0.1:{free_port()}"


# ------------------------------------------------------------------- service URLs


def test_service_url_lists() -> None:
    assert parse_service_urls("a:1") == ("a:1",)
    assert parse_service_urls("pulsar://a:1,b:2") == ("a:1", "b:2")
    assert parse_service_urls(" grpc://a:1 , grpc://b ,a:1") == ("a:1", "b:6650")
    assert parse_service_urls("pulsar://[::1]:7000,host") == ("[::1]:7000", "host:6650")
    for bad in ("", "a:1,,b:2", "http://a:1", "a:1,https://b:2", "a:x", "a:1/path"):
        with pytest.raises(strata.InvalidArgument):
            parse_service_urls(bad)
    client = strata.AsyncClient("pulsar://a:1,b:2")
    assert client.service_targets == ("a:1", "b:2")
    assert client.service_target == "a:1"


# -------------------------------------------------------------------- lookup


async def test_lookup_falls_back_to_the_next_broker_of_the_service_url(
    cluster: FakeCluster,
) -> None:
    broker = await cluster.start_broker()
    url = f"pulsar://{dead_address()},{dead_address()},{broker.address}"
    async with strata.AsyncClient(url, operation_timeout_seconds=5) as client:
        assert await client.lookup_topic("t") == broker.address
        producer = await client.create_producer("t")
        message_id = await producer.send(b"hello")
        assert message_id == strata.MessageId(broker.ledger_id, 0, -1, -1)
        # The live broker is asked first from now on.
        lookups = len(broker.lookups)
        assert await client.lookup_topic("t") == broker.address
        assert len(broker.lookups) == lookups + 1


async def test_lookup_fails_when_no_broker_answers() -> None:
    async with strata.AsyncClient(
        f"{dead_address()},{dead_address()}", operation_timeout_seconds=2
    ) as client:
        with pytest.raises(strata.ServiceUnavailable, match="no broker of"):
            await client.lookup_topic("t")
        started = time.monotonic()
        with pytest.raises(strata.ServiceUnavailable):
            await client.create_producer("t")
        # Retried with backoff, within the operation timeout.
        assert 1 < time.monotonic() - started < 3


async def test_lookup_follows_redirects_and_passes_authoritative(cluster: FakeCluster) -> None:
    first = await cluster.start_broker()
    owner = await cluster.start_broker()
    cluster.owners[canonical("t")] = owner.address
    async with strata.AsyncClient(first.address) as client:
        assert await client.lookup_topic("t") == owner.address
        producer = await client.create_producer("t")
        await producer.send(b"x")
        consumer = await client.subscribe(
            "t", "s", initial_position=strata.InitialPosition.Earliest
        )
        assert (await consumer.receive(timeout_millis=5000)).data() == b"x"
    assert [lookup.authoritative for lookup in first.lookups] == [False] * len(first.lookups)
    assert owner.lookups and all(lookup.authoritative for lookup in owner.lookups)
    # Nothing was opened on the broker that does not own the topic.
    assert first.opens == [] and first.consumes == []
    assert len(owner.opens) == 1 and len(owner.consumes) == 1


async def test_lookup_follows_at_most_20_redirects(cluster: FakeCluster) -> None:
    a = await cluster.start_broker()
    b = await cluster.start_broker()

    def redirect_to(target: ClusterBroker) -> Callable[[pb.LookupRequest], pb.LookupResponse]:
        def answer(request: pb.LookupRequest) -> pb.LookupResponse:
            return pb.LookupResponse(
                result=pb.LookupResponse.REDIRECT, broker_address=target.address
            )

        return answer

    a.lookup_override = redirect_to(b)
    b.lookup_override = redirect_to(a)
    async with strata.AsyncClient(a.address) as client:
        with pytest.raises(strata.ServiceUnavailable, match="redirected more than 20 times"):
            await client.lookup_topic("t")
    # The first question, then exactly 20 redirects followed.
    assert len(a.lookups) + len(b.lookups) == MAX_LOOKUP_REDIRECTS + 1

    # A chain of exactly 20 redirects still succeeds.
    hops = 0

    def chain(request: pb.LookupRequest) -> pb.LookupResponse:
        nonlocal hops
        hops += 1
        if hops <= MAX_LOOKUP_REDIRECTS:
            return pb.LookupResponse(result=pb.LookupResponse.REDIRECT, broker_address=a.address)
        return pb.LookupResponse(result=pb.LookupResponse.CONNECT, broker_address=a.address)

    a.lookup_override = chain
    async with strata.AsyncClient(a.address) as client:
        assert await client.lookup_topic("t") == a.address


# ------------------------------------------------------------- TOPIC_NOT_OWNED


def stale_connect(broker: ClusterBroker, times: int) -> None:
    """Make ``broker`` claim every topic in its first ``times`` lookup answers."""
    remaining = times

    def answer(request: pb.LookupRequest) -> pb.LookupResponse | None:
        nonlocal remaining
        if remaining <= 0:
            return None
        remaining -= 1
        return pb.LookupResponse(result=pb.LookupResponse.CONNECT, broker_address=broker.address)

    broker.lookup_override = answer


async def test_topic_not_owned_goes_to_the_owner_named_in_the_details(
    cluster: FakeCluster,
) -> None:
    stale = await cluster.start_broker()
    owner = await cluster.start_broker()
    cluster.owners[canonical("t")] = owner.address
    stale_connect(stale, times=100)  # its lookups stay wrong: only the details can help
    async with strata.AsyncClient(stale.address) as client:
        producer = await client.create_producer("t")
        assert await producer.send(b"m") == strata.MessageId(owner.ledger_id, 0, -1, -1)
        consumer = await client.subscribe(
            "t", "s", initial_position=strata.InitialPosition.Earliest
        )
        assert (await consumer.receive(timeout_millis=5000)).data() == b"m"
    # Refused once each on the stale broker, then straight to the owner without a lookup.
    assert len(stale.opens) == 1 and len(owner.opens) == 1
    assert len(stale.lookups) == 2  # one per stream
    assert len(owner.lookups) == 0


async def test_topic_not_owned_without_an_owner_looks_up_again(cluster: FakeCluster) -> None:
    stale = await cluster.start_broker()
    owner = await cluster.start_broker()
    cluster.owners[canonical("t")] = owner.address
    cluster.tell_owner = False
    stale_connect(stale, times=1)
    async with strata.AsyncClient(stale.address) as client:
        producer = await client.create_producer("t")
        await producer.send(b"m")
    assert len(stale.opens) == 1 and len(owner.opens) == 1
    assert len(stale.lookups) == 2  # the stale answer, then the redirect to the owner


async def test_topic_not_owned_error_carries_the_owner(cluster: FakeCluster) -> None:
    broker = await cluster.start_broker()
    cluster.default_owner = "10.0.0.9:6650"
    async with grpc.aio.insecure_channel(broker.address) as channel:
        call = messaging_pb2_grpc.MessagingServiceStub(channel).Produce()
        await call.write(pb.ProduceRequest(open=pb.OpenProducer(topic="t")))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call.read()
    error = from_rpc_error(info.value)
    assert isinstance(error, strata.TopicNotOwned)
    assert isinstance(error, strata.FailedPrecondition)
    assert error.retriable
    assert error.owner == "10.0.0.9:6650"
    assert error.result is strata.Result.TopicNotOwned


# ---------------------------------------------------------------- failover


async def test_producer_fails_over_and_resends_pending_in_order(cluster: FakeCluster) -> None:
    first = await cluster.start_broker()
    second = await cluster.start_broker()
    results: list[tuple[int, strata.Result, strata.MessageId | None]] = []

    def on_receipt(index: int) -> Callable[[strata.Result, strata.MessageId | None], None]:
        def callback(result: strata.Result, message_id: strata.MessageId | None) -> None:
            results.append((index, result, message_id))

        return callback

    url = f"{first.address},{second.address}"
    async with strata.AsyncClient(url) as client:
        producer = await client.create_producer(
            "t", batching_max_messages=50, max_pending_messages=2000
        )
        assert isinstance(producer, TopicProducer)
        for index in range(300):
            producer.send_nowait(b"%d" % index, callback=on_receipt(index))
        await producer.flush()
        # The next messages reach the first broker, which stores them but dies before its
        # receipts go out: they are pending when the stream breaks.
        first.hold_receipts = True
        futures = [await producer.send_async(b"%d" % i) for i in range(300, 1000)]
        for index in range(1000, 1200):
            producer.send_nowait(b"%d" % index, callback=on_receipt(index))
        await wait_until(lambda: producer.pending_messages == 900 and not producer._unsent)
        cluster.default_owner = second.address
        await cluster.kill(first)
        ids = await asyncio.wait_for(asyncio.gather(*futures), WAIT_TIMEOUT_S)
        await producer.flush()
        assert producer.is_connected()
        assert producer.topic() == canonical("t")
    # Every receipt came back, in send order, with ids in publish order.
    assert [index for index, _, _ in results] == list(range(300)) + list(range(1000, 1200))
    assert all(result is strata.Result.Ok for _, result, _ in results)
    in_send_order = [m for _, _, m in results[:300]] + ids + [m for _, _, m in results[300:]]
    all_ids = [m for m in in_send_order if m is not None]
    assert len(all_ids) == 1200
    assert all(a < b for a, b in itertools.pairwise(all_ids))
    assert {m.ledger_id() for m in ids} == {second.ledger_id}
    # The second broker got the pending batches again, first to last, in sequence order.
    resent = [b.sequence_id for _, request in second.publish_requests for b in request.batches]
    assert resent == sorted(resent)
    assert resent[0] == 300
    # Nothing was lost: every message is on the topic, in order, after at-least-once copies.
    stored = [
        payload
        for record in cluster.entries[canonical("t")]
        if record.ledger_id == second.ledger_id
        for payload in _batch.decode_entry(record.entry).payloads
    ]
    assert stored == [b"%d" % i for i in range(300, 1200)]


async def test_producer_gives_up_when_the_send_timeout_passed(cluster: FakeCluster) -> None:
    broker = await cluster.start_broker()
    async with strata.AsyncClient(broker.address, operation_timeout_seconds=5) as client:
        producer = await client.create_producer("t", send_timeout_millis=300)
        assert isinstance(producer, TopicProducer)
        await producer.send(b"before")
        await cluster.kill(broker)
        started = time.monotonic()
        with pytest.raises(strata.Timeout):
            await producer.send(b"lost")
        assert time.monotonic() - started < 2
        # With nothing pending and the stream down for longer than the send timeout, the
        # reconnect loop stops and the producer fails.
        await wait_until(lambda: producer._failure is not None, timeout_s=5)
        with pytest.raises(strata.ServiceUnavailable):
            producer.send_nowait(b"after")
        with pytest.raises(strata.ServiceUnavailable):
            await producer.flush()


async def test_consumer_resumes_from_the_durable_cursor_on_the_new_owner(
    cluster: FakeCluster,
) -> None:
    first = await cluster.start_broker()
    second = await cluster.start_broker()
    for i in range(20):
        cluster.add_entry("t", [b"%d" % i])
    async with strata.AsyncClient(f"{first.address},{second.address}") as client:
        consumer = await client.subscribe("t", "s", receiver_queue_size=10)
        received: list[strata.Message] = []
        while len(received) < 10:
            received += await consumer.receive_many(10 - len(received), timeout_millis=5000)
        assert [m.data() for m in received] == [b"%d" % i for i in range(10)]
        consumer.acknowledge_many(received[:5])
        await consumer.flush_acknowledgements()
        cluster.default_owner = second.address
        await cluster.kill(first)
        after: list[strata.Message] = []
        while not {b"%d" % i for i in range(5, 20)} <= {m.data() for m in after}:
            messages = await consumer.receive_many(100, timeout_millis=5000)
            consumer.acknowledge_many(messages)
            after += messages
        await consumer.flush_acknowledgements()
        assert consumer.is_connected()
        with pytest.raises(strata.Timeout):
            await consumer.receive(timeout_millis=100)
    # Received but unacknowledged messages (5..9) come again from the new owner, in order
    # from the cursor; acknowledged ones (0..4) never do. (Messages the old broker had
    # delivered before it died may also be taken before the new stream replaces them:
    # at-least-once.)
    data = [m.data() for m in after]
    assert not {b"%d" % i for i in range(5)} & set(data)
    redelivered = data[data.index(b"5") :]
    assert redelivered[:5] == [b"%d" % i for i in range(5, 10)]
    assert redelivered == sorted(redelivered, key=int)
    assert len(second.consumes) == 1
    assert second.consumes[0].flows[0] == 10


async def test_consumer_reconnects_after_topic_not_owned(cluster: FakeCluster) -> None:
    stale = await cluster.start_broker()
    owner = await cluster.start_broker()
    cluster.owners[canonical("t")] = owner.address
    cluster.add_entry("t", [b"a", b"b"])
    stale_connect(stale, times=1)
    async with strata.AsyncClient(stale.address) as client:
        consumer = await client.subscribe("t", "s")
        messages = await consumer.receive_many(10, timeout_millis=5000)
        assert [m.data() for m in messages] == [b"a", b"b"]
    assert stale.consumes == [] and len(owner.consumes) == 1


# ------------------------------------------------------------ the channel pool


async def test_channels_are_shared_per_broker(cluster: FakeCluster) -> None:
    a = await cluster.start_broker()
    b = await cluster.start_broker()
    cluster.owners[canonical("on-b")] = b.address
    async with strata.AsyncClient(a.address) as client:
        producers = [await client.create_producer(topic) for topic in ("x", "y", "on-b")]
        await client.subscribe("x", "s")
        for producer in producers:
            await producer.send(b"m")
        pool = client._pool
        assert pool is not None
        assert pool.open_channels == 2  # a (service broker and owner) and b
    assert client._pool is None


async def test_pool_is_bounded_and_closes_idle_channels_first() -> None:
    pool = ConnectionPool(("127.0.0.1:1",), operation_timeout_s=1, max_broker_channels=2)
    try:
        first = await pool.acquire("127.0.0.1:1")
        second = await pool.acquire("127.0.0.1:2")
        assert await pool.acquire("127.0.0.1:1") is first  # shared, not a new channel
        pool.release(first)
        pool.release(first)
        third = await pool.acquire("127.0.0.1:3")  # the idle one makes room
        assert pool.open_channels == 2
        with pytest.raises(strata.ResourceExhausted):
            await pool.acquire("127.0.0.1:4")
        pool.release(second)
        pool.release(third)
        again = await pool.acquire("127.0.0.1:1")
        assert again is not first
        pool.release(again)
    finally:
        await pool.close()


async def test_sync_client_lookup_and_partitions(cluster: FakeCluster) -> None:
    broker = await cluster.start_broker()
    cluster.partitions[canonical("p")] = 3

    def use() -> tuple[str, list[str], list[str]]:
        with strata.Client(f"{dead_address()},{broker.address}") as client:
            return (
                client.lookup_topic("p-partition-1"),
                client.get_topic_partitions("p"),
                client.get_topic_partitions("plain"),
            )

    owner, partitions, plain = await asyncio.to_thread(use)
    assert owner == broker.address
    assert partitions == [canonical(f"p-partition-{i}") for i in range(3)]
    assert plain == [canonical("plain")]
