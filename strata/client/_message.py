"""Message ids and received messages.

A ``MessageId`` is ``(ledger_id, entry_id, batch_index, partition)``: the ledger entry that
holds the message (one producer batch) and the message's index inside it. An entry of a
single message is addressed as the whole entry, ``batch_index = -1``, both in the producer's
receipts and on the consumer side, so the two always agree on a message's id.

A ``Message`` is built by the consumer for every payload of a delivered entry. It is cheap on
purpose (``__slots__``, metadata parsed only when asked for): one is made per message at
200,000 messages per second.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from strata.v1 import messaging_pb2

if TYPE_CHECKING:
    from collections.abc import Mapping

_UINT64_MASK = (1 << 64) - 1
_INT64_MAX = (1 << 63) - 1


def _to_uint64(value: int) -> int:
    # Python ids are signed like pulsar's (earliest is -1); the wire fields are uint64, so -1
    # travels as 2**64 - 1, as pulsar's C++ client does.
    return value & _UINT64_MASK


def _from_uint64(value: int) -> int:
    return value - (1 << 64) if value > _INT64_MAX else value


class MessageId:
    """Identifies one message of a topic: ``(ledger_id, entry_id, batch_index, partition)``.

    ``batch_index`` is -1 for an entry that holds a single message (the whole entry) and
    ``partition`` is -1 for a topic that is not a partition. ``batch_size``, the number of
    messages in the entry, travels with the id so that it can be acknowledged; it takes no
    part in equality or ordering. Ids order by ``(ledger_id, entry_id, partition,
    batch_index)``, which is publish order within a topic.

    ``MessageId.earliest`` and ``MessageId.latest`` are the usual start positions. The id of
    a received message also names its topic (``topic_name()``, pulsar's ``TopicMessageId``),
    which a multi-topic consumer acknowledges it by; the topic takes no part in equality.
    """

    __slots__ = (
        "_batch_index",
        "_batch_size",
        "_entry_id",
        "_ledger_id",
        "_partition",
        "_topic",
    )

    earliest: ClassVar[MessageId]
    latest: ClassVar[MessageId]

    def __init__(
        self,
        ledger_id: int,
        entry_id: int,
        batch_index: int = -1,
        partition: int = -1,
        batch_size: int = 0,
        topic: str | None = None,
    ) -> None:
        self._topic = topic
        self._ledger_id = ledger_id
        self._entry_id = entry_id
        self._batch_index = batch_index
        self._partition = partition
        self._batch_size = batch_size

    def topic_name(self) -> str | None:
        """The topic (or partition) of the message this id came from; None when not known."""
        return self._topic

    def ledger_id(self) -> int:
        return self._ledger_id

    def entry_id(self) -> int:
        return self._entry_id

    def batch_index(self) -> int:
        return self._batch_index

    def partition(self) -> int:
        return self._partition

    def batch_size(self) -> int:
        """Number of messages in the entry (0 when unknown)."""
        return self._batch_size

    def to_proto(self) -> messaging_pb2.MessageIdData:
        """The id as it travels in acknowledgements."""
        return messaging_pb2.MessageIdData(
            ledger_id=_to_uint64(self._ledger_id),
            entry_id=_to_uint64(self._entry_id),
            batch_index=self._batch_index,
            batch_size=self._batch_size,
            partition=self._partition,
        )

    @classmethod
    def from_proto(cls, data: messaging_pb2.MessageIdData) -> MessageId:
        return cls(
            _from_uint64(data.ledger_id),
            _from_uint64(data.entry_id),
            data.batch_index,
            data.partition,
            data.batch_size,
        )

    def serialize(self) -> bytes:
        """Compact, stable bytes: a deterministically serialized ``MessageIdData``."""
        return self.to_proto().SerializeToString(deterministic=True)

    @classmethod
    def deserialize(cls, data: bytes) -> MessageId:
        """The id ``serialize`` wrote; raises ``ValueError`` for bytes that are not one."""
        try:
            proto = messaging_pb2.MessageIdData.FromString(data)
        except Exception as exc:  # protobuf raises DecodeError, a plain Exception subclass
            raise ValueError(f"not a serialized MessageId: {exc}") from exc
        return cls.from_proto(proto)

    def _key(self) -> tuple[int, int, int, int]:
        return (self._ledger_id, self._entry_id, self._partition, self._batch_index)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MessageId):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, MessageId):
            return NotImplemented
        return self._key() < other._key()

    def __le__(self, other: object) -> bool:
        if not isinstance(other, MessageId):
            return NotImplemented
        return self._key() <= other._key()

    def __gt__(self, other: object) -> bool:
        if not isinstance(other, MessageId):
            return NotImplemented
        return self._key() > other._key()

    def __ge__(self, other: object) -> bool:
        if not isinstance(other, MessageId):
            return NotImplemented
        return self._key() >= other._key()

    def __repr__(self) -> str:
        return (
            f"MessageId(ledger_id={self._ledger_id}, entry_id={self._entry_id}, "
            f"batch_index={self._batch_index}, partition={self._partition})"
        )

    def __str__(self) -> str:
        return f"({self._ledger_id},{self._entry_id},{self._batch_index},{self._partition})"


MessageId.earliest = MessageId(-1, -1, -1, -1)
MessageId.latest = MessageId(_INT64_MAX, _INT64_MAX, -1, -1)


class EntryInfo:
    """What the messages of one delivered entry share, plus the consumer's ack state for it.

    One is made per delivery (not per message). ``remaining`` counts the delivered messages
    not yet acknowledged through this consumer; when it reaches zero the whole entry is
    acknowledged with a single id. ``acked[i]`` is 1 once index i was acknowledged (here, or
    before delivery), so that a repeated acknowledgement is ignored; a bytearray keeps that
    O(1) per message where a big-int bitmask would copy itself on every update.
    """

    __slots__ = (
        "acked",
        "batch_size",
        "entry_id",
        "in_pending",
        "ledger_id",
        "partition",
        "pending_indexes",
        "publish_time_ms",
        "redelivery_count",
        "remaining",
        "timed",
        "topic",
    )

    def __init__(
        self,
        topic: str,
        partition: int,
        ledger_id: int,
        entry_id: int,
        batch_size: int,
        publish_time_ms: int,
        redelivery_count: int,
        acked: bytearray | None = None,
        remaining: int = 0,
    ) -> None:
        self.topic = topic
        self.partition = partition
        self.ledger_id = ledger_id
        self.entry_id = entry_id
        self.batch_size = batch_size
        self.publish_time_ms = publish_time_ms
        self.redelivery_count = redelivery_count
        self.acked = bytearray(max(1, batch_size)) if acked is None else acked
        self.remaining = remaining
        # Indexes acknowledged since the last ack flush; owned by the consumer's ack tracker.
        self.pending_indexes: list[int] = []
        self.in_pending = False
        # True once the consumer's ack-timeout tracker holds this entry.
        self.timed = False


class Message:
    """One received message. Made by the consumer; applications only read it.

    ``data()`` is the payload; ``properties()``, ``partition_key()`` and
    ``event_timestamp()`` come from the per-message metadata, which is absent (and costs
    nothing) when the producer set none.
    """

    __slots__ = ("_data", "_entry", "_id", "_index", "_metadata")

    def __init__(
        self,
        data: bytes,
        entry: EntryInfo,
        index: int,
        metadata: messaging_pb2.SingleMessageMetadata | None = None,
    ) -> None:
        self._data = data
        self._entry = entry
        self._index = index
        self._metadata = metadata
        self._id: MessageId | None = None

    def data(self) -> bytes:
        return self._data

    def value(self) -> bytes:
        """The payload (pulsar's schema-decoded value; Strata has bytes only)."""
        return self._data

    def properties(self) -> dict[str, str]:
        """A fresh dict of the message's properties (empty when it has none)."""
        metadata = self._metadata
        if metadata is None:
            return {}
        properties: Mapping[str, str] = metadata.properties
        return dict(properties)

    def partition_key(self) -> str:
        """The key given at send, or "" (pulsar returns "" too)."""
        metadata = self._metadata
        if metadata is None or not metadata.HasField("partition_key"):
            return ""
        return metadata.partition_key

    def ordering_key(self) -> str:
        """The ordering key given at send (Key_Shared's key when set), or ""."""
        metadata = self._metadata
        if metadata is None or not metadata.HasField("ordering_key"):
            return ""
        return metadata.ordering_key

    def event_timestamp(self) -> int:
        """The application's event time in ms since the epoch, or 0 when unset."""
        metadata = self._metadata
        return 0 if metadata is None else metadata.event_time_ms

    def publish_timestamp(self) -> int:
        """When the producer sealed the batch, in ms since the epoch."""
        return self._entry.publish_time_ms

    def message_id(self) -> MessageId:
        message_id = self._id
        if message_id is None:
            entry = self._entry
            message_id = MessageId(
                entry.ledger_id,
                entry.entry_id,
                self._index,
                entry.partition,
                entry.batch_size,
                entry.topic,
            )
            self._id = message_id
        return message_id

    def redelivery_count(self) -> int:
        return self._entry.redelivery_count

    def topic_name(self) -> str:
        return self._entry.topic

    def __repr__(self) -> str:
        return f"Message(id={self.message_id()!s}, {len(self._data)} bytes)"


class ChunkedMessage(Message):
    """A message that came as chunks (Pulsar's chunking): its payload joined, its id the last
    chunk's; acknowledging (or negatively acknowledging) it covers every chunk's entry."""

    __slots__ = ("_chunk_ids",)

    def __init__(
        self,
        data: bytes,
        entry: EntryInfo,
        metadata: messaging_pb2.SingleMessageMetadata | None,
        chunk_ids: tuple[MessageId, ...],
    ) -> None:
        super().__init__(data, entry, -1, metadata)
        self._chunk_ids = chunk_ids

    def chunk_ids(self) -> tuple[MessageId, ...]:
        return self._chunk_ids
