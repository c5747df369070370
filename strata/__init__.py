"""Strata: a Pulsar-style messaging system. This package is the shared library and the SDK.

``import strata`` stays light: the SDK names below (``strata.Client``, ``strata.MessageId``,
...) are loaded from ``strata.client`` on first use, so that server code importing
``strata.naming`` or ``strata.v1`` never pulls in the client SDK. The broker, bookie and
tiered packages are never imported from here.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from strata.client import (
        Aborted,
        AlreadyClosed,
        AlreadyExists,
        AsyncClient,
        AsyncConsumer,
        AsyncProducer,
        AsyncReader,
        AuthenticationError,
        AuthenticationToken,
        AuthorizationError,
        BatchingType,
        Cancelled,
        Client,
        CompressionType,
        Consumer,
        ConsumerBusy,
        ConsumerDeadLetterPolicy,
        ConsumerEventListener,
        ConsumerKeySharedPolicy,
        ConsumerType,
        DataLoss,
        FailedPrecondition,
        InitialPosition,
        InternalError,
        InvalidArgument,
        InvalidTopicName,
        KeySharedMode,
        Message,
        MessageId,
        MessageTooBig,
        MultiTopicsConsumer,
        NotFound,
        NotSupported,
        OutOfRange,
        Producer,
        ProducerBusy,
        ProducerQueueIsFull,
        ProtocolError,
        Reader,
        ResourceExhausted,
        Result,
        ServiceUnavailable,
        StrataException,
        Timeout,
        TopicNotFound,
        TopicNotOwned,
    )

__all__ = [
    "Aborted",
    "AlreadyClosed",
    "AlreadyExists",
    "AsyncClient",
    "AsyncConsumer",
    "AsyncProducer",
    "AsyncReader",
    "AuthenticationError",
    "AuthenticationToken",
    "AuthorizationError",
    "BatchingType",
    "Cancelled",
    "Client",
    "CompressionType",
    "Consumer",
    "ConsumerBusy",
    "ConsumerDeadLetterPolicy",
    "ConsumerEventListener",
    "ConsumerKeySharedPolicy",
    "ConsumerType",
    "DataLoss",
    "FailedPrecondition",
    "InitialPosition",
    "InternalError",
    "InvalidArgument",
    "InvalidTopicName",
    "KeySharedMode",
    "Message",
    "MessageId",
    "MessageTooBig",
    "MultiTopicsConsumer",
    "NotFound",
    "NotSupported",
    "OutOfRange",
    "Producer",
    "ProducerBusy",
    "ProducerQueueIsFull",
    "ProtocolError",
    "Reader",
    "ResourceExhausted",
    "Result",
    "ServiceUnavailable",
    "StrataException",
    "Timeout",
    "TopicNotFound",
    "TopicNotOwned",
]


def __getattr__(name: str) -> Any:
    # PEP 562 lazy re-export: the SDK is imported the first time one of its names is used.
    if name in __all__:
        value = getattr(importlib.import_module("strata.client"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'strata' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
