"""The SDK's enums, spelled as pulsar-client spells them, with their wire values.

Each member's value is the matching ``strata.v1`` protobuf enum number, so converting is
``int(member)`` and no table can drift from the ``.proto`` file.
"""

from __future__ import annotations

import enum

from strata.v1 import messaging_pb2


class CompressionType(enum.IntEnum):
    """How a producer compresses each batch as a whole (``pulsar.CompressionType``)."""

    NONE = messaging_pb2.COMPRESSION_TYPE_NONE
    LZ4 = messaging_pb2.COMPRESSION_TYPE_LZ4
    ZSTD = messaging_pb2.COMPRESSION_TYPE_ZSTD


class ConsumerType(enum.IntEnum):
    """How a subscription spreads messages over its consumers (``pulsar.ConsumerType``).

    ``Failover`` and ``KeyShared`` are reserved in the protocol; a broker that does not
    serve them refuses the subscribe.
    """

    Exclusive = messaging_pb2.SUBSCRIPTION_TYPE_EXCLUSIVE
    Shared = messaging_pb2.SUBSCRIPTION_TYPE_SHARED
    Failover = messaging_pb2.SUBSCRIPTION_TYPE_FAILOVER
    KeyShared = messaging_pb2.SUBSCRIPTION_TYPE_KEY_SHARED


class BatchingType(enum.IntEnum):
    """How a producer groups messages into batches (``pulsar.BatchingType``): ``KeyBased``
    puts only messages of one key in a batch, which Key_Shared subscriptions need to keep
    each key's messages with one consumer (they dispatch a batch by its first key)."""

    Default = 0
    KeyBased = 1


class KeySharedMode(enum.IntEnum):
    """How a Key_Shared subscription divides its keys (``pulsar.KeySharedMode``)."""

    AutoSplit = messaging_pb2.KeySharedMeta.AUTO_SPLIT
    Sticky = messaging_pb2.KeySharedMeta.STICKY


class InitialPosition(enum.IntEnum):
    """Where a subscription created by ``subscribe`` starts (``pulsar.InitialPosition``)."""

    Latest = messaging_pb2.INITIAL_POSITION_LATEST
    Earliest = messaging_pb2.INITIAL_POSITION_EARLIEST
