"""Replicated ledgers across real bookie processes: a bookie killed or paused while producing.

etcd + 4 bookies + 1 broker as processes, namespace persistence 3/3/2. Every message that got
a receipt is consumed afterwards, in order; the ledger metadata shows the ensemble change;
a paused bookie's ledgers are repaired by autorecovery; a bookie that lost its disk refuses to
come back under its old identity.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest

import strata
from bookie.grpc_client import GrpcBookieClient
from bookie.ledger import LedgerMetadata, ledger_key
from bookie.ledger.metadata import ledger_fragments, slot_stores_entry
from strata.metadata import MetadataStore
from strata.v1 import admin_pb2, admin_pb2_grpc
from tests.cluster import Cluster

pytestmark = [pytest.mark.integration, pytest.mark.fault]

MESSAGES = 50_000
FAULT_AFTER_RECEIPTS = 15_000
MAX_PENDING = 2_000
RECEIVE_TIMEOUT_MS = 5_000
TOPIC = "persistent://public/default/replicated"


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    with Cluster(
        tmp_path,
        bookies=4,
        brokers=1,
        bookie_args=[
            "--journal-fsync",
            "false",
            "--autorecovery-lost-bookie-grace-ms",
            "500",
            "--autorecovery-audit-interval-ms",
            "2000",
        ],
    ) as running:
        async with grpc.aio.insecure_channel(running.broker_address()) as channel:
            admin = admin_pb2_grpc.AdminServiceStub(channel)
            await admin.SetPersistence(
                admin_pb2.SetPersistenceRequest(
                    name="tenants/public/namespaces/default",
                    persistence=admin_pb2.PersistencePolicies(
                        bookkeeper_ensemble=3, bookkeeper_write_quorum=3, bookkeeper_ack_quorum=2
                    ),
                )
            )
        yield running


async def ledger_ids(store: MetadataStore, topic: str) -> list[int]:
    name = topic.removeprefix("persistent://").split("/")
    record = await store.get(f"/managed-ledgers/{name[0]}/{name[1]}/persistent/{name[2]}")
    assert record is not None
    return [int(info["ledger_id"]) for info in json.loads(record.value)["ledgers"]]


async def read_ledger(store: MetadataStore, ledger_id: int) -> LedgerMetadata:
    record = await store.get(ledger_key(ledger_id))
    assert record is not None
    return LedgerMetadata.from_json(record.value, record.version)


async def produce(
    service_url: str, count: int, fault: Callable[[], None]
) -> dict[int, strata.MessageId]:
    """Send ``count`` numbered messages; call ``fault`` once FAULT_AFTER_RECEIPTS have receipts.
    Returns message number → id for every receipted message."""
    receipted: dict[int, strata.MessageId] = {}
    client = strata.AsyncClient(service_url, operation_timeout_seconds=30)
    producer = await client.create_producer(
        TOPIC, send_timeout_millis=60_000, max_pending_messages=MAX_PENDING
    )

    def on_receipt(index: int) -> Callable[[strata.Result, strata.MessageId | None], None]:
        def callback(result: strata.Result, message_id: strata.MessageId | None) -> None:
            if result == strata.Result.Ok and message_id is not None:
                receipted[index] = message_id

        return callback

    faulted = False
    try:
        for index in range(count):
            if not faulted and len(receipted) >= FAULT_AFTER_RECEIPTS:
                fault()
                faulted = True
            while producer.pending_messages >= MAX_PENDING:
                await asyncio.wait_for(producer.wait_for_space(), 60)
            producer.send_nowait(str(index).encode(), callback=on_receipt(index))
            if index % 200 == 0:
                await asyncio.sleep(0)
        await asyncio.wait_for(producer.flush(), 120)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(producer.close(), 10)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.close(), 10)
    assert faulted
    return receipted


async def consume_all(service_url: str, subscription: str = "check") -> list[int]:
    client = strata.AsyncClient(service_url)
    try:
        consumer = await client.subscribe(
            TOPIC,
            subscription,
            consumer_type=strata.ConsumerType.Exclusive,
            initial_position=strata.InitialPosition.Earliest,
        )
        got: list[int] = []
        while True:
            try:
                batch = await consumer.receive_many(1000, timeout_millis=RECEIVE_TIMEOUT_MS)
            except strata.Timeout:
                return got
            got.extend(int(message.data()) for message in batch)
            consumer.acknowledge_many(batch)
    finally:
        await client.close()


def assert_all_receipted_in_order(receipted: dict[int, strata.MessageId], got: list[int]) -> None:
    assert len(got) == len(set(got)), "a message was delivered twice"
    assert got == sorted(got), "messages out of order"
    missing = set(receipted) - set(got)
    assert not missing, f"{len(missing)} receipted messages lost, e.g. {sorted(missing)[:5]}"


async def current_ensemble(store: MetadataStore) -> list[str]:
    metadata = await read_ledger(store, (await ledger_ids(store, TOPIC))[-1])
    return metadata.ensembles[metadata.last_fragment_first]


async def test_bookie_kill9_while_producing(cluster: Cluster, store: MetadataStore) -> None:
    # Load the topic so that its first ledger exists, and pick a bookie of its ensemble.
    client = strata.AsyncClient(cluster.broker_address())
    await (await client.create_producer(TOPIC)).close()
    await client.close()
    victim_id = (await current_ensemble(store))[0]
    victim = next(i for i, b in enumerate(cluster.bookies) if b.address == victim_id)

    receipted = await produce(
        cluster.broker_address(), MESSAGES, lambda: cluster.kill_bookie(victim)
    )
    assert len(receipted) == MESSAGES  # Qa = 2 is still reached with one bookie down
    got = await consume_all(cluster.broker_address())
    assert_all_receipted_in_order(receipted, got)

    # The ledger that was open at the kill records the ensemble change: a later fragment
    # without the victim, written by compare-and-set before any entry in it was receipted.
    changed = []
    for ledger_id in await ledger_ids(store, TOPIC):
        fragments = ledger_fragments(await read_ledger(store, ledger_id))
        if len(fragments) > 1 and victim_id not in fragments[-1].ensemble:
            changed.append(ledger_id)
    assert changed, "no ledger shows an ensemble change away from the killed bookie"

    # Restarted with its disk, it passes the cookie check and registers again.
    cluster.restart_bookie(victim)
    cluster.wait_bookies_available(4)

    # Its disk is lost: under the same identity it must refuse to serve.
    cluster.kill_bookie(victim)
    shutil.rmtree(cluster.directory / f"bookie-{victim}")
    wiped = cluster.bookies[victim]
    wiped.start(wait=False)
    assert wiped.process is not None
    assert wiped.process.wait(60) == 3
    assert "data was lost" in wiped.log_text()


async def test_paused_bookie_is_replaced_and_autorecovery_repairs(
    cluster: Cluster, store: MetadataStore
) -> None:
    client = strata.AsyncClient(cluster.broker_address())
    await (await client.create_producer(TOPIC)).close()
    await client.close()
    victim_id = (await current_ensemble(store))[1]
    victim = next(i for i, b in enumerate(cluster.bookies) if b.address == victim_id)

    receipted = await produce(
        cluster.broker_address(), MESSAGES, lambda: cluster.pause_bookie(victim)
    )
    assert len(receipted) == MESSAGES
    try:
        # The paused bookie's lease expires; the auditor marks its ledgers and the workers
        # copy its fragments elsewhere, until no ledger lists it and nothing is marked.
        def listed_anywhere() -> tuple[int, int]:
            response = cluster.list_bookies()
            listing = {b.id: b for b in response.bookies}
            return listing[victim_id].ledger_count, response.under_replicated_ledger_count

        cluster.wait_for(
            listed_anywhere, lambda state: state == (0, 0), 120, "repair of the paused bookie"
        )
    finally:
        cluster.resume_bookie(victim)
    # Resumed after its lease expired, the bookie registers again in a new session.
    cluster.wait_bookies_available(4)

    # Every entry of every ledger is back on Qw live bookies.
    for ledger_id in await ledger_ids(store, TOPIC):
        metadata = await read_ledger(store, ledger_id)
        assert victim_id not in metadata.all_bookies()
        await assert_fully_replicated(metadata)
    got = await consume_all(cluster.broker_address())
    assert_all_receipted_in_order(receipted, got)


async def assert_fully_replicated(metadata: LedgerMetadata) -> None:
    for fragment in ledger_fragments(metadata):
        last = fragment.last_entry_id
        if last is None or last < fragment.first_entry_id:
            continue  # the open tail or an empty fragment
        for slot, bookie_id in enumerate(fragment.ensemble):
            client = GrpcBookieClient(bookie_id)
            try:
                entries = await client.read_entries(
                    metadata.ledger_id, fragment.first_entry_id, last
                )
                held = {entry.entry_id for entry in entries}
                next_id = max(held, default=fragment.first_entry_id - 1) + 1
                while next_id <= last:
                    more = await client.read_entries(metadata.ledger_id, next_id, last)
                    held.update(entry.entry_id for entry in more)
                    next_id = more[-1].entry_id + 1
            finally:
                await client.close()
            should = {
                e
                for e in range(fragment.first_entry_id, last + 1)
                if slot_stores_entry(slot, e, metadata.ensemble_size, metadata.write_quorum)
            }
            assert should <= held, (
                f"ledger {metadata.ledger_id} fragment {fragment.first_entry_id}: bookie "
                f"{bookie_id} misses {sorted(should - held)[:5]}"
            )
