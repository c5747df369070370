"""The batch encoding, as pure functions: no I/O, no asyncio.

A producer batch is one ``MessageBatch`` protobuf (columnar: one ``payloads`` entry per
message, and ``metadata`` either empty or one ``SingleMessageMetadata`` per message),
serialized and then compressed as a whole (LZ4 frame or Zstandard frame). It travels in a
``ProducerBatch``, becomes the ``payload`` of a ``StoredEntry`` on the broker unchanged, and
reaches consumers as those bytes. This module builds the first and takes apart the last.

The acknowledged-index bitsets of deliveries are ``repeated uint64`` words: bit i of word
i // 64 set means batch index i is acknowledged.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import lz4.frame
import zstandard

from strata.v1 import messaging_pb2

_NONE = messaging_pb2.COMPRESSION_TYPE_NONE
_UNSPECIFIED = messaging_pb2.COMPRESSION_TYPE_UNSPECIFIED
_LZ4 = messaging_pb2.COMPRESSION_TYPE_LZ4
_ZSTD = messaging_pb2.COMPRESSION_TYPE_ZSTD

# A payload inside MessageBatch costs its bytes plus one tag byte and a varint length of at
# most 5 bytes (payloads are far below 4 GiB). Used to keep batches under the size limits
# without serializing anything per message.
PAYLOAD_OVERHEAD_BYTES = 6

# A decompressed batch larger than this is refused rather than allocated: the broker's own
# limit is a few MiB, so a bigger size means a corrupt or hostile entry.
MAX_UNCOMPRESSED_BATCH_BYTES = 256 * 1024 * 1024


class BatchDecodeError(ValueError):
    """An entry or batch cannot be decoded: corrupt bytes, bad compression, wrong counts."""


def make_metadata(
    properties: Mapping[str, str] | None,
    partition_key: str | None,
    event_timestamp_ms: int | None,
    ordering_key: str | None = None,
) -> messaging_pb2.SingleMessageMetadata | None:
    """The per-message metadata, or None when the message carries none (the common case)."""
    if not properties and partition_key is None and not event_timestamp_ms and ordering_key is None:
        return None
    metadata = messaging_pb2.SingleMessageMetadata(
        properties=properties or None, event_time_ms=event_timestamp_ms or 0
    )
    if partition_key is not None:
        metadata.partition_key = partition_key
    if ordering_key is not None:
        metadata.ordering_key = ordering_key
    return metadata


class BatchBuilder:
    """The messages of one open producer batch, accumulated without per-message protobufs.

    Lifecycle: the producer creates one, ``add``s messages while ``size_bytes`` and
    ``len`` stay under its limits, then ``encode``s it once and drops it.
    """

    __slots__ = ("metadata", "payloads", "size_bytes")

    def __init__(self) -> None:
        self.payloads: list[bytes] = []
        # None while no message of the batch has metadata; then one entry per payload.
        self.metadata: list[messaging_pb2.SingleMessageMetadata] | None = None
        self.size_bytes = 0

    def __len__(self) -> int:
        return len(self.payloads)

    def add(
        self, payload: bytes, metadata: messaging_pb2.SingleMessageMetadata | None = None
    ) -> None:
        self.payloads.append(payload)
        self.size_bytes += len(payload) + PAYLOAD_OVERHEAD_BYTES
        if metadata is not None:
            if self.metadata is None:
                # The first message with metadata: the earlier ones get empty entries, since
                # the column is either empty or exactly one entry per payload.
                empty = messaging_pb2.SingleMessageMetadata
                self.metadata = [empty() for _ in range(len(self.payloads) - 1)]
            self.metadata.append(metadata)
            self.size_bytes += metadata.ByteSize() + PAYLOAD_OVERHEAD_BYTES
        elif self.metadata is not None:
            self.metadata.append(messaging_pb2.SingleMessageMetadata())
            self.size_bytes += 2

    def encode(self, compression: int) -> tuple[bytes, int]:
        """The batch payload, compressed, and the size of the uncompressed ``MessageBatch``."""
        return encode_batch(self.payloads, self.metadata, compression)


def encode_batch(
    payloads: Sequence[bytes],
    metadata: Sequence[messaging_pb2.SingleMessageMetadata] | None,
    compression: int,
) -> tuple[bytes, int]:
    """Serialize a ``MessageBatch`` and compress it; returns (payload, uncompressed size)."""
    if metadata:
        assert len(metadata) == len(payloads), "metadata is empty or one per payload"
        batch = messaging_pb2.MessageBatch(payloads=payloads, metadata=metadata)
    else:
        batch = messaging_pb2.MessageBatch(payloads=payloads)
    raw = batch.SerializeToString()
    return compress(raw, compression), len(raw)


_local = threading.local()


def _zstd_compressor() -> zstandard.ZstdCompressor:
    # Compressor objects are not safe to share between threads; one per thread is cheap.
    compressor = getattr(_local, "zstd_compressor", None)
    if compressor is None:
        compressor = zstandard.ZstdCompressor(write_content_size=True)
        _local.zstd_compressor = compressor
    return compressor


def _zstd_decompressor() -> zstandard.ZstdDecompressor:
    decompressor = getattr(_local, "zstd_decompressor", None)
    if decompressor is None:
        decompressor = zstandard.ZstdDecompressor()
        _local.zstd_decompressor = decompressor
    return decompressor


def compress(data: bytes, compression: int) -> bytes:
    if compression == _NONE or compression == _UNSPECIFIED:
        return data
    if compression == _LZ4:
        return bytes(lz4.frame.compress(data))
    if compression == _ZSTD:
        return bytes(_zstd_compressor().compress(data))
    raise ValueError(f"unknown compression type {compression}")


def decompress(data: bytes, compression: int, uncompressed_size: int) -> bytes:
    """Undo ``compress``; raises ``BatchDecodeError`` for corrupt data or a size mismatch."""
    if compression == _NONE or compression == _UNSPECIFIED:
        return data
    if uncompressed_size > MAX_UNCOMPRESSED_BATCH_BYTES:
        raise BatchDecodeError(f"uncompressed size {uncompressed_size} bytes is too large")
    try:
        if compression == _LZ4:
            raw = bytes(lz4.frame.decompress(data))
        elif compression == _ZSTD:
            raw = bytes(_zstd_decompressor().decompress(data, max_output_size=uncompressed_size))
        else:
            raise BatchDecodeError(f"unknown compression type {compression}")
    except BatchDecodeError:
        raise
    except Exception as exc:  # lz4 and zstandard raise their own error types
        raise BatchDecodeError(f"cannot decompress batch: {exc}") from exc
    if len(raw) != uncompressed_size:
        raise BatchDecodeError(
            f"batch decompressed to {len(raw)} bytes, its header says {uncompressed_size}"
        )
    return raw


def decode_message_batch(
    data: bytes, num_messages: int
) -> tuple[list[bytes], list[messaging_pb2.SingleMessageMetadata]]:
    """Payloads and metadata (empty list, or one per payload) of an uncompressed batch."""
    try:
        batch = messaging_pb2.MessageBatch.FromString(data)
    except Exception as exc:  # protobuf's DecodeError
        raise BatchDecodeError(f"cannot parse MessageBatch: {exc}") from exc
    payloads = list(batch.payloads)
    metadata = list(batch.metadata)
    if len(payloads) != num_messages:
        raise BatchDecodeError(
            f"batch holds {len(payloads)} payloads, its header says {num_messages}"
        )
    if metadata and len(metadata) != len(payloads):
        raise BatchDecodeError(
            f"batch holds {len(metadata)} metadata entries for {len(payloads)} payloads"
        )
    return payloads, metadata


@dataclass(frozen=True, slots=True)
class DecodedEntry:
    """A stored entry taken apart: the broker's header and the producer's messages."""

    producer_name: str
    sequence_id: int
    publish_time_ms: int
    payloads: list[bytes]
    metadata: list[messaging_pb2.SingleMessageMetadata]
    chunk: messaging_pb2.ChunkInfo | None = None  # one chunk of a chunked message


def decode_entry(entry: bytes) -> DecodedEntry:
    """Parse a serialized ``StoredEntry`` down to its messages."""
    try:
        stored = messaging_pb2.StoredEntry.FromString(entry)
    except Exception as exc:  # protobuf's DecodeError
        raise BatchDecodeError(f"cannot parse StoredEntry: {exc}") from exc
    raw = decompress(stored.payload, stored.compression, stored.uncompressed_size)
    payloads, metadata = decode_message_batch(raw, stored.num_messages)
    return DecodedEntry(
        stored.producer_name,
        stored.sequence_id,
        stored.publish_time_ms,
        payloads,
        metadata,
        stored.chunk if stored.HasField("chunk") else None,
    )


def acked_flags(words: Sequence[int], batch_size: int) -> bytearray:
    """The bitset words of a delivery as one byte per batch index: 1 = acknowledged."""
    flags = bytearray(max(1, batch_size))
    for position, word in enumerate(words):
        base = 64 * position
        while word:
            low = word & -word
            index = base + low.bit_length() - 1
            if index < batch_size:
                flags[index] = 1
            word ^= low
    return flags


def bitset_words(indexes: Iterable[int]) -> list[int]:
    """The ``repeated uint64`` words with the bits of these batch indexes set."""
    words: list[int] = []
    for index in indexes:
        if index < 0:
            raise ValueError(f"batch index {index} is negative")
        word = index >> 6
        if word >= len(words):
            words.extend([0] * (word + 1 - len(words)))
        words[word] |= 1 << (index & 63)
    return words
