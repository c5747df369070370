"""Peeked entries as the console shows them: one row per message, payloads as text.

A peeked entry is the stored bytes a consumer would get (``StoredEntry``); it is taken apart
with the SDK's codec. A payload is shown as UTF-8 (undecodable bytes replaced) cut to
``PAYLOAD_PREVIEW_BYTES``; the page puts every string into the document as text.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from strata.batch_codec import BatchDecodeError, decode_entry
from strata.v1 import admin_pb2

PAYLOAD_PREVIEW_BYTES = 1024


def peeked_messages(entries: Iterable[admin_pb2.PeekedEntry]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for entry in entries:
        message_id = f"{entry.ledger_id}:{entry.entry_id}"
        try:
            decoded = decode_entry(entry.entry)
        except BatchDecodeError as exc:
            rows.append({"message_id": message_id, "error": str(exc)})
            continue
        batch = len(decoded.payloads) > 1
        for index, payload in enumerate(decoded.payloads):
            metadata = decoded.metadata[index] if decoded.metadata else None
            rows.append(
                {
                    "message_id": f"{message_id}:{index}" if batch else message_id,
                    "publish_time_ms": decoded.publish_time_ms,
                    "producer_name": decoded.producer_name,
                    "key": (
                        metadata.partition_key
                        if metadata is not None and metadata.HasField("partition_key")
                        else None
                    ),
                    "properties": dict(metadata.properties) if metadata is not None else {},
                    "size_bytes": len(payload),
                    "payload": payload[:PAYLOAD_PREVIEW_BYTES].decode("utf-8", "replace"),
                }
            )
    return rows
