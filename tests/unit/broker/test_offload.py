"""Offloading a managed ledger's closed ledgers: the state machine, crash leftovers and their
sweep, trimming, transparent reads, failures and retries. In one process: the memory store, a
memory bookie, and real offloaders (a directory; S3 on moto's ``mock_aws``)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from bookie.ledger import LedgerManager
from broker.entry_format import stored_entry_for
from broker.errors import to_status
from broker.managed_ledger import Entry, EntryCache, ManagedLedger, ManagedLedgerConfig
from broker.offload import (
    STATUS_ERROR,
    STATUS_NOT_RUN,
    STATUS_SUCCESS,
    LedgerOffloadOp,
    ManagedLedgerOffloader,
    OffloadPolicy,
    ledgers_to_offload,
)
from strata.metadata import MetadataStore, open_metadata_store
from strata.naming import TopicName
from strata.v1 import messaging_pb2
from tests.unit.bookie.fake_bookies import FakeBookie
from tests.unit.tiered.support import BUCKET, REGION, small_config
from tiered import (
    OFFLOAD_BOOKIE_DELETED,
    OFFLOAD_COMPLETE,
    OFFLOAD_IN_PROGRESS,
    FilesystemOffloader,
    ObjectNotFoundError,
    S3Offloader,
    TieredError,
)
from tiered.offloader import BlockOffloader, EntrySource, OffloadResult
from tiered.store import ObjectInfo

TOPIC = TopicName.parse("persistent://acme/orders/t")
ML_NAME = "acme/orders/persistent/t"
ENTRIES_PER_LEDGER = 10
HOUR_MS = 3_600_000


def stored(i: int) -> bytes:
    body = f"entry-{i:05d}-".encode() + bytes([i % 256]) * (i % 700)
    return stored_entry_for("", messaging_pb2.ProducerBatch(num_messages=1, payload=body))


@dataclass
class Env:
    tmp_path: Path
    store: MetadataStore
    bookie: FakeBookie
    manager: LedgerManager
    offloader: BlockOffloader
    policy: OffloadPolicy = field(default_factory=lambda: OffloadPolicy(-1, HOUR_MS))
    ledgers: list[ManagedLedger] = field(default_factory=list)

    async def open_ledger(self, offloader: BlockOffloader | None = None) -> ManagedLedger:
        """A managed ledger with its offload scheduler (``attach`` returns it), as a broker
        with an offloader makes them."""
        chosen = offloader or self.offloader

        async def policy() -> OffloadPolicy:
            return self.policy

        ledger = ManagedLedger(
            ML_NAME,
            self.manager,
            ManagedLedgerConfig(max_entries_per_ledger=ENTRIES_PER_LEDGER),
            EntryCache(0),  # no entry cache: every read goes to storage
            offloader=chosen,
            offload=lambda ml: ManagedLedgerOffloader(
                ml, TOPIC, chosen, policy, retry_initial_backoff_ms=1
            ),
        )
        await ledger.open()
        self.ledgers.append(ledger)
        return ledger

    def attach(self, ledger: ManagedLedger) -> ManagedLedgerOffloader:
        assert ledger.offload is not None
        return ledger.offload

    async def stored_infos(self) -> list[dict[str, Any]]:
        record = await self.store.get("/managed-ledgers/" + ML_NAME)
        assert record is not None
        infos: list[dict[str, Any]] = json.loads(record.value)["ledgers"]
        return infos


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    store = await open_metadata_store("memory://")
    bookie = FakeBookie()
    manager = LedgerManager(store, lambda: [bookie.address], lambda _a: bookie)
    offloader = FilesystemOffloader(small_config("filesystem", tmp_path))
    environment = Env(tmp_path, store, bookie, manager, offloader)
    try:
        yield environment
    finally:
        for ledger in environment.ledgers:
            await ledger.close()
        await offloader.close()
        await store.close()


async def produce(ledger: ManagedLedger, count: int, start: int = 0) -> list[tuple[int, int]]:
    positions = []
    for i in range(start, start + count):
        positions.append(await ledger.add_entry(stored(i), 1))
    return positions


async def read_everything(ledger: ManagedLedger) -> list[Entry]:
    result: list[Entry] = []
    position = ledger.first_position()
    for _ in range(10_000):
        entries = await ledger.read_entries(position, 7, 3000)
        if not entries:
            return result
        result.extend(entries)
        position = ledger.next_position(entries[-1].position)
    raise AssertionError("read did not end")


async def wait_until_idle(offload: ManagedLedgerOffloader, timeout_s: float = 10) -> None:
    await offload.wait_idle(timeout_s)


def objects_on_disk(env: Env) -> list[str]:
    root = env.tmp_path / "offload"
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_candidates_follow_pulsars_rule() -> None:
    from broker.managed_ledger import LedgerInfo

    ledgers = [LedgerInfo(i, entries=10, size_bytes=100) for i in range(1, 6)]
    assert ledgers_to_offload(ledgers, 0) == [1, 2, 3, 4]  # never the last (open) one
    assert ledgers_to_offload(ledgers, 250) == [1, 2, 3]  # keep ~250 bytes: ledgers 4, 5
    assert ledgers_to_offload(ledgers, 10_000) == []
    ledgers[1].entries = 0
    assert ledgers_to_offload(ledgers, 0) == [1, 3, 4]


class ObservingOffloader(FilesystemOffloader):
    """Records the ledger's stored offload state at the moment its upload starts."""

    def __init__(self, env: Env) -> None:
        super().__init__(small_config("filesystem", env.tmp_path))
        self.env = env
        self.states_at_upload: list[object] = []

    async def offload(self, source: EntrySource, topic: TopicName, uuid: str) -> OffloadResult:
        infos = await self.env.stored_infos()
        ledger_id = source.metadata.ledger_id
        info = next(i for i in infos if i["ledger_id"] == ledger_id)
        self.states_at_upload.append(info.get("offload"))
        prefix = f"cluster-a/offload/acme/orders/t/{ledger_id}-"
        assert not [k for k in objects_on_disk(self.env) if k.startswith(prefix)]
        return await super().offload(source, topic, uuid)


async def test_state_machine_records_before_upload_and_deletes_after_lag(env: Env) -> None:
    offloader = ObservingOffloader(env)
    ledger = await env.open_ledger(offloader)
    await produce(ledger, 25)  # ledgers of 10, 10, and 5 in the open one
    before = await read_everything(ledger)
    offload = env.attach(ledger)
    assert offload.status().status == STATUS_NOT_RUN
    offload.request_offload(0)
    await wait_until_idle(offload)
    status = offload.status()
    assert status.status == STATUS_SUCCESS, status
    assert status.run_ledgers_offloaded == 2 and status.offloaded_ledgers == 2

    # Step 1 was stored before the upload started, with the attempt's keys.
    assert len(offloader.states_at_upload) == 2
    for state in offloader.states_at_upload:
        assert isinstance(state, dict) and state["state"] == OFFLOAD_IN_PROGRESS
        assert state["data_key"].startswith("cluster-a/offload/acme/orders/t/")
    # Step 4: COMPLETE with checksums; the bookie copies stay during the lag.
    infos = await env.stored_infos()
    for info in infos[:2]:
        context = info["offload"]
        assert isinstance(context, dict)
        assert context["state"] == OFFLOAD_COMPLETE
        assert context["data_crc32c"] and context["index_crc32c"] and context["completed_ms"]
        assert info["ledger_id"] in env.bookie.entries
    assert "offload" not in infos[2]  # the open ledger
    assert len(objects_on_disk(env)) == 4  # data + index per ledger

    # Step 5 once the lag has passed: recorded first, then the bookie copy is gone.
    env.policy = OffloadPolicy(-1, 0)
    offload.on_housekeeping()
    await wait_until_idle(offload)
    infos = await env.stored_infos()
    for info in infos[:2]:
        assert info["offload"]["state"] == OFFLOAD_BOOKIE_DELETED
        assert info["ledger_id"] not in env.bookie.entries
        assert await env.manager.read_metadata(int(info["ledger_id"])) is None
    assert offload.status().bookie_deleted_ledgers == 2

    # Reads are transparent: same positions, same bytes, same order, also after a restart.
    after = await read_everything(ledger)
    assert after == before
    await ledger.close()
    reopened = await env.open_ledger(offloader)
    assert await read_everything(reopened) == before
    await offloader.close()


async def test_s3_driver_end_to_end(env: Env, tmp_path: Path) -> None:
    with mock_aws():
        boto3.client("s3", region_name=REGION).create_bucket(Bucket=BUCKET)
        offloader = S3Offloader(small_config("s3", tmp_path))
        try:
            ledger = await env.open_ledger(offloader)
            await produce(ledger, 35)
            before = await read_everything(ledger)
            env.policy = OffloadPolicy(-1, 0)
            offload = env.attach(ledger)
            offload.request_offload(0)
            await wait_until_idle(offload)
            assert offload.status().bookie_deleted_ledgers == 3
            keys = [
                o["Key"]
                for o in boto3.client("s3", region_name=REGION).list_objects_v2(Bucket=BUCKET)[
                    "Contents"
                ]
            ]
            assert len(keys) == 6 and all(
                k.startswith("cluster-a/offload/acme/orders/t/") for k in keys
            )
            assert await read_everything(ledger) == before
            await ledger.close()
        finally:
            await offloader.close()


class CrashingOffloader(FilesystemOffloader):
    """Uploads, then 'crashes' before the offload is verified (the process dies)."""

    async def verify(self, result: OffloadResult) -> None:
        raise RuntimeError("crash after the upload")


async def test_crash_leftovers_are_swept_and_the_offload_completes(env: Env) -> None:
    crashing = CrashingOffloader(small_config("filesystem", env.tmp_path))
    ledger = await env.open_ledger(crashing)
    await produce(ledger, 25)
    before = await read_everything(ledger)
    first_id = ledger.ledgers[0].ledger_id
    with pytest.raises(RuntimeError):
        await LedgerOffloadOp(ledger, crashing, TOPIC, first_id).run()
    infos = await env.stored_infos()
    assert infos[0]["offload"]["state"] == OFFLOAD_IN_PROGRESS
    leftovers = objects_on_disk(env)
    assert len(leftovers) == 2
    # A stray object of an attempt never recorded, and a file that is not ours.
    stray = f"cluster-a/offload/acme/orders/t/{first_id}-{'e' * 32}"
    await env.offloader.store.put(stray, b"junk")
    await env.offloader.store.put("cluster-a/offload/acme/orders/t/notes.txt", b"keep me")
    await ledger.close()
    await crashing.close()

    # The restarted broker: its first pass sweeps, then offloads with a new attempt.
    reopened = await env.open_ledger()
    env.policy = OffloadPolicy(0, HOUR_MS)
    offload = env.attach(reopened)
    offload.on_housekeeping()
    await wait_until_idle(offload)
    assert offload.status().status == STATUS_SUCCESS
    infos = await env.stored_infos()
    # The reopened ledger list has three closed ledgers (the open one was recovered).
    assert [i["offload"]["state"] for i in infos[:3]] == [OFFLOAD_COMPLETE] * 3
    remaining = objects_on_disk(env)
    assert not set(leftovers) & set(remaining)
    assert stray not in remaining
    assert "cluster-a/offload/acme/orders/t/notes.txt" in remaining
    uuids = {str(i["offload"]["uuid"]) for i in infos[:3]}
    assert all(any(u in key for u in uuids) for key in remaining if not key.endswith(".txt"))
    assert await read_everything(reopened) == before


async def test_crash_between_bookie_deleted_and_the_delete(env: Env) -> None:
    ledger = await env.open_ledger()
    await produce(ledger, 15)
    offload = env.attach(ledger)
    offload.request_offload(0)
    await wait_until_idle(offload)
    info = ledger.ledgers[0]
    assert info.offload is not None and info.offload.state == OFFLOAD_COMPLETE
    # Recorded BOOKIE_DELETED, and the process died before deleting the bookie copy.
    await ledger.offload_state.update({info.ledger_id: info.offload.with_bookie_deleted(1)})
    assert info.ledger_id in env.bookie.entries
    await ledger.close()
    reopened = await env.open_ledger()
    offload = env.attach(reopened)
    offload.on_housekeeping()  # the sweep finds the bookie copy and deletes it
    await wait_until_idle(offload)
    assert info.ledger_id not in env.bookie.entries


class GatedOffloader(FilesystemOffloader):
    """An upload that waits for the test to let it go."""

    def __init__(self, env: Env) -> None:
        super().__init__(small_config("filesystem", env.tmp_path))
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    async def offload(self, source: EntrySource, topic: TopicName, uuid: str) -> OffloadResult:
        self.started.set()
        await self.release.wait()
        return await super().offload(source, topic, uuid)


async def test_trim_skips_a_ledger_mid_offload_and_deletes_objects_after(env: Env) -> None:
    gated = GatedOffloader(env)
    ledger = await env.open_ledger(gated)
    await produce(ledger, 25)
    first = ledger.ledgers[0].ledger_id
    offload = env.attach(ledger)
    offload.request_offload(0)
    await asyncio.wait_for(gated.started.wait(), 5)
    # Every cursor is past everything: still, the ledger being offloaded stays.
    assert await ledger.trim(ledger.end_position()) == 0
    assert ledger.ledgers[0].ledger_id == first and first in env.bookie.entries
    gated.release.set()
    await wait_until_idle(offload)
    assert len(objects_on_disk(env)) == 4
    assert await ledger.trim(ledger.end_position()) == 2
    assert objects_on_disk(env) == []  # the trimmed ledgers' objects went with them
    assert first not in env.bookie.entries
    await gated.close()


async def test_object_store_failure_keeps_everything_and_is_retried(env: Env) -> None:
    blocker = env.tmp_path / "offload"
    blocker.write_bytes(b"")  # a file where the directory should be: every upload fails
    ledger = await env.open_ledger()
    await produce(ledger, 25)
    before = await read_everything(ledger)
    env.policy = OffloadPolicy(-1, 0)
    offload = env.attach(ledger)
    offload.request_offload(0)
    await wait_until_idle(offload)
    status = offload.status()
    assert status.status == STATUS_ERROR and status.error
    assert status.offloaded_ledgers == 0
    assert all(i.ledger_id in env.bookie.entries for i in ledger.ledgers[:2])
    assert await read_everything(ledger) == before  # the topic keeps working
    await produce(ledger, 3, start=25)

    blocker.unlink()  # the object store is back
    for _ in range(100):
        offload.on_housekeeping()  # retries the failed manual request after its backoff
        await wait_until_idle(offload)
        if offload.status().status == STATUS_SUCCESS:
            break
        await asyncio.sleep(0.01)
    status = offload.status()
    assert status.status == STATUS_SUCCESS, status
    assert status.bookie_deleted_ledgers == 2
    assert (await read_everything(ledger))[:25] == before


async def test_reads_wait_for_object_storage_and_never_return_wrong_data(env: Env) -> None:
    ledger = await env.open_ledger()
    await produce(ledger, 25)
    before = await read_everything(ledger)
    env.policy = OffloadPolicy(-1, 0)
    offload = env.attach(ledger)
    offload.request_offload(0)
    await wait_until_idle(offload)
    assert offload.status().bookie_deleted_ledgers == 2
    await ledger.close()

    root = env.tmp_path / "offload"
    moved = env.tmp_path / "offload-away"
    root.rename(moved)  # object storage unreachable
    reopened = await env.open_ledger()
    with pytest.raises(ObjectNotFoundError):
        await reopened.read_entries(reopened.first_position(), 5)
    moved.rename(root)
    assert await read_everything(reopened) == before

    # A damaged object is reported, never served.
    context = reopened.ledgers[0].offload
    assert context is not None
    data_key = context.data_key
    path = root / data_key
    damaged = bytearray(path.read_bytes())
    damaged[40] ^= 0xFF
    path.write_bytes(bytes(damaged))
    await reopened.close()
    env.offloader.cache.invalidate(data_key)
    again = await env.open_ledger()
    with pytest.raises(TieredError) as corrupt:
        await again.read_entries(again.first_position(), 5)
    status = to_status(corrupt.value)
    assert status is not None and status[0].name == "DATA_LOSS"


async def test_automatic_offload_by_threshold_after_rollover(env: Env) -> None:
    ledger = await env.open_ledger()
    entry_size = len(stored(0))
    env.policy = OffloadPolicy(
        threshold_bytes=3 * ENTRIES_PER_LEDGER * entry_size, deletion_lag_ms=0
    )
    offload = env.attach(ledger)
    await produce(ledger, 75)  # 7 closed ledgers and an open one; rollovers trigger passes
    for _ in range(200):
        await wait_until_idle(offload)
        resident = offload.status().bookie_resident_bytes
        if offload.status().bookie_deleted_ledgers >= 4:
            break
        offload.on_housekeeping()
        await asyncio.sleep(0.01)
    status = offload.status()
    assert status.trigger == "automatic" and status.status == STATUS_SUCCESS
    deleted = [i.ledger_id for i in ledger.ledgers if i.offload and i.offload.bookie_deleted]
    # The oldest went first, and what stays on bookies is about the threshold.
    assert deleted == [i.ledger_id for i in ledger.ledgers[: len(deleted)]]
    assert resident <= env.policy.threshold_bytes + ENTRIES_PER_LEDGER * 800


async def test_delete_topic_deletes_its_objects(env: Env) -> None:
    ledger = await env.open_ledger()
    await produce(ledger, 25)
    offload = env.attach(ledger)
    offload.request_offload(0)
    await wait_until_idle(offload)
    assert len(objects_on_disk(env)) == 4
    env.ledgers.remove(ledger)
    await ledger.delete()
    assert objects_on_disk(env) == []
    assert not offload.running


async def test_close_cancels_the_offload_task(env: Env) -> None:
    gated = GatedOffloader(env)
    ledger = await env.open_ledger(gated)
    await produce(ledger, 25)
    offload = env.attach(ledger)
    offload.request_offload(0)
    await asyncio.wait_for(gated.started.wait(), 5)
    assert offload.running
    env.ledgers.remove(ledger)
    await ledger.close()
    assert not offload.running
    # The attempt stays IN_PROGRESS in the list; nothing was deleted from the bookies.
    infos = await env.stored_infos()
    assert infos[0]["offload"]["state"] == OFFLOAD_IN_PROGRESS
    assert infos[0]["ledger_id"] in env.bookie.entries
    await gated.close()


async def test_sweep_never_deletes_completed_offloads(env: Env) -> None:
    ledger = await env.open_ledger()
    await produce(ledger, 25)
    offload = env.attach(ledger)
    offload.request_offload(0)
    await wait_until_idle(offload)
    kept = objects_on_disk(env)
    listed = await env.offloader.list_objects(TOPIC)
    assert {o.info.key for o in listed} == set(kept)
    offload._sweep_due_ms = 0
    offload.on_housekeeping()
    await wait_until_idle(offload)
    assert objects_on_disk(env) == kept
    assert ObjectInfo(kept[0]) != ObjectInfo(kept[0], upload_id="x")
