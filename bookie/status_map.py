"""The one table between bookie errors and the wire: gRPC status codes and AddStatus values.

The servicer uses it to answer, the gRPC client to raise the same ``bookie.errors`` class the
``LocalBookieClient`` would have raised. Several errors share a status code (NOT_FOUND), so the
exact error travels as a reason in the trailing metadata key ``ERROR_REASON_KEY``.

Every error of the bookie protocol has a row; ``BookieLocalError`` and its subclasses
(``SegmentGoneError``, ``CheckpointError``, ``CookieMismatchError``,
``DecommissionRefusedError``) deliberately have none: they are handled in the process that
raised them and never answered (``tests/unit/bookie/test_errors.py`` checks both).
"""

from __future__ import annotations

import grpc

from bookie.errors import (
    BadRequestError,
    BookieError,
    BookieIOError,
    BookieUnavailableError,
    CorruptEntryError,
    LedgerDeletedError,
    LedgerFencedError,
    NoSuchEntryError,
    NoSuchLedgerError,
)
from strata.storage.v1 import bookie_pb2

ERROR_REASON_KEY = "strata-bookie-error"

# error class → (status code, reason). Order matters only for subclasses (none today).
_ERRORS: list[tuple[type[BookieError], grpc.StatusCode, str]] = [
    (LedgerFencedError, grpc.StatusCode.FAILED_PRECONDITION, "LEDGER_FENCED"),
    (NoSuchLedgerError, grpc.StatusCode.NOT_FOUND, "NO_SUCH_LEDGER"),
    (NoSuchEntryError, grpc.StatusCode.NOT_FOUND, "NO_SUCH_ENTRY"),
    (LedgerDeletedError, grpc.StatusCode.NOT_FOUND, "LEDGER_DELETED"),
    (CorruptEntryError, grpc.StatusCode.DATA_LOSS, "CORRUPT_ENTRY"),
    (BadRequestError, grpc.StatusCode.INVALID_ARGUMENT, "BAD_REQUEST"),
    (BookieUnavailableError, grpc.StatusCode.UNAVAILABLE, "UNAVAILABLE"),
    (BookieIOError, grpc.StatusCode.INTERNAL, "IO_ERROR"),
]
_BY_REASON = {reason: error for error, _, reason in _ERRORS}

# Without a reason (another server, a proxy, grpc itself), the code decides.
_BY_CODE: dict[grpc.StatusCode, type[BookieError]] = {
    grpc.StatusCode.FAILED_PRECONDITION: LedgerFencedError,
    grpc.StatusCode.NOT_FOUND: NoSuchEntryError,
    grpc.StatusCode.DATA_LOSS: CorruptEntryError,
    grpc.StatusCode.INVALID_ARGUMENT: BadRequestError,
    grpc.StatusCode.OUT_OF_RANGE: BadRequestError,
    grpc.StatusCode.UNAVAILABLE: BookieUnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: BookieUnavailableError,
    grpc.StatusCode.CANCELLED: BookieUnavailableError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: BookieUnavailableError,
}

_ADD_STATUS: list[tuple[type[BookieError], bookie_pb2.AddStatus.ValueType]] = [
    (LedgerFencedError, bookie_pb2.ADD_STATUS_FENCED),
    (BadRequestError, bookie_pb2.ADD_STATUS_BAD_REQUEST),
    (LedgerDeletedError, bookie_pb2.ADD_STATUS_DELETED),
]
_ADD_ERRORS: dict[int, type[BookieError]] = {status: error for error, status in _ADD_STATUS}


def status_for(error: BookieError) -> tuple[grpc.StatusCode, str]:
    """The status code and reason to answer ``error`` with."""
    for error_class, code, reason in _ERRORS:
        if isinstance(error, error_class):
            return code, reason
    return grpc.StatusCode.INTERNAL, "BOOKIE_ERROR"


def error_for_status(code: grpc.StatusCode, details: str, reason: str | None) -> BookieError:
    """The bookie error a failed call stands for."""
    error_class = _BY_REASON.get(reason or "") or _BY_CODE.get(code, BookieIOError)
    return error_class(details or code.name)


def add_status_for(error: BookieError) -> bookie_pb2.AddStatus.ValueType:
    """The AddStatus of a refused or failed add."""
    for error_class, status in _ADD_STATUS:
        if isinstance(error, error_class):
            return status
    return bookie_pb2.ADD_STATUS_ERROR


def error_for_add_status(status: int, message: str) -> BookieError | None:
    """None for ADD_STATUS_OK, else the error to raise (unknown statuses: BookieIOError)."""
    if status == bookie_pb2.ADD_STATUS_OK:
        return None
    error_class = _ADD_ERRORS.get(status, BookieIOError)
    return error_class(message or f"add failed with status {status}")
