"""The batch encoding (``strata.client._batch``): pure round trips, no I/O."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from strata.client import _batch
from strata.client._enums import CompressionType
from strata.v1 import messaging_pb2 as pb

COMPRESSIONS = [int(c) for c in CompressionType]

payload_lists = st.lists(st.binary(max_size=300), min_size=1, max_size=40)
metadata_entries = st.builds(
    lambda props, key, ts: _batch.make_metadata(props, key, ts) or pb.SingleMessageMetadata(),
    st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3),
    st.one_of(st.none(), st.text(max_size=10)),
    st.one_of(st.none(), st.integers(min_value=0, max_value=2**62)),
)


def stored(payload: bytes, raw_size: int, count: int, compression: int) -> bytes:
    return pb.StoredEntry(
        producer_name="p",
        sequence_id=5,
        num_messages=count,
        compression=compression,  # type: ignore[arg-type]
        uncompressed_size=raw_size,
        publish_time_ms=77,
        payload=payload,
    ).SerializeToString()


@settings(max_examples=60, deadline=None)
@given(payloads=payload_lists, compression=st.sampled_from(COMPRESSIONS))
def test_plain_batch_round_trip(payloads: list[bytes], compression: int) -> None:
    builder = _batch.BatchBuilder()
    for payload in payloads:
        builder.add(payload)
    encoded, raw_size = builder.encode(compression)
    decoded = _batch.decode_entry(stored(encoded, raw_size, len(payloads), compression))
    assert decoded.payloads == payloads
    assert decoded.metadata == []
    assert (decoded.producer_name, decoded.sequence_id, decoded.publish_time_ms) == ("p", 5, 77)
    # The size estimate bounds the real encoding, so batch limits hold without serializing.
    assert raw_size <= builder.size_bytes


@settings(max_examples=60, deadline=None)
@given(
    data=st.lists(
        st.tuples(st.binary(max_size=100), st.one_of(st.none(), metadata_entries)),
        min_size=1,
        max_size=30,
    ),
    compression=st.sampled_from(COMPRESSIONS),
)
def test_metadata_column_round_trip(
    data: list[tuple[bytes, pb.SingleMessageMetadata | None]], compression: int
) -> None:
    builder = _batch.BatchBuilder()
    for payload, metadata in data:
        builder.add(payload, metadata)
    encoded, raw_size = builder.encode(compression)
    decoded = _batch.decode_entry(stored(encoded, raw_size, len(data), compression))
    assert decoded.payloads == [payload for payload, _ in data]
    if all(metadata is None for _, metadata in data):
        assert decoded.metadata == []
    else:
        # One entry per payload; messages without metadata get an empty one.
        assert decoded.metadata == [m or pb.SingleMessageMetadata() for _, m in data]
    assert raw_size <= builder.size_bytes


def test_make_metadata_is_none_for_plain_messages() -> None:
    assert _batch.make_metadata(None, None, None) is None
    assert _batch.make_metadata({}, None, 0) is None
    metadata = _batch.make_metadata({"a": "b"}, "", 3)
    assert metadata is not None
    assert metadata.HasField("partition_key") and metadata.partition_key == ""
    assert dict(metadata.properties) == {"a": "b"} and metadata.event_time_ms == 3


def test_decode_refuses_count_mismatch_and_corruption() -> None:
    encoded, raw_size = _batch.encode_batch([b"a", b"b"], None, pb.COMPRESSION_TYPE_NONE)
    with pytest.raises(_batch.BatchDecodeError, match="header says 3"):
        _batch.decode_entry(stored(encoded, raw_size, 3, pb.COMPRESSION_TYPE_NONE))
    with pytest.raises(_batch.BatchDecodeError):
        _batch.decode_entry(b"\xff\xff\xff")
    lz4, size = _batch.encode_batch([b"a" * 100], None, pb.COMPRESSION_TYPE_LZ4)
    with pytest.raises(_batch.BatchDecodeError):
        _batch.decode_entry(stored(lz4[:-5], size, 1, pb.COMPRESSION_TYPE_LZ4))
    with pytest.raises(_batch.BatchDecodeError, match="header says"):
        _batch.decompress(lz4, pb.COMPRESSION_TYPE_LZ4, size + 1)
    with pytest.raises(_batch.BatchDecodeError, match="too large"):
        _batch.decompress(lz4, pb.COMPRESSION_TYPE_ZSTD, _batch.MAX_UNCOMPRESSED_BATCH_BYTES + 1)


def test_metadata_count_must_match_payloads() -> None:
    raw = pb.MessageBatch(
        payloads=[b"a", b"b"], metadata=[pb.SingleMessageMetadata()]
    ).SerializeToString()
    with pytest.raises(_batch.BatchDecodeError, match="metadata"):
        _batch.decode_message_batch(raw, 2)


@settings(max_examples=100, deadline=None)
@given(
    size=st.integers(min_value=1, max_value=300),
    indexes=st.sets(st.integers(min_value=0, max_value=299)),
)
def test_acked_index_bitset_round_trip(size: int, indexes: set[int]) -> None:
    inside = {i for i in indexes if i < size}
    words = _batch.bitset_words(sorted(indexes))
    flags = _batch.acked_flags(words, size)
    assert len(flags) == size
    assert {i for i, flag in enumerate(flags) if flag} == inside


def test_bitset_layout_is_bit_i_of_word_i_div_64() -> None:
    assert _batch.bitset_words([0, 63, 64, 130]) == [1 | 1 << 63, 1, 1 << 2]
    with pytest.raises(ValueError):
        _batch.bitset_words([-1])
