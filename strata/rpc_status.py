"""The ``google.rpc`` status details of a failed gRPC call, read the same way by the SDK, the
CLI and the broker's console (which follow ``TOPIC_NOT_OWNED`` to the owner it names)."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2, status_pb2

# Where gRPC carries the full ``google.rpc.Status`` of a failed call.
STATUS_DETAILS_KEY = "grpc-status-details-bin"
# The ErrorInfo reason of a call that reached a broker not serving its topic (messaging.proto).
TOPIC_NOT_OWNED_REASON = "TOPIC_NOT_OWNED"


def error_info_of(error: grpc.RpcError) -> error_details_pb2.ErrorInfo | None:
    """The ``google.rpc.ErrorInfo`` in a failed call's status details, if it carries one."""
    metadata_method = getattr(error, "trailing_metadata", None)
    metadata = metadata_method() if callable(metadata_method) else None
    for key, value in metadata or ():
        if key != STATUS_DETAILS_KEY or not isinstance(value, bytes):
            continue
        try:
            status = status_pb2.Status.FromString(value)
        except Exception:  # protobuf's DecodeError: a peer's garbage is not our crash
            return None
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                return info
    return None


def owner_named_by(error: grpc.RpcError) -> str | None:
    """The owner's address when a call failed because another broker serves the topic."""
    info = error_info_of(error)
    if info is None or info.reason != TOPIC_NOT_OWNED_REASON:
        return None
    return info.metadata.get("owner") or None
