"""The broker service's lifecycle: owned loops that never die silently, housekeeping that
outlives a failing pass, and a cluster broker that serves no topic before it has joined."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bookie.ledger import LedgerManager
from broker.config import BrokerConfig
from broker.entry_format import stored_entry_for
from broker.errors import ServiceUnavailableError
from broker.loops import OwnedLoops
from broker.managed_ledger import MANAGED_LEDGERS_PREFIX
from broker.ownership import OwnershipConfig
from broker.service import BrokerService
from broker.topic import Topic
from strata.metadata import MetadataStore, open_metadata_store
from strata.naming import TopicName
from strata.v1 import messaging_pb2
from tests.unit.bookie.fake_bookies import FakeBookie, StallingStore, wait_until

ADDRESS = "a:1"
BOUND_S = 5.0


@pytest.fixture
async def store() -> AsyncIterator[MetadataStore]:
    store = await open_metadata_store("memory://")
    try:
        yield store
    finally:
        await store.close()


def broker_service(
    store: MetadataStore, tmp_path: Path, *, cluster: bool, housekeeping_interval_ms: int = 60_000
) -> BrokerService:
    bookie = FakeBookie("memory")
    config = BrokerConfig(
        port=0,
        data_dir=tmp_path,
        housekeeping_interval_ms=housekeeping_interval_ms,
        managed_ledger_default_ensemble_size=1,
        managed_ledger_default_write_quorum=1,
        managed_ledger_default_ack_quorum=1,
    )

    async def forward(owner: str, key: str, operation: str) -> None:
        raise AssertionError("nothing is forwarded in these tests")

    return BrokerService(
        config,
        store,
        LedgerManager(store, lambda: [bookie.address], lambda _address: bookie),
        advertised_address=ADDRESS,
        ownership=OwnershipConfig() if cluster else None,
        forward=forward,
    )


async def test_a_loop_that_dies_is_logged_at_once(caplog: pytest.LogCaptureFixture) -> None:
    loops = OwnedLoops("owner", logging.getLogger("test.loops"))

    async def failing() -> None:
        raise RuntimeError("boom")

    task = loops.start(failing(), name="failing")
    await asyncio.wait([task], timeout=BOUND_S)
    assert loops.dead == ["failing"]
    [record] = [r for r in caplog.records if r.name == "test.loops"]
    assert "owner: loop failing died" in record.getMessage()
    assert record.exc_info is not None and "boom" in str(record.exc_info[1])
    await loops.close()  # awaits the dead loop without raising its error again


async def test_a_failing_housekeeping_pass_is_logged_and_the_loop_goes_on(
    store: MetadataStore,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    broker = broker_service(store, tmp_path, cluster=False, housekeeping_interval_ms=10)
    await broker.initialize_defaults()
    topic = await broker.get_topic(TopicName.parse("t"))
    failed_twice = asyncio.Event()
    calls = 0

    def fail() -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            failed_twice.set()
        raise RuntimeError("injected housekeeping failure")

    monkeypatch.setattr(topic.ledger, "maybe_rollover_by_time", fail)
    await broker.start()
    try:
        await asyncio.wait_for(failed_twice.wait(), BOUND_S)
        assert broker.housekeeping.passes_failed >= 2
        assert not broker.housekeeping.dead
        failures = [r for r in caplog.records if "housekeeping pass failed" in r.getMessage()]
        assert failures and failures[0].exc_info is not None
    finally:
        await broker.close()


async def test_a_cluster_broker_serves_topics_only_while_joined(
    store: MetadataStore, tmp_path: Path
) -> None:
    broker = broker_service(store, tmp_path, cluster=True)
    await broker.initialize_defaults()
    await broker.start()
    name = TopicName.parse("t")
    try:
        with pytest.raises(ServiceUnavailableError):
            await broker.get_topic(name)
        with pytest.raises(ServiceUnavailableError):
            await broker.lookup(name, authoritative=False)
        await broker.join_cluster()
        assert await broker.lookup(name, authoritative=False) == (False, ADDRESS, False)
        assert (await broker.get_topic(name)).name == name
        await broker.leave_cluster()
        assert name not in [t.name for t in broker.topics.values()]
        with pytest.raises(ServiceUnavailableError):
            await broker.get_topic(name)
    finally:
        await broker.leave_cluster()
        await broker.close()


async def test_a_topic_loaded_again_while_its_old_instance_closes_waits_and_is_not_fenced(
    store: MetadataStore, tmp_path: Path
) -> None:
    """An idle unload closes the old topic (its ledger list is stored last) while a client
    loads the topic again: the new instance must not read the list before that last write,
    or its own first write would fail the compare-and-set and fence it."""
    stalling = StallingStore(store)
    broker = broker_service(stalling, tmp_path, cluster=False)
    await broker.initialize_defaults()
    name = TopicName.parse("t")
    old = await broker.get_topic(name)
    await old.publish(stored_entry_for("p", one_message_batch()), 1)
    gate = stalling.stall_puts(MANAGED_LEDGERS_PREFIX)
    unload = asyncio.create_task(broker.registry.close_topics(lambda n: n == name))
    reload: asyncio.Task[Topic] | None = None
    try:
        # The old instance is storing its closed ledger list.
        await wait_until(lambda: gate.waiting > 0, BOUND_S)
        reload = asyncio.create_task(broker.get_topic(name))
        for _ in range(50):
            await asyncio.sleep(0)
        assert not reload.done(), "the topic loaded again before its old instance closed"
        gate.release()
        new = await asyncio.wait_for(reload, BOUND_S)
        await asyncio.wait_for(unload, BOUND_S)
        assert new is not old and not new.ledger.is_fenced
        await asyncio.wait_for(new.publish(stored_entry_for("p", one_message_batch()), 1), BOUND_S)
    finally:
        gate.release()
        for task in (unload, reload):
            if task is not None:
                await asyncio.gather(task, return_exceptions=True)
        await broker.close()


def one_message_batch() -> messaging_pb2.ProducerBatch:
    return messaging_pb2.ProducerBatch(sequence_id=0, num_messages=1, payload=b"m")
