"""Fencing and recovery over fake bookies: BK #2614 (lost fence), #2908 (corruption is not
absence), #1067 (a hung bookie), two writers, recovery confined to the last fragment."""

from __future__ import annotations

import asyncio
import time

import pytest

from bookie.errors import BookieIOError
from bookie.ledger import (
    STATE_CLOSED,
    STATE_IN_RECOVERY,
    LedgerClientConfig,
    LedgerClosedError,
    LedgerHandle,
    LedgerMetadataConflictError,
    LedgerRecoveryError,
)
from tests.unit.bookie.fake_bookies import (
    FAST_CONFIG,
    ledger_env,
    payload,
    read_all,
    wait_until,
)

# The old writer of these tests is patient: its adds stay in flight while a recovery runs.
PATIENT_WRITER = LedgerClientConfig(add_entry_timeout_ms=10_000, read_timeout_ms=10_000)


async def add_sequentially(handle: LedgerHandle, first: int, last: int) -> None:
    for entry_id in range(first, last + 1):
        assert await handle.add_entry(payload(entry_id)) == entry_id


def track_acks(futures: list[asyncio.Future[int]]) -> list[tuple[int, float]]:
    """(entry id, time) of every successful acknowledgement, as it happens."""
    acks: list[tuple[int, float]] = []

    def record(future: asyncio.Future[int]) -> None:
        if not future.cancelled() and future.exception() is None:
            acks.append((future.result(), time.monotonic()))

    for future in futures:
        future.add_done_callback(record)
    return acks


async def test_bk2614_lost_fence_and_the_old_writer_retrying_gets_no_ack() -> None:
    async with ledger_env(3, writer_config=PATIENT_WRITER) as env:
        old = await env.create(3, 3, 2)
        await add_sequentially(old, 0, 2)
        a, b, c = env.bookies_of(old)
        # Entry 3 reaches a only: one ack short of Qa. Its adds to b and c are still on the
        # way (the old writer's retries, arriving late).
        b_gate = b.hold("add", entry_id=3)
        c_gate = c.hold("add", entry_id=3)
        late = old.add_entry(payload(3))
        acks = track_acks([late])
        await wait_until(lambda: a.has_entry(old.ledger_id, 3))
        # The new owner: the fence to c is lost, and a (which has entry 3) is slow to answer
        # reads. The "no" answers must come from fenced bookies only.
        c.drop("fence")
        a_reads = a.hold("read")
        recovered = await env.other.open_and_recover(old.ledger_id)
        assert c.is_fenced(old.ledger_id), "c is fenced again before its answer counts"
        assert c.count_calls("fence") == 2
        assert recovered.state == STATE_CLOSED and recovered.last_entry_id == 2
        # The old writer's delayed adds now arrive: both bookies refuse them.
        b_gate.release()
        c_gate.release()
        with pytest.raises(LedgerClosedError) as caught:
            await late
        assert caught.value.fenced
        assert acks == []
        assert not c.has_entry(old.ledger_id, 3) and not b.has_entry(old.ledger_id, 3)
        entries = await read_all(env.other, recovered)
        assert [e.payload for e in entries] == [payload(i) for i in range(3)]
        a_reads.release()
        with pytest.raises(LedgerMetadataConflictError):
            await old.close()


async def test_bk2908_a_corrupt_record_fails_recovery_instead_of_truncating() -> None:
    async with ledger_env(3, writer_config=PATIENT_WRITER) as env:
        writer = await env.create(3, 3, 2)
        await add_sequentially(writer, 0, 2)
        a, b, c = env.bookies_of(writer)
        c_gate = c.hold("add", entry_id=3)  # the writer's add of entry 3 to c is slow
        # Entry 3 is acknowledged: a and b have it.
        assert await writer.add_entry(payload(3)) == 3
        a.corrupt(writer.ledger_id, 3)
        b.fail("read", times=None, error=BookieIOError("disk read failed"))
        with pytest.raises(LedgerRecoveryError, match="corrupt"):
            await env.other.open_and_recover(writer.ledger_id)
        stored = await env.other.read_metadata(writer.ledger_id)
        assert stored is not None and stored.state == STATE_IN_RECOVERY
        # Once b answers again, a retry finds entry 3 and writes it back everywhere.
        b.clear_faults()
        c_gate.release()  # the writer's slow add reaches c now: c is fenced and refuses it
        recovered = await env.other.open_and_recover(writer.ledger_id)
        assert recovered.state == STATE_CLOSED and recovered.last_entry_id == 3
        assert c.has_entry(writer.ledger_id, 3)
        a.clear_faults()
        entries = await read_all(env.other, recovered)
        assert [e.payload for e in entries] == [payload(i) for i in range(4)]


async def test_bk1067_one_hung_bookie_does_not_block_recovery() -> None:
    patient = LedgerClientConfig(
        fence_timeout_ms=5_000, read_timeout_ms=5_000, add_entry_timeout_ms=300
    )
    async with ledger_env(3, writer_config=PATIENT_WRITER, other_config=patient) as env:
        writer = await env.create(3, 3, 2)
        await add_sequentially(writer, 0, 4)
        hung = env.bookies_of(writer)[2]
        gates = [hung.hold(kind) for kind in ("fence", "read", "add", "lac")]
        started = time.monotonic()
        async with asyncio.timeout(2):
            recovered = await env.other.open_and_recover(writer.ledger_id)
        # Far less than one fence or read timeout (5 s): neither the fences nor the reads
        # waited for the hung bookie. Entry 4 (past the piggybacked LAC 3) is written back:
        # the hung bookie's add times out (300 ms) and, with no spare bookie to replace it,
        # the recovery settles for Qa copies.
        assert time.monotonic() - started < 1.0
        assert recovered.state == STATE_CLOSED and recovered.last_entry_id == 4
        assert list(recovered.ensembles) == [0]
        assert hung.count_calls("fence") == 1
        for gate in gates:
            gate.release()


async def test_bk1067_a_hung_bookie_in_the_write_back_is_replaced() -> None:
    async with ledger_env(4, writer_config=PATIENT_WRITER) as env:
        writer = await env.create(3, 3, 2)
        await add_sequentially(writer, 0, 4)
        a, b, hung = env.bookies_of(writer)
        (spare,) = env.spares(writer)
        gates = [hung.hold(kind) for kind in ("fence", "read", "add")]
        # Entry 5 is acknowledged by a and b; the fences report LAC 4, so it is recovered.
        assert await writer.add_entry(payload(5)) == 5
        async with asyncio.timeout(3):
            recovered = await env.other.open_and_recover(writer.ledger_id)
        assert recovered.state == STATE_CLOSED and recovered.last_entry_id == 5
        # The write-back needs all Qw: the hung bookie timed out and was replaced.
        assert recovered.ensembles == {
            0: [a.address, b.address, hung.address],
            5: [a.address, b.address, spare.address],
        }
        assert spare.entry_ids(writer.ledger_id) == [5]
        entries = await read_all(env.other, recovered)
        assert [e.payload for e in entries] == [payload(i) for i in range(6)]
        for gate in gates:
            gate.release()


async def test_two_writers_the_fenced_one_gets_no_acknowledgement() -> None:
    async with ledger_env(3) as env:
        old = await env.create(3, 3, 2)
        await add_sequentially(old, 0, 4)
        recovered = await env.other.open_and_recover(old.ledger_id)
        assert recovered.last_entry_id == 4
        futures = [old.add_entry(payload(i)) for i in range(5, 10)]
        acks = track_acks(futures)
        results = await asyncio.gather(*futures, return_exceptions=True)
        assert acks == []
        assert all(isinstance(r, LedgerClosedError) and r.fenced for r in results), results
        with pytest.raises(LedgerMetadataConflictError):
            await old.close()
        # Recovering again (a third owner) changes nothing.
        assert await env.other.open_and_recover(old.ledger_id) == recovered


async def test_two_writers_racing_every_ack_is_in_the_recovered_ledger() -> None:
    async with ledger_env(5) as env:
        old = await env.create(3, 2, 2)
        futures: list[asyncio.Future[int]] = []
        acks: list[tuple[int, float]] = []

        def record(future: asyncio.Future[int]) -> None:
            if not future.cancelled() and future.exception() is None:
                acks.append((future.result(), time.monotonic()))

        async def keep_writing() -> None:
            for i in range(2_000):
                if old.failed:
                    return
                future = old.add_entry(payload(i))
                future.add_done_callback(record)
                futures.append(future)
                if i % 5 == 0:
                    await asyncio.sleep(0)

        writing = asyncio.get_running_loop().create_task(keep_writing())
        await wait_until(lambda: len(acks) >= 20)
        recovered = await env.other.open_and_recover(old.ledger_id)
        finished_at = time.monotonic()
        await writing
        results = await asyncio.gather(*futures, return_exceptions=True)
        assert any(isinstance(r, LedgerClosedError) and r.fenced for r in results)
        assert acks, "the old writer got some acknowledgements before the recovery"
        assert all(at <= finished_at for _, at in acks), "an ack after the recovery ended"
        assert max(entry for entry, _ in acks) <= recovered.last_entry_id
        entries = await read_all(env.other, recovered)
        assert [e.payload for e in entries] == [payload(i) for i in range(len(entries))]


async def test_recovery_stays_inside_the_last_fragment() -> None:
    async with ledger_env(4, writer_config=PATIENT_WRITER) as env:
        writer = await env.create(3, 3, 2)
        await add_sequentially(writer, 0, 4)
        victim = env.bookies_of(writer)[1]
        victim.fail("add", entry_id=5)
        # The change starts a fragment at 5 (or 6), then the writer stops before writing more.
        await writer.add_entry(payload(5))
        await wait_until(lambda: writer.ensemble_changes == 1)
        first = writer.metadata.last_fragment_first
        await writer.abort()
        calls_before = {b.address: len(b.calls) for b in env.cluster.bookies}
        recovered = await env.other.open_and_recover(writer.ledger_id)
        assert recovered.state == STATE_CLOSED and recovered.last_entry_id == 5
        assert recovered.length_bytes == sum(len(payload(i)) for i in range(6))
        for bookie in env.cluster.bookies:
            new_calls = bookie.calls[calls_before[bookie.address] :]
            # No recovery write, and no fence, below the last fragment.
            assert all(e is None or e >= first for k, _, e in new_calls if k == "add")
            assert ("fence", writer.ledger_id, None) not in new_calls or bookie.address in (
                recovered.ensembles[first]
            )


async def test_recovery_without_a_fence_quorum_fails_and_can_be_retried() -> None:
    async with ledger_env(3) as env:
        writer = await env.create(3, 3, 2)
        await add_sequentially(writer, 0, 2)
        _, b, c = env.bookies_of(writer)
        b.down()
        c.fail("fence", times=FAST_CONFIG.max_fence_attempts)
        with pytest.raises(LedgerRecoveryError, match="could not fence enough bookies"):
            await env.other.open_and_recover(writer.ledger_id)
        b.up()
        recovered = await env.other.open_and_recover(writer.ledger_id)
        assert recovered.last_entry_id == 2
