"""Hostile input to one real standalone (issue 11 item 6, reliability plan §4.8).

Every case sends one bad request (a name, a stream used out of order, a count or size at or
past a limit, bytes that are not protobuf) and asserts the exact status, a message without a
traceback, a file path or an exception class, an answer within a few seconds, and that the
server still serves afterwards. One standalone serves the whole module.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message

from strata.v1 import admin_pb2, messaging_pb2
from tests.harness import Standalone

pytestmark = pytest.mark.integration

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
EXISTS = grpc.StatusCode.ALREADY_EXISTS
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
OK = grpc.StatusCode.OK

# Bound on one refusal: "within a second" on an idle machine, with room for a shared one.
ANSWER_WITHIN_SECONDS = 5.0
MAX_DETAILS_CHARACTERS = 500
MESSAGING = "/strata.v1.MessagingService/"
ADMIN = "/strata.v1.AdminService/"
MIB = 1024 * 1024
U32_MAX = 2**32 - 1
U64_MAX = 2**64 - 1

# An exception class (``DecodeError``, ``KeyError``...), a traceback or a source file.
_LEAK = re.compile(r"Traceback|\.py\b|File \"|\b[A-Z][A-Za-z]*(Error|Exception)\b|<class ")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Standalone]:
    standalone = Standalone(tmp_path_factory.mktemp("bad-input") / "data").start()
    try:
        with grpc.insecure_channel(standalone.address) as channel:
            # Fixtures the cases refer to: a partitioned topic and a topic with a subscription.
            _unary(channel, "CreatePartitionedTopic", ADMIN)(
                admin_pb2.CreatePartitionedTopicRequest(name="orders", partitions=4)
            )
            _unary(channel, "CreateTopic", ADMIN)(admin_pb2.CreateTopicRequest(name="plain"))
            _unary(channel, "CreateSubscription", ADMIN)(
                admin_pb2.CreateSubscriptionRequest(topic="plain", subscription="s")
            )
        yield standalone
    finally:
        standalone.stop()
    # No request, however bad, was an unexpected error with a traceback in the log.
    logged = standalone.log_path.read_text(errors="replace")
    assert "Traceback" not in logged and "unexpected error" not in logged, logged[-2000:]


def _unary(channel: grpc.Channel, method: str, service: str) -> Callable[[Message], bytes]:
    call: grpc.UnaryUnaryMultiCallable[Message, bytes] = channel.unary_unary(
        service + method, request_serializer=lambda m: m.SerializeToString()
    )
    return lambda request: call(request, timeout=10)


@dataclass(frozen=True)
class Outcome:
    code: grpc.StatusCode
    details: str
    responses: list[Any]


def call_unary(channel: grpc.Channel, path: str, body: bytes) -> Outcome:
    call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
        path, request_serializer=None, response_deserializer=None
    )
    try:
        return Outcome(OK, "", [call(body, timeout=10)])
    except grpc.RpcError as error:
        return Outcome(error.code(), error.details() or "", [])


def call_stream(channel: grpc.Channel, path: str, bodies: list[bytes]) -> Outcome:
    call: grpc.StreamStreamMultiCallable[bytes, bytes] = channel.stream_stream(
        path, request_serializer=None, response_deserializer=None
    )
    responses: list[bytes] = []
    try:
        for response in call(iter(bodies), timeout=10):
            responses.append(response)
        return Outcome(OK, "", responses)
    except grpc.RpcError as error:
        return Outcome(error.code(), error.details() or "", responses)


def check(
    server: Standalone, send: Callable[[grpc.Channel], Outcome], code: grpc.StatusCode
) -> Outcome:
    """Send one bad request; assert the status, a clean message, a prompt answer and that the
    server answers a good request afterwards."""
    with grpc.insecure_channel(server.address) as channel:
        started = time.monotonic()
        outcome = send(channel)
        elapsed = time.monotonic() - started
        assert outcome.code == code, (outcome.code, outcome.details[:300])
        assert elapsed < ANSWER_WITHIN_SECONDS, elapsed
        assert len(outcome.details) <= MAX_DETAILS_CHARACTERS, outcome.details[:300]
        assert not _LEAK.search(outcome.details), outcome.details
        if code != OK:
            assert outcome.details, "a refusal says why"
        lookup = _unary(channel, "Lookup", MESSAGING)(messaging_pb2.LookupRequest(topic="t"))
        assert messaging_pb2.LookupResponse.FromString(lookup).broker_address
    return outcome


def unary(method: str, request: Message, service: str = ADMIN) -> Callable[[grpc.Channel], Outcome]:
    return lambda channel: call_unary(channel, service + method, request.SerializeToString())


def produce(*requests: messaging_pb2.ProduceRequest) -> Callable[[grpc.Channel], Outcome]:
    bodies = [r.SerializeToString() for r in requests]
    return lambda channel: call_stream(channel, MESSAGING + "Produce", bodies)


def consume(*requests: messaging_pb2.ConsumeRequest) -> Callable[[grpc.Channel], Outcome]:
    bodies = [r.SerializeToString() for r in requests]
    return lambda channel: call_stream(channel, MESSAGING + "Consume", bodies)


# ---- names ------------------------------------------------------------------------------------

BAD_NAMES = {
    "empty": "",
    "dot": ".",
    "dotdot": "..",
    "slash": "a/b",
    "dotdot-slash": "../../admin",
    "leading-slash": "/a",
    "trailing-slash": "a/",
    "backslash": "a\\b",
    "percent-dotdot": "%2e%2e",
    "nul": "a\x00b",
    "bell": "a\x07b",
    "escape": "a\x1b[31mred",
    "newline": "a\nb",
    "log-injection": "a\r\n2026-01-01 INFO forged",
    "tab": "a\tb",
    "space": "a b",
    "256-characters": "x" * 256,
    "1-MiB": "x" * MIB,
    "latin-1": "tenant-ü",
    "cjk": "名前",
    "right-to-left-mark": "a\u202eb",
    "homoglyph": "\u0430dmin",  # Cyrillic a
    "zero-width-space": "a\u200bb",
    "nfd": "e\u0301",
    "delete-char": "a\x7fb",
}

NAME_TARGETS: dict[str, Callable[[str], Callable[[grpc.Channel], Outcome]]] = {
    "create-tenant": lambda n: unary("CreateTenant", admin_pb2.CreateTenantRequest(tenant_id=n)),
    "create-namespace": lambda n: unary(
        "CreateNamespace", admin_pb2.CreateNamespaceRequest(parent="tenants/public", namespace_id=n)
    ),
    "create-topic": lambda n: unary(
        "CreateTopic", admin_pb2.CreateTopicRequest(name=f"persistent://public/default/{n}")
    ),
    "lookup": lambda n: unary("Lookup", messaging_pb2.LookupRequest(topic=n), MESSAGING),
    "partitioned-metadata-namespace": lambda n: unary(
        "GetPartitionedTopicMetadata",
        messaging_pb2.PartitionedTopicMetadataRequest(topic=f"persistent://public/{n}/t"),
        MESSAGING,
    ),
    "produce-tenant": lambda n: produce(
        messaging_pb2.ProduceRequest(
            open=messaging_pb2.OpenProducer(topic=f"persistent://{n}/default/t")
        )
    ),
}


@pytest.mark.parametrize("target", sorted(NAME_TARGETS))
@pytest.mark.parametrize("name", sorted(BAD_NAMES))
def test_bad_name_is_refused(server: Standalone, target: str, name: str) -> None:
    outcome = check(server, NAME_TARGETS[target](BAD_NAMES[name]), INVALID)
    if len(BAD_NAMES[name]) > 1000:
        assert "characters" in outcome.details or "longer" in outcome.details


# Subscription names are free text as in Pulsar, but printable, without '/', bounded.
BAD_SUBSCRIPTION_NAMES = [
    "empty",
    "slash",
    "dotdot-slash",
    "leading-slash",
    "nul",
    "bell",
    "escape",
    "newline",
    "log-injection",
    "tab",
    "256-characters",
    "1-MiB",
    "right-to-left-mark",
    "zero-width-space",
    "delete-char",
]


@pytest.mark.parametrize("name", BAD_SUBSCRIPTION_NAMES)
def test_bad_subscription_name_is_refused(server: Standalone, name: str) -> None:
    subscribe = messaging_pb2.Subscribe(topic="plain", subscription=BAD_NAMES[name])
    check(server, consume(messaging_pb2.ConsumeRequest(subscribe=subscribe)), INVALID)


@pytest.mark.parametrize("name", ["slash", "nul", "newline", "256-characters", "1-MiB"])
def test_bad_subscription_name_in_admin_is_refused(server: Standalone, name: str) -> None:
    request = admin_pb2.CreateSubscriptionRequest(topic="plain", subscription=BAD_NAMES[name])
    check(server, unary("CreateSubscription", request), INVALID)


@pytest.mark.parametrize("name", ["newline", "nul", "1-MiB", "log-injection"])
def test_bad_producer_and_consumer_names_are_refused(server: Standalone, name: str) -> None:
    bad = BAD_NAMES[name]
    opened = messaging_pb2.OpenProducer(topic="plain", producer_name=bad)
    check(server, produce(messaging_pb2.ProduceRequest(open=opened)), INVALID)
    subscribe = messaging_pb2.Subscribe(topic="plain", subscription="s2", consumer_name=bad)
    check(server, consume(messaging_pb2.ConsumeRequest(subscribe=subscribe)), INVALID)


@pytest.mark.parametrize(
    ("topic", "code"),
    [
        ("orders-partition--1", INVALID),
        ("orders-partition-01", INVALID),
        ("orders-partition-+1", INVALID),
        ("orders-partition-1e3", INVALID),
        ("orders-partition-4", NOT_FOUND),  # of 4
        ("orders-partition-9999999", INVALID),
        ("plain-partition-0", NOT_FOUND),  # not partitioned
        ("orders", PRECONDITION),  # a partitioned topic is used through its partitions
        ("nonpersistent://public/default/t", INVALID),
        ("persistent://public/default", INVALID),
        ("persistent://public/default/t/extra", INVALID),
        ("persistent:///default/t", INVALID),
        ("public/default", INVALID),
        ("persistent://nosuchtenant/default/t", NOT_FOUND),
        ("persistent://public/nosuchnamespace/t", NOT_FOUND),
    ],
)
def test_topic_spellings(server: Standalone, topic: str, code: grpc.StatusCode) -> None:
    opened = messaging_pb2.OpenProducer(topic=topic)
    check(server, produce(messaging_pb2.ProduceRequest(open=opened)), code)
    listed = _topics(server)
    assert not [t for t in listed if "partition-4" in t or "partition--" in t or "-01" in t]


def _topics(server: Standalone) -> list[str]:
    with grpc.insecure_channel(server.address) as channel:
        body = _unary(channel, "ListTopics", ADMIN)(
            admin_pb2.ListTopicsRequest(parent="tenants/public/namespaces/default")
        )
    return [t.name for t in admin_pb2.ListTopicsResponse.FromString(body).topics]


# ---- stream misuse ----------------------------------------------------------------------------


def _open(topic: str = "plain", name: str = "") -> messaging_pb2.ProduceRequest:
    return messaging_pb2.ProduceRequest(
        open=messaging_pb2.OpenProducer(topic=topic, producer_name=name)
    )


def _publish(**fields: Any) -> messaging_pb2.ProduceRequest:
    batch = messaging_pb2.ProducerBatch(sequence_id=1, num_messages=1, payload=b"0123456789")
    for name, value in fields.items():
        setattr(batch, name, value)
    return messaging_pb2.ProduceRequest(publish=messaging_pb2.PublishBatches(batches=[batch]))


def _subscribe(**fields: Any) -> messaging_pb2.ConsumeRequest:
    subscribe = {"topic": "plain", "subscription": "misuse"} | fields
    return messaging_pb2.ConsumeRequest(subscribe=messaging_pb2.Subscribe(**subscribe))


def _id(ledger: int = 0, entry: int = 0, batch_index: int = -1) -> messaging_pb2.MessageIdData:
    return messaging_pb2.MessageIdData(ledger_id=ledger, entry_id=entry, batch_index=batch_index)


def _ack(*ids: messaging_pb2.MessageIdData, cumulative: bool = False) -> Any:
    return messaging_pb2.ConsumeRequest(
        ack=messaging_pb2.Ack(message_ids=list(ids), request_id=7, cumulative=cumulative)
    )


def _flow(permits: int) -> messaging_pb2.ConsumeRequest:
    return messaging_pb2.ConsumeRequest(flow=messaging_pb2.Flow(permits=permits))


def _key_shared_mode(mode: int) -> messaging_pb2.KeySharedMeta:
    meta = messaging_pb2.KeySharedMeta()
    meta.mode = mode  # type: ignore[assignment]
    return meta


SHARED = messaging_pb2.SUBSCRIPTION_TYPE_SHARED
KEY_SHARED = messaging_pb2.SUBSCRIPTION_TYPE_KEY_SHARED
STICKY = messaging_pb2.KeySharedMeta.STICKY

STREAM_CASES: dict[str, tuple[Callable[[grpc.Channel], Outcome], grpc.StatusCode]] = {
    # Produce: order
    "publish-before-open": (produce(_publish()), INVALID),
    "empty-first-request": (produce(messaging_pb2.ProduceRequest()), INVALID),
    "two-opens": (produce(_open(), _open()), INVALID),
    "empty-after-open": (produce(_open(), messaging_pb2.ProduceRequest()), INVALID),
    # Produce: batches at and past their limits
    "sequence-id-2^63": (produce(_open(name="p63"), _publish(sequence_id=2**63)), INVALID),
    "sequence-id-2^64-1": (produce(_open(name="p64"), _publish(sequence_id=U64_MAX)), INVALID),
    "num-messages-0": (produce(_open(), _publish(num_messages=0)), INVALID),
    "num-messages-2^32-1": (produce(_open(), _publish(num_messages=U32_MAX)), INVALID),
    "num-messages-over-payload": (produce(_open(), _publish(num_messages=6)), INVALID),
    "compression-99": (produce(_open(), _publish(compression=99)), INVALID),
    "compression-negative": (produce(_open(), _publish(compression=-1)), INVALID),
    "uncompressed-size-2^32-1": (produce(_open(), _publish(uncompressed_size=U32_MAX)), INVALID),
    "uncompressed-size-wrong": (produce(_open(), _publish(uncompressed_size=3)), INVALID),
    "deliver-at-negative": (produce(_open(), _publish(deliver_at_time_ms=-1)), INVALID),
    "deliver-at-year-3000": (
        produce(_open(), _publish(deliver_at_time_ms=32_503_680_000_000)),
        INVALID,
    ),
    "sticky-key-1-KiB": (produce(_open(), _publish(sticky_key="k" * 1024)), INVALID),
    "payload-over-max-size": (
        produce(_open(), _publish(payload=b"x" * (5 * MIB + 1), num_messages=1)),
        INVALID,
    ),
    # Consume: order
    "flow-before-subscribe": (consume(_flow(10)), INVALID),
    "ack-before-subscribe": (consume(_ack(_id())), INVALID),
    "empty-consume-request": (consume(messaging_pb2.ConsumeRequest()), INVALID),
    "two-subscribes": (consume(_subscribe(), _subscribe()), INVALID),
    "empty-after-subscribe": (consume(_subscribe(), messaging_pb2.ConsumeRequest()), INVALID),
    # Consume: enums and ranges
    "type-99": (consume(_subscribe(type=99)), INVALID),
    "type-negative": (consume(_subscribe(type=-1)), INVALID),
    "initial-position-99": (consume(_subscribe(initial_position=99)), INVALID),
    "initial-position-negative": (consume(_subscribe(initial_position=-5)), INVALID),
    "key-shared-mode-99": (
        consume(_subscribe(type=KEY_SHARED, key_shared=_key_shared_mode(99))),
        INVALID,
    ),
    "key-shared-meta-on-shared": (
        consume(_subscribe(type=SHARED, key_shared=messaging_pb2.KeySharedMeta(mode=STICKY))),
        INVALID,
    ),
    "sticky-range-past-65535": (
        consume(
            _subscribe(
                type=KEY_SHARED,
                key_shared=messaging_pb2.KeySharedMeta(
                    mode=STICKY, ranges=[messaging_pb2.KeySharedMeta.HashRange(start=0, end=70000)]
                ),
            )
        ),
        INVALID,
    ),
    "sticky-range-backwards": (
        consume(
            _subscribe(
                type=KEY_SHARED,
                key_shared=messaging_pb2.KeySharedMeta(
                    mode=STICKY, ranges=[messaging_pb2.KeySharedMeta.HashRange(start=9, end=3)]
                ),
            )
        ),
        INVALID,
    ),
    "priority-negative": (consume(_subscribe(priority_level=-1)), INVALID),
    "priority-2^31-1": (consume(_subscribe(priority_level=2**31 - 1)), INVALID),
    "flow-2^32-1": (consume(_subscribe(), _flow(U32_MAX)), INVALID),
    # Accepted (Pulsar ignores them too), and nothing changes: the stream ends cleanly.
    "flow-0": (consume(_subscribe(), _flow(0)), OK),
    "redeliver-of-ids-never-delivered-is-ignored": (
        consume(
            _subscribe(),
            messaging_pb2.ConsumeRequest(
                redeliver=messaging_pb2.RedeliverUnacknowledged(message_ids=[_id(123456, 9)])
            ),
        ),
        OK,
    ),
    # A stream closed before its first request just ends.
    "half-closed-at-once": (consume(), OK),
    "produce-half-closed-at-once": (produce(), OK),
}

# Acknowledgements the broker cannot apply: refused in the ack receipt's error, the stream
# goes on and ends OK (issue 14; Pulsar ignores such acks). Case → (requests, error text).
BAD_ACKS: dict[str, tuple[list[messaging_pb2.ConsumeRequest], str]] = {
    "batch-index-minus-2": ([_subscribe(), _ack(_id(batch_index=-2))], "batch index -2"),
    "batch-index-int32-min": (
        [_subscribe(), _ack(_id(batch_index=-(2**31)))],
        "batch index -2147483648",
    ),
    "cumulative-on-shared": (
        [_subscribe(type=SHARED, subscription="shared"), _ack(_id(), cumulative=True)],
        "cumulative acknowledgement is not allowed on a Shared subscription",
    ),
    "cumulative-of-two-ids": (
        [_subscribe(), _ack(_id(), _id(entry=1), cumulative=True)],
        "a cumulative acknowledgement carries exactly one id",
    ),
    "ids-never-delivered": (
        [_subscribe(), _ack(_id(U64_MAX >> 1, 5))],
        "acknowledgement of unknown message id",
    ),
}


@pytest.mark.parametrize("case", sorted(STREAM_CASES))
def test_stream_misuse(server: Standalone, case: str) -> None:
    send, code = STREAM_CASES[case]
    check(server, send, code)


@pytest.mark.parametrize("case", sorted(BAD_ACKS))
def test_a_bad_ack_is_refused_in_its_receipt_and_the_stream_goes_on(
    server: Standalone, case: str
) -> None:
    requests, error = BAD_ACKS[case]
    # A flow after the bad ack: the stream still takes requests, then ends OK.
    outcome = check(server, consume(*requests, _flow(1)), OK)
    responses = [messaging_pb2.ConsumeResponse.FromString(r) for r in outcome.responses]
    receipts = [r.ack_receipt for r in responses if r.WhichOneof("response") == "ack_receipt"]
    assert [r.request_id for r in receipts] == [7]
    assert error in receipts[0].error, receipts[0].error
    assert not _LEAK.search(receipts[0].error)


def test_refused_sequence_id_leaves_the_producer_name_usable(server: Standalone) -> None:
    refused = produce(_open(name="reopen-me"), _publish(sequence_id=2**63))
    check(server, refused, INVALID)
    ok = check(server, produce(_open(name="reopen-me"), _publish(sequence_id=5)), OK)
    receipts = [messaging_pb2.ProduceResponse.FromString(r) for r in ok.responses]
    assert receipts[0].opened.last_sequence_id == -1
    assert receipts[1].receipts.receipts[0].sequence_id == 5


# ---- admin counts and sizes ---------------------------------------------------------------------

NS = "tenants/public/namespaces/default"

ADMIN_CASES: dict[str, tuple[str, Message, grpc.StatusCode]] = {
    "partitions-0": (
        "CreatePartitionedTopic",
        admin_pb2.CreatePartitionedTopicRequest(name="p0", partitions=0),
        INVALID,
    ),
    "partitions-10001": (
        "CreatePartitionedTopic",
        admin_pb2.CreatePartitionedTopicRequest(name="p1", partitions=10_001),
        INVALID,
    ),
    "partitions-2^32-1": (
        "CreatePartitionedTopic",
        admin_pb2.CreatePartitionedTopicRequest(name="p2", partitions=U32_MAX),
        INVALID,
    ),
    "bundles-negative": (
        "CreateNamespace",
        admin_pb2.CreateNamespaceRequest(parent="tenants/public", namespace_id="b1", bundles=-1),
        INVALID,
    ),
    "bundles-2^31-1": (
        "CreateNamespace",
        admin_pb2.CreateNamespaceRequest(
            parent="tenants/public", namespace_id="b2", bundles=2**31 - 1
        ),
        INVALID,
    ),
    "ensemble-0": (
        "SetPersistence",
        admin_pb2.SetPersistenceRequest(name=NS, persistence=admin_pb2.PersistencePolicies()),
        INVALID,
    ),
    "ensemble-negative": (
        "SetPersistence",
        admin_pb2.SetPersistenceRequest(
            name=NS,
            persistence=admin_pb2.PersistencePolicies(
                bookkeeper_ensemble=-1, bookkeeper_write_quorum=-1, bookkeeper_ack_quorum=-1
            ),
        ),
        INVALID,
    ),
    "write-quorum-over-ensemble": (
        "SetPersistence",
        admin_pb2.SetPersistenceRequest(
            name=NS,
            persistence=admin_pb2.PersistencePolicies(
                bookkeeper_ensemble=1, bookkeeper_write_quorum=2, bookkeeper_ack_quorum=1
            ),
        ),
        INVALID,
    ),
    "limit-negative": (
        "SetLimits",
        admin_pb2.SetLimitsRequest(
            name=NS, limits=admin_pb2.LimitPolicies(max_topics_per_namespace=-1)
        ),
        INVALID,
    ),
    "offload-threshold-minus-2": (
        "SetOffloadThreshold",
        admin_pb2.SetOffloadThresholdRequest(name=NS, threshold_bytes=-2),
        INVALID,
    ),
    "offload-lag-negative": (
        "SetOffloadDeletionLag",
        admin_pb2.SetOffloadDeletionLagRequest(name=NS, deletion_lag_ms=-1),
        INVALID,
    ),
    "list-tenants-page-size-negative": (
        "ListTenants",
        admin_pb2.ListTenantsRequest(page_size=-1),
        INVALID,
    ),
    # Page tokens are keys (the last name of the previous page): any text is a valid one.
    "list-topics-page-token-1-MiB": (
        "ListTopics",
        admin_pb2.ListTopicsRequest(parent=NS, page_token="x" * MIB),
        OK,
    ),
    "tenant-with-a-1-MiB-role": (
        "CreateTenant",
        admin_pb2.CreateTenantRequest(
            tenant_id="big-role", tenant=admin_pb2.Tenant(admin_roles=["r" * MIB])
        ),
        INVALID,
    ),
    "tenant-with-a-bad-cluster": (
        "CreateTenant",
        admin_pb2.CreateTenantRequest(
            tenant_id="bad-cluster", tenant=admin_pb2.Tenant(allowed_clusters=["a\nb"])
        ),
        INVALID,
    ),
    "get-message-id-superscript-digit": (
        "GetMessage",
        admin_pb2.GetMessageRequest(topic="plain", message_id="\u00b2:1"),
        INVALID,
    ),
    "reset-cursor-id-1-MiB": (
        "ResetCursor",
        admin_pb2.ResetCursorRequest(topic="plain", subscription="s", message_id="9" * MIB),
        INVALID,
    ),
    "tenant-with-100000-admin-roles": (
        "CreateTenant",
        admin_pb2.CreateTenantRequest(
            tenant_id="many-roles",
            tenant=admin_pb2.Tenant(admin_roles=[f"role-{i}" for i in range(100_000)]),
        ),
        INVALID,
    ),
    "peek-0": (
        "PeekMessages",
        admin_pb2.PeekMessagesRequest(topic="plain", subscription="s", count=0),
        INVALID,
    ),
    "peek-negative": (
        "PeekMessages",
        admin_pb2.PeekMessagesRequest(topic="plain", subscription="s", count=-1),
        INVALID,
    ),
    "peek-101": (
        "PeekMessages",
        admin_pb2.PeekMessagesRequest(topic="plain", subscription="s", count=101),
        INVALID,
    ),
    "skip-negative": (
        "SkipMessages",
        admin_pb2.SkipMessagesRequest(topic="plain", subscription="s", count=-1),
        INVALID,
    ),
    "expire-negative": (
        "ExpireMessages",
        admin_pb2.ExpireMessagesRequest(topic="plain", subscription="s", expire_time_seconds=-1),
        INVALID,
    ),
    "get-message-from-earliest-0": (
        "GetMessage",
        admin_pb2.GetMessageRequest(topic="plain", from_earliest=0),
        INVALID,
    ),
    "get-message-from-latest-negative": (
        "GetMessage",
        admin_pb2.GetMessageRequest(topic="plain", from_latest=-1),
        INVALID,
    ),
    "get-message-id-garbage": (
        "GetMessage",
        admin_pb2.GetMessageRequest(topic="plain", message_id="abc"),
        INVALID,
    ),
    "get-message-id-negative": (
        "GetMessage",
        admin_pb2.GetMessageRequest(topic="plain", message_id="-1:-1"),
        INVALID,
    ),
    "get-message-id-2^64": (
        "GetMessage",
        admin_pb2.GetMessageRequest(topic="plain", message_id=f"{2**64}:0"),
        INVALID,
    ),
    "reset-cursor-id-garbage": (
        "ResetCursor",
        admin_pb2.ResetCursorRequest(topic="plain", subscription="s", message_id="1:x"),
        INVALID,
    ),
    "create-subscription-id-garbage": (
        "CreateSubscription",
        admin_pb2.CreateSubscriptionRequest(topic="plain", subscription="s9", message_id="::"),
        INVALID,
    ),
    # A bundle that the namespace does not have (as Pulsar: 412 Precondition Failed).
    "unload-namespace-bundle-garbage": (
        "UnloadNamespace",
        admin_pb2.UnloadNamespaceRequest(name=NS, bundle="0x_garbage"),
        PRECONDITION,
    ),
    "split-bundle-garbage": (
        "SplitNamespaceBundle",
        admin_pb2.SplitNamespaceBundleRequest(name=NS, bundle="../.."),
        PRECONDITION,
    ),
    "split-bundle-1-MiB": (
        "SplitNamespaceBundle",
        admin_pb2.SplitNamespaceBundleRequest(name=NS, bundle="0" * MIB),
        PRECONDITION,
    ),
    "decommission-empty-id": ("DecommissionBookie", admin_pb2.DecommissionBookieRequest(), INVALID),
    "topics-of-namespace-bad": (
        "GetTopicsOfNamespace",
        messaging_pb2.GetTopicsOfNamespaceRequest(namespace="../.."),
        INVALID,
    ),
    # Precise codes for what does not exist or exists already.
    "get-missing-tenant": ("GetTenant", admin_pb2.GetTenantRequest(name="tenants/nope"), NOT_FOUND),
    "delete-missing-topic": ("DeleteTopic", admin_pb2.DeleteTopicRequest(name="nope"), NOT_FOUND),
    "stats-missing-topic": (
        "GetTopicStats",
        admin_pb2.GetTopicStatsRequest(name="nope"),
        NOT_FOUND,
    ),
    "internal-stats-missing-topic": (
        "GetTopicInternalStats",
        admin_pb2.GetTopicInternalStatsRequest(name="nope"),
        NOT_FOUND,
    ),
    "topic-summaries-negative-page-size": (
        "ListTopicSummaries",
        admin_pb2.ListTopicSummariesRequest(page_size=-1),
        INVALID,
    ),
    "create-existing-tenant": (
        "CreateTenant",
        admin_pb2.CreateTenantRequest(tenant_id="public"),
        EXISTS,
    ),
    "peek-missing-subscription": (
        "PeekMessages",
        admin_pb2.PeekMessagesRequest(topic="plain", subscription="nope", count=1),
        NOT_FOUND,
    ),
}


@pytest.mark.parametrize("case", sorted(ADMIN_CASES))
def test_admin_counts_and_sizes(server: Standalone, case: str) -> None:
    method, request, code = ADMIN_CASES[case]
    service = MESSAGING if method == "GetTopicsOfNamespace" else ADMIN
    check(server, unary(method, request, service), code)


# ---- bytes that are not protobuf -----------------------------------------------------------------

GARBAGE = {
    "invalid-varint": b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",
    "truncated-length": b"\x0a\x05ab",
    "length-past-end": b"\x0a\xff\xff\xff\xff\x0f",
    "end-group-without-start": b"\x0c",
    "wire-type-7": b"\x0f",
}


def _methods() -> list[tuple[str, bool]]:
    found = []
    for module in (messaging_pb2, admin_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                found.append((f"/{service.full_name}/{method.name}", method.client_streaming))
    return found


@pytest.mark.parametrize("garbage", sorted(GARBAGE))
@pytest.mark.parametrize(("path", "streaming"), _methods(), ids=lambda v: str(v).rsplit("/")[-1])
def test_not_protobuf(server: Standalone, path: str, streaming: bool, garbage: str) -> None:
    body = GARBAGE[garbage]
    if streaming:
        outcome = check(server, lambda channel: call_stream(channel, path, [body]), INVALID)
    else:
        outcome = check(server, lambda channel: call_unary(channel, path, body), INVALID)
    assert "not a valid" in outcome.details


def test_zz_stored_data_unchanged(server: Standalone) -> None:
    """After the hostile cases (this runs last in the module), the topics are the expected
    ones: no partition-like names, no tenant or namespace from a refused request."""
    names = _topics(server)
    assert all(re.fullmatch(r"persistent://public/default/[A-Za-z0-9_=:.\-]+", n) for n in names)
    with grpc.insecure_channel(server.address) as channel:
        body = _unary(channel, "ListTenants", ADMIN)(admin_pb2.ListTenantsRequest())
    tenants = [t.name for t in admin_pb2.ListTenantsResponse.FromString(body).tenants]
    assert tenants == ["tenants/public"], tenants


@pytest.mark.parametrize("force", [True, False])
def test_delete_of_a_topic_whose_namespace_asks_for_more_bookies(
    server: Standalone, force: bool
) -> None:
    """The standalone has one bookie; the namespace asks for three. Deleting a topic that is
    not loaded needs no new ledger: it answers at once and the topic is gone."""
    namespace = f"fewbookies{int(force)}"
    topic = f"persistent://public/{namespace}/t"
    with grpc.insecure_channel(server.address) as channel:
        _unary(channel, "CreateNamespace", ADMIN)(
            admin_pb2.CreateNamespaceRequest(parent="tenants/public", namespace_id=namespace)
        )
        _unary(channel, "CreateTopic", ADMIN)(admin_pb2.CreateTopicRequest(name=topic))
        _unary(channel, "UnloadTopic", ADMIN)(admin_pb2.UnloadTopicRequest(name=topic))
        _unary(channel, "SetPersistence", ADMIN)(
            admin_pb2.SetPersistenceRequest(
                name=f"tenants/public/namespaces/{namespace}",
                persistence=admin_pb2.PersistencePolicies(
                    bookkeeper_ensemble=3, bookkeeper_write_quorum=3, bookkeeper_ack_quorum=2
                ),
            )
        )
    check(server, unary("DeleteTopic", admin_pb2.DeleteTopicRequest(name=topic, force=force)), OK)
    check(server, unary("GetTopicStats", admin_pb2.GetTopicStatsRequest(name=topic)), NOT_FOUND)


@pytest.mark.parametrize("stream", ["Produce", "Consume"])
def test_cancelled_stream_frees_its_producer_or_consumer(server: Standalone, stream: str) -> None:
    """A stream cancelled by its client after opening releases its producer name or its
    exclusive subscription: the same open succeeds on a new stream within seconds."""
    first = _open(name="cancelled") if stream == "Produce" else _subscribe(subscription="gone")
    body = first.SerializeToString()
    release = threading.Event()
    with grpc.insecure_channel(server.address) as channel:
        call: grpc.StreamStreamMultiCallable[bytes, bytes] = channel.stream_stream(
            MESSAGING + stream, request_serializer=None, response_deserializer=None
        )

        def requests() -> Iterator[bytes]:
            yield body
            release.wait(20)  # held open until cancelled

        responses = call(requests(), timeout=20)
        next(responses)  # opened / subscribed
        responses.cancel()
        release.set()
    deadline = time.monotonic() + ANSWER_WITHIN_SECONDS
    while True:
        with grpc.insecure_channel(server.address) as channel:
            outcome = call_stream(channel, MESSAGING + stream, [body])
        if outcome.code == OK or time.monotonic() > deadline:
            break
        assert outcome.code == PRECONDITION, outcome  # still connected: not yet noticed
        time.sleep(0.05)  # poll interval while the broker notices the cancellation
    assert outcome.code == OK, outcome
