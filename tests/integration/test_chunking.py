"""Large messages (issue 13 item 7): chunking on a real standalone (max message size 5 MiB).

A 50 MiB message goes as chunks and comes back byte-identical; acknowledging it acknowledges
every chunk (nothing is redelivered after a reconnect); 20 large messages sent at once by 20
producers interleave their chunks, and a consumer holding at most 4 partial messages still
receives all 20 (the ones it drops come back after the negative-ack delay); the CLI sends a
file with ``--file``."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

import strata
from strata.v1 import messaging_pb2, messaging_pb2_grpc
from tests.harness import Standalone

pytestmark = pytest.mark.integration

MIB = 1024 * 1024
RECEIVE_TIMEOUT_MS = 60_000


def payload(size: int, seed: int) -> bytes:
    block = hashlib.sha256(str(seed).encode()).digest()
    return (block * (size // len(block) + 1))[:size]


def test_a_50_mib_message_round_trips_byte_identical(standalone: Standalone) -> None:
    topic = "persistent://public/default/chunked"
    big = payload(50 * MIB, 1)
    with strata.Client(standalone.address, operation_timeout_seconds=60) as client:
        consumer = client.subscribe(topic, "s")
        producer = client.create_producer(topic, chunking_enabled=True, send_timeout_millis=120_000)
        message_id = producer.send(big, properties={"name": "big"})
        small_id = producer.send(b"after")
        message = consumer.receive(RECEIVE_TIMEOUT_MS)
        assert message.data() == big
        assert message.properties() == {"name": "big"}
        assert message.message_id() == message_id  # the last chunk's id
        consumer.acknowledge(message)
        after = consumer.receive(RECEIVE_TIMEOUT_MS)
        assert (after.data(), after.message_id()) == (b"after", small_id)
        consumer.acknowledge(after)
        consumer.flush_acknowledgements(wait_durable=True)
        consumer.close()
        # Every chunk was acknowledged: a new consumer on the subscription gets nothing.
        again = client.subscribe(topic, "s")
        with pytest.raises(strata.Timeout):
            again.receive(2_000)
        with pytest.raises(strata.MessageTooBig):
            client.create_producer(topic).send(big[: 6 * MIB])  # chunking off: refused


async def produce_interleaved(address: str, topic: str, count: int, chunk_size: int) -> None:
    """``count`` two-chunk messages stored interleaved: every first chunk, then every second
    one (each producer on its own Produce stream, built from the .proto as any client)."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = messaging_pb2_grpc.MessagingServiceStub(channel)
        calls = []
        for index in range(count):
            call = stub.Produce()
            await call.write(
                messaging_pb2.ProduceRequest(
                    open=messaging_pb2.OpenProducer(topic=topic, producer_name=f"chunker-{index}")
                )
            )
            await call.read()  # opened
            calls.append(call)
        for chunk_id in range(2):
            for index, call in enumerate(calls):
                whole = payload(2 * chunk_size, index)
                part = whole[chunk_id * chunk_size : (chunk_id + 1) * chunk_size]
                body = messaging_pb2.MessageBatch(payloads=[part]).SerializeToString()
                batch = messaging_pb2.ProducerBatch(
                    sequence_id=chunk_id,
                    num_messages=1,
                    uncompressed_size=len(body),
                    payload=body,
                    chunk=messaging_pb2.ChunkInfo(
                        uuid=f"m{index}", chunk_id=chunk_id, num_chunks=2, total_size=len(whole)
                    ),
                )
                await call.write(
                    messaging_pb2.ProduceRequest(
                        publish=messaging_pb2.PublishBatches(batches=[batch])
                    )
                )
                await call.read()  # its receipt: stored before the next
        for call in calls:
            await call.done_writing()


async def test_interleaved_chunks_with_a_bounded_consumer(standalone: Standalone) -> None:
    topic = "persistent://public/default/interleaved"
    count, chunk_size = 20, 64 * 1024
    async with strata.AsyncClient(standalone.address) as client:
        consumer = await client.subscribe(
            topic,
            "bounded",
            max_pending_chunked_message=4,
            negative_ack_redelivery_delay_ms=200,
        )
        await produce_interleaved(standalone.address, topic, count, chunk_size)
        received: dict[bytes, int] = {}
        while len(received) < count:
            message = await consumer.receive(RECEIVE_TIMEOUT_MS)
            received[message.data()] = received.get(message.data(), 0) + 1
            await consumer.acknowledge(message)
        assert set(received) == {payload(2 * chunk_size, i) for i in range(count)}
        assert len(consumer._chunks) <= 4


def test_cli_sends_a_file_as_one_message(standalone: Standalone, tmp_path: Path) -> None:
    source = tmp_path / "blob.bin"
    source.write_bytes(payload(12 * MIB, 7))
    topic = "persistent://public/default/cli-file"
    with strata.Client(standalone.address) as client:
        consumer = client.subscribe(topic, "s")
        done = subprocess.run(
            [sys.executable, "-m", "strata", "produce", topic, "--file", str(source),
             "--service-url", standalone.address],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert consumer.receive(RECEIVE_TIMEOUT_MS).data() == source.read_bytes()
