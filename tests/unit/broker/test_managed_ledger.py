"""The managed ledger's own protocol, in one process (memory store, memory bookie): rollover
records a ledger before its first entry, the listener given at construction hears new entries
and fencing, and a fenced managed ledger refuses adds. Its ``LedgerWriter`` alone: adds that
queue up behind a rollover go to the next ledgers in order, never more than a ledger takes, and
failed adds are resubmitted ahead of them."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from bookie.ledger import LedgerManager
from broker.errors import TopicFencedError
from broker.managed_ledger import (
    MANAGED_LEDGERS_PREFIX,
    Entry,
    EntryCache,
    LedgerInfo,
    LedgerList,
    LedgerWriter,
    ManagedLedger,
    ManagedLedgerConfig,
    ManagedLedgerListener,
)
from strata.metadata import MetadataStore, open_metadata_store
from tests.unit.bookie.fake_bookies import FakeBookie

NAME = "acme/orders/persistent/t"


class CheckingBookie(FakeBookie):
    """Checks, at every add, that the ledger is already in the stored ledger list."""

    def __init__(self, store: MetadataStore) -> None:
        super().__init__()
        self.store = store
        self.unlisted: list[int] = []

    async def add_entry(
        self,
        ledger_id: int,
        entry_id: int,
        last_add_confirmed: int,
        payload: bytes,
        master_key: bytes,
        *,
        recovery_add: bool = False,
    ) -> None:
        record = await self.store.get(MANAGED_LEDGERS_PREFIX + NAME)
        listed = [] if record is None else json.loads(record.value)["ledgers"]
        if ledger_id not in [info["ledger_id"] for info in listed]:
            self.unlisted.append(ledger_id)
        await super().add_entry(
            ledger_id,
            entry_id,
            last_add_confirmed,
            payload,
            master_key,
            recovery_add=recovery_add,
        )


@dataclass
class Heard:
    new_entries: int = 0
    fenced: int = 0

    def listener(self) -> ManagedLedgerListener:
        def new_entries() -> None:
            self.new_entries += 1

        def fenced() -> None:
            self.fenced += 1

        return ManagedLedgerListener(new_entries=new_entries, fenced=fenced)


@dataclass
class Env:
    store: MetadataStore
    bookie: CheckingBookie
    manager: LedgerManager

    def ledger(self, heard: Heard) -> ManagedLedger:
        return ManagedLedger(
            NAME,
            self.manager,
            ManagedLedgerConfig(max_entries_per_ledger=3),
            EntryCache(1024 * 1024),
            listener=heard.listener(),
        )


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    store = await open_metadata_store("memory://")
    bookie = CheckingBookie(store)
    manager = LedgerManager(store, lambda: [bookie.address], lambda _a: bookie)
    try:
        yield Env(store, bookie, manager)
    finally:
        await store.close()


async def test_rollover_records_each_ledger_before_its_first_entry(env: Env) -> None:
    heard = Heard()
    ledger = env.ledger(heard)
    await ledger.open()
    positions = [await ledger.add_entry(b"x%d" % i, 1) for i in range(10)]
    assert positions == sorted(positions)
    assert len({p[0] for p in positions}) == 4  # 3 + 3 + 3 + 1
    assert env.bookie.unlisted == []
    assert heard.new_entries == 10 and heard.fenced == 0
    # Only the last ledger of the list is open; every other one is closed at its size.
    assert [i.entries for i in ledger.ledgers] == [3, 3, 3, 1]
    assert ledger.ledgers[-1].ledger_id == positions[-1][0]
    await ledger.close()


async def test_a_takeover_fences_once_and_refuses_adds(env: Env) -> None:
    old_heard, new_heard = Heard(), Heard()
    old = env.ledger(old_heard)
    await old.open()
    await old.add_entry(b"before", 1)
    new = env.ledger(new_heard)
    await new.open()  # recovers the old owner's ledger and stores the list anew
    with pytest.raises(TopicFencedError):
        await old.offload_state.update({})  # any compare-and-set of the stale list
    with pytest.raises(TopicFencedError):
        await old.add_entry(b"stale", 1)
    assert old.is_fenced and old_heard.fenced == 1
    assert await new.add_entry(b"after", 1) > (0, 0)
    assert new_heard.fenced == 0
    await old.close()
    await new.close()


async def test_a_trimmed_ledger_ages_out_of_the_cache_and_is_never_read(env: Env) -> None:
    """Trimming deletes a ledger without touching the entry cache (dropping a ledger's
    entries in one step stalled the broker's loop for tens of ms); its cached entries are
    never served, because a read starts from the ledger list, and go with eviction."""
    cache = EntryCache(14)  # room for exactly the 7 entries of 2 bytes written here
    ledger = ManagedLedger(NAME, env.manager, ManagedLedgerConfig(max_entries_per_ledger=3), cache)
    await ledger.open()
    positions = [await ledger.add_entry(b"x%d" % i, 1) for i in range(7)]
    trimmed_id = positions[0][0]
    assert cache.size_bytes == 14 and cache.get(NAME, trimmed_id, 0) is not None
    assert await ledger.trim(positions[2]) == 1  # the first ledger, consumed
    assert trimmed_id not in [info.ledger_id for info in ledger.ledgers]
    assert cache.size_bytes == 14  # nothing freed in the trim's step
    assert await ledger.read_entry(positions[0]) is None
    read = await ledger.read_entries(positions[0], 10)
    assert [(e.position, e.data) for e in read] == [
        (position, b"x%d" % i) for i, position in enumerate(positions) if 3 <= i < 6
    ]
    cache.put("other", Entry(10**9, 0, b"yy", 1))  # the oldest goes: the trimmed ledger's
    assert cache.get(NAME, trimmed_id, 0) is None
    assert cache.get(NAME, trimmed_id, 1) is not None and cache.size_bytes == 14
    await ledger.close()


async def writer_alone(
    env: Env, heard: Heard, max_entries: int, live_bookies: list[int] | None = None
) -> tuple[LedgerWriter, list[int], asyncio.Event]:
    """A writer (``max_entries`` a ledger) whose rollover task is the bare minimum through the
    writer's rollover methods; returns it, the ids of the ledgers it was given in turn, and an
    event set whenever a rollover starts."""
    ledgers = LedgerList(env.store, NAME, lambda exc: exc)
    await ledgers.load()
    given: list[int] = []
    started = asyncio.Event()

    async def rollover() -> None:
        started.set()
        old = writer.take_current()
        if old is not None:
            await old.close()
        handle = await env.manager.create_ledger(1, 1, 1)
        ledgers.ledgers.append(LedgerInfo(handle.ledger_id))
        given.append(handle.ledger_id)
        writer.write_to(handle, int(time.time() * 1000))
        writer.rollover_finished()
        writer.issue_pending()

    writer = LedgerWriter(
        NAME,
        ManagedLedgerConfig(max_entries_per_ledger=max_entries),
        ledgers,
        EntryCache(1024 * 1024),
        heard.listener(),
        rollover,
        (lambda: live_bookies[0]) if live_bookies is not None else (lambda: 1),
    )
    return writer, given, started


async def test_a_full_ledger_takes_more_while_no_new_ledger_can_be_placed(env: Env) -> None:
    """A full ledger rolls over only once a new one could be placed: with fewer live bookies
    than its ensemble (a bookie down with no spare) it keeps the writes, past its maximum,
    and rolls over at the first add after the bookies are back."""
    heard = Heard()
    live = [1]
    writer, given, started = await writer_alone(env, heard, max_entries=3, live_bookies=live)
    await writer.add_entry(b"first", 1)  # the first ledger (the queue's rollover)
    assert len(given) == 1
    started.clear()
    live[0] = 0  # E=1, no bookie live
    positions = [await writer.add_entry(b"x%d" % i, 1) for i in range(6)]
    assert {p[0] for p in positions} == {given[0]}, "all in the full ledger"
    assert writer.rollover is None and not started.is_set()
    live[0] = 1
    await writer.add_entry(b"after", 1)  # issued to the full ledger, then the rollover
    await asyncio.wait_for(started.wait(), 5)
    assert (await writer.add_entry(b"next", 1))[0] == given[-1] != given[0]
    await writer.close()


async def test_the_writer_issues_queued_adds_in_order_never_more_than_a_ledger_takes(
    env: Env,
) -> None:
    heard = Heard()
    writer, given, _ = await writer_alone(env, heard, max_entries=3)
    # No ledger yet: every add queues up behind the first rollover.
    futures = [writer.add_entry(b"x%d" % i, 1) for i in range(10)]
    assert writer.rollover is not None and writer.current is None
    positions = await asyncio.gather(*futures)
    assert [p[0] for p in positions] == [given[i // 3] for i in range(10)]
    assert [p[1] for p in positions] == [i % 3 for i in range(10)]
    for index, ledger_id in enumerate(given):
        assert env.bookie.entry_ids(ledger_id) == list(range(min(3, 10 - 3 * index)))
    assert writer.last_confirmed == positions[-1] and writer.entries_added == 10
    assert heard.new_entries == 10
    await writer.close()
    assert writer.current is None and writer.rollover is None


async def test_the_writer_resubmits_failed_adds_ahead_of_queued_ones(env: Env) -> None:
    heard = Heard()
    writer, given, started = await writer_alone(env, heard, max_entries=4)
    first = await writer.add_entry(b"first", 1)
    started.clear()
    env.bookie.fail("add", times=None)  # no other bookie: the first ledger's writer fails
    failed = [writer.add_entry(b"f%d" % i, 1) for i in range(2)]
    await started.wait()  # the failures reached the writer, which rolls over
    assert writer.rollover is not None
    env.bookie.clear_faults()
    later = [writer.add_entry(b"l%d" % i, 1) for i in range(3)]
    positions = await asyncio.gather(*failed, *later)
    assert first == (given[0], 0)
    # f0, f1, l0, l1 fill the second ledger (4 at most), l2 goes to the third.
    assert positions == [(given[1], 0), (given[1], 1), (given[1], 2), (given[1], 3), (given[2], 0)]
    assert env.bookie.entry_ids(given[0]) == [0]
    await writer.close()
