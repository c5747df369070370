"""The ``Offloader`` contract, run against both drivers: S3 (moto's ``mock_aws``) and a local
directory. Offload, verify, read back any range, cache and read-ahead, delete, failures."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from bookie.errors import BookieUnavailableError, NoSuchEntryError
from strata.naming import TopicName
from tests.unit.tiered.support import MemoryLedger, make_offloader, random_payloads
from tiered.config import MIB
from tiered.errors import ObjectNotFoundError, OffloadCorruptError
from tiered.offloader import BlockOffloader

DRIVERS = ["s3", "filesystem"]
TOPIC = TopicName.parse("persistent://acme/orders/t-1")
UUID_A = "a" * 32
UUID_B = "b" * 32


@pytest.fixture(params=DRIVERS)
def driver(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def read_all(
    offloader: BlockOffloader, data_key: str, index_key: str, crc: int
) -> list[bytes]:
    ledger = await offloader.open_ledger(data_key, index_key, crc)
    try:
        result: list[bytes] = []
        next_id = 0
        while next_id <= ledger.last_entry_id:
            entries = await ledger.read(next_id, ledger.last_entry_id, 300 * 1024)
            assert entries and entries[0].entry_id == next_id
            result.extend(e.payload for e in entries)
            next_id = entries[-1].entry_id + 1
        return result
    finally:
        await ledger.close()


async def test_small_ledger_round_trip_with_keys(driver: str, tmp_path: Path) -> None:
    payloads = random_payloads(300, 2000)
    async with make_offloader(driver, tmp_path) as offloader:
        result = await offloader.offload(MemoryLedger(5, payloads), TOPIC, UUID_A)
        assert result.keys.data_key == f"cluster-a/offload/acme/orders/t-1/5-{UUID_A}"
        assert result.keys.index_key == result.keys.data_key + "-index"
        assert result.entry_count == 300 and result.block_count > 1
        await offloader.verify(result)
        listed = await offloader.list_objects(TOPIC)
        assert sorted(o.info.key for o in listed) == [
            result.keys.data_key,
            result.keys.index_key,
        ]
        assert all(o.name is not None and o.name.ledger_id == 5 for o in listed)
        got = await read_all(
            offloader, result.keys.data_key, result.keys.index_key, result.index_crc32c
        )
        assert got == payloads


async def test_large_ledger_is_a_multipart_upload(driver: str, tmp_path: Path) -> None:
    # 13 MiB with 5 MiB parts: three parts, two of them in flight at once.
    payloads = random_payloads(200, 130 * 1024, seed=2)
    total = sum(len(p) for p in payloads)
    assert total > 11 * MIB
    async with make_offloader(driver, tmp_path) as offloader:
        result = await offloader.offload(MemoryLedger(9, payloads), TOPIC, UUID_A)
        assert result.data_length > total
        await offloader.verify(result)
        assert await offloader.store.size(result.keys.data_key) == result.data_length
        got = await read_all(
            offloader, result.keys.data_key, result.keys.index_key, result.index_crc32c
        )
        assert got == payloads


async def test_any_range_reads_exactly_those_entries(driver: str, tmp_path: Path) -> None:
    payloads = random_payloads(500, 1500, seed=3)
    rng = random.Random(4)
    async with make_offloader(driver, tmp_path) as offloader:
        result = await offloader.offload(MemoryLedger(1, payloads), TOPIC, UUID_A)
        ledger = await offloader.open_ledger(
            result.keys.data_key, result.keys.index_key, result.index_crc32c
        )
        try:
            for _ in range(60):
                first = rng.randrange(len(payloads))
                last = rng.randrange(first, len(payloads) + 20)
                max_bytes = rng.choice([0, 1, 5000, 100_000])
                entries = await ledger.read(first, last, max_bytes)
                assert entries, (first, last, max_bytes)
                ids = [e.entry_id for e in entries]
                assert ids == list(range(first, first + len(entries)))
                assert ids[-1] <= min(last, len(payloads) - 1)
                assert [e.payload for e in entries] == payloads[first : ids[-1] + 1]
                if max_bytes == 0:
                    assert ids[-1] == min(last, len(payloads) - 1)
            with pytest.raises(NoSuchEntryError):
                await ledger.read(len(payloads), len(payloads) + 1)
        finally:
            await ledger.close()


async def test_block_cache_and_read_ahead(driver: str, tmp_path: Path) -> None:
    payloads = random_payloads(400, 4000, seed=5)  # about 800 KiB: many 64 KiB blocks
    async with make_offloader(driver, tmp_path, block_cache_size_bytes=4 * MIB) as offloader:
        result = await offloader.offload(MemoryLedger(3, payloads), TOPIC, UUID_A)
        ledger = await offloader.open_ledger(
            result.keys.data_key, result.keys.index_key, result.index_crc32c
        )
        try:
            windows = len(list(ledger.index.windows(0, offloader.config.read_window_bytes)))
            got: list[bytes] = []
            next_id = 0
            while next_id < len(payloads):
                entries = await ledger.read(next_id, next_id + 9)  # small sequential reads
                got.extend(e.payload for e in entries)
                next_id = entries[-1].entry_id + 1
            assert got == payloads
            # One ranged GET per window: the read-ahead fetched each before it was needed,
            # and no block was fetched twice.
            assert ledger.fetches == windows
            cache = offloader.cache
            assert cache.hits > 0
            fetches = ledger.fetches
            again = await ledger.read(0, len(payloads) - 1)
            assert [e.payload for e in again] == payloads
            assert ledger.fetches == fetches  # all from the cache
        finally:
            await ledger.close()


async def test_block_cache_is_bounded(driver: str, tmp_path: Path) -> None:
    payloads = random_payloads(300, 8000, seed=6)  # about 1.2 MiB
    async with make_offloader(driver, tmp_path, block_cache_size_bytes=200 * 1024) as offloader:
        result = await offloader.offload(MemoryLedger(3, payloads), TOPIC, UUID_A)
        got = await read_all(
            offloader, result.keys.data_key, result.keys.index_key, result.index_crc32c
        )
        assert got == payloads
        assert 0 < offloader.cache.size_bytes <= 200 * 1024


async def test_entry_larger_than_a_block(driver: str, tmp_path: Path) -> None:
    payloads = [b"s", bytes(range(256)) * 1024, b"", b"t" * 70_000, b"u"]
    async with make_offloader(driver, tmp_path) as offloader:
        result = await offloader.offload(MemoryLedger(8, payloads), TOPIC, UUID_A)
        await offloader.verify(result)
        got = await read_all(
            offloader, result.keys.data_key, result.keys.index_key, result.index_crc32c
        )
        assert got == payloads


async def test_corrupt_objects_are_detected_never_served(driver: str, tmp_path: Path) -> None:
    payloads = random_payloads(200, 3000, seed=7)
    async with make_offloader(driver, tmp_path) as offloader:
        result = await offloader.offload(MemoryLedger(2, payloads), TOPIC, UUID_A)
        keys = result.keys
        data = bytearray(await offloader.store.get(keys.data_key))
        data[len(data) // 2] ^= 0x01
        await offloader.store.put(keys.data_key, bytes(data))
        with pytest.raises(OffloadCorruptError):
            await offloader.verify(result)
        ledger = await offloader.open_ledger(keys.data_key, keys.index_key, result.index_crc32c)
        try:
            bad_block = next(
                b for b in ledger.index.blocks if b.offset <= len(data) // 2 < b.offset + b.length
            )
            with pytest.raises(OffloadCorruptError):
                await ledger.read(bad_block.first_entry_id, bad_block.last_entry_id)
        finally:
            await ledger.close()
        # A different index than the one recorded is refused at open.
        with pytest.raises(OffloadCorruptError):
            await offloader.open_ledger(keys.data_key, keys.index_key, result.index_crc32c ^ 1)
        # A truncated data object fails verification.
        await offloader.store.put(keys.data_key, bytes(data[:-10]))
        with pytest.raises(OffloadCorruptError):
            await offloader.verify(result)


async def test_delete_and_missing_objects(driver: str, tmp_path: Path) -> None:
    async with make_offloader(driver, tmp_path) as offloader:
        first = await offloader.offload(MemoryLedger(4, [b"x"] * 10), TOPIC, UUID_A)
        second = await offloader.offload(MemoryLedger(4, [b"y"] * 10), TOPIC, UUID_B)
        await offloader.delete(first.keys)
        await offloader.delete(first.keys)  # deleting again is not an error
        keys = sorted(o.info.key for o in await offloader.list_objects(TOPIC))
        assert keys == [second.keys.data_key, second.keys.index_key]
        with pytest.raises(ObjectNotFoundError):
            await offloader.open_ledger(first.keys.data_key, first.keys.index_key, 0)


async def test_failed_upload_leaves_no_index_and_no_upload(driver: str, tmp_path: Path) -> None:
    payloads = random_payloads(200, 130 * 1024, seed=8)  # multipart
    async with make_offloader(driver, tmp_path) as offloader:
        source = MemoryLedger(6, payloads, fail_after=120)
        with pytest.raises(BookieUnavailableError):
            await offloader.offload(source, TOPIC, UUID_A)
        # The failed multipart upload was aborted: nothing is listed, not even a partial one.
        assert await offloader.list_objects(TOPIC) == []


async def test_only_closed_non_empty_ledgers(driver: str, tmp_path: Path) -> None:
    async with make_offloader(driver, tmp_path) as offloader:
        with pytest.raises(ValueError):
            await offloader.offload(MemoryLedger(1, []), TOPIC, UUID_A)
