"""The managed ledger's own protocol, in one process (memory store, memory bookie): rollover
records a ledger before its first entry, the listener given at construction hears new entries
and fencing, and a fenced managed ledger refuses adds."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from bookie.ledger import LedgerManager
from broker.errors import TopicFencedError
from broker.managed_ledger import (
    MANAGED_LEDGERS_PREFIX,
    EntryCache,
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
