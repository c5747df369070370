"""The edge validators of the Produce and Consume streams (``broker.stream_requests``).

Each rule is pinned with good and bad inputs and the exact message a client sees; the size,
name and permit rules are also checked as properties over generated inputs.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.errors import InvalidRequestError, MessageTooLargeError
from broker.stream_requests import (
    MAX_PERMITS_PER_CONSUMER,
    MAX_SUBSCRIPTION_NAME_LENGTH,
    OpenRequest,
    SubscribeRequest,
    check_ack,
    check_flow,
    check_open_request,
    check_publish_batch,
    check_publish_request,
    check_subscribe_request,
    check_subscription_name,
)
from broker.subscription import SUBSCRIPTION_EXCLUSIVE, SUBSCRIPTION_FAILOVER, SUBSCRIPTION_SHARED
from strata.naming import InvalidNameError, TopicName
from strata.v1 import messaging_pb2 as pb

UINT32 = st.integers(min_value=0, max_value=2**32 - 1)


def open_request(topic: str = "t", producer_name: str = "") -> pb.ProduceRequest:
    return pb.ProduceRequest(open=pb.OpenProducer(topic=topic, producer_name=producer_name))


def subscribe_request(**fields: object) -> pb.ConsumeRequest:
    values: dict[str, object] = {"topic": "t", "subscription": "s"}
    values.update(fields)
    return pb.ConsumeRequest(subscribe=pb.Subscribe(**values))  # type: ignore[arg-type]


# ---- Produce ------------------------------------------------------------------------------


def test_open_request_gives_the_parsed_topic_and_the_requested_name() -> None:
    assert check_open_request(open_request("t", "p-1")) == OpenRequest(TopicName.parse("t"), "p-1")
    assert check_open_request(open_request("persistent://a/b/c")).producer_name == ""


@pytest.mark.parametrize(
    "first",
    [
        pb.ProduceRequest(publish=pb.PublishBatches()),
        pb.ProduceRequest(),
        pb.ConsumeRequest(subscribe=pb.Subscribe(topic="t", subscription="s")),
        None,
    ],
)
def test_a_produce_stream_must_open_first(first: object) -> None:
    with pytest.raises(InvalidRequestError, match=r"^the first request of a Produce stream must"):
        check_open_request(first)


def test_open_request_with_a_bad_topic_name_is_refused() -> None:
    with pytest.raises(InvalidNameError):
        check_open_request(open_request("persistent://only-tenant"))


def test_after_open_only_publish_requests() -> None:
    check_publish_request(pb.ProduceRequest(publish=pb.PublishBatches()))
    with pytest.raises(
        InvalidRequestError,
        match=r"^after 'open', a Produce stream carries only 'publish' requests$",
    ):
        check_publish_request(open_request())


def test_a_batch_without_messages_is_refused() -> None:
    batch = pb.ProducerBatch(sequence_id=7, num_messages=0, payload=b"x")
    with pytest.raises(InvalidRequestError, match=r"^batch 7 has no messages \(num_messages=0\)$"):
        check_publish_batch(batch, 100)


def test_a_batch_over_the_maximum_size_is_too_large() -> None:
    batch = pb.ProducerBatch(sequence_id=3, num_messages=1, payload=b"x" * 101)
    with pytest.raises(
        MessageTooLargeError,
        match=r"^batch 3 is 101 bytes; the maximum message size is 100 bytes$",
    ):
        check_publish_batch(batch, 100)
    check_publish_batch(pb.ProducerBatch(num_messages=1, payload=b"x" * 100), 100)


def test_bad_batches_of_issue_11_are_refused() -> None:
    payload = b"\n\x01x"
    for batch, match in (
        (pb.ProducerBatch(sequence_id=2**63, num_messages=1, payload=payload), "2\\^63"),
        (pb.ProducerBatch(num_messages=4294967295, payload=payload), "claims 4294967295"),
        (pb.ProducerBatch(num_messages=1, compression=99, payload=payload), "compression 99"),  # type: ignore[arg-type]
        (
            pb.ProducerBatch(num_messages=1, uncompressed_size=99, payload=payload),
            "not the size of its uncompressed payload",
        ),
    ):
        with pytest.raises(InvalidRequestError, match=match):
            check_publish_batch(batch, 100)


def test_bad_subscribes_and_acks_of_issue_11_are_refused() -> None:
    with pytest.raises(InvalidRequestError, match="initial_position 99"):
        check_subscribe_request(subscribe_request(initial_position=99))
    with pytest.raises(InvalidRequestError, match="without '/'"):
        check_subscribe_request(subscribe_request(subscription="../../../admin/tenants/evil"))
    bad_index = pb.Ack(message_ids=[pb.MessageIdData(ledger_id=1, entry_id=2, batch_index=-2)])
    with pytest.raises(InvalidRequestError, match="batch index -2"):
        check_ack(bad_index, SUBSCRIPTION_SHARED, "Shared")


@given(num_messages=UINT32, size=st.integers(0, 300), max_size=st.integers(1, 300))
def test_a_batch_passes_exactly_when_it_has_messages_and_fits(
    num_messages: int, size: int, max_size: int
) -> None:
    batch = pb.ProducerBatch(num_messages=num_messages, payload=b"x" * size)
    if num_messages == 0 or num_messages > max(1, size // 2):
        # The message count is checked first (at least one, and at most one per two bytes
        # of the batch): such a batch is never "too large".
        with pytest.raises(InvalidRequestError) as info:
            check_publish_batch(batch, max_size)
        assert not isinstance(info.value, MessageTooLargeError)
    elif size > max_size:
        with pytest.raises(MessageTooLargeError):
            check_publish_batch(batch, max_size)
    else:
        check_publish_batch(batch, max_size)


# ---- Consume: subscribe -------------------------------------------------------------------


def test_subscribe_request_is_checked_and_parsed() -> None:
    request = subscribe_request(
        topic="persistent://a/b/t",
        subscription="sub",
        type=pb.SUBSCRIPTION_TYPE_SHARED,
        initial_position=pb.INITIAL_POSITION_EARLIEST,
        consumer_name="c",
    )
    assert check_subscribe_request(request) == SubscribeRequest(
        topic=TopicName.parse("persistent://a/b/t"),
        subscription="sub",
        type=SUBSCRIPTION_SHARED,
        consumer_name="c",
        start_at_earliest=True,
    )


def test_subscribe_defaults_to_exclusive_from_the_latest_entry() -> None:
    checked = check_subscribe_request(subscribe_request())
    assert checked.type == SUBSCRIPTION_EXCLUSIVE
    assert not checked.start_at_earliest
    assert checked.consumer_name == ""


@pytest.mark.parametrize(
    "first",
    [pb.ConsumeRequest(flow=pb.Flow(permits=1)), pb.ConsumeRequest(), open_request(), None],
)
def test_a_consume_stream_must_subscribe_first(first: object) -> None:
    with pytest.raises(InvalidRequestError, match=r"^the first request of a Consume stream must"):
        check_subscribe_request(first)


def test_an_unknown_subscription_type_is_refused() -> None:
    with pytest.raises(InvalidRequestError, match=r"^subscription type 9 is not one of"):
        check_subscribe_request(subscribe_request(type=9))


def test_key_shared_meta_is_checked() -> None:
    request = subscribe_request(type=pb.SUBSCRIPTION_TYPE_KEY_SHARED)
    assert check_subscribe_request(request).key_shared_mode == pb.KeySharedMeta.AUTO_SPLIT
    request.subscribe.key_shared.mode = pb.KeySharedMeta.STICKY
    with pytest.raises(InvalidRequestError, match=r"names 1\.\.64 hash ranges"):
        check_subscribe_request(request)
    request.subscribe.key_shared.ranges.add(start=10, end=5)
    with pytest.raises(InvalidRequestError, match=r"is not within 0\.\.65535"):
        check_subscribe_request(request)
    request.subscribe.key_shared.ranges[0].end = 20
    request.subscribe.key_shared.ranges.add(start=15, end=30)
    with pytest.raises(InvalidRequestError, match="overlap"):
        check_subscribe_request(request)
    request.subscribe.key_shared.ranges[1].start = 21
    assert check_subscribe_request(request).hash_ranges == ((10, 20), (21, 30))
    shared = subscribe_request(type=pb.SUBSCRIPTION_TYPE_SHARED)
    shared.subscribe.key_shared.mode = pb.KeySharedMeta.STICKY
    with pytest.raises(InvalidRequestError, match="for Key_Shared subscriptions only"):
        check_subscribe_request(shared)


def test_failover_takes_a_priority_level_within_bounds() -> None:
    failover = pb.SUBSCRIPTION_TYPE_FAILOVER
    request = subscribe_request(type=failover)
    request.subscribe.priority_level = 7
    assert check_subscribe_request(request).priority_level == 7
    for level in (-1, 1001):
        request.subscribe.priority_level = level
        with pytest.raises(InvalidRequestError, match=r"^priority_level must be within 0\.\.1000"):
            check_subscribe_request(request)


def test_the_topic_name_is_checked_before_the_subscription() -> None:
    with pytest.raises(InvalidNameError):
        check_subscribe_request(subscribe_request(topic="persistent://x", subscription=""))


def test_an_empty_subscription_name_is_refused() -> None:
    with pytest.raises(InvalidRequestError, match=r"^subscription name is empty$"):
        check_subscribe_request(subscribe_request(subscription=""))


@pytest.mark.parametrize("name", ["s" * (MAX_SUBSCRIPTION_NAME_LENGTH + 1), "a\nb", "tab\there"])
def test_long_or_unprintable_subscription_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidRequestError, match=r"^subscription name must be printable"):
        check_subscribe_request(subscribe_request(subscription=name))


@given(st.text(max_size=MAX_SUBSCRIPTION_NAME_LENGTH + 20))
def test_a_subscription_name_passes_exactly_when_short_printable_and_not_empty(name: str) -> None:
    ok = 0 < len(name) <= MAX_SUBSCRIPTION_NAME_LENGTH and name.isprintable() and "/" not in name
    if ok:
        check_subscription_name(name)
    else:
        with pytest.raises(InvalidRequestError):
            check_subscription_name(name)


# ---- Consume: flow and ack ----------------------------------------------------------------


def test_a_flow_may_fill_permits_up_to_the_maximum_and_no_further() -> None:
    check_flow(pb.Flow(permits=MAX_PERMITS_PER_CONSUMER), 0)
    check_flow(pb.Flow(permits=1), MAX_PERMITS_PER_CONSUMER - 1)
    with pytest.raises(
        InvalidRequestError,
        match=f"^a consumer may hold at most {MAX_PERMITS_PER_CONSUMER} permits$",
    ):
        check_flow(pb.Flow(permits=1), MAX_PERMITS_PER_CONSUMER)


@given(held=st.integers(-1000, MAX_PERMITS_PER_CONSUMER), permits=UINT32)
def test_a_flow_passes_exactly_when_the_sum_stays_within_the_maximum(
    held: int, permits: int
) -> None:
    flow = pb.Flow(permits=permits)
    if held + permits <= MAX_PERMITS_PER_CONSUMER:
        check_flow(flow, held)
    else:
        with pytest.raises(InvalidRequestError):
            check_flow(flow, held)


def ack(*entry_ids: int, cumulative: bool = False) -> pb.Ack:
    return pb.Ack(
        message_ids=[pb.MessageIdData(ledger_id=1, entry_id=e) for e in entry_ids],
        cumulative=cumulative,
    )


@pytest.mark.parametrize("sub_type", [SUBSCRIPTION_EXCLUSIVE, SUBSCRIPTION_SHARED])
def test_individual_acks_pass_on_every_subscription_type(sub_type: int) -> None:
    check_ack(ack(), sub_type, "any")
    check_ack(ack(1, 2, 3), sub_type, "any")


def test_a_cumulative_ack_carries_one_id_on_an_exclusive_subscription() -> None:
    check_ack(ack(5, cumulative=True), SUBSCRIPTION_EXCLUSIVE, "Exclusive")
    for ids in [(), (1, 2)]:
        with pytest.raises(
            InvalidRequestError, match=r"^a cumulative acknowledgement carries exactly one id$"
        ):
            check_ack(ack(*ids, cumulative=True), SUBSCRIPTION_EXCLUSIVE, "Exclusive")


def test_a_cumulative_ack_is_taken_on_a_failover_subscription() -> None:
    check_ack(ack(5, cumulative=True), SUBSCRIPTION_FAILOVER, "Failover")


def test_a_cumulative_ack_is_refused_on_a_shared_subscription() -> None:
    with pytest.raises(
        InvalidRequestError,
        match=r"^cumulative acknowledgement is not allowed on a Shared subscription$",
    ):
        check_ack(ack(5, cumulative=True), SUBSCRIPTION_SHARED, "Shared")


@pytest.mark.parametrize("name", ["a\nb", "\x00", "x" * 256, "a\u202eb"])
def test_producer_and_consumer_names_are_printable_and_bounded(name: str) -> None:
    with pytest.raises(InvalidRequestError, match="producer name must be printable"):
        check_open_request(pb.ProduceRequest(open=pb.OpenProducer(topic="t", producer_name=name)))
    subscribe = pb.Subscribe(topic="t", subscription="s", consumer_name=name)
    with pytest.raises(InvalidRequestError, match="consumer name must be printable"):
        check_subscribe_request(pb.ConsumeRequest(subscribe=subscribe))


@pytest.mark.parametrize("name", ["", "p-1", "名前", "x" * 255])
def test_ordinary_producer_names_pass(name: str) -> None:
    opened = pb.ProduceRequest(open=pb.OpenProducer(topic="t", producer_name=name))
    assert check_open_request(opened).producer_name == name


def test_deliveries_are_split_within_grpcs_default_receive_limit() -> None:
    """A response never exceeds gRPC's default 4 MiB receive limit unless one entry alone
    does (issue 14: 30 entries of 200 kB once made a 4.2 MB response)."""
    from broker.consumer_stream import MAX_DELIVERIES_RESPONSE_BYTES, split_deliveries

    entries = [pb.Delivery(ledger_id=1, entry_id=i, entry=bytes(200_000)) for i in range(30)]
    responses = split_deliveries(entries)
    assert len(responses) == 2
    assert all(r.ByteSize() <= MAX_DELIVERIES_RESPONSE_BYTES + 64 * 1024 for r in responses)
    assert [d.entry_id for r in responses for d in r.deliveries.deliveries] == list(range(30))
    big = [pb.Delivery(ledger_id=1, entry_id=i, entry=bytes(4_500_000)) for i in range(2)]
    assert [len(r.deliveries.deliveries) for r in split_deliveries(big)] == [1, 1]
