"""The stored-entry format: the header the broker wraps once around a producer's batch.

Pure functions, no I/O: the produce path encodes with ``stored_entry_for()``, catch-up reads
decode only the message count and the delivery time with ``header_of()``, and the tests' fake
brokers build their entries with the same function, so the SDK is tested against the bytes a
broker stores.
The consumer SDK decodes the whole header (``strata.client._batch``).
"""

from __future__ import annotations

from strata.v1 import messaging_pb2


def stored_entry_for(producer_name: str, batch: messaging_pb2.ProducerBatch) -> bytes:
    """The ledger entry for one producer batch: its payload unchanged behind a header."""
    return messaging_pb2.StoredEntry(
        producer_name=producer_name,
        sequence_id=batch.sequence_id,
        num_messages=batch.num_messages,
        compression=batch.compression,
        uncompressed_size=batch.uncompressed_size,
        publish_time_ms=batch.publish_time_ms,
        payload=batch.payload,
        deliver_at_time_ms=batch.deliver_at_time_ms,
        sticky_key=batch.sticky_key,
        chunk=batch.chunk if batch.HasField("chunk") else None,
    ).SerializeToString()


def num_messages_of(data: bytes) -> int:
    """Read the message count from a stored entry's header."""
    return header_of(data)[0]


def sticky_key_of(data: bytes) -> str:
    """The key a Key_Shared subscription dispatches a stored entry by."""
    return messaging_pb2.StoredEntry.FromString(data).sticky_key


def publish_time_of(data: bytes) -> int:
    """The producer's publish time of a stored entry (ms since the epoch)."""
    return messaging_pb2.StoredEntry.FromString(data).publish_time_ms


def header_of(data: bytes) -> tuple[int, int]:
    """The message count and the delayed-delivery time (0 = at once) of a stored entry: a
    catch-up read's only decode."""
    entry = messaging_pb2.StoredEntry.FromString(data)
    return entry.num_messages or 1, entry.deliver_at_time_ms
