"""A model-based check of the ledger protocol: random adds, bookie faults and a recovery by a
new owner, then "every acknowledged entry is in the recovered ledger, in order, with its bytes"
and "the recovered ledger holds only what the writer sent, at the ids it gave them"."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from bookie.errors import CorruptEntryError
from bookie.ledger import (
    STATE_CLOSED,
    LedgerClientConfig,
    LedgerHandle,
    LedgerManager,
    LedgerMetadata,
    LedgerRecoveryError,
)
from strata.metadata import InMemoryMetadataStore
from tests.unit.bookie.fake_bookies import FakeCluster, read_all

T = TypeVar("T")

MODEL_CONFIG = LedgerClientConfig(
    add_entry_timeout_ms=40,
    read_timeout_ms=40,
    fence_timeout_ms=40,
    delete_timeout_ms=40,
    metadata_timeout_ms=2_000,
    metadata_retry_backoff_ms=1,
    max_fence_attempts=2,
)
BOOKIES = 5
MAX_FAULTS = 2
FAULTS = ["down", "fail_once", "hang_adds", "slow", "corrupt_reads"]
Fault = tuple[int, str, int]  # bookie index, kind, entry id at which it strikes
SETTLE_TIMEOUT_S = 2.0


class LedgerProtocolModel(RuleBasedStateMachine):
    """One ledger, one writer, up to two bookie faults, then a recovery by a new owner."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.store = self.run(InMemoryMetadataStore.open())
        self.cluster = FakeCluster(BOOKIES)
        self.writer_manager = LedgerManager(
            self.store, self.cluster.available, self.cluster.resolve, MODEL_CONFIG
        )
        self.owner = LedgerManager(
            self.store, self.cluster.available, self.cluster.resolve, MODEL_CONFIG
        )
        self.handle: LedgerHandle | None = None
        self.sent: dict[int, bytes] = {}  # entry id → payload, for every add accepted
        self.acked: dict[int, bytes] = {}
        self.futures: list[asyncio.Future[int]] = []
        self.ack_order: list[int] = []
        self.faults = 0
        self.schedule: list[Fault] = []
        self.recovered: LedgerMetadata | None = None

    def run(self, work: Coroutine[Any, Any, T] | asyncio.Future[T]) -> T:
        return self.loop.run_until_complete(work)

    @initialize(
        quorums=st.sampled_from([(3, 3, 2), (3, 2, 2), (4, 3, 2), (2, 2, 1), (3, 3, 3)]),
        schedule=st.lists(
            st.tuples(st.integers(0, BOOKIES - 1), st.sampled_from(FAULTS), st.integers(0, 20)),
            max_size=MAX_FAULTS,
        ),
    )
    def create(self, quorums: tuple[int, int, int], schedule: list[Fault]) -> None:
        self.handle = self.run(self.writer_manager.create_ledger(*quorums))
        self.schedule = schedule

    def _inject(self, index: int, how: str) -> None:
        bookie = self.cluster[index]
        if how == "down":
            bookie.down()
        elif how == "fail_once":
            bookie.fail("add")
        elif how == "hang_adds":
            bookie.drop("add", times=None)
        elif how == "slow":
            # Alive but behind: acknowledged entries sit on the Qa fast bookies only.
            bookie.delay("add", MODEL_CONFIG.add_entry_timeout_ms / 2000, times=None)
        else:
            bookie.fail("read", times=None, error=CorruptEntryError("injected corruption"))
        self.faults += 1

    # ---- rules ---------------------------------------------------------------------------

    @precondition(lambda self: self.recovered is None)
    @rule(data=st.binary(max_size=6), count=st.integers(1, 6), spin=st.integers(0, 4))
    def add(self, data: bytes, count: int, spin: int) -> None:
        async def add_some() -> None:
            handle = self.handle
            assert handle is not None
            for _ in range(count):
                entry_id = len(self.sent)
                for index, how, at_entry in self.schedule:
                    if at_entry == entry_id:
                        self._inject(index, how)
                payload = f"{entry_id}:".encode() + data
                future = handle.add_entry(payload)
                if future.done() and future.exception() is not None:
                    return  # refused: the writer failed; no id was used
                self.sent[entry_id] = payload
                future.add_done_callback(self._on_done)
                self.futures.append(future)
            for _ in range(spin):
                await asyncio.sleep(0)

        self.run(add_some())

    def _on_done(self, future: asyncio.Future[int]) -> None:
        if not future.cancelled() and future.exception() is None:
            entry_id = future.result()
            self.acked[entry_id] = self.sent[entry_id]
            self.ack_order.append(entry_id)

    @rule()
    def settle(self) -> None:
        pending = [f for f in self.futures if not f.done()]
        if pending:
            self.run(asyncio.wait(pending, timeout=SETTLE_TIMEOUT_S))
        self.run(asyncio.sleep(0))
        assert all(f.done() for f in self.futures), "an add neither completed nor failed"

    @rule(steps=st.integers(1, 5))
    def run_a_little(self, steps: int) -> None:
        async def spin() -> None:
            for _ in range(steps):
                await asyncio.sleep(0)

        self.run(spin())

    @precondition(lambda self: self.recovered is None and self.faults < MAX_FAULTS)
    @rule(index=st.integers(0, BOOKIES - 1), how=st.sampled_from(FAULTS))
    def fault(self, index: int, how: str) -> None:
        self._inject(index, how)

    @precondition(lambda self: self.recovered is None and self.sent)
    @rule(heal_first=st.booleans())
    def recover(self, heal_first: bool) -> None:
        """A new owner takes over, possibly while adds are still in flight."""
        if heal_first:
            self.cluster.release_all()
        handle = self.handle
        assert handle is not None
        for attempt in range(3):
            try:
                self.recovered = self.run(self.owner.open_and_recover(handle.ledger_id))
                break
            except LedgerRecoveryError:
                # Too many bookies of the last fragment are out: an operator brings them
                # back, and the recovery is retried (it must then succeed).
                assert attempt < 2
                self.cluster.release_all()
        self.settle()
        event(f"acked before recovery: {min(len(self.acked), 10)}+ ; faults: {self.faults}")
        self.check_recovered()

    # ---- checks --------------------------------------------------------------------------

    @invariant()
    def acks_in_order(self) -> None:
        assert self.ack_order == sorted(self.ack_order)
        assert self.ack_order == list(range(len(self.ack_order)))

    def check_recovered(self) -> None:
        recovered = self.recovered
        assert recovered is not None and recovered.state == STATE_CLOSED
        assert all(entry_id <= recovered.last_entry_id for entry_id in self.acked), (
            "an acknowledged entry is missing from the recovered ledger"
        )
        self.cluster.release_all()
        entries = self.run(read_all(self.owner, recovered))
        assert [e.entry_id for e in entries] == list(range(recovered.last_entry_id + 1))
        for entry in entries:
            assert entry.payload == self.sent[entry.entry_id]
        assert recovered.length_bytes == sum(len(e.payload) for e in entries)

    def teardown(self) -> None:
        try:
            if self.handle is not None and self.recovered is None:
                self.recover(heal_first=False)
        finally:
            self.cluster.release_all()
            if self.handle is not None:
                self.run(self.handle.abort())
            self.run(self.store.close())
            tasks = asyncio.all_tasks(self.loop)
            for task in tasks:
                task.cancel()
            if tasks:
                self.run(asyncio.gather(*tasks, return_exceptions=True))
            self.loop.close()


LedgerProtocolModel.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestLedgerProtocolModel = LedgerProtocolModel.TestCase
