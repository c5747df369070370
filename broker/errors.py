"""Errors of the broker, and the one table that maps every domain error to a gRPC status.

Hierarchy::

    BrokerError                       base; ``retriable`` tells clients whether to retry
    ├── InvalidRequestError           malformed input (INVALID_ARGUMENT)
    │   └── MessageTooLargeError      a batch over the maximum message size
    ├── NotFoundError                 unknown tenant, namespace, topic (NOT_FOUND)
    ├── AlreadyExistsError            create of an existing resource (ALREADY_EXISTS)
    ├── PreconditionError             state forbids it: exclusive consumer busy, producer name
    │                                 in use, namespace not empty (FAILED_PRECONDITION)
    ├── TopicFencedError              another owner took the topic's ledger (FAILED_PRECONDITION)
    ├── NotOwnerError                 another broker serves the topic (FAILED_PRECONDITION, with
    │                                 a google.rpc.ErrorInfo naming the owner)
    ├── ResourceLimitError            a bound was reached (RESOURCE_EXHAUSTED)
    ├── ServiceUnavailableError       storage cannot take writes now (UNAVAILABLE, retriable)
    └── CorruptDataError              a stored record failed its checksum (DATA_LOSS)
"""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from bookie.errors import (
    BookieError,
    BookieUnavailableError,
    CorruptEntryError,
    LedgerFencedError,
)
from bookie.ledger import LedgerClientError, LedgerClosedError, NotEnoughBookiesError
from strata.grpc_decoding import STREAM_REFUSAL
from strata.metadata import MetadataError, ValueTooLargeError
from strata.naming import InvalidNameError
from tiered.errors import ObjectNotFoundError, OffloadCorruptError, TieredError


class BrokerError(Exception):
    retriable = False
    code = grpc.StatusCode.INTERNAL
    # A refusal a client must act on carries a google.rpc.ErrorInfo with this stable reason
    # (domain ERROR_DOMAIN; see messaging.proto); "" carries none.
    reason = ""


class InvalidRequestError(BrokerError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class MessageTooLargeError(InvalidRequestError):
    reason = "MESSAGE_TOO_LARGE"


class NotFoundError(BrokerError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExistsError(BrokerError):
    code = grpc.StatusCode.ALREADY_EXISTS


class PreconditionError(BrokerError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class ProducerBusyError(PreconditionError):
    """A producer of this name is connected (retriable right after a reconnect: the broker
    may not yet have seen the old stream end)."""

    reason = "PRODUCER_BUSY"


class ConsumerBusyError(PreconditionError):
    """An Exclusive subscription has its consumer (same retriability as PRODUCER_BUSY)."""

    reason = "CONSUMER_BUSY"


class TopicFencedError(BrokerError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class NotOwnerError(BrokerError):
    """Another broker owns the topic's bundle; ``owner`` is its address ("" if unknown)."""

    code = grpc.StatusCode.FAILED_PRECONDITION

    def __init__(self, message: str, owner: str) -> None:
        super().__init__(message)
        self.owner = owner


class ResourceLimitError(BrokerError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class BacklogQuotaExceededError(BrokerError):
    """The topic's backlog is over its quota (``broker.backlog_quota``)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "BACKLOG_QUOTA_EXCEEDED"


class PermissionDeniedError(BrokerError):
    """The caller's role may not make this call (``broker.authorization``)."""

    code = grpc.StatusCode.PERMISSION_DENIED


class ServiceUnavailableError(BrokerError):
    retriable = True
    code = grpc.StatusCode.UNAVAILABLE


class CorruptDataError(BrokerError):
    code = grpc.StatusCode.DATA_LOSS


ERROR_DOMAIN = "strata.io"
NOT_OWNED_REASON = "TOPIC_NOT_OWNED"


def status_metadata(exc: BaseException) -> tuple[tuple[str, str | bytes], ...]:
    """Trailing metadata carrying rich status details for errors that have them: a
    ``google.rpc.ErrorInfo`` with the error's reason, naming the owner for NotOwnerError
    (see messaging.proto)."""
    if isinstance(exc, NotOwnerError):
        info = error_details_pb2.ErrorInfo(
            reason=NOT_OWNED_REASON,
            domain=ERROR_DOMAIN,
            metadata={"owner": exc.owner} if exc.owner else {},
        )
    elif isinstance(exc, BrokerError) and exc.reason:
        info = error_details_pb2.ErrorInfo(reason=exc.reason, domain=ERROR_DOMAIN)
    else:
        return ()
    detail = any_pb2.Any()
    detail.Pack(info)
    status = status_pb2.Status(code=exc.code.value[0], message=str(exc), details=[detail])
    return tuple(rpc_status.to_status(status).trailing_metadata)


def to_status(exc: BaseException) -> tuple[grpc.StatusCode, str] | None:
    """The status for an expected error, or None for an unexpected one (logged, INTERNAL)."""
    if isinstance(exc, BrokerError):
        return exc.code, str(exc)
    if isinstance(exc, InvalidNameError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    if isinstance(exc, DecodeError):
        return grpc.StatusCode.INVALID_ARGUMENT, STREAM_REFUSAL
    if isinstance(exc, CorruptEntryError):
        return grpc.StatusCode.DATA_LOSS, f"stored entry failed its checksum: {exc}"
    if isinstance(exc, LedgerFencedError):
        return grpc.StatusCode.FAILED_PRECONDITION, f"topic ledger was fenced: {exc}"
    if isinstance(exc, NotEnoughBookiesError | BookieUnavailableError | LedgerClosedError):
        return grpc.StatusCode.UNAVAILABLE, f"storage unavailable: {exc}"
    if isinstance(exc, BookieError | LedgerClientError):
        return grpc.StatusCode.UNAVAILABLE, f"storage error: {exc}"
    if isinstance(exc, ValueTooLargeError):
        # A record a request would make too big for the metadata store: a bound was reached.
        return grpc.StatusCode.RESOURCE_EXHAUSTED, f"metadata store: {exc}"
    if isinstance(exc, MetadataError):
        code = grpc.StatusCode.UNAVAILABLE if exc.retriable else grpc.StatusCode.INTERNAL
        return code, f"metadata store: {exc}"
    if isinstance(exc, OffloadCorruptError | ObjectNotFoundError):
        # An offloaded ledger whose objects are damaged or gone: never served.
        return grpc.StatusCode.DATA_LOSS, f"offloaded data unreadable: {exc}"
    if isinstance(exc, TieredError):
        # Object storage down, throttling, or misconfigured: the consumer retries later.
        return grpc.StatusCode.UNAVAILABLE, f"object storage unavailable: {exc}"
    return None
