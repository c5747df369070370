"""Errors of the Strata client SDK, and the one table that maps gRPC statuses onto them.

Hierarchy (names follow pulsar-client's exceptions where pulsar has one)::

    StrataException             base; ``retriable`` says whether the same call may succeed later
    ├── Timeout                 an operation, a send or a receive ran out of time (retriable)
    ├── ServiceUnavailable      UNAVAILABLE: broker down, topic loading or moving (retriable)
    ├── Cancelled               CANCELLED: the peer or a proxy ended the stream (retriable)
    ├── Aborted                 ABORTED: a metadata conflict; retry at a higher level (retriable)
    ├── ResourceExhausted       RESOURCE_EXHAUSTED: backlog quota or rate limit (retriable)
    ├── ProtocolError           the broker broke the wire contract; the stream is reopened
    │                           (retriable)
    ├── NotFound                NOT_FOUND: tenant, namespace, topic or subscription missing
    │                           (``TopicNotFound`` is the same class, pulsar's name)
    ├── AlreadyExists           ALREADY_EXISTS
    ├── InvalidArgument         INVALID_ARGUMENT, or a bad argument caught locally (also a
    │   │                       ValueError): the request is wrong whatever the state
    │   └── InvalidTopicName    the topic name is malformed (checked before any call)
    ├── FailedPrecondition      FAILED_PRECONDITION: fix the system's state before retrying
    │   ├── ConsumerBusy        an exclusive subscription already has a consumer
    │   ├── ProducerBusy        a producer with this name is already connected
    │   └── TopicNotOwned       the broker does not serve the topic; ``owner`` says who does,
    │                           when known (retriable: the client goes there, or looks up)
    ├── AuthenticationError     UNAUTHENTICATED
    ├── AuthorizationError      PERMISSION_DENIED
    ├── OutOfRange              OUT_OF_RANGE
    ├── DataLoss                DATA_LOSS
    ├── NotSupported            UNIMPLEMENTED
    ├── InternalError           INTERNAL or UNKNOWN
    ├── ProducerQueueIsFull     ``max_pending_messages`` reached with ``block_if_queue_full=False``
    ├── MessageTooBig           a message or batch is larger than the broker accepts
    └── AlreadyClosed           the client, producer or consumer was closed

``Result`` is pulsar's result code: the sync ``Producer.send_async`` callback receives
``Result.Ok`` or the ``result`` of the exception that failed the message.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

import grpc

from strata.rpc_status import TOPIC_NOT_OWNED_REASON, error_info_of

# The wire contract of a refused producer or consumer (proto/strata/v1/messaging.proto): the
# status carries a google.rpc.ErrorInfo with this reason and domain, and the owner's address.
ERROR_DOMAIN = "strata.io"
OWNER_METADATA_KEY = "owner"


class Result(enum.Enum):
    """Outcome of an operation, as handed to ``send_async`` callbacks (``pulsar.Result``)."""

    Ok = "Ok"
    UnknownError = "UnknownError"
    Timeout = "Timeout"
    ServiceUnavailable = "ServiceUnavailable"
    Cancelled = "Cancelled"
    Aborted = "Aborted"
    ResourceExhausted = "ResourceExhausted"
    ProtocolError = "ProtocolError"
    NotFound = "NotFound"
    AlreadyExists = "AlreadyExists"
    InvalidArgument = "InvalidArgument"
    InvalidTopicName = "InvalidTopicName"
    FailedPrecondition = "FailedPrecondition"
    ConsumerBusy = "ConsumerBusy"
    ProducerBusy = "ProducerBusy"
    TopicNotOwned = "TopicNotOwned"
    AuthenticationError = "AuthenticationError"
    AuthorizationError = "AuthorizationError"
    OutOfRange = "OutOfRange"
    DataLoss = "DataLoss"
    NotSupported = "NotSupported"
    InternalError = "InternalError"
    ProducerQueueIsFull = "ProducerQueueIsFull"
    MessageTooBig = "MessageTooBig"
    AlreadyClosed = "AlreadyClosed"


class StrataException(Exception):
    """Base of every SDK error.

    ``code`` is the gRPC status that caused it (None for errors raised locally) and
    ``details`` the broker's message.
    """

    retriable: bool = False
    result: Result = Result.UnknownError

    def __init__(
        self,
        message: str = "",
        *,
        code: grpc.StatusCode | None = None,
        details: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.details = message if details is None else details


class Timeout(StrataException):
    """An operation, a send or a receive did not finish in time."""

    retriable = True
    result = Result.Timeout


class ServiceUnavailable(StrataException):
    """The broker cannot serve the call now: down, starting, or moving the topic."""

    retriable = True
    result = Result.ServiceUnavailable


class Cancelled(StrataException):
    """The stream was cancelled by the peer or a proxy."""

    retriable = True
    result = Result.Cancelled


class Aborted(StrataException):
    """A concurrent change won; the whole operation may be retried."""

    retriable = True
    result = Result.Aborted


class ResourceExhausted(StrataException):
    """A quota or rate limit holds the call back."""

    retriable = True
    result = Result.ResourceExhausted


class ProtocolError(StrataException):
    """The broker answered something the wire contract does not allow; the stream is reopened."""

    retriable = True
    result = Result.ProtocolError


class NotFound(StrataException):
    """The tenant, namespace, topic or subscription does not exist."""

    result = Result.NotFound


# pulsar-client's name for the same condition.
TopicNotFound = NotFound


class AlreadyExists(StrataException):
    """The resource being created exists already."""

    result = Result.AlreadyExists


class InvalidArgument(StrataException, ValueError):
    """The request is wrong whatever the state of the system (also a ``ValueError``)."""

    result = Result.InvalidArgument


class InvalidTopicName(InvalidArgument):
    """The topic name is malformed."""

    result = Result.InvalidTopicName


class FailedPrecondition(StrataException):
    """The system is not in a state that allows the call; retrying as is will not help."""

    result = Result.FailedPrecondition


class ConsumerBusy(FailedPrecondition):
    """An exclusive subscription already has a consumer."""

    result = Result.ConsumerBusy


class ProducerBusy(FailedPrecondition):
    """A producer with the same name is already connected to the topic."""

    result = Result.ProducerBusy


class TopicNotOwned(FailedPrecondition):
    """The broker asked does not serve the topic (it moved, or the lookup was stale).

    ``owner`` is the ``host:port`` of the broker that does, when the broker knows it; the
    SDK reconnects there, or looks the topic up again when it is None. Unlike other
    precondition failures this one is retriable: the state it depends on is the cluster's
    ownership, which the retry itself follows.
    """

    retriable = True
    result = Result.TopicNotOwned

    def __init__(
        self,
        message: str = "",
        *,
        owner: str | None = None,
        code: grpc.StatusCode | None = None,
        details: str | None = None,
    ) -> None:
        super().__init__(message, code=code, details=details)
        self.owner = owner


class AuthenticationError(StrataException):
    """The token is missing, invalid or expired."""

    result = Result.AuthenticationError


class AuthorizationError(StrataException):
    """The authenticated role lacks the permission."""

    result = Result.AuthorizationError


class OutOfRange(StrataException):
    """A position is past the end, or its data has been trimmed."""

    result = Result.OutOfRange


class DataLoss(StrataException):
    """Stored data failed its checksum or a ledger was lost."""

    result = Result.DataLoss


class NotSupported(StrataException):
    """The broker does not implement this call or option."""

    result = Result.NotSupported


class InternalError(StrataException):
    """The broker broke one of its own invariants."""

    result = Result.InternalError


class ProducerQueueIsFull(StrataException):
    """``max_pending_messages`` are awaiting receipts and ``block_if_queue_full`` is off."""

    result = Result.ProducerQueueIsFull


class MessageTooBig(StrataException):
    """A message, or the batch it would make, exceeds the broker's maximum size."""

    result = Result.MessageTooBig


class AlreadyClosed(StrataException):
    """The client, producer or consumer has been closed."""

    result = Result.AlreadyClosed


# The one table from gRPC status to SDK error. Where one status covers several pulsar
# errors, a refinement looks at the status message (the broker's wording is part of the
# contract: "exclusive subscription ... already has a consumer").
STATUS_TO_EXCEPTION: dict[grpc.StatusCode, type[StrataException]] = {
    grpc.StatusCode.DEADLINE_EXCEEDED: Timeout,
    grpc.StatusCode.UNAVAILABLE: ServiceUnavailable,
    grpc.StatusCode.CANCELLED: Cancelled,
    grpc.StatusCode.ABORTED: Aborted,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.UNAUTHENTICATED: AuthenticationError,
    grpc.StatusCode.PERMISSION_DENIED: AuthorizationError,
    grpc.StatusCode.OUT_OF_RANGE: OutOfRange,
    grpc.StatusCode.DATA_LOSS: DataLoss,
    grpc.StatusCode.UNIMPLEMENTED: NotSupported,
    grpc.StatusCode.INTERNAL: InternalError,
    grpc.StatusCode.UNKNOWN: InternalError,
}

_REFINEMENTS: dict[
    grpc.StatusCode, tuple[tuple[Callable[[str], bool], type[StrataException]], ...]
] = {
    grpc.StatusCode.FAILED_PRECONDITION: (
        (lambda text: "already has a consumer" in text, ConsumerBusy),
        (lambda text: "producer" in text and "already connected" in text, ProducerBusy),
    ),
}


# ErrorInfo reasons (messaging.proto) that name the exception directly; the message text
# refinements above serve brokers that sent none.
_BUSY_REASONS: dict[str, type[StrataException]] = {
    "PRODUCER_BUSY": ProducerBusy,
    "CONSUMER_BUSY": ConsumerBusy,
}


def exception_for_status(code: grpc.StatusCode, details: str) -> StrataException:
    """The SDK error for a gRPC status and its message."""
    cls = STATUS_TO_EXCEPTION.get(code, InternalError)
    lowered = details.lower()
    for matches, refined in _REFINEMENTS.get(code, ()):
        if matches(lowered):
            cls = refined
            break
    return cls(f"{code.name}: {details}", code=code, details=details)


def from_rpc_error(error: grpc.RpcError) -> StrataException:
    """Map a failed gRPC call (sync or asyncio) to the SDK error through the table.

    A FAILED_PRECONDITION whose ErrorInfo says TOPIC_NOT_OWNED becomes ``TopicNotOwned``
    with the owner's address from the details.
    """
    code_method = getattr(error, "code", None)
    details_method = getattr(error, "details", None)
    code = code_method() if callable(code_method) else None
    details = (details_method() if callable(details_method) else None) or ""
    if not isinstance(code, grpc.StatusCode):
        code = grpc.StatusCode.UNKNOWN
    if code is grpc.StatusCode.FAILED_PRECONDITION:
        info = error_info_of(error)
        if (
            info is not None
            and info.reason == TOPIC_NOT_OWNED_REASON
            and (info.domain == ERROR_DOMAIN)
        ):
            owner = info.metadata.get(OWNER_METADATA_KEY) or None
            return TopicNotOwned(f"{code.name}: {details}", owner=owner, code=code, details=details)
        if info is not None and info.domain == ERROR_DOMAIN and info.reason in _BUSY_REASONS:
            busy = _BUSY_REASONS[info.reason]
            return busy(f"{code.name}: {details}", code=code, details=details)
    exception = exception_for_status(code, details)
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        # A server's limit (producers per topic, a message over the size limit) does not go
        # away by asking again; the client's own channel bound (raised locally) does.
        exception.retriable = False
    return exception


def result_of(error: BaseException | None) -> Result:
    """The ``Result`` code a callback receives for this outcome."""
    if error is None:
        return Result.Ok
    if isinstance(error, StrataException):
        return error.result
    return Result.UnknownError
