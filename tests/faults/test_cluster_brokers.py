"""Brokers over replicated ledgers, as processes: kill -9 of the broker while producing, two
writers on one ledger, and too few bookies."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import strata
from bookie.ledger import (
    STATE_CLOSED,
    LedgerClosedError,
    LedgerManager,
    LedgerMetadata,
    ledger_key,
)
from bookie.registry import BookieClientPool, BookieRegistry
from strata.metadata import MetadataStore
from tests.cluster import Cluster

pytestmark = [pytest.mark.integration, pytest.mark.fault]

RECEIPTS_BEFORE_KILL = 10_000
MAX_MESSAGES = 100_000
MAX_PENDING = 2_000
SENDS_AFTER_KILL = 1_000
RECEIVE_TIMEOUT_MS = 5_000
TOPIC = "persistent://public/default/broker-crash"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with Cluster(tmp_path, bookies=3, brokers=1, bookie_args=["--journal-fsync", "false"]) as c:
        yield c


async def produce_until_killed(cluster: Cluster, receipted: dict[int, strata.MessageId]) -> None:
    client = strata.AsyncClient(cluster.broker_address(), operation_timeout_seconds=5)
    producer = await client.create_producer(
        TOPIC, send_timeout_millis=3000, max_pending_messages=MAX_PENDING
    )

    def on_receipt(index: int) -> Callable[[strata.Result, strata.MessageId | None], None]:
        def callback(result: strata.Result, message_id: strata.MessageId | None) -> None:
            if result == strata.Result.Ok and message_id is not None:
                receipted[index] = message_id

        return callback

    killed_at: int | None = None
    try:
        for index in range(MAX_MESSAGES):
            if killed_at is None and len(receipted) >= RECEIPTS_BEFORE_KILL:
                cluster.kill_broker()  # while batches are in flight
                killed_at = index
            if killed_at is not None and index - killed_at >= SENDS_AFTER_KILL:
                break  # the rest wait for the broker, then time out: never receipted
            while producer.pending_messages >= MAX_PENDING:
                try:
                    await asyncio.wait_for(producer.wait_for_space(), 5)
                except (strata.StrataException, TimeoutError):
                    return
            try:
                producer.send_nowait(str(index).encode(), callback=on_receipt(index))
            except strata.StrataException:
                return
            if index % 200 == 0:
                await asyncio.sleep(0)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(producer.close(), 5)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.close(), 5)


async def test_broker_kill9_and_restart_loses_nothing_receipted(
    cluster: Cluster, store: MetadataStore
) -> None:
    receipted: dict[int, strata.MessageId] = {}
    await asyncio.wait_for(produce_until_killed(cluster, receipted), 120)
    assert len(receipted) >= RECEIPTS_BEFORE_KILL
    cluster.brokers[0].start()  # same port; the metadata and the bookies hold everything

    client = strata.AsyncClient(cluster.broker_address())
    try:
        consumer = await client.subscribe(
            TOPIC, "after", initial_position=strata.InitialPosition.Earliest
        )
        got: list[int] = []
        while True:
            try:
                batch = await consumer.receive_many(1000, timeout_millis=RECEIVE_TIMEOUT_MS)
            except strata.Timeout:
                break
            got.extend(int(message.data()) for message in batch)
        missing = set(receipted) - set(got)
        assert not missing, f"{len(missing)} receipted messages lost, e.g. {sorted(missing)[:5]}"
        assert len(got) == len(set(got)), "a message was stored twice"
    finally:
        await client.close()

    # Recovery closed the ledger the dead broker was writing at or beyond every receipt in it.
    by_ledger: dict[int, int] = {}
    for message_id in receipted.values():
        ledger_id, entry_id = message_id.ledger_id(), message_id.entry_id()
        by_ledger[ledger_id] = max(by_ledger.get(ledger_id, -1), entry_id)
    for ledger_id, last_receipted in by_ledger.items():
        record = await store.get(ledger_key(ledger_id))
        assert record is not None, f"ledger {ledger_id} with receipted entries is gone"
        metadata = LedgerMetadata.from_json(record.value, record.version)
        assert metadata.state == STATE_CLOSED
        assert metadata.last_entry_id >= last_receipted


async def test_old_writer_gets_no_acknowledgement_after_fencing(
    cluster: Cluster, store: MetadataStore
) -> None:
    registry = BookieRegistry(store)
    await registry.start()
    pools = [BookieClientPool(max_entry_size_bytes=1 << 20) for _ in range(2)]
    try:
        writer = LedgerManager(store, registry.available, pools[0].get)
        recoverer = LedgerManager(store, registry.available, pools[1].get)
        handle = await writer.create_ledger(3, 3, 2)
        acked = [await handle.add_entry(f"e{i}".encode()) for i in range(50)]
        recovered = await recoverer.open_and_recover(handle.ledger_id)
        assert recovered.state == STATE_CLOSED
        assert recovered.last_entry_id >= acked[-1]
        late = [handle.add_entry(f"late{i}".encode()) for i in range(20)]
        results = await asyncio.gather(*late, return_exceptions=True)
        assert all(isinstance(r, LedgerClosedError) for r in results), results
        again = await recoverer.read_metadata(handle.ledger_id)
        assert again is not None and again.last_entry_id == recovered.last_entry_id
    finally:
        for pool in pools:
            await pool.close()
        await registry.close()


async def test_too_few_bookies_is_unavailable_not_a_hang(
    cluster: Cluster, store: MetadataStore
) -> None:
    # Two bookies down: the default 2/2/2 cannot place a new ledger.
    cluster.kill_bookie(0)
    cluster.kill_bookie(1)
    cluster.wait_bookies_available(1)
    client = strata.AsyncClient(cluster.broker_address(), operation_timeout_seconds=3)
    try:
        with pytest.raises(strata.StrataException) as info:
            await asyncio.wait_for(client.create_producer("needs-two-bookies"), 30)
        assert "bookies" in str(info.value)
    finally:
        await client.close()
    body = await store.get("/admin/namespaces/public/default")
    assert body is not None and json.loads(body.value) == {}
