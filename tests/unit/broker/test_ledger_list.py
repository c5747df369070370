"""The ledger list on its own: the JSON codec, compare-and-set with fencing on a conflict,
position arithmetic, and which ledgers trimming may delete."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.errors import TopicFencedError
from broker.managed_ledger import (
    LedgerInfo,
    LedgerList,
    consumed_ledgers,
    decode_ledger_list,
    encode_ledger_list,
)
from strata.metadata import open_metadata_store
from tiered import OffloadContext
from tiered.state import OFFLOAD_STATES

NAME = "acme/orders/persistent/t"

small = st.integers(min_value=0, max_value=2**53)
text = st.text(max_size=20)
offload_contexts = st.builds(
    OffloadContext,
    uuid=st.text(alphabet="0123456789abcdef", min_size=32, max_size=32),
    state=st.sampled_from(OFFLOAD_STATES),
    driver=st.sampled_from(["s3", "filesystem"]),
    location=st.dictionaries(text, text, max_size=3),
    data_key=text,
    index_key=text,
    data_length=small,
    data_crc32c=small,
    index_crc32c=small,
    started_ms=small,
    completed_ms=small,
    bookie_deleted_ms=small,
)
ledger_infos = st.builds(
    LedgerInfo,
    ledger_id=small,
    entries=small,
    size_bytes=small,
    timestamp_ms=small,
    offload=st.none() | offload_contexts,
)


@given(st.lists(ledger_infos, max_size=8))
def test_codec_round_trip(ledgers: list[LedgerInfo]) -> None:
    assert decode_ledger_list(encode_ledger_list(ledgers)) == ledgers


def test_codec_reads_a_list_without_optional_fields() -> None:
    assert decode_ledger_list(b'{"ledgers": [{"ledger_id": 7}]}') == [LedgerInfo(7)]


class Fences:
    def __init__(self) -> None:
        self.errors: list[BaseException] = []

    def __call__(self, error: BaseException) -> BaseException:
        self.errors.append(error)
        return self.errors[0]


async def test_a_conflicting_store_fences_and_keeps_the_stored_list() -> None:
    store = await open_metadata_store("memory://")
    try:
        old_fences, new_fences = Fences(), Fences()
        old = LedgerList(store, NAME, old_fences)
        await old.load()
        old.ledgers.append(LedgerInfo(1, entries=3))
        await old.store()
        # Another owner loads the list and changes it: the old owner's version is stale.
        new = LedgerList(store, NAME, new_fences)
        await new.load()
        assert new.ledgers == old.ledgers
        new.ledgers.append(LedgerInfo(2))
        await new.store()
        old.ledgers.append(LedgerInfo(3))
        with pytest.raises(TopicFencedError):
            await old.store()
        with pytest.raises(TopicFencedError):
            await old.store()
        assert len(old_fences.errors) == 2 and not new_fences.errors
        again = LedgerList(store, NAME, Fences())
        await again.load()
        assert [i.ledger_id for i in again.ledgers] == [1, 2]
        await new.delete()
        assert await store.get(new.key) is None
    finally:
        await store.close()


async def test_put_requires_the_lock() -> None:
    store = await open_metadata_store("memory://")
    try:
        ledgers = LedgerList(store, NAME, Fences())
        await ledgers.load()
        with pytest.raises(AssertionError):
            await ledgers.put()
        async with ledgers.lock:
            await ledgers.put()
    finally:
        await store.close()


def make_list(*entries: int) -> LedgerList:
    ledgers = LedgerList(None, NAME, Fences())  # type: ignore[arg-type]  # no store needed
    ledgers.ledgers = [LedgerInfo(10 + i, entries=n) for i, n in enumerate(entries)]
    return ledgers


def test_positions() -> None:
    ledgers = make_list(3, 0, 2, 0)  # ledgers 10..13; 13 is the open one
    assert ledgers.first_position() == (10, 0)
    assert ledgers.end_position() == (13, 0)
    assert ledgers.next_position((10, 1)) == (10, 2)
    assert ledgers.next_position((10, 2)) == (12, 0)  # past a closed ledger and an empty one
    assert ledgers.next_position((12, 1)) == (13, 0)
    assert ledgers.normalize((13, 5)) == (13, 5)  # the last ledger keeps its position
    assert ledgers.contains((12, 1)) and not ledgers.contains((12, 2))
    assert not ledgers.contains((99, 0))
    assert ledgers.entries_between((10, 0), (12, 1)) == 4
    assert ledgers.entries_between((-1, -1), (13, 0)) == 5
    assert ledgers.total_entries == 5
    assert make_list(0, 0).first_position() == (11, 0)
    assert make_list().first_position() == (-1, 0)


def test_consumed_ledgers_never_the_last_nor_past_an_offload() -> None:
    infos = make_list(3, 2, 4, 1).ledgers  # ledgers 10..13
    assert consumed_ledgers(infos, None, set()) == 3  # no cursor: all but the open one
    assert consumed_ledgers(infos, (11, 0), set()) == 1  # 11 not fully consumed
    assert consumed_ledgers(infos, (11, 1), set()) == 2
    assert consumed_ledgers(infos, (13, 0), set()) == 3
    assert consumed_ledgers(infos, (13, 0), {11}) == 1  # 11 is being offloaded: it stays
    assert consumed_ledgers(infos[:1], None, set()) == 0
