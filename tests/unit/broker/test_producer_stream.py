"""``ProducerStream``'s receipt rules, with appends the test makes durable in any order.

The topic is a stand-in whose ``publish`` returns futures the test resolves, and the call a
stand-in fed from a queue: receipts must wait for durability, go out in sequence order with
the already-durable ones grouped, and the reader must stop at the pending-batch bound.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import grpc
import pytest

from broker.authorization import Authorizer
from broker.namespaces import Limits
from broker.producer_stream import ProducerStream
from strata.naming import TopicName
from strata.v1 import messaging_pb2 as pb

pytestmark = pytest.mark.timeout(10)

MAX_PENDING = 3


class StandInTopic:
    def __init__(self) -> None:
        self.name = TopicName.parse("t")
        self.closing = asyncio.Event()
        self.appends: list[asyncio.Future[tuple[int, int]]] = []
        self.receipted: dict[str, int] = {}
        self.connected: set[str] = set()
        self.deduplication = SimpleNamespace(enabled=False)
        self.backlog_quota_exceeded = None
        self.publish_limiter = None

    def add_producer(self, requested_name: str, broker_name: str) -> tuple[str, int]:
        self.connected.add(requested_name)
        return requested_name, -1

    def remove_producer(self, name: str) -> None:
        self.connected.discard(name)

    def publish(
        self, entry: bytes, num_messages: int, deliver_at_ms: int = 0
    ) -> asyncio.Future[tuple[int, int]]:
        self.appends.append(asyncio.get_running_loop().create_future())
        return self.appends[-1]

    def record_receipt(self, producer_name: str, last_sequence_id: int) -> None:
        self.receipted[producer_name] = last_sequence_id


class StandInCall:
    def __init__(self) -> None:
        self.requests: asyncio.Queue[Any] = asyncio.Queue(maxsize=16)
        self.written: list[pb.ProduceResponse] = []

    async def read(self) -> Any:
        return await self.requests.get()

    async def write(self, response: pb.ProduceResponse) -> None:
        self.written.append(response)


async def settle() -> None:
    """Give the stream's reader and writer many turns."""
    for _ in range(200):
        await asyncio.sleep(0)


def publish(*batches: tuple[int, int]) -> pb.ProduceRequest:
    return pb.ProduceRequest(
        publish=pb.PublishBatches(
            # Two bytes per message: the least a message takes in a serialized batch.
            batches=[
                pb.ProducerBatch(sequence_id=s, num_messages=n, payload=b"\n\x00" * n)
                for s, n in batches
            ]
        )
    )


def receipts(call: StandInCall) -> list[list[tuple[int, int, int]]]:
    """Each receipts response as (sequence id, entry id, message count) triples."""
    return [
        [(r.sequence_id, r.entry_id, r.num_messages) for r in response.receipts.receipts]
        for response in call.written
        if response.HasField("receipts")
    ]


async def test_receipts_wait_for_durability_and_go_out_in_sequence_order() -> None:
    topic = StandInTopic()
    config = SimpleNamespace(
        broker_name="b",
        max_message_size_bytes=1024,
        max_pending_publish_batches_per_producer=MAX_PENDING,
    )

    async def get_topic(name: TopicName) -> StandInTopic:
        return topic

    async def limits_for(name: object) -> Limits:
        return Limits(0, 0, 0, 0, 0, 0)

    namespaces = SimpleNamespace(limits_for=limits_for)
    authorizer = Authorizer(namespaces, False, frozenset())  # type: ignore[arg-type]
    broker: Any = SimpleNamespace(
        config=config, get_topic=get_topic, namespaces=namespaces, authorizer=authorizer
    )
    call = StandInCall()
    context: grpc.aio.ServicerContext[Any, Any] = call  # type: ignore[assignment]
    stream = asyncio.ensure_future(ProducerStream(broker, context).run())
    await call.requests.put(pb.ProduceRequest(open=pb.OpenProducer(topic="t", producer_name="p")))
    await call.requests.put(publish((0, 2), (2, 1), (3, 5), (8, 1)))
    await settle()
    assert call.written[0].opened.producer_name == "p"
    # The bound: three batches appended, the fourth waits for room.
    assert len(topic.appends) == MAX_PENDING

    # Durable out of order: nothing goes out before the oldest is durable...
    topic.appends[2].set_result((1, 2))
    topic.appends[1].set_result((1, 1))
    await settle()
    assert receipts(call) == []
    # ...then it and every following durable batch go out together, in sequence order.
    topic.appends[0].set_result((1, 0))
    await settle()
    assert receipts(call) == [[(0, 0, 2), (2, 1, 1), (3, 2, 5)]]
    assert topic.receipted == {"p": 7}
    assert len(topic.appends) == MAX_PENDING + 1  # the receipts made room for the fourth

    # Half-closed: the stream ends once the last pending batch is receipted.
    await call.requests.put(grpc.aio.EOF)
    await settle()
    assert not stream.done()
    topic.appends[3].set_result((1, 3))
    await stream
    assert receipts(call)[1:] == [[(8, 3, 1)]]
    assert topic.receipted == {"p": 8}
    assert topic.connected == set()
