"""Validators of the Produce and Consume stream requests, at the edge (STYLE.md §7).

Pure functions, no I/O, like ``check_*_request`` in ``bookie/server.py``: each takes a request
as it came off the wire, raises ``InvalidRequestError`` (``MessageTooLargeError`` for a batch
over the size limit) with the message the client sees, and returns what the stream needs in
checked form. The streams (``broker.producer_stream``, ``broker.consumer_stream``) call them
before anything reaches a ``Topic`` or a ``Subscription``, which then assert rather than check.
"""

from __future__ import annotations

from dataclasses import dataclass

from broker.errors import InvalidRequestError, MessageTooLargeError
from broker.key_shared import check_sticky_ranges
from broker.subscription import (
    KEY_SHARED_STICKY,
    SUBSCRIPTION_EXCLUSIVE,
    SUBSCRIPTION_FAILOVER,
    SUBSCRIPTION_KEY_SHARED,
    SUBSCRIPTION_SHARED,
)
from strata.naming import TopicName
from strata.v1 import messaging_pb2

# A consumer may hold at most this many permits (Pulsar caps receiver queues similarly).
MAX_PERMITS_PER_CONSUMER = 1_000_000
MAX_SUBSCRIPTION_NAME_LENGTH = 255
# Producer and consumer names travel in every stored entry and in stats: printable, bounded.
MAX_CLIENT_NAME_LENGTH = 255
MAX_PRIORITY_LEVEL = 1000
MAX_SEQUENCE_ID = (1 << 63) - 1
# A batch's declared uncompressed size (the bookie's largest entry).
MAX_UNCOMPRESSED_BATCH_BYTES = 64 * 1024 * 1024
# Key_Shared dispatches by a batch's first key; keys longer than this are refused.
MAX_STICKY_KEY_BYTES = 256
# Delayed delivery: times up to the year 2100 (ms since the epoch).
MAX_DELIVER_AT_TIME_MS = 4_102_444_800_000


@dataclass(frozen=True, slots=True)
class OpenRequest:
    """The checked first request of a Produce stream."""

    topic: TopicName
    producer_name: str  # "" lets the broker choose one


@dataclass(frozen=True, slots=True)
class SubscribeRequest:
    """The checked first request of a Consume stream."""

    topic: TopicName
    subscription: str
    type: int  # SUBSCRIPTION_EXCLUSIVE, SUBSCRIPTION_SHARED or SUBSCRIPTION_FAILOVER
    consumer_name: str  # "" lets the broker choose one
    start_at_earliest: bool
    priority_level: int = 0
    key_shared_mode: int = 0  # KeySharedMeta.Mode (Key_Shared only)
    hash_ranges: tuple[tuple[int, int], ...] = ()  # STICKY only


def check_open_request(request: object) -> OpenRequest:
    if not isinstance(request, messaging_pb2.ProduceRequest) or not request.HasField("open"):
        raise InvalidRequestError("the first request of a Produce stream must be 'open'")
    topic = TopicName.parse(request.open.topic)
    check_client_name("producer", request.open.producer_name)
    return OpenRequest(topic, request.open.producer_name)


def check_publish_request(request: messaging_pb2.ProduceRequest) -> None:
    if not request.HasField("publish"):
        raise InvalidRequestError("after 'open', a Produce stream carries only 'publish' requests")


# The enums' values, as sets (``EnumTypeWrapper.values()`` builds a list on every call, and
# check_publish_batch runs for every batch).
_COMPRESSION_TYPES = frozenset(messaging_pb2.CompressionType.values())
_INITIAL_POSITIONS = frozenset(messaging_pb2.InitialPosition.values())
_KEY_SHARED_MODES = frozenset(messaging_pb2.KeySharedMeta.Mode.values())


def check_publish_batch(batch: messaging_pb2.ProducerBatch, max_size_bytes: int) -> None:
    if batch.sequence_id > MAX_SEQUENCE_ID:
        raise InvalidRequestError(
            f"batch sequence_id {batch.sequence_id} is above {MAX_SEQUENCE_ID} (2^63 - 1)"
        )
    if batch.num_messages <= 0:
        raise InvalidRequestError(f"batch {batch.sequence_id} has no messages (num_messages=0)")
    if batch.compression not in _COMPRESSION_TYPES:
        raise InvalidRequestError(
            f"batch {batch.sequence_id}: compression {batch.compression} is not NONE, LZ4 or ZSTD"
        )
    if batch.uncompressed_size > MAX_UNCOMPRESSED_BATCH_BYTES:
        raise InvalidRequestError(
            f"batch {batch.sequence_id}: uncompressed_size {batch.uncompressed_size} is above "
            f"{MAX_UNCOMPRESSED_BATCH_BYTES} bytes"
        )
    if (
        batch.compression
        in (messaging_pb2.COMPRESSION_TYPE_UNSPECIFIED, messaging_pb2.COMPRESSION_TYPE_NONE)
        and batch.uncompressed_size
        and batch.uncompressed_size != len(batch.payload)
    ):
        raise InvalidRequestError(
            f"batch {batch.sequence_id}: uncompressed_size {batch.uncompressed_size} is not "
            f"the size of its uncompressed payload ({len(batch.payload)} bytes)"
        )
    # Each message takes at least 2 bytes of the serialized MessageBatch (its tag and
    # length), so a batch cannot hold more messages than half its uncompressed size.
    size = batch.uncompressed_size or len(batch.payload)
    if batch.num_messages > max(1, size // 2):
        raise InvalidRequestError(
            f"batch {batch.sequence_id} claims {batch.num_messages} messages in {size} bytes"
        )
    if len(batch.sticky_key.encode()) > MAX_STICKY_KEY_BYTES:
        raise InvalidRequestError(
            f"batch {batch.sequence_id}: sticky_key is longer than {MAX_STICKY_KEY_BYTES} bytes"
        )
    if batch.HasField("chunk"):
        check_chunk(batch)
    if not 0 <= batch.deliver_at_time_ms <= MAX_DELIVER_AT_TIME_MS:
        raise InvalidRequestError(
            f"batch {batch.sequence_id}: deliver_at_time_ms must be within "
            f"0..{MAX_DELIVER_AT_TIME_MS} (ms since the epoch; 0 = at once)"
        )
    if len(batch.payload) > max_size_bytes:
        raise MessageTooLargeError(
            f"batch {batch.sequence_id} is {len(batch.payload)} bytes; "
            f"the maximum message size is {max_size_bytes} bytes"
        )


def check_subscribe_request(request: object) -> SubscribeRequest:
    if not isinstance(request, messaging_pb2.ConsumeRequest) or not request.HasField("subscribe"):
        raise InvalidRequestError("the first request of a Consume stream must be 'subscribe'")
    subscribe = request.subscribe
    topic = TopicName.parse(subscribe.topic)
    check_subscription_name(subscribe.subscription)
    check_client_name("consumer", subscribe.consumer_name)
    sub_type = subscribe.type or SUBSCRIPTION_EXCLUSIVE
    if sub_type not in (
        SUBSCRIPTION_EXCLUSIVE,
        SUBSCRIPTION_SHARED,
        SUBSCRIPTION_FAILOVER,
        SUBSCRIPTION_KEY_SHARED,
    ):
        raise InvalidRequestError(
            f"subscription type {sub_type} is not one of Exclusive (1), Shared (2), "
            "Failover (3) or Key_Shared (4)"
        )
    mode, ranges = check_key_shared(subscribe, sub_type)
    if subscribe.initial_position not in _INITIAL_POSITIONS:
        raise InvalidRequestError(
            f"initial_position {subscribe.initial_position} is not LATEST (1) or EARLIEST (2)"
        )
    if not 0 <= subscribe.priority_level <= MAX_PRIORITY_LEVEL:
        raise InvalidRequestError(
            f"priority_level must be within 0..{MAX_PRIORITY_LEVEL}, got {subscribe.priority_level}"
        )
    return SubscribeRequest(
        topic=topic,
        subscription=subscribe.subscription,
        type=sub_type,
        consumer_name=subscribe.consumer_name,
        start_at_earliest=subscribe.initial_position == messaging_pb2.INITIAL_POSITION_EARLIEST,
        priority_level=subscribe.priority_level,
        key_shared_mode=mode,
        hash_ranges=ranges,
    )


def check_key_shared(
    subscribe: messaging_pb2.Subscribe, sub_type: int
) -> tuple[int, tuple[tuple[int, int], ...]]:
    """A Key_Shared consumer's mode and, STICKY, its hash ranges (checked)."""
    meta = subscribe.key_shared
    if sub_type != SUBSCRIPTION_KEY_SHARED:
        if meta.ranges or meta.mode:
            raise InvalidRequestError("key_shared is for Key_Shared subscriptions only")
        return 0, ()
    if meta.mode not in _KEY_SHARED_MODES:
        raise InvalidRequestError(f"key_shared.mode {meta.mode} is not AUTO_SPLIT or STICKY")
    ranges = tuple((r.start, r.end) for r in meta.ranges)
    if meta.mode == KEY_SHARED_STICKY:
        check_sticky_ranges(ranges)
        return meta.mode, ranges
    if ranges:
        raise InvalidRequestError("hash ranges are for STICKY Key_Shared consumers only")
    return messaging_pb2.KeySharedMeta.AUTO_SPLIT, ()


def check_subscription_name(name: str) -> None:
    if not name:
        raise InvalidRequestError("subscription name is empty")
    if len(name) > MAX_SUBSCRIPTION_NAME_LENGTH or not name.isprintable() or "/" in name:
        raise InvalidRequestError(
            "subscription name must be printable, without '/', and at most "
            f"{MAX_SUBSCRIPTION_NAME_LENGTH} characters"
        )


# A chunked message: at most this many chunks (Pulsar bounds it by the message size only).
MAX_CHUNKS = 100_000
MAX_CHUNK_UUID_LENGTH = 255


def check_chunk(batch: messaging_pb2.ProducerBatch) -> None:
    """A chunk is a batch of one message, numbered within its message's chunk count."""
    chunk = batch.chunk
    where = f"batch {batch.sequence_id}: chunk {chunk.chunk_id} of {chunk.num_chunks}"
    if batch.num_messages != 1:
        raise InvalidRequestError(f"{where} holds {batch.num_messages} messages; a chunk holds 1")
    if not 2 <= chunk.num_chunks <= MAX_CHUNKS or chunk.chunk_id >= chunk.num_chunks:
        raise InvalidRequestError(
            f"{where}: a message has 2 to {MAX_CHUNKS} chunks, numbered from 0"
        )
    if not chunk.uuid or len(chunk.uuid) > MAX_CHUNK_UUID_LENGTH or not chunk.uuid.isprintable():
        raise InvalidRequestError(
            f"{where}: uuid must be printable and 1 to {MAX_CHUNK_UUID_LENGTH} characters"
        )


def check_client_name(kind: str, name: str) -> None:
    """A producer or consumer name: empty (the broker chooses one) or printable and at most
    ``MAX_CLIENT_NAME_LENGTH`` characters."""
    if len(name) > MAX_CLIENT_NAME_LENGTH or not name.isprintable():
        raise InvalidRequestError(
            f"{kind} name must be printable and at most {MAX_CLIENT_NAME_LENGTH} characters"
        )


def check_flow(flow: messaging_pb2.Flow, permits_held: int) -> None:
    """A flow may not raise a consumer's permits above ``MAX_PERMITS_PER_CONSUMER``."""
    if permits_held + flow.permits > MAX_PERMITS_PER_CONSUMER:
        raise InvalidRequestError(f"a consumer may hold at most {MAX_PERMITS_PER_CONSUMER} permits")


def check_ack(ack: messaging_pb2.Ack, subscription_type: int, type_name: str) -> None:
    """Batch indexes are -1 (the whole entry) or a message's index; a cumulative
    acknowledgement needs an Exclusive or Failover subscription and exactly one id.
    (Whether each id names an entry of the topic is the subscription's check.)"""
    for message_id in ack.message_ids:
        if message_id.batch_index < -1:
            raise InvalidRequestError(
                f"acknowledgement of {message_id.ledger_id}:{message_id.entry_id}: batch index "
                f"{message_id.batch_index} (-1 is the whole entry)"
            )
    if not ack.cumulative:
        return
    if subscription_type not in (SUBSCRIPTION_EXCLUSIVE, SUBSCRIPTION_FAILOVER):
        raise InvalidRequestError(
            f"cumulative acknowledgement is not allowed on a {type_name} subscription"
        )
    if len(ack.message_ids) != 1:
        raise InvalidRequestError("a cumulative acknowledgement carries exactly one id")
