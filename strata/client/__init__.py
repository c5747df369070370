"""The Strata client SDK, shaped like pulsar-client (the Python ``pulsar`` package).

Two flavours share one implementation:

- asyncio first: ``AsyncClient`` → ``AsyncProducer`` / ``AsyncConsumer``;
- blocking: ``Client`` → ``Producer`` / ``Consumer``, running the asyncio SDK on an event
  loop owned by the client on a background daemon thread.

Example::

    import strata

    with strata.Client("localhost:6650") as client:  # or "host1:6650,host2:6650"
        producer = client.create_producer("my-topic")
        message_id = producer.send(b"hello")
        consumer = client.subscribe("my-topic", "my-subscription",
                                    initial_position=strata.InitialPosition.Earliest)
        message = consumer.receive(timeout_millis=5000)
        consumer.acknowledge(message)

The service URL may list several brokers; producers and consumers find the broker that
serves their topic (lookup, redirects), follow it when it moves or dies, and on a
partitioned topic (``t-partition-0`` .. ``t-partition-{N-1}``) spread over its partitions:
keys by Murmur3 hash, other messages round robin.

Errors are ``StrataException`` subclasses, mapped from gRPC statuses in one table
(``strata.client._errors.STATUS_TO_EXCEPTION``).
"""

from strata.client._auth import AuthenticationToken
from strata.client._client import AsyncClient
from strata.client._consumer import AsyncConsumer, ConsumerEventListener
from strata.client._dead_letter import ConsumerDeadLetterPolicy
from strata.client._enums import (
    BatchingType,
    CompressionType,
    ConsumerType,
    InitialPosition,
    KeySharedMode,
)
from strata.client._errors import (
    Aborted,
    AlreadyClosed,
    AlreadyExists,
    AuthenticationError,
    AuthorizationError,
    Cancelled,
    ConsumerBusy,
    DataLoss,
    FailedPrecondition,
    InternalError,
    InvalidArgument,
    InvalidTopicName,
    MessageTooBig,
    NotFound,
    NotSupported,
    OutOfRange,
    ProducerBusy,
    ProducerQueueIsFull,
    ProtocolError,
    ResourceExhausted,
    Result,
    ServiceUnavailable,
    StrataException,
    Timeout,
    TopicNotFound,
    TopicNotOwned,
)
from strata.client._message import Message, MessageId
from strata.client._multi_topics import MultiTopicsConsumer
from strata.client._options import ConsumerKeySharedPolicy
from strata.client._producer import AsyncProducer
from strata.client._reader import AsyncReader
from strata.client._sync import Client, Consumer, Producer, Reader

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
