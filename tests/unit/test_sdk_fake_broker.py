"""The SDK against a fake broker: a test double of the remote peer, speaking the wire contract.

``FakeBroker`` is a small grpc.aio ``MessagingService`` on 127.0.0.1, port 0. It stores each
published batch with the broker's own codec (``broker.entry_format.stored_entry_for``), so
the SDK reads the bytes a real broker stores; it answers receipts in order, delivers entries
against flow permits, and records every request so that the tests can check what the SDK put
on the wire: batching, flow permits and their refill, skipped batch indexes, grouped acks,
ack receipts, negative acks and reconnects.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio
import pytest

import strata
from broker.entry_format import num_messages_of, stored_entry_for
from strata.client import _batch
from strata.client._errors import STATUS_TO_EXCEPTION, exception_for_status, from_rpc_error
from strata.naming import TopicName
from strata.v1 import messaging_pb2 as pb
from strata.v1 import messaging_pb2_grpc

pytestmark = pytest.mark.timeout(30)


@dataclass
class ConsumerRecord:
    subscribe: pb.Subscribe
    flows: list[int] = field(default_factory=list)
    acks: list[pb.Ack] = field(default_factory=list)
    redelivers: list[pb.RedeliverUnacknowledged] = field(default_factory=list)


class FakeBroker(messaging_pb2_grpc.MessagingServiceServicer):
    """Just enough of the broker's side of ``messaging.proto`` to test the SDK against."""

    async def Lookup(
        self, request: pb.LookupRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.LookupResponse:
        # Like a broker of the first release: no lookup, it serves every topic itself.
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Lookup is not implemented")
        raise AssertionError("unreachable")

    async def GetPartitionedTopicMetadata(
        self,
        request: pb.PartitionedTopicMetadataRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> pb.PartitionedTopicMetadata:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "partitioned topics are not implemented")
        raise AssertionError("unreachable")

    async def GetTopicsOfNamespace(
        self,
        request: pb.GetTopicsOfNamespaceRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> pb.GetTopicsOfNamespaceResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "topic listing is not implemented")
        raise AssertionError("unreachable")

    def __init__(self) -> None:
        self.ledger_id = 7
        self.entries: dict[str, list[bytes]] = {}  # topic → stored entries
        self.last_sequence_id = -1
        self.max_message_size_bytes = 5 * 1024 * 1024
        self.opens: list[pb.OpenProducer] = []
        self.publish_requests: list[pb.PublishBatches] = []
        # Status codes for the next opens to fail with, and after how many publish requests
        # an open stream fails with UNAVAILABLE (without a receipt for that request).
        self.open_failures: list[tuple[grpc.StatusCode, str]] = []
        self.fail_stream_after_requests: int | None = None
        self.hold_receipts = False
        self.held: list[tuple[Any, pb.ProduceResponse]] = []
        # Consume side.
        self.consumers: list[ConsumerRecord] = []
        self.exclusive_owners: set[tuple[str, str]] = set()
        self.deliveries: dict[str, list[pb.Delivery]] = {}
        self.receipt_delay_s = 0.0
        # After this many Ack requests on a stream, that stream fails with UNAVAILABLE.
        self.fail_consume_after_acks: int | None = None

    # -- produce -------------------------------------------------------------------

    # The context.read()/write() style of a grpc.aio stream handler returns None, which the
    # generated stub (typed for iterator handlers) does not know.
    async def Produce(self, request_iterator: Any, context: Any) -> None:  # type: ignore[override]
        first = await context.read()
        if self.open_failures:
            code, details = self.open_failures.pop(0)
            await context.abort(code, details)
        self.opens.append(first.open)
        topic = str(TopicName.parse(first.open.topic))
        name = first.open.producer_name or f"fake-{len(self.opens)}"
        await context.write(
            pb.ProduceResponse(
                opened=pb.ProducerOpened(
                    topic=topic,
                    producer_name=name,
                    last_sequence_id=self.last_sequence_id,
                    max_message_size_bytes=self.max_message_size_bytes,
                )
            )
        )
        entries = self.entries.setdefault(topic, [])
        requests_on_stream = 0
        while (request := await context.read()) is not grpc.aio.EOF:
            self.publish_requests.append(request.publish)
            requests_on_stream += 1
            if (
                self.fail_stream_after_requests is not None
                and requests_on_stream >= self.fail_stream_after_requests
            ):
                self.fail_stream_after_requests = None
                await context.abort(grpc.StatusCode.UNAVAILABLE, "broker restarting")
            receipts = []
            for batch in request.publish.batches:
                entries.append(stored_entry_for(name, batch))
                receipts.append(
                    pb.SendReceipt(
                        sequence_id=batch.sequence_id,
                        ledger_id=self.ledger_id,
                        entry_id=len(entries) - 1,
                        num_messages=batch.num_messages,
                    )
                )
            response = pb.ProduceResponse(receipts=pb.SendReceipts(receipts=receipts))
            if self.hold_receipts:
                self.held.append((context, response))
            else:
                await context.write(response)

    async def release_receipts(self) -> None:
        self.hold_receipts = False
        held, self.held = self.held, []
        for context, response in held:
            await context.write(response)

    # -- consume -------------------------------------------------------------------

    def add_entry(
        self,
        topic: str,
        payloads: list[bytes],
        acked_indexes: list[int] | None = None,
        metadata: list[pb.SingleMessageMetadata] | None = None,
        compression: int = pb.COMPRESSION_TYPE_NONE,
    ) -> None:
        """Queue one entry for delivery to the next consumer of ``topic``."""
        topic = str(TopicName.parse(topic))
        payload, size = _batch.encode_batch(payloads, metadata, compression)
        queue = self.deliveries.setdefault(topic, [])
        batch = pb.ProducerBatch(
            sequence_id=len(queue),
            num_messages=len(payloads),
            compression=compression,  # type: ignore[arg-type]
            uncompressed_size=size,
            publish_time_ms=1234,
            payload=payload,
        )
        queue.append(
            pb.Delivery(
                ledger_id=self.ledger_id,
                entry_id=len(queue),
                entry=stored_entry_for("p", batch),
                acked_batch_indexes=_batch.bitset_words(acked_indexes or []),
            )
        )

    async def Consume(self, request_iterator: Any, context: Any) -> None:  # type: ignore[override]
        first = await context.read()
        subscribe = first.subscribe
        topic = str(TopicName.parse(subscribe.topic))
        key = (topic, subscribe.subscription)
        if subscribe.type != pb.SUBSCRIPTION_TYPE_SHARED:
            if key in self.exclusive_owners:
                await context.abort(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"exclusive subscription {subscribe.subscription} already has a consumer",
                )
            self.exclusive_owners.add(key)
        record = ConsumerRecord(subscribe)
        self.consumers.append(record)
        try:
            await context.write(
                pb.ConsumeResponse(
                    subscribed=pb.Subscribed(
                        topic=topic,
                        subscription=subscribe.subscription,
                        consumer_name=subscribe.consumer_name or "fake-consumer",
                    )
                )
            )
            permits = 0
            queue = self.deliveries.setdefault(topic, [])
            while (request := await context.read()) is not grpc.aio.EOF:
                kind = request.WhichOneof("request")
                if kind == "flow":
                    record.flows.append(request.flow.permits)
                    permits += request.flow.permits
                elif kind == "ack":
                    record.acks.append(request.ack)
                    if (
                        self.fail_consume_after_acks is not None
                        and len(record.acks) >= self.fail_consume_after_acks
                    ):
                        self.fail_consume_after_acks = None
                        await context.abort(grpc.StatusCode.UNAVAILABLE, "broker restarting")
                    if request.ack.request_id:
                        await asyncio.sleep(self.receipt_delay_s)
                        await context.write(
                            pb.ConsumeResponse(
                                ack_receipt=pb.AckReceipt(request_id=request.ack.request_id)
                            )
                        )
                elif kind == "redeliver":
                    record.redelivers.append(request.redeliver)
                # Like pulsar, an entry goes out while any permit is left, and costs as many
                # permits as it holds messages.
                batch: list[pb.Delivery] = []
                while permits > 0 and queue:
                    delivery = queue.pop(0)
                    batch.append(delivery)
                    permits -= num_messages_of(delivery.entry)
                if batch:
                    await context.write(
                        pb.ConsumeResponse(deliveries=pb.Deliveries(deliveries=batch))
                    )
        finally:
            self.exclusive_owners.discard(key)


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeBroker, str]]:
    broker = FakeBroker()
    server = grpc.aio.server()
    messaging_pb2_grpc.add_MessagingServiceServicer_to_server(broker, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield broker, f"127.0.0.1:{port}"
    finally:
        await server.stop(grace=None)


def decode_published(batch: pb.ProducerBatch) -> tuple[list[bytes], list[pb.SingleMessageMetadata]]:
    raw = _batch.decompress(batch.payload, batch.compression, batch.uncompressed_size)
    return _batch.decode_message_batch(raw, batch.num_messages)


async def wait_until(condition: Any, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


# ---------------------------------------------------------------------- producer


def published_batch_sizes(broker: FakeBroker) -> list[int]:
    """How many messages each published batch held, in the order they reached the broker."""
    return [b.num_messages for request in broker.publish_requests for b in request.batches]


async def test_send_async_messages_share_one_batch(fake: tuple[FakeBroker, str]) -> None:
    broker, url = fake
    broker.last_sequence_id = 41
    async with strata.AsyncClient(url) as client:
        producer = await client.create_producer("t", batching_max_publish_delay_ms=50)
        assert producer.topic() == "persistent://public/default/t"
        assert producer.producer_name() == "fake-1"
        futures = [await producer.send_async(b"m%d" % i) for i in range(100)]
        ids = await asyncio.gather(*futures)
    batches = [b for request in broker.publish_requests for b in request.batches]
    assert len(batches) == 1
    assert batches[0].sequence_id == 42  # last_sequence_id + 1
    assert batches[0].num_messages == 100
    payloads, metadata = decode_published(batches[0])
    assert payloads == [b"m%d" % i for i in range(100)]
    assert metadata == []  # no message carried metadata: the column stays empty
    assert ids == [strata.MessageId(7, 0, i, -1) for i in range(100)]
    assert ids[5].batch_size() == 100


async def test_batch_is_sealed_by_count_and_size(fake: tuple[FakeBroker, str]) -> None:
    broker, url = fake
    async with strata.AsyncClient(url) as client:
        producer = await client.create_producer(
            "t",
            batching_max_messages=10,
            batching_max_allowed_size_in_bytes=10_000,
            batching_max_publish_delay_ms=1000,
        )
        for _ in range(25):
            producer.send_nowait(b"x")
        for _ in range(3):
            producer.send_nowait(b"y" * 4000)
        await producer.flush()
    counts = published_batch_sizes(broker)
    assert counts == [10, 10, 7, 1]  # 5 small + 2 large fit in 10,000 bytes; a third does not
    sequence_ids = [b.sequence_id for request in broker.publish_requests for b in request.batches]
    assert sequence_ids == [0, 10, 20, 27]


async def test_batch_delay_is_a_maximum_not_a_wait(fake: tuple[FakeBroker, str]) -> None:
    broker, url = fake
    started = time.monotonic()
    async with strata.AsyncClient(url) as client:
        producer = await client.create_producer("t", batching_max_publish_delay_ms=10_000)
        # Nothing in flight: the message goes at the end of this event-loop pass.
        await producer.send(b"alone")
        broker.hold_receipts = True
        first = await producer.send_async(b"a")
        await wait_until(lambda: len(broker.held) == 1)
        # Behind a batch in flight, messages gather...
        later = [await producer.send_async(b"c%d" % i) for i in range(4)]
        await asyncio.sleep(0.05)
        assert len(broker.publish_requests) == 2
        # ...and go as soon as its receipt comes, not after 10 s.
        await broker.release_receipts()
        await asyncio.gather(first, *later)
    assert time.monotonic() - started < 5
    counts = published_batch_sizes(broker)
    assert counts == [1, 1, 4]


async def test_batch_delay_bounds_the_wait_for_a_slow_receipt(
    fake: tuple[FakeBroker, str],
) -> None:
    broker, url = fake
    broker.hold_receipts = True
    async with strata.AsyncClient(url) as client:
        producer = await client.create_producer("t", batching_max_publish_delay_ms=50)
        first = await producer.send_async(b"a")
        await wait_until(lambda: len(broker.held) == 1)
        waited_from = time.monotonic()
        second = await producer.send_async(b"b")
        # No receipt comes: the delay sends the open batch anyway (pipelined behind "a").
        await wait_until(lambda: len(broker.held) == 2)
        assert time.monotonic() - waited_from >= 0.04
        await broker.release_receipts()
        await asyncio.gather(first, second)
    counts = published_batch_sizes(broker)
    assert counts == [1, 1]


async def test_full_batches_do_not_wait_for_receipts(fake: tuple[FakeBroker, str]) -> None:
    broker, url = fake
    broker.hold_receipts = True
    async with strata.AsyncClient(url) as client:
        producer = await client.create_producer(
            "t", batching_max_messages=5, batching_max_publish_delay_ms=10_000
        )
        futures = [await producer.send_async(b"%d" % i) for i in range(20)]
        # Four full batches are in flight at once: the throughput case keeps its pipeline.
        await wait_until(lambda: sum(len(r.receipts.receipts) for _, r in broker.held) == 4)
        await broker.release_receipts()
        await asyncio.gather(*futures)
    counts = published_batch_sizes(broker)
    assert counts == [5, 5, 5, 5]


async def test_unbatched_messages_have_batch_index_minus_one(fake: tuple[FakeBroker, str]) -> None:
    broker, url = fake
    async with strata.AsyncClient(url) as client:
        producer = await client.create_producer("t", batching_enabled=False)
        futures = [await producer.send_async(b"%d" % i) for i in range(20)]
        ids = await asyncio.gather(*futures)
    assert ids == [strata.MessageId(7, i, -1, -1) for i in range(20)]
    batches = [b for request in broker.publish_requests for b in request.batches]
    assert [b.num_messages for b in batches] == [1] * 20
    # The writer packs batches that are ready together into fewer requests.
    assert len(broker.publish_requests) < 20


async def test_metadata_and_compression_on_the_wire(fake: tuple[FakeBroker, str]) -> None:
    broker, url = fake
    async with strata.AsyncClient(url) as client:
        producer = await client.create_producer(
            "t", compression_type=strata.CompressionType.LZ4, batching_max_publish_delay_ms=50
        )
        first = await producer.send_async(b"plain")
        second = await producer.send_async(
            b"keyed", properties={"a": "1"}, partition_key="k", event_timestamp=99
        )
        await asyncio.gather(first, second)
    (batch,) = [b for request in broker.publish_requests for b in request.batches]
    assert batch.compression == pb.COMPRESSION_TYPE_LZ4
    payloads, metadata = decode_published(batch)
    assert payloads == [b"plain", b"keyed"]
    assert metadata[0] == pb.SingleMessageMetadata()
    assert metadata[1].partition_key == "k"
    assert dict(metadata[1].properties) == {"a": "1"}
    assert metadata[1].event_time_ms == 99


async def test_message_too_big_is_refused_locally(fake: tuple[FakeBroker, str]) -> None:
    broker, url = fake
    broker.max_message_size_bytes = 1000
    async with strata.AsyncClient(url) as client:
        producer = await client.create_producer("t")
        with pytest.raises(strata.MessageTooBig):
            await producer.send(b"x" * 2000)
        # Messages that fit still go, sealed before the batch would exceed the limit.
        futures = [await producer.send_async(b"y" * 400) for _ in range(3)]
        await asyncio.gather(*futures)
    counts = published_batch_sizes(broker)
    assert counts == [2, 1]


async def test_queue_full_raises_or_blocks(fake: tuple[FakeBroker, str]) -> None:
    broker, url = fake
    broker.hold_receipts = True
    async with strata.AsyncClient(url) as client:
        producer = await client.create_producer(
            "t", max_pending_messages=2, batching_max_publish_delay_ms=0
        )
        first = await producer.send_async(b"1")
        await producer.send_async(b"2")
        with pytest.raises(strata.ProducerQueueIsFull):
            await producer.send_async(b"3")
        blocking = await client.create_producer(
            "t2", max_pending_messages=1, block_if_queue_full=True
        )
        await blocking.send_async(b"a")
        waiting = asyncio.ensure_future(blocking.send_async(b"b"))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        # "1" and "2" went in one batch (no await between them), "a" in another.
        await wait_until(lambda: len(broker.held) >= 2)
        await broker.release_receipts()
        assert isinstance(await first, strata.MessageId)
        await (await waiting)


async def test_producer_reconnects_and_resends_in_order(fake: tuple[FakeBroker, str]) -> None:
    broker, url = fake
    broker.fail_stream_after_requests = 1
    async with strata.AsyncClient(url) as client:
        producer = await client.create_producer("t", batching_max_publish_delay_ms=20)
        futures = [await producer.send_async(b"%d" % i) for i in range(5)]
        ids = await asyncio.gather(*futures)
    assert len(broker.opens) == 2
    # The same batch went twice: once on the failed stream, once after reopening.
    sent = [b.sequence_id for request in broker.publish_requests for b in request.batches]
    assert sent == [0, 0]
    assert ids == [strata.MessageId(7, 0, i, -1) for i in range(5)]


async def test_create_producer_retries_unavailable(fake: tuple[FakeBroker, str]) -> None:
    broker, url = fake
    broker.open_failures = [(grpc.StatusCode.UNAVAILABLE, "topic loading")]
    async with strata.AsyncClient(url) as client:
        producer = await client.create_producer("t")
        assert producer.is_connected()
    assert len(broker.opens) == 1


async def test_non_retriable_open_error_is_raised(fake: tuple[FakeBroker, str]) -> None:
    broker, url = fake
    broker.open_failures = [(grpc.StatusCode.NOT_FOUND, "namespace public/nope does not exist")]
    async with strata.AsyncClient(url) as client:
        with pytest.raises(strata.TopicNotFound, match="does not exist"):
            await client.create_producer("public/nope/t")


async def test_invalid_topic_name_is_refused_before_any_call(
    fake: tuple[FakeBroker, str],
) -> None:
    _, url = fake
    async with strata.AsyncClient(url) as client:
        with pytest.raises(strata.InvalidTopicName):
            await client.create_producer("a/b/c/d")


async def test_send_timeout_fails_pending(fake: tuple[FakeBroker, str]) -> None:
    broker, url = fake
    broker.hold_receipts = True
    async with strata.AsyncClient(url) as client:
        producer = await client.create_producer("t", send_timeout_millis=100)
        with pytest.raises(strata.Timeout):
            await producer.send(b"late")
        broker.hold_receipts = False
        broker.held.clear()


async def test_sync_send_async_callbacks(fake: tuple[FakeBroker, str]) -> None:
    _, url = fake
    results: list[tuple[strata.Result, strata.MessageId | None]] = []

    def produce() -> strata.MessageId:
        with strata.Client(url) as client:
            producer = client.create_producer("t", block_if_queue_full=True)
            for i in range(50):
                producer.send_async(b"%d" % i, lambda r, m: results.append((r, m)))
            producer.flush()
            return producer.send(b"last")

    last = await asyncio.to_thread(produce)
    assert [r for r, _ in results] == [strata.Result.Ok] * 50
    # How the 50 split into batches depends on timing (an idle stream sends the open batch
    # at once); the callbacks come in send order with increasing ids either way.
    ids = [m for _, m in results]
    assert all(m is not None for m in ids)
    positions = [(m.entry_id(), m.batch_index()) for m in ids if m is not None]
    assert positions == sorted(positions) and len(set(positions)) == 50
    assert last.entry_id() > positions[-1][0]


# ---------------------------------------------------------------------- consumer


async def test_consumer_grants_permits_and_refills_at_half(fake: tuple[FakeBroker, str]) -> None:
    broker, url = fake
    for i in range(30):
        broker.add_entry("t", [b"%d" % i])
    async with strata.AsyncClient(url) as client:
        consumer = await client.subscribe("t", "s", receiver_queue_size=10)
        received = [await consumer.receive(timeout_millis=2000) for _ in range(4)]
        await asyncio.sleep(0.05)
        assert broker.consumers[0].flows == [10]  # 4 taken: below the refill threshold
        received.append(await consumer.receive(timeout_millis=2000))
        await wait_until(lambda: broker.consumers[0].flows == [10, 5])
        received += [await consumer.receive(timeout_millis=2000) for _ in range(25)]
    assert [m.data() for m in received] == [b"%d" % i for i in range(30)]
    assert received[3].message_id() == strata.MessageId(7, 3, -1, -1)
    assert received[3].topic_name() == "persistent://public/default/t"
    assert received[3].publish_timestamp() == 1234


async def test_consumer_skips_acked_batch_indexes(fake: tuple[FakeBroker, str]) -> None:
    broker, url = fake
    broker.add_entry("t", [b"a", b"b", b"c", b"d", b"e"], acked_indexes=[1, 3])
    async with strata.AsyncClient(url) as client:
        consumer = await client.subscribe("t", "s", receiver_queue_size=4)
        messages = await consumer.receive_many(10, timeout_millis=2000)
        assert [m.data() for m in messages] == [b"a", b"c", b"e"]
        assert [m.message_id().batch_index() for m in messages] == [0, 2, 4]
        # 2 skipped (at delivery) + 3 taken = 5 permits used, granted again in two Flows.
        await wait_until(lambda: broker.consumers[0].flows == [4, 2, 3])
        consumer.acknowledge_many(messages)
        await consumer.flush_acknowledgements()
    # Every message this consumer got was acknowledged: one whole-entry id.
    ids = [i for ack in broker.consumers[0].acks for i in ack.message_ids]
    assert [(i.entry_id, i.batch_index, i.batch_size) for i in ids] == [(0, -1, 5)]


async def test_metadata_and_compressed_entries_are_decoded(fake: tuple[FakeBroker, str]) -> None:
    broker, url = fake
    metadata = [
        pb.SingleMessageMetadata(),
        pb.SingleMessageMetadata(partition_key="k", properties={"x": "y"}, event_time_ms=5),
    ]
    broker.add_entry("t", [b"p0", b"p1"], metadata=metadata, compression=pb.COMPRESSION_TYPE_ZSTD)
    async with strata.AsyncClient(url) as client:
        consumer = await client.subscribe("t", "s")
        first, second = await consumer.receive_many(10, timeout_millis=2000)
    assert first.data() == b"p0" and first.properties() == {} and first.partition_key() == ""
    assert second.partition_key() == "k"
    assert second.properties() == {"x": "y"}
    assert second.event_timestamp() == 5


async def test_acks_are_grouped(fake: tuple[FakeBroker, str]) -> None:
    broker, url = fake
    broker.add_entry("t", [b"%d" % i for i in range(5)])
    broker.add_entry("t", [b"single"])
    async with strata.AsyncClient(url) as client:
        consumer = await client.subscribe("t", "s")
        messages = await consumer.receive_many(10, timeout_millis=2000)
        while len(messages) < 6:
            messages += await consumer.receive_many(10, timeout_millis=2000)
        for message in messages[:3]:
            await consumer.acknowledge(message)
        await consumer.acknowledge(messages[5])
        await consumer.acknowledge(messages[0])  # a repeat changes nothing
        await wait_until(lambda: len(broker.consumers[0].acks) == 1)
        await asyncio.sleep(0.05)
        (ack,) = broker.consumers[0].acks
        assert ack.request_id == 0
        assert [(i.entry_id, i.batch_index, i.batch_size) for i in ack.message_ids] == [
            (0, 0, 5),
            (0, 1, 5),
            (0, 2, 5),
            (1, -1, 1),
        ]
        consumer.acknowledge_many(messages[3:5])
        await wait_until(lambda: len(broker.consumers[0].acks) == 2)
        # The entry is now complete: its last indexes go as one whole-entry id.
        assert [(i.entry_id, i.batch_index) for i in broker.consumers[0].acks[1].message_ids] == [
            (0, -1)
        ]


async def test_many_acks_flush_without_waiting_for_the_timer(
    fake: tuple[FakeBroker, str],
) -> None:
    broker, url = fake
    for i in range(1500):
        broker.add_entry("t", [b"%d" % i])
    async with strata.AsyncClient(url) as client:
        consumer = await client.subscribe("t", "s", receiver_queue_size=2000)
        messages: list[strata.Message] = []
        while len(messages) < 1500:
            messages += await consumer.receive_many(2000, timeout_millis=2000)
        consumer._ack_group_time_s = 60.0  # only the count can trigger a flush now
        consumer.acknowledge_many(messages)
        await wait_until(lambda: len(broker.consumers[0].acks) == 1)
        assert len(broker.consumers[0].acks[0].message_ids) == 1000


async def test_flush_acknowledgements_waits_for_the_receipt(fake: tuple[FakeBroker, str]) -> None:
    broker, url = fake
    broker.receipt_delay_s = 0.2
    broker.add_entry("t", [b"a", b"b"])
    async with strata.AsyncClient(url) as client:
        consumer = await client.subscribe("t", "s")
        messages = await consumer.receive_many(10, timeout_millis=2000)
        consumer.acknowledge_nowait(messages[0])
        started = time.monotonic()
        await consumer.flush_acknowledgements(wait_durable=True)
        assert time.monotonic() - started >= 0.2
        (ack,) = broker.consumers[0].acks
        assert ack.request_id != 0
        assert [(i.batch_index, i.batch_size) for i in ack.message_ids] == [(0, 2)]


async def test_consumer_reconnects_and_resends_unconfirmed_acks(
    fake: tuple[FakeBroker, str],
) -> None:
    broker, url = fake
    broker.add_entry("t", [b"a", b"b"])
    broker.fail_consume_after_acks = 1
    async with strata.AsyncClient(url) as client:
        consumer = await client.subscribe("t", "s", receiver_queue_size=10)
        messages = await consumer.receive_many(10, timeout_millis=2000)
        consumer.acknowledge_many(messages)
        # Sent without a receipt; the broker then drops the stream (it may have lost them).
        await consumer.flush_acknowledgements(wait_durable=False)
        await wait_until(lambda: len(broker.consumers) == 2)
        await consumer.flush_acknowledgements(wait_durable=True)
        assert consumer.is_connected()
    first, second = broker.consumers
    assert [(i.entry_id, i.batch_index) for i in first.acks[0].message_ids] == [(0, -1)]
    assert second.flows[0] == 10  # the new stream starts with a full queue of permits
    resent = [(i.entry_id, i.batch_index) for ack in second.acks for i in ack.message_ids]
    assert resent == [(0, -1)]
    assert second.acks[-1].request_id != 0


async def test_negative_acknowledge_asks_for_redelivery(fake: tuple[FakeBroker, str]) -> None:
    broker, url = fake
    broker.add_entry("t", [b"a", b"b"])
    async with strata.AsyncClient(url) as client:
        consumer = await client.subscribe("t", "s", negative_ack_redelivery_delay_ms=50)
        messages = await consumer.receive_many(10, timeout_millis=2000)
        consumer.negative_acknowledge(messages[1])
        await asyncio.sleep(0.02)
        assert broker.consumers[0].redelivers == []
        await wait_until(lambda: len(broker.consumers[0].redelivers) == 1)
    (redeliver,) = broker.consumers[0].redelivers
    assert [(i.entry_id, i.batch_index) for i in redeliver.message_ids] == [(0, 1)]


async def test_receive_timeout_and_consumer_busy(fake: tuple[FakeBroker, str]) -> None:
    _, url = fake
    async with strata.AsyncClient(url) as client:
        consumer = await client.subscribe("t", "s")
        with pytest.raises(strata.Timeout):
            await consumer.receive(timeout_millis=20)
        with pytest.raises(strata.ConsumerBusy):
            await client.subscribe("t", "s")
        shared = await client.subscribe("t", "s2", consumer_type=strata.ConsumerType.Shared)
        await client.subscribe("t", "s2", consumer_type=strata.ConsumerType.Shared)
        await shared.close()
        with pytest.raises(strata.AlreadyClosed):
            await shared.receive(timeout_millis=10)


async def test_sync_consumer_round_trip(fake: tuple[FakeBroker, str]) -> None:
    broker, url = fake
    broker.add_entry("t", [b"a", b"b", b"c"])

    def consume() -> list[bytes]:
        with strata.Client(url) as client:
            consumer = client.subscribe("t", "s", initial_position=strata.InitialPosition.Earliest)
            got = []
            for _ in range(3):
                message = consumer.receive(timeout_millis=2000)
                got.append(message.data())
                consumer.acknowledge(message)
            consumer.flush_acknowledgements()
            with pytest.raises(strata.Timeout):
                consumer.receive(timeout_millis=10)
            return got

    assert await asyncio.to_thread(consume) == [b"a", b"b", b"c"]
    assert broker.consumers[0].subscribe.initial_position == pb.INITIAL_POSITION_EARLIEST
    ids = [i for ack in broker.consumers[0].acks for i in ack.message_ids]
    assert [(i.entry_id, i.batch_index) for i in ids] == [(0, -1)]


# ---------------------------------------------------------------- status table


@pytest.mark.parametrize(
    ("code", "details", "expected", "retriable"),
    [
        (grpc.StatusCode.UNAVAILABLE, "topic moving", strata.ServiceUnavailable, True),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "", strata.Timeout, True),
        (grpc.StatusCode.NOT_FOUND, "no topic", strata.TopicNotFound, False),
        (grpc.StatusCode.INVALID_ARGUMENT, "bad name", strata.InvalidArgument, False),
        (grpc.StatusCode.PERMISSION_DENIED, "no", strata.AuthorizationError, False),
        (grpc.StatusCode.UNAUTHENTICATED, "no token", strata.AuthenticationError, False),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "backlog quota", strata.ResourceExhausted, True),
        (grpc.StatusCode.FAILED_PRECONDITION, "topic terminated", strata.FailedPrecondition, False),
        (
            grpc.StatusCode.FAILED_PRECONDITION,
            "exclusive subscription s already has a consumer",
            strata.ConsumerBusy,
            False,
        ),
        (grpc.StatusCode.ALREADY_EXISTS, "exists", strata.AlreadyExists, False),
        (grpc.StatusCode.UNIMPLEMENTED, "", strata.NotSupported, False),
        (grpc.StatusCode.DATA_LOSS, "crc", strata.DataLoss, False),
        (grpc.StatusCode.INTERNAL, "bug", strata.InternalError, False),
    ],
)
def test_status_table(
    code: grpc.StatusCode, details: str, expected: type[Exception], retriable: bool
) -> None:
    error = exception_for_status(code, details)
    assert type(error) is expected
    assert error.retriable is retriable
    assert error.code is code
    assert error.details == details


def test_every_status_code_is_mapped() -> None:
    unmapped = set(grpc.StatusCode) - set(STATUS_TO_EXCEPTION) - {grpc.StatusCode.OK}
    assert unmapped == set()


async def test_from_rpc_error_reads_code_and_details(fake: tuple[FakeBroker, str]) -> None:
    broker, url = fake
    broker.open_failures = [(grpc.StatusCode.PERMISSION_DENIED, "role r may not produce")]
    async with grpc.aio.insecure_channel(url) as channel:
        call = messaging_pb2_grpc.MessagingServiceStub(channel).Produce()
        await call.write(pb.ProduceRequest(open=pb.OpenProducer(topic="t")))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call.read()
    error = from_rpc_error(info.value)
    assert isinstance(error, strata.AuthorizationError)
    assert error.details == "role r may not produce"
