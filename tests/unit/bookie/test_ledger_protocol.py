"""The ledger writer and readers over fake bookies: striping, quorum completion in order,
ensemble changes (on error, on timeout, several at once, none possible), BK #1591 and #4651,
the merge rule, and ``replace_bookie``."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest

from bookie.api import LedgerEntry
from bookie.errors import BookieIOError, NoSuchEntryError
from bookie.ledger import (
    STATE_CLOSED,
    STATE_OPEN,
    LedgerClientConfig,
    LedgerClientError,
    LedgerClosedError,
    LedgerHandle,
    LedgerMetadata,
    LedgerReader,
    NotEnoughBookiesError,
    ledger_fragments,
)
from bookie.ledger.metadata import slot_stores_entry
from tests.unit.bookie.fake_bookies import (
    FAST_CONFIG,
    LedgerEnv,
    copies_in_write_set,
    ledger_env,
    payload,
    read_all,
    wait_until,
)


async def add_sequentially(handle: LedgerHandle, first: int, last: int) -> None:
    for entry_id in range(first, last + 1):
        assert await handle.add_entry(payload(entry_id)) == entry_id


def assert_every_entry_on_ack_quorum(env: LedgerEnv, metadata: LedgerMetadata) -> None:
    """The metadata matches what the bookies hold: each entry has Qa copies in its write set."""
    for entry_id in range(metadata.last_entry_id + 1):
        copies = copies_in_write_set(env.cluster, metadata, entry_id, payload(entry_id))
        assert copies >= metadata.ack_quorum, (entry_id, metadata.write_set(entry_id))


async def assert_reads_everything(env: LedgerEnv, metadata: LedgerMetadata) -> None:
    entries = await read_all(env.other, metadata)
    assert [e.entry_id for e in entries] == list(range(metadata.last_entry_id + 1))
    assert [e.payload for e in entries] == [payload(e.entry_id) for e in entries]


# ---- writes and reads --------------------------------------------------------------------


async def test_single_bookie_write_close_read_and_recover() -> None:
    async with ledger_env(1) as env:
        handle = await env.create(1, 1, 1)
        await add_sequentially(handle, 0, 4)
        assert handle.last_add_confirmed == 4
        closed = await handle.close()
        assert (closed.state, closed.last_entry_id) == (STATE_CLOSED, 4)
        assert closed.length_bytes == sum(len(payload(i)) for i in range(5))
        await assert_reads_everything(env, closed)
        assert await env.other.open_and_recover(handle.ledger_id) == closed

        second = await env.create(1, 1, 1)
        await add_sequentially(second, 0, 2)
        recovered = await env.other.open_and_recover(second.ledger_id)
        assert (recovered.state, recovered.last_entry_id) == (STATE_CLOSED, 2)
        assert recovered.length_bytes == sum(len(payload(i)) for i in range(3))
        await assert_reads_everything(env, recovered)


async def test_three_three_two_every_bookie_holds_every_entry_with_lac_piggybacked() -> None:
    async with ledger_env(3) as env:
        handle = await env.create(3, 3, 2)
        await add_sequentially(handle, 0, 9)
        closed = await handle.close()
        for bookie in env.cluster.bookies:
            # close() lets the writes beyond Qa finish: every bookie has every entry.
            assert bookie.entry_ids(handle.ledger_id) == list(range(10))
            stored = bookie.ledgers[handle.ledger_id].entries
            # Sequential adds: each carries the LAC of the entry before it.
            assert [stored[e][0] for e in range(10)] == [e - 1 for e in range(10)]
        await assert_reads_everything(env, closed)


async def test_four_three_two_striping_places_each_entry_on_its_write_set() -> None:
    async with ledger_env(4) as env:
        handle = await env.create(4, 3, 2)
        futures = [handle.add_entry(payload(i)) for i in range(20)]
        assert await asyncio.gather(*futures) == list(range(20))
        closed = await handle.close()
        ensemble = closed.ensembles[0]
        for slot, address in enumerate(ensemble):
            bookie = env.cluster.bookie(address)
            expected = [e for e in range(20) if slot_stores_entry(slot, e, 4, 3)]
            assert bookie.entry_ids(closed.ledger_id) == expected
        # E=4, Qw=3: e0 → slots 0,1,2; e1 → 1,2,3; e2 → 2,3,0 (pulsar-bookkeeper.md §1.2).
        assert closed.write_set(2) == [ensemble[2], ensemble[3], ensemble[0]]
        await assert_reads_everything(env, closed)
        # A striped read returns the run the answering bookie holds, never a gap.
        first_run = await LedgerReader(env.other, closed).read(0, 19)
        assert [e.entry_id for e in first_run] == list(range(len(first_run)))
        # With one bookie down every entry is still readable from its write set.
        env.cluster.bookie(ensemble[0]).down()
        await assert_reads_everything(env, closed)


async def test_completions_are_strictly_in_entry_order() -> None:
    async with ledger_env(3) as env:
        handle = await env.create(3, 3, 2)
        bookies = env.bookies_of(handle)
        # Entry 0 is slow on two bookies: entries 1..4 reach Qa first but must wait for it.
        gates = [b.hold("add", entry_id=0) for b in bookies[:2]]
        order: list[int] = []
        futures = [handle.add_entry(payload(i)) for i in range(5)]
        for future in futures:
            future.add_done_callback(lambda f: order.append(f.result()))
        await wait_until(lambda: all(bookies[2].has_entry(handle.ledger_id, e) for e in range(5)))
        await asyncio.sleep(0.01)
        assert order == [] and handle.last_add_confirmed == -1
        gates[0].release()
        await asyncio.gather(*futures)
        assert order == [0, 1, 2, 3, 4]
        assert handle.last_add_confirmed == 4
        gates[1].release()


async def test_reader_tries_the_other_bookies_and_never_returns_a_gap() -> None:
    async with ledger_env(3) as env:
        handle = await env.create(3, 3, 2)
        await add_sequentially(handle, 0, 5)
        closed = await handle.close()
        first, second, third = (env.cluster.bookie(a) for a in closed.write_set(0))
        first.wipe()  # answers NoSuchLedger
        second.fail("read", times=None, error=BookieIOError("disk"))
        entries = await LedgerReader(env.other, closed).read(0, 5)
        assert [e.entry_id for e in entries] == list(range(6))
        third.fail("read", times=None)
        with pytest.raises(BookieIOError):
            await LedgerReader(env.other, closed).read(0, 5)
        second.clear_faults()
        third.clear_faults()
        # A hung bookie costs one read timeout, then the next bookie answers.
        second.drop("read", times=None)
        started = time.monotonic()
        entries = await LedgerReader(env.other, closed).read(3, 5)
        assert [e.entry_id for e in entries] == [3, 4, 5]
        assert time.monotonic() - started < 1.0
        with pytest.raises(NoSuchEntryError):
            await LedgerReader(env.other, closed).read(6, 9)


async def test_reader_keeps_only_the_consecutive_run_a_bookie_returns() -> None:
    async with ledger_env(3) as env:
        handle = await env.create(3, 3, 2)
        await add_sequentially(handle, 0, 5)
        closed = await handle.close()
        first = env.cluster.bookie(closed.write_set(0)[0])
        real_read = first.read_entries

        async def gapped(
            ledger_id: int, first_entry_id: int, last_entry_id: int, max_bytes: int = 0
        ) -> list[LedgerEntry]:
            entries = await real_read(ledger_id, first_entry_id, last_entry_id, max_bytes)
            return [e for e in entries if e.entry_id != 2]

        async def empty(
            ledger_id: int, first_entry_id: int, last_entry_id: int, max_bytes: int = 0
        ) -> list[LedgerEntry]:
            return []

        first.read_entries = gapped  # type: ignore[method-assign]
        entries = await LedgerReader(env.other, closed).read(0, 5)
        assert [e.entry_id for e in entries] == [0, 1]
        first.read_entries = empty  # type: ignore[method-assign]
        entries = await LedgerReader(env.other, closed).read(0, 5)
        assert [e.entry_id for e in entries] == list(range(6))  # from the next bookie


# ---- ensemble changes --------------------------------------------------------------------


async def test_ensemble_change_on_error_records_the_new_fragment_at_lac_plus_one() -> None:
    async with ledger_env(4) as env:
        handle = await env.create(3, 3, 2)
        await add_sequentially(handle, 0, 1)
        old = handle.ensemble
        (spare,) = env.spares(handle)
        env.cluster.bookie(old[1]).down()
        await add_sequentially(handle, 2, 9)
        assert handle.ensemble_changes == 1
        stored = await env.other.read_metadata(handle.ledger_id)
        assert stored is not None and stored.state == STATE_OPEN
        # The fragment starts at the LAC + 1 of the moment the failure arrived: entry 2 may
        # have reached Qa on the two other bookies just before.
        first = max(stored.ensembles)
        assert first in (2, 3)
        assert stored.ensembles == {0: old, first: [old[0], spare.address, old[2]]}
        assert stored == handle.metadata
        assert spare.entry_ids(handle.ledger_id) == list(range(first, 10))
        closed = await handle.close()
        assert closed.last_entry_id == 9
        assert_every_entry_on_ack_quorum(env, closed)
        await assert_reads_everything(env, closed)


async def test_ensemble_change_on_timeout() -> None:
    async with ledger_env(4) as env:
        handle = await env.create(3, 3, 2)
        await add_sequentially(handle, 0, 2)
        old = handle.ensemble
        env.cluster.bookie(old[2]).drop("add", times=None)  # hangs: no error, no answer
        started = time.monotonic()
        await add_sequentially(handle, 3, 6)
        # Qa is met by the two others: the hung bookie delays nothing...
        assert time.monotonic() - started < 0.15
        # ...and is replaced once its add times out (200 ms).
        await wait_until(lambda: handle.ensemble_changes == 1)
        stored = await env.other.read_metadata(handle.ledger_id)
        # Entries 3..6 were confirmed before the timeout fired: the fragment starts after them.
        assert stored is not None and list(stored.ensembles) == [0, 7]
        assert old[2] not in stored.ensembles[7]
        closed = await handle.close()
        assert_every_entry_on_ack_quorum(env, closed)
        await assert_reads_everything(env, closed)


async def test_pipelined_adds_survive_an_ensemble_change_in_order() -> None:
    async with ledger_env(5) as env:
        handle = await env.create(3, 2, 2)
        order: list[int] = []
        futures = []
        for i in range(60):
            if i == 20:
                env.cluster.bookie(handle.ensemble[0]).down()
            future = handle.add_entry(payload(i))
            future.add_done_callback(lambda f: order.append(f.result()))
            futures.append(future)
            if i % 7 == 0:
                await asyncio.sleep(0)
        assert await asyncio.gather(*futures) == list(range(60))
        assert order == list(range(60))
        closed = await handle.close()
        assert len(closed.ensembles) >= 2
        assert_every_entry_on_ack_quorum(env, closed)
        await assert_reads_everything(env, closed)


async def test_several_bookies_failing_at_once_are_replaced() -> None:
    async with ledger_env(6) as env:
        handle = await env.create(3, 3, 2)
        await add_sequentially(handle, 0, 3)
        old = handle.ensemble
        env.cluster.bookie(old[0]).down()
        env.cluster.bookie(old[2]).fail("add", times=None)
        futures = [handle.add_entry(payload(i)) for i in range(4, 12)]
        assert await asyncio.gather(*futures) == list(range(4, 12))
        current = handle.ensemble
        assert old[0] not in current and old[2] not in current and old[1] in current
        closed = await handle.close()
        assert ledger_fragments(closed)[0] == (0, 3, old)
        assert_every_entry_on_ack_quorum(env, closed)
        await assert_reads_everything(env, closed)


async def test_no_replacement_bookie_fails_the_writer_with_a_clear_error() -> None:
    strict = dataclasses.replace(FAST_CONFIG, delay_ensemble_change=False)
    async with ledger_env(3, writer_config=strict) as env:
        handle = await env.create(3, 3, 2)
        await add_sequentially(handle, 0, 1)
        env.cluster.bookie(handle.ensemble[1]).down()
        async with asyncio.timeout(2):
            results = await asyncio.gather(
                *(handle.add_entry(payload(i)) for i in range(2, 5)), return_exceptions=True
            )
        # Entry 2 may reach Qa before the failure arrives; what follows it fails.
        error = results[-1]
        assert isinstance(error, LedgerClosedError), results
        assert isinstance(error.__cause__, NotEnoughBookiesError)
        assert "no bookie can replace" in str(error)
        assert handle.failed
        with pytest.raises(LedgerClosedError, match="no bookie can replace"):
            await handle.add_entry(payload(5))
        # The failed writer still closes the ledger at what it confirmed.
        closed = await handle.close()
        assert closed.state == STATE_CLOSED
        assert closed.last_entry_id == handle.last_add_confirmed in (1, 2)
        await assert_reads_everything(env, closed)


async def test_no_spare_bookie_the_writer_goes_on_at_the_ack_quorum() -> None:
    """BookKeeper's delayEnsembleChange (the default): 3 bookies at 3/3/2, one goes down.
    Its position is given up (no bookie can take it), every later entry is acknowledged by
    the two left, the ensemble in the metadata does not change, the down bookie is sent no
    more entries, and everything reads back and recovers."""
    async with ledger_env(3) as env:
        handle = await env.create(3, 3, 2)
        await add_sequentially(handle, 0, 2)
        ensemble = handle.ensemble
        down = env.cluster.bookie(ensemble[1])
        down.down()
        async with asyncio.timeout(5):
            assert await asyncio.gather(*(handle.add_entry(payload(i)) for i in range(3, 40))) == (
                list(range(3, 40))
            )
        assert not handle.failed and handle.ensemble == ensemble
        assert handle.ensemble_changes == 0
        # Once given up, the position is sent nothing: the adds issued after (40..59) never
        # reach the down bookie.
        async with asyncio.timeout(5):
            await asyncio.gather(*(handle.add_entry(payload(i)) for i in range(40, 60)))
        tried = [entry for kind, _, entry in down.calls if kind == "add"]
        assert max(e for e in tried if e is not None) < 40, tried
        assert down.entry_ids(handle.ledger_id) == [0, 1, 2]
        # A second bookie lost: no write set keeps Qa, the writer fails (nothing is acked
        # below the ack quorum).
        env.cluster.bookie(ensemble[2]).down()
        with pytest.raises(LedgerClosedError, match="no bookie can replace"):
            async with asyncio.timeout(5):
                await handle.add_entry(payload(60))
        closed = await handle.close()
        assert closed.last_entry_id == 59 and closed.ensembles == {0: ensemble}
        assert_every_entry_on_ack_quorum(env, closed)
        down.up()
        env.cluster.bookie(ensemble[2]).up()
        await assert_reads_everything(env, closed)


async def test_no_spare_bookie_a_recovery_finds_every_acknowledged_entry() -> None:
    """The writer went on at Qa without a bookie, then died: a new owner's recovery reads
    the down bookie's "no such entry" as one answer of two needed and keeps every entry."""
    async with ledger_env(3) as env:
        handle = await env.create(3, 3, 2)
        await add_sequentially(handle, 0, 1)
        down = env.cluster.bookie(handle.ensemble[0])
        down.down()
        async with asyncio.timeout(5):
            await asyncio.gather(*(handle.add_entry(payload(i)) for i in range(2, 20)))
        await handle.abort()  # the owner dies without closing
        down.up()  # the bookie is back, missing entries 2..19
        recovered = await env.other.open_and_recover(handle.ledger_id)
        assert recovered.last_entry_id == 19
        await assert_reads_everything(env, recovered)


async def test_too_many_pending_adds_are_refused() -> None:
    config = LedgerClientConfig(max_pending_adds=3, add_entry_timeout_ms=200)
    async with ledger_env(1, writer_config=config) as env:
        handle = await env.create(1, 1, 1)
        gate = env.cluster[0].hold("add")
        futures = [handle.add_entry(payload(i)) for i in range(3)]
        with pytest.raises(LedgerClosedError, match="too many pending adds"):
            await handle.add_entry(payload(3))
        gate.release()
        assert await asyncio.gather(*futures) == [0, 1, 2]


# ---- BK #1591: never acknowledge on an ensemble that is not in the metadata store ----------


async def test_bk1591_acks_wait_for_the_stalled_metadata_update() -> None:
    async with ledger_env(4) as env:
        handle = await env.create(3, 3, 2)
        await add_sequentially(handle, 0, 1)
        old = handle.ensemble
        (spare,) = env.spares(handle)
        gate = env.stalling.stall_puts()
        env.cluster.bookie(old[2]).fail("add", entry_id=2)
        future = handle.add_entry(payload(2))
        # Two bookies that stay in the ensemble acknowledge: Qa is reached, yet no ack.
        await wait_until(lambda: env.stalling.stalled == 1)
        await wait_until(
            lambda: all(env.cluster.bookie(a).has_entry(handle.ledger_id, 2) for a in old[:2])
        )
        await asyncio.sleep(0.05)
        assert not future.done()
        assert handle.last_add_confirmed == 1
        stored = await env.other.read_metadata(handle.ledger_id)
        assert stored is not None and list(stored.ensembles) == [0]
        gate.release()
        assert await future == 2
        stored = await env.other.read_metadata(handle.ledger_id)
        assert stored is not None and stored.ensembles[2] == [old[0], old[1], spare.address]
        # The acks of the two bookies that keep their places still count; the entry is
        # re-sent to the replacement all the same.
        await wait_until(lambda: spare.has_entry(handle.ledger_id, 2))
        closed = await handle.close()
        assert_every_entry_on_ack_quorum(env, closed)


async def test_bk1591_fenced_during_the_stall_so_the_entries_are_never_acked() -> None:
    async with ledger_env(4) as env:
        handle = await env.create(3, 3, 2)
        await add_sequentially(handle, 0, 1)
        old = handle.ensemble
        gate = env.stalling.stall_puts()
        env.cluster.bookie(old[2]).fail("add", entry_id=2)
        futures = [handle.add_entry(payload(i)) for i in range(2, 5)]
        await wait_until(lambda: env.stalling.stalled == 1)
        recovered = await env.other.open_and_recover(handle.ledger_id)
        assert recovered.state == STATE_CLOSED
        gate.release()
        results = await asyncio.gather(*futures, return_exceptions=True)
        assert all(isinstance(r, LedgerClosedError) and r.fenced for r in results), results
        # Everything the writer acknowledged is in the recovered ledger.
        assert recovered.last_entry_id >= 1
        entries = await read_all(env.other, recovered)
        assert [e.payload for e in entries] == [payload(i) for i in range(len(entries))]
        assert list(recovered.ensembles) == [0]
        with pytest.raises(LedgerClientError):
            await handle.close()


# ---- BK #4651: an in-flight add to the replaced bookie must not count -----------------------


async def test_bk4651_late_ack_from_the_replaced_bookie_is_not_counted() -> None:
    async with ledger_env(4) as env:
        handle = await env.create(3, 3, 2)
        await add_sequentially(handle, 0, 0)
        x, y, z = (env.cluster.bookie(a) for a in handle.ensemble)
        (spare,) = env.spares(handle)
        x_gate = x.hold("add", entry_id=1)
        z_gate = z.hold("add", entry_id=1, apply_if_cancelled=True)
        spare_gate = spare.hold("add", entry_id=1)
        z.fail("add", entry_id=2)
        metadata_gate = env.stalling.stall_puts()
        first = handle.add_entry(payload(1))  # y acks; x and z are slow
        second = handle.add_entry(payload(2))  # z fails → ensemble change, metadata stalls
        await wait_until(lambda: env.stalling.stalled == 1)
        # z's slow add of entry 1 completes while z is being replaced: y + z would be Qa.
        z_gate.release()
        await wait_until(lambda: z.has_entry(handle.ledger_id, 1))
        metadata_gate.release()
        await wait_until(lambda: handle.ensemble_changes == 1)
        await wait_until(lambda: spare_gate.waiting == 1)
        await asyncio.sleep(0.05)
        # The metadata says entry 1 lives on x, y and the spare: only y has it so far.
        assert not first.done() and not second.done()
        assert handle.metadata.ensembles[1] == [x.address, y.address, spare.address]
        spare_gate.release()
        assert list(await asyncio.gather(first, second)) == [1, 2]
        closed = await handle.close()
        assert_every_entry_on_ack_quorum(env, closed)
        x_gate.release()


async def test_bk4651_acks_of_a_bookie_are_withdrawn_when_it_is_replaced() -> None:
    async with ledger_env(4) as env:
        handle = await env.create(3, 3, 2)
        x, y, z = env.bookies_of(handle)
        (spare,) = env.spares(handle)
        head_gates = [y.hold("add", entry_id=0), z.hold("add", entry_id=0)]
        x_gate = x.hold("add", entry_id=1)
        spare_gate = spare.hold("add", entry_id=1)
        z.fail("add", entry_id=2)
        head = handle.add_entry(payload(0))  # only x has it: the head of the queue waits
        first = handle.add_entry(payload(1))  # y and z ack: Qa, but it waits behind entry 0
        await wait_until(
            lambda: y.has_entry(handle.ledger_id, 1) and z.has_entry(handle.ledger_id, 1)
        )
        second = handle.add_entry(payload(2))  # z fails → z is replaced in fragment 0
        await wait_until(lambda: handle.ensemble_changes == 1)
        assert handle.metadata.ensembles == {0: [x.address, y.address, spare.address]}
        head_gates[0].release()  # entry 0 now has x and y
        assert await head == 0
        await wait_until(lambda: spare_gate.waiting == 1)
        await asyncio.sleep(0.05)
        # z's earlier ack no longer counts: the metadata puts the spare in its place.
        assert not first.done()
        spare_gate.release()
        assert list(await asyncio.gather(first, second)) == [1, 2]
        closed = await handle.close()
        assert_every_entry_on_ack_quorum(env, closed)
        x_gate.release()
        head_gates[1].release()


# ---- the merge rule ------------------------------------------------------------------------


async def test_merge_with_a_concurrent_replacement_in_an_earlier_fragment() -> None:
    async with ledger_env(7) as env:
        handle = await env.create(3, 3, 2)
        await add_sequentially(handle, 0, 4)
        a, v1, v2 = handle.ensemble
        s1, s2, w1, w2 = (b.address for b in env.spares(handle))
        env.cluster.live = [a, v1, v2, s1, s2]  # w1, w2: only for the worker below
        env.cluster.bookie(v1).down()
        await add_sequentially(handle, 5, 9)
        r1 = handle.ensemble[1]
        assert r1 in (s1, s2)
        k1 = handle.metadata.last_fragment_first  # 5, or 6 if entry 5 beat the failure
        # An autorecovery worker replaces v1 in fragment 0 (not the writer's current one).
        await env.other.replace_bookie(handle.ledger_id, 0, v1, w1)
        # The writer's next ensemble change loses its compare-and-set, merges, retries.
        env.cluster.bookie(v2).down()
        await add_sequentially(handle, 10, 14)
        stored = await env.other.read_metadata(handle.ledger_id)
        assert stored is not None
        k2 = stored.last_fragment_first
        assert list(stored.ensembles) == [0, k1, k2] and k2 in (10, 11)
        assert stored.ensembles[0] == [a, w1, v2]  # theirs
        assert stored.ensembles[k1] == [a, r1, v2]  # ours
        assert v2 not in stored.ensembles[k2] and stored == handle.metadata
        # Now fragment k1 is an earlier one; replace v2 there, then close: the close merges.
        await env.other.replace_bookie(handle.ledger_id, k1, v2, w2)
        closed = await handle.close()
        assert closed.state == STATE_CLOSED and closed.last_entry_id == 14
        assert closed.ensembles[0] == [a, w1, v2] and closed.ensembles[k1] == [a, r1, w2]
        env.cluster.bookie(v2).wipe()
        assert_every_entry_on_ack_quorum(env, closed)
        await assert_reads_everything(env, closed)


# ---- replace_bookie and fragments ----------------------------------------------------------


async def test_replace_bookie_copies_the_fragment_and_reads_still_return_everything() -> None:
    async with ledger_env(5) as env:
        handle = await env.create(4, 2, 2)
        await add_sequentially(handle, 0, 19)
        ensemble = handle.ensemble
        (spare,) = env.spares(handle)
        with pytest.raises(LedgerClientError, match="current one"):
            await env.other.replace_bookie(handle.ledger_id, 0, ensemble[1], spare.address)
        closed = await handle.close()
        assert await env.other.list_fragments(handle.ledger_id) == [(0, 19, ensemble)]
        old = env.cluster.bookie(ensemble[1])
        old.down()  # the copies come from the survivors
        updated = await env.other.replace_bookie(handle.ledger_id, 0, old.address, spare.address)
        assert updated.ensembles[0] == [ensemble[0], spare.address, ensemble[2], ensemble[3]]
        expected = [e for e in range(20) if slot_stores_entry(1, e, 4, 2)]
        assert spare.entry_ids(closed.ledger_id) == expected
        # Idempotent: asking again changes nothing.
        again = await env.other.replace_bookie(handle.ledger_id, 0, old.address, spare.address)
        assert again == updated
        old.wipe()
        env.cluster.bookie(ensemble[0]).down()  # entries 0, 4, 8, ... now only on the spare
        await assert_reads_everything(env, updated)
        assert_every_entry_on_ack_quorum(env, updated)


async def test_list_fragments_of_an_open_ledger_ends_with_an_open_tail() -> None:
    async with ledger_env(4) as env:
        handle = await env.create(3, 3, 2)
        await add_sequentially(handle, 0, 2)
        env.cluster.bookie(handle.ensemble[0]).down()
        await add_sequentially(handle, 3, 4)
        fragments = await env.other.list_fragments(handle.ledger_id)
        assert [(f.first_entry_id, f.last_entry_id) for f in fragments] == [(0, 2), (3, None)]


async def test_delete_ledger_reaches_every_bookie_of_every_fragment() -> None:
    async with ledger_env(4) as env:
        handle = await env.create(3, 3, 2)
        await add_sequentially(handle, 0, 2)
        env.cluster.bookie(handle.ensemble[0]).fail("add", times=None)
        await add_sequentially(handle, 3, 5)
        closed = await handle.close()
        assert len(closed.all_bookies()) == 4
        await env.other.delete_ledger(closed.ledger_id)
        assert all(closed.ledger_id not in b.ledgers for b in env.cluster.bookies)
        assert await env.other.read_metadata(closed.ledger_id) is None


def test_the_broker_facing_names_are_exported_by_bookie_ledger() -> None:
    import bookie.ledger as package

    for name in (
        "LedgerManager",
        "LedgerHandle",
        "LedgerReader",
        "LedgerMetadata",
        "LedgerClientError",
        "LedgerClosedError",
        "LedgerMetadataConflictError",
        "NotEnoughBookiesError",
        "LedgerClientConfig",
        "ledger_key",
        "STATE_OPEN",
        "STATE_IN_RECOVERY",
        "STATE_CLOSED",
    ):
        assert hasattr(package, name), name
    assert set(package.__all__) <= set(dir(package))


def test_config_rejects_a_bound_that_is_not_positive() -> None:
    with pytest.raises(ValueError, match="add_entry_timeout_ms"):
        LedgerClientConfig(add_entry_timeout_ms=0)
    assert FAST_CONFIG.add_entry_timeout_ms == 200
    assert LedgerClientConfig().add_entry_timeout_ms == 3_000
