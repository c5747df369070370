"""Overlapping fdatasyncs in the journal: a batch written while one runs starts its own, at
most MAX_SYNCS_IN_FLIGHT run at once, batches complete in journal order, writes stay in journal
order, and a failed fdatasync or write fails everything not yet durable.

The fdatasync is replaced by one that waits for the test to release it, so the order in which
calls return is the test's choice; the data itself is still written to a real segment file.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bookie.errors import BookieIOError
from bookie.storage.journal import Journal, PendingRecord
from bookie.storage.record import ENTRY, SEGMENT_HEADER_SIZE, RecordHeader, scan_records
from bookie.storage.segment_writer import Chunk
from bookie.storage.sync_slots import MAX_SYNCS_IN_FLIGHT
from tests.unit.bookie.fake_bookies import wait_until

WAIT_S = 5.0


class HeldSyncs:
    """fdatasync calls that block until released, one by one, in any order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: list[threading.Event] = []
        self.failures: set[int] = set()
        self.holding = True

    def __call__(self, fd: int) -> None:
        release = threading.Event()
        if not self.holding:
            release.set()
        with self._lock:
            number = len(self.calls)
            self.calls.append(release)
        if not release.wait(WAIT_S):
            raise TimeoutError(f"fdatasync {number} was never released")
        if number in self.failures:
            raise OSError(5, "Input/output error (injected)")

    async def wait_for_calls(self, count: int) -> None:
        await wait_until(lambda: len(self.calls) >= count, WAIT_S)

    def release(self, number: int) -> None:
        self.calls[number].set()


@pytest.fixture
async def journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Journal, HeldSyncs, list[int]]]:
    syncs = HeldSyncs()
    durable: list[int] = []

    def on_durable(records: list[PendingRecord]) -> None:
        durable.extend(record.entry_id for record in records)

    opened = Journal(
        tmp_path,
        1,
        segment_size_bytes=1 << 20,
        group_commit_max_bytes=1 << 20,
        fsync=True,
        on_durable=on_durable,
    )
    await opened.start()
    # Only the batches' fdatasyncs are held: the segment was created with the real one.
    monkeypatch.setattr("bookie.storage.sync_slots.os.fdatasync", syncs)
    try:
        yield opened, syncs, durable
    finally:
        for release in syncs.calls:
            release.set()
        monkeypatch.undo()
        await opened.close()


async def _append(journal: Journal, entry_id: int) -> asyncio.Future[None]:
    record = journal.append_nowait(ENTRY, 1, entry_id, entry_id - 1, b"entry %d" % entry_id)
    assert record.future is not None
    return record.future


async def test_a_batch_written_during_a_sync_starts_its_own(
    journal: tuple[Journal, HeldSyncs, list[int]],
) -> None:
    writer, syncs, durable = journal
    first = await _append(writer, 0)
    await syncs.wait_for_calls(1)
    second = await _append(writer, 1)
    # The first fdatasync is still running; the second batch does not queue behind it.
    await syncs.wait_for_calls(2)
    # The second returns first: it started after both batches were written, so both are
    # durable, and they complete in journal order.
    syncs.release(1)
    async with asyncio.timeout(WAIT_S):
        await asyncio.gather(first, second)
    assert durable == [0, 1]
    assert writer.durable_offset > 0
    syncs.release(0)
    await writer.drain()
    assert durable == [0, 1]


async def test_at_most_the_limit_in_flight_and_the_rest_share_the_next(
    journal: tuple[Journal, HeldSyncs, list[int]],
) -> None:
    writer, syncs, durable = journal
    futures = [await _append(writer, 0)]
    await syncs.wait_for_calls(1)
    futures.append(await _append(writer, 1))
    await syncs.wait_for_calls(MAX_SYNCS_IN_FLIGHT)
    # Written while both are busy: no third fdatasync yet...
    for entry_id in range(2, 6):
        futures.append(await _append(writer, entry_id))
        await asyncio.sleep(0.01)
    assert len(syncs.calls) == MAX_SYNCS_IN_FLIGHT
    assert durable == []
    # Bounded: they wait in the buffer (group_commit_max_bytes), not as written batches.
    assert len(writer._slots.unsynced) <= MAX_SYNCS_IN_FLIGHT
    # ...until one returns: then one write and one more fdatasync cover all four.
    syncs.release(0)
    await syncs.wait_for_calls(MAX_SYNCS_IN_FLIGHT + 1)
    assert durable == [0]
    syncs.release(2)
    async with asyncio.timeout(WAIT_S):
        await asyncio.gather(*futures)
    assert durable == list(range(6))
    assert len(syncs.calls) == MAX_SYNCS_IN_FLIGHT + 1


async def test_a_failed_sync_fails_everything_not_yet_durable(
    journal: tuple[Journal, HeldSyncs, list[int]],
) -> None:
    writer, syncs, durable = journal
    syncs.failures.add(1)
    first = await _append(writer, 0)
    await syncs.wait_for_calls(1)
    second = await _append(writer, 1)
    await syncs.wait_for_calls(2)
    third = await _append(writer, 2)
    syncs.release(1)  # fails: batches 0-2 are not known durable
    for future in (first, second, third):
        with pytest.raises(BookieIOError, match="fdatasync failed"):
            await asyncio.wait_for(future, WAIT_S)
    assert durable == []
    with pytest.raises(BookieIOError):
        await _append(writer, 3)
    # The first fdatasync returning later changes nothing.
    syncs.release(0)
    await asyncio.sleep(0.05)
    assert durable == []


async def test_close_waits_for_syncs_in_flight(
    journal: tuple[Journal, HeldSyncs, list[int]], tmp_path: Path
) -> None:
    writer, syncs, durable = journal
    first = await _append(writer, 0)
    await syncs.wait_for_calls(1)
    closing = asyncio.create_task(writer.close())
    await asyncio.sleep(0.05)
    assert not closing.done()  # the file stays open under the running fdatasync
    syncs.holding = False  # close's own fdatasync of the file returns at once
    syncs.release(0)
    async with asyncio.timeout(WAIT_S):
        await closing
        await first
    assert durable == [0]
    (segment,) = os.listdir(tmp_path)
    assert (tmp_path / segment).stat().st_size > 0


def _entries_on_disk(directory: Path) -> list[int]:
    """Entry ids of the intact records in the journal's segments, in file order."""
    found: list[int] = []
    for name in sorted(os.listdir(directory)):
        data = (directory / name).read_bytes()
        for item in scan_records(data, SEGMENT_HEADER_SIZE, len(data), last_segment=True):
            if isinstance(item, RecordHeader):
                found.append(item.entry_id)
    return found


async def test_writes_stay_in_journal_order_when_an_earlier_write_is_slow(
    journal: tuple[Journal, HeldSyncs, list[int]], tmp_path: Path
) -> None:
    """Each group commit is written and synced by its own job in a slot thread; a later job
    never writes before the earlier one has (it waits its turn), so the file holds the
    records in journal order and a later fdatasync covers every earlier batch."""
    writer, syncs, durable = journal
    write_batch = writer._segments.write_batch
    first_may_write = threading.Event()
    writes: list[int] = []

    def slow_first_write(chunks: list[Chunk]) -> None:
        if not writes:
            assert first_may_write.wait(WAIT_S)
        writes.append(len(writes))
        write_batch(chunks)

    writer._segments.write_batch = slow_first_write  # type: ignore[method-assign]
    syncs.holding = False
    first = await _append(writer, 0)
    await asyncio.sleep(0.05)  # the first job is now blocked in its write
    second = await _append(writer, 1)  # taken by the second slot at once
    await asyncio.sleep(0.1)
    assert writes == [] and len(syncs.calls) == 0  # the second waits for the first's write
    first_may_write.set()
    async with asyncio.timeout(WAIT_S):
        await asyncio.gather(first, second)
    assert durable == [0, 1]
    assert _entries_on_disk(tmp_path) == [0, 1]


async def test_a_failed_write_fails_everything_and_nothing_is_written_after_it(
    journal: tuple[Journal, HeldSyncs, list[int]], tmp_path: Path
) -> None:
    writer, syncs, durable = journal
    write_batch = writer._segments.write_batch
    calls: list[int] = []

    def failing_second_write(chunks: list[Chunk]) -> None:
        calls.append(len(calls))
        if len(calls) == 2:
            raise OSError(28, "No space left on device (injected)")
        write_batch(chunks)

    writer._segments.write_batch = failing_second_write  # type: ignore[method-assign]
    first = await _append(writer, 0)
    await syncs.wait_for_calls(1)  # the first batch is written, its fdatasync held
    second = await _append(writer, 1)
    for future in (first, second):
        with pytest.raises(BookieIOError, match=r"journal write failed: .*No space left"):
            await asyncio.wait_for(future, WAIT_S)
    # The first batch's fdatasync returning now changes nothing: the journal failed for good.
    syncs.release(0)
    await asyncio.sleep(0.05)
    assert durable == []
    with pytest.raises(BookieIOError):
        await _append(writer, 2)
    assert calls == [0, 1]
    assert _entries_on_disk(tmp_path) == [0]
