"""The workload of the offload tests and benchmark: numbered, checksummed messages produced
through the SDK, read back by a new subscription from the earliest position, and the admin
calls that drive and observe offloading.

Each message is ``index (8 bytes) | random bytes``; the producer records every message's id
and SHA-256, so a read-back proves the same ids, the same bytes and the same order.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field

import grpc

import strata
from strata.v1 import admin_pb2, admin_pb2_grpc

MESSAGE_SIZE_BYTES = 16 * 1024
MAX_PENDING_MESSAGES = 2000
RECEIVE_TIMEOUT_MS = 1000
ADMIN_TIMEOUT_S = 10.0
MIB = 1024 * 1024


@dataclass
class Produced:
    ids: list[tuple[int, int, int]] = field(default_factory=list)  # (ledger, entry, batch index)
    digests: list[bytes] = field(default_factory=list)
    total_bytes: int = 0


def message(index: int, size: int = MESSAGE_SIZE_BYTES) -> bytes:
    return index.to_bytes(8, "big") + os.urandom(size - 8)


def key_of(message_id: strata.MessageId) -> tuple[int, int, int]:
    return (message_id.ledger_id(), message_id.entry_id(), message_id.batch_index())


async def produce(address: str, topic: str, total_bytes: int, start: int = 0) -> Produced:
    """Produce ``total_bytes`` of numbered messages; returns their ids and digests."""
    result = Produced()
    client = strata.AsyncClient(address)
    try:
        producer = await client.create_producer(
            topic, block_if_queue_full=True, max_pending_messages=MAX_PENDING_MESSAGES
        )
        futures = []
        index = start
        while result.total_bytes < total_bytes:
            data = message(index)
            result.digests.append(hashlib.sha256(data).digest())
            result.total_bytes += len(data)
            futures.append(await producer.send_async(data))
            index += 1
        await producer.flush()
        for future in futures:
            result.ids.append(key_of(await future))
        await producer.close()
    finally:
        await client.close()
    return result


@dataclass
class Consumed:
    ids: list[tuple[int, int, int]] = field(default_factory=list)
    digests: list[bytes] = field(default_factory=list)
    total_bytes: int = 0
    seconds: float = 0.0


async def consume(
    address: str,
    topic: str,
    subscription: str,
    count: int,
    timeout_s: float,
) -> Consumed:
    """Read ``count`` messages with a new subscription from the earliest position, and
    acknowledge them (a broker stops dispatching to a consumer with 50,000 unacknowledged
    messages, as Pulsar does). ``pin()`` keeps the data for the next subscription."""
    result = Consumed()
    client = strata.AsyncClient(address)
    try:
        consumer = await client.subscribe(
            topic,
            subscription,
            initial_position=strata.InitialPosition.Earliest,
            receiver_queue_size=2000,
        )
        started = time.monotonic()
        deadline = started + timeout_s
        while len(result.ids) < count and time.monotonic() < deadline:
            try:
                messages = await consumer.receive_many(1000, timeout_millis=RECEIVE_TIMEOUT_MS)
            except strata.Timeout:
                continue
            for received in messages:
                data = received.data()
                result.ids.append(key_of(received.message_id()))
                result.digests.append(hashlib.sha256(data).digest())
                result.total_bytes += len(data)
            consumer.acknowledge_many(messages)
        result.seconds = time.monotonic() - started
        await consumer.close()
    finally:
        await client.close()
    return result


async def pin(address: str, topic: str, subscription: str = "pin") -> None:
    """A subscription at the earliest position that never consumes: while it exists nothing
    of the topic is trimmed, so later subscriptions can read everything again."""
    client = strata.AsyncClient(address)
    try:
        consumer = await client.subscribe(
            topic, subscription, initial_position=strata.InitialPosition.Earliest
        )
        await consumer.close()
    finally:
        await client.close()


def assert_identical(produced: Produced, consumed: Consumed) -> None:
    assert len(consumed.ids) == len(produced.ids), (len(consumed.ids), len(produced.ids))
    assert consumed.ids == produced.ids, "message ids differ or are out of order"
    assert consumed.digests == produced.digests, "message bytes differ"


class Admin:
    """Synchronous admin calls against one broker (a fresh channel per call: the broker may
    restart in between)."""

    def __init__(self, address: str) -> None:
        self.address = address

    def _call(self, method: str, request: object) -> object:
        with grpc.insecure_channel(self.address) as channel:
            stub = admin_pb2_grpc.AdminServiceStub(channel)
            return getattr(stub, method)(request, timeout=ADMIN_TIMEOUT_S)

    def offload(self, topic: str) -> admin_pb2.OffloadStatus:
        status = self._call("OffloadTopic", admin_pb2.OffloadTopicRequest(name=topic))
        assert isinstance(status, admin_pb2.OffloadStatus)
        return status

    def status(self, topic: str) -> admin_pb2.OffloadStatus:
        status = self._call("GetOffloadStatus", admin_pb2.GetOffloadStatusRequest(name=topic))
        assert isinstance(status, admin_pb2.OffloadStatus)
        return status

    def wait_offloaded(
        self, topic: str, timeout_s: float, *, bookie_deleted: bool = True
    ) -> admin_pb2.OffloadStatus:
        """Until every closed ledger is offloaded (and its bookie copy deleted)."""
        deadline = time.monotonic() + timeout_s
        status = self.status(topic)
        while time.monotonic() < deadline:
            done = status.bookie_deleted_ledgers if bookie_deleted else status.offloaded_ledgers
            if (
                status.status == admin_pb2.OFFLOAD_RUN_STATUS_SUCCESS
                and status.closed_ledgers > 0
                and done == status.closed_ledgers
            ):
                return status
            # Poll interval of an admin probe, not a wait standing in for a condition.
            time.sleep(0.1)
            status = self.status(topic)
        raise TimeoutError(f"{topic} not offloaded after {timeout_s} s: {status}")
