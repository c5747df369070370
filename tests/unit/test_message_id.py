"""``MessageId``: serialization, ordering, equality, hashing and the constants."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from strata.client import MessageId
from strata.v1 import messaging_pb2 as pb

ids = st.builds(
    MessageId,
    st.integers(min_value=-1, max_value=2**63 - 1),
    st.integers(min_value=-1, max_value=2**63 - 1),
    st.integers(min_value=-1, max_value=2**31 - 1),
    st.integers(min_value=-1, max_value=2**31 - 1),
    st.integers(min_value=0, max_value=2**31 - 1),
)


@given(ids)
def test_serialize_round_trip(message_id: MessageId) -> None:
    restored = MessageId.deserialize(message_id.serialize())
    assert restored == message_id
    assert restored.batch_size() == message_id.batch_size()
    assert hash(restored) == hash(message_id)
    # The bytes are a plain MessageIdData: any protobuf library can read them.
    proto = pb.MessageIdData.FromString(message_id.serialize())
    assert proto.batch_index == message_id.batch_index()


@given(ids, ids)
def test_ordering_is_ledger_entry_partition_batch_index(a: MessageId, b: MessageId) -> None:
    key_a = (a.ledger_id(), a.entry_id(), a.partition(), a.batch_index())
    key_b = (b.ledger_id(), b.entry_id(), b.partition(), b.batch_index())
    assert (a < b) == (key_a < key_b)
    assert (a <= b) == (key_a <= key_b)
    assert (a > b) == (key_a > key_b)
    assert (a >= b) == (key_a >= key_b)
    assert (a == b) == (key_a == key_b)


def test_serialization_is_stable_and_compact() -> None:
    message_id = MessageId(3, 17, 2, -1, 10)
    assert message_id.serialize() == MessageId(3, 17, 2, -1, 10).serialize()
    assert len(message_id.serialize()) < 24
    assert message_id.serialize() == bytes.fromhex("08031011180220" + "0a" + "28" + "ff" * 9 + "01")


def test_batch_size_takes_no_part_in_equality() -> None:
    assert MessageId(1, 2, 0, -1, 5) == MessageId(1, 2, 0, -1, 0)
    assert len({MessageId(1, 2, 0, -1, 5), MessageId(1, 2, 0, -1, 0)}) == 1


def test_earliest_and_latest_bound_every_id() -> None:
    some = MessageId(0, 0, -1, -1)
    assert MessageId.earliest < some < MessageId.latest
    assert MessageId.deserialize(MessageId.earliest.serialize()) == MessageId.earliest
    assert MessageId.deserialize(MessageId.latest.serialize()) == MessageId.latest


def test_whole_entry_sorts_before_its_indexes() -> None:
    assert MessageId(1, 1, -1) < MessageId(1, 1, 0) < MessageId(1, 1, 1) < MessageId(1, 2, -1)


def test_deserialize_refuses_garbage() -> None:
    with pytest.raises(ValueError):
        MessageId.deserialize(b"\xff\xff")


def test_comparison_with_other_types() -> None:
    assert MessageId(1, 2) != (1, 2)
    with pytest.raises(TypeError):
        _ = MessageId(1, 2) < (1, 2)
    assert str(MessageId(1, 2, 3, 4)) == "(1,2,3,4)"
    assert (
        repr(MessageId(1, 2)) == "MessageId(ledger_id=1, entry_id=2, batch_index=-1, partition=-1)"
    )
