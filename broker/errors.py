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
    ├── ResourceLimitError            a bound was reached (RESOURCE_EXHAUSTED)
    ├── ServiceUnavailableError       storage cannot take writes now (UNAVAILABLE, retriable)
    └── CorruptDataError              a stored record failed its checksum (DATA_LOSS)
"""

from __future__ import annotations

import grpc

from bookie.errors import (
    BookieError,
    BookieUnavailableError,
    CorruptEntryError,
    LedgerFencedError,
)
from bookie.ledgers import LedgerClientError, LedgerClosedError, NotEnoughBookiesError
from strata.metadata import MetadataError
from strata.naming import InvalidNameError


class BrokerError(Exception):
    retriable = False
    code = grpc.StatusCode.INTERNAL


class InvalidRequestError(BrokerError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class MessageTooLargeError(InvalidRequestError):
    pass


class NotFoundError(BrokerError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExistsError(BrokerError):
    code = grpc.StatusCode.ALREADY_EXISTS


class PreconditionError(BrokerError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class TopicFencedError(BrokerError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceLimitError(BrokerError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class ServiceUnavailableError(BrokerError):
    retriable = True
    code = grpc.StatusCode.UNAVAILABLE


class CorruptDataError(BrokerError):
    code = grpc.StatusCode.DATA_LOSS


def to_status(exc: BaseException) -> tuple[grpc.StatusCode, str] | None:
    """The status for an expected error, or None for an unexpected one (logged, INTERNAL)."""
    if isinstance(exc, BrokerError):
        return exc.code, str(exc)
    if isinstance(exc, InvalidNameError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    if isinstance(exc, CorruptEntryError):
        return grpc.StatusCode.DATA_LOSS, f"stored entry failed its checksum: {exc}"
    if isinstance(exc, LedgerFencedError):
        return grpc.StatusCode.FAILED_PRECONDITION, f"topic ledger was fenced: {exc}"
    if isinstance(exc, NotEnoughBookiesError | BookieUnavailableError | LedgerClosedError):
        return grpc.StatusCode.UNAVAILABLE, f"storage unavailable: {exc}"
    if isinstance(exc, BookieError | LedgerClientError):
        return grpc.StatusCode.UNAVAILABLE, f"storage error: {exc}"
    if isinstance(exc, MetadataError):
        code = grpc.StatusCode.UNAVAILABLE if exc.retriable else grpc.StatusCode.INTERNAL
        return code, f"metadata store: {exc}"
    return None
