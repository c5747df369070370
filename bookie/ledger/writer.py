"""``LedgerHandle``: the single writer of a ledger, with ensemble changes.

An add goes to the Qw bookies of its entry's write set and completes, strictly in entry order,
once ``required`` of them (Qa for a writer, Qw for a recovery) have it durably. When a bookie
fails or does not answer within ``add_entry_timeout_ms``, the handle replaces it
(ensemble change, BookKeeper's ``LedgerHandle.handleBookieFailure``):

1. completions stop at once, so the LAC is frozen;
2. a replacement is chosen among the live bookies not in the ensemble and not failed before;
3. a fragment starting at LAC+1 with the new ensemble is written to the metadata by
   compare-and-set (or the current fragment is rewritten in place when it starts at LAC+1);
4. only then are the unconfirmed entries re-sent to the new bookie and completions resumed.

Two rules keep the metadata equal to what the bookies hold (BK #1591, #4651):

* no entry at or past the new fragment's first entry is acknowledged before the new ensemble
  is in the metadata store; if the store stalls, acknowledgements wait;
* an acknowledgement counts only while the bookie that gave it still holds that ensemble
  position: every position has a generation, bumped when its bookie is replaced, and an
  answer from an older generation (an in-flight add to the replaced bookie that completes
  late) is ignored. Acknowledgements from bookies that keep their position still count.

Failures arriving while a change is in flight join the next change: changes are serialized
by one owned task. If no replacement exists, the position is given up when every write set
keeps Qa positions without it (``delay_ensemble_change``, BookKeeper's delayEnsembleChange;
a recovery always may): no fragment is written, the position gets no more entries, and adds
complete at Qa from the rest. Otherwise — no replacement and no room to give one up, or the
compare-and-set finds the ledger no longer OPEN (a recovery fenced it) — the handle fails:
pending and later adds get ``LedgerClosedError``.

Lifecycle::

    create_ledger() → add_entry()* (ensemble changes as needed) → close() | abort()

``close()`` waits for pending adds and for the writes still in flight (each bounded by the add
timeout), then records the ledger CLOSED at its LAC by compare-and-set; ``abort()`` stops
without touching the metadata. Either way every task the handle started has ended.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from dataclasses import replace
from typing import TYPE_CHECKING

from bookie.api import refused_add
from bookie.errors import BadRequestError, LedgerDeletedError, LedgerFencedError
from bookie.ledger.errors import (
    LedgerClientError,
    LedgerClosedError,
    LedgerMetadataConflictError,
    LedgerRecoveryError,
    NotEnoughBookiesError,
)
from bookie.ledger.metadata import (
    STATE_CLOSED,
    STATE_IN_RECOVERY,
    STATE_OPEN,
    LedgerMetadata,
    merge_ensembles,
    write_set_slots,
)
from bookie.metrics import (
    ML_ADD_FAILURES,
    ML_ADDS,
    ML_ENSEMBLE_CHANGES,
    STORAGE_WRITE_LATENCY_SECONDS,
)
from strata.logging_setup import log_fields
from strata.metrics import STAGE_BOOKIE_ROUND_TRIP

if TYPE_CHECKING:
    from bookie.ledger.manager import LedgerManager

log = logging.getLogger(__name__)


class _PendingAdd:
    """One entry on its way to the Qw bookies of its write set (BookKeeper's ``PendingAddOp``).

    ``acked_slots`` are the ensemble positions whose current bookie has the entry durably;
    ``sends`` the in-flight add per position. ``done`` once completed or failed.
    """

    __slots__ = (
        "acked_slots",
        "done",
        "entry_id",
        "future",
        "payload",
        "sends",
        "slots",
        "started",
    )

    def __init__(
        self, entry_id: int, payload: bytes, slots: list[int], future: asyncio.Future[int]
    ) -> None:
        self.entry_id = entry_id
        self.payload = payload
        self.slots = slots
        self.future = future
        self.acked_slots: set[int] = set()
        self.sends: dict[int, asyncio.Future[None]] = {}
        self.done = False
        self.started = time.monotonic()  # for strata_storage_write_latency_seconds


class LedgerHandle:
    """The single writer of one ledger: pipelined adds completed in entry order.

    ``add_entry`` returns a future resolving to the entry id once the entry is confirmed and
    every earlier entry is too; the LastAddConfirmed (LAC) advances in that order and is
    piggybacked on each later add. See the module docstring for ensemble changes and failure.

    A handle made by ``LedgerRecoveryOp`` (``recovery_from`` given) rewrites recovered entries
    with ``recovery_add``: it starts after the recovered LAC, needs all Qw acknowledgements,
    works on an IN_RECOVERY ledger and may change the ensemble the same way (settling for Qa
    only when no bookie can replace a failed one).
    """

    def __init__(
        self,
        manager: LedgerManager,
        metadata: LedgerMetadata,
        *,
        recovery_from: tuple[int, int] | None = None,
    ) -> None:
        self._manager = manager
        self._config = manager.config
        self.metadata = metadata
        self._master_key = bytes.fromhex(metadata.password)
        self._fragment_first = metadata.last_fragment_first
        self._ensemble = list(metadata.ensembles[self._fragment_first])
        self._generation = [0] * metadata.ensemble_size
        # Positions whose bookie failed and waits for a replacement → that bookie.
        self._failed_slots: dict[int, str] = {}
        # Bookies that failed during this handle's life: never chosen again as a replacement.
        self._excluded: set[str] = set()
        # Recovery only: positions given up on because no bookie could replace them.
        self._given_up: set[int] = set()
        if recovery_from is None:
            self._recovery = False
            self._expected_state = STATE_OPEN
            self._required_acks = metadata.ack_quorum
            self.last_add_confirmed = -1
            self.length_bytes = 0
        else:
            self._recovery = True
            self._expected_state = STATE_IN_RECOVERY
            self._required_acks = metadata.write_quorum
            self.last_add_confirmed, self.length_bytes = recovery_from
        self._next_entry_id = self.last_add_confirmed + 1
        self._pending: deque[_PendingAdd] = deque()
        self._failure: LedgerClosedError | None = None
        self._closed = False
        # In-flight sends in the order they started, which is deadline order (one timeout):
        # send → (deadline, position, generation, bookie).
        self._sends: dict[asyncio.Future[None], tuple[float, int, int, str]] = {}
        self._timeout_s = self._config.add_entry_timeout_ms / 1000
        self._monitor: asyncio.Task[None] | None = None
        self._ensemble_change: asyncio.Task[None] | None = None
        self.ensemble_changes = 0

    @property
    def ledger_id(self) -> int:
        return self.metadata.ledger_id

    @property
    def pending_adds(self) -> int:
        return len(self._pending)

    @property
    def failed(self) -> bool:
        return self._failure is not None

    @property
    def ensemble(self) -> list[str]:
        """The ensemble the handle writes new entries to (its last fragment's)."""
        return list(self._ensemble)

    # ---- adds --------------------------------------------------------------------------

    def add_entry(self, payload: bytes) -> asyncio.Future[int]:
        """Start adding one entry; the future resolves to its entry id once confirmed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        if self._failure is not None:
            error = LedgerClosedError(
                f"ledger {self.ledger_id}: the writer failed: {self._failure}",
                fenced=self._failure.fenced,
            )
            error.__cause__ = self._failure
            future.set_exception(error)
            return future
        if self._closed:
            future.set_exception(
                LedgerClosedError(f"ledger {self.ledger_id} is closed for writing")
            )
            return future
        if len(self._pending) >= self._config.max_pending_adds:
            future.set_exception(
                LedgerClosedError(
                    f"ledger {self.ledger_id}: too many pending adds "
                    f"({self._config.max_pending_adds})"
                )
            )
            return future
        metadata = self.metadata
        entry_id = self._next_entry_id
        self._next_entry_id += 1
        slots = write_set_slots(entry_id, metadata.ensemble_size, metadata.write_quorum)
        op = _PendingAdd(entry_id, payload, slots, future)
        self._pending.append(op)
        for slot in slots:
            # A position waiting for a replacement gets the entry once the new bookie is in;
            # a position given up on (no bookie could replace it) gets nothing.
            if slot not in self._failed_slots and slot not in self._given_up:
                self._start_send(op, slot)
        return future

    def _start_send(self, op: _PendingAdd, slot: int) -> None:
        previous = op.sends.pop(slot, None)
        if previous is not None:
            previous.cancel()
        loop = asyncio.get_running_loop()
        generation = self._generation[slot]
        address = self._ensemble[slot]
        sent = time.monotonic()
        # A future per send, no task and no timer: the monitor below bounds every send.
        try:
            send = self._manager.resolve(address).send_add(
                self.ledger_id,
                op.entry_id,
                self.last_add_confirmed,
                op.payload,
                self._master_key,
                recovery_add=self._recovery,
            )
        except Exception as exc:
            send = refused_add(exc)
        op.sends[slot] = send
        self._sends[send] = (loop.time() + self._timeout_s, slot, generation, address)
        send.add_done_callback(
            functools.partial(self._on_send_done, op, slot, generation, address, sent)
        )
        if self._monitor is None:
            self._monitor = loop.create_task(self._monitor_timeouts())

    async def _monitor_timeouts(self) -> None:
        """Fail sends older than ``add_entry_timeout_ms`` (BookKeeper's add timeout monitor).

        One owned task per handle instead of a timer per RPC; it runs while sends are in
        flight, so a timeout is noticed within 1.25 times the bound.
        """
        interval_s = self._timeout_s / 4
        try:
            while self._sends:  # ends when nothing is in flight; the next send restarts it
                await asyncio.sleep(interval_s)
                now = asyncio.get_running_loop().time()
                expired: list[tuple[asyncio.Future[None], int, int, str]] = []
                for send, (deadline, slot, generation, address) in self._sends.items():
                    if deadline > now:
                        break
                    expired.append((send, slot, generation, address))
                for send, slot, generation, address in expired:
                    del self._sends[send]
                    if send.done():
                        continue  # its answer came just in time
                    send.cancel()
                    self._on_bookie_failure(
                        slot,
                        generation,
                        address,
                        TimeoutError(
                            f"no answer within {self._config.add_entry_timeout_ms} ms to an add"
                        ),
                    )
        finally:
            self._monitor = None

    def _on_send_done(
        self,
        op: _PendingAdd,
        slot: int,
        generation: int,
        address: str,
        sent: float,
        send: asyncio.Future[None],
    ) -> None:
        self._sends.pop(send, None)
        if op.sends.get(slot) is send:
            del op.sends[slot]
        if send.cancelled():
            return  # timed out (the monitor handled it), replaced, or the writer stopped
        outcome = send.exception()
        if outcome is None:
            STAGE_BOOKIE_ROUND_TRIP.observe(time.monotonic() - sent)
            self._on_ack(op, slot, generation)
        elif isinstance(outcome, LedgerFencedError):
            self._fail(
                LedgerClosedError(
                    f"ledger {self.ledger_id} was fenced by a new owner", fenced=True
                ),
                outcome,
            )
        elif isinstance(outcome, BadRequestError | LedgerDeletedError):
            self._fail(
                LedgerClosedError(f"ledger {self.ledger_id}: {address} refused the add: {outcome}"),
                outcome,
            )
        elif isinstance(outcome, Exception):
            self._on_bookie_failure(slot, generation, address, outcome)

    def _on_ack(self, op: _PendingAdd, slot: int, generation: int) -> None:
        if self._failure is not None or op.done:
            return
        if generation != self._generation[slot] or slot in self._failed_slots:
            # The bookie lost (or is losing) this position: its copy is not where the
            # metadata will say the entry lives, so it must not count (BK #4651).
            return
        op.acked_slots.add(slot)
        self._complete_in_order()

    def _complete_in_order(self) -> None:
        # While an ensemble change is pending, nothing completes: the next fragment starts at
        # LAC+1 and no entry there may be acknowledged before the metadata says so (BK #1591).
        if self._failure is not None or self._failed_slots or self._ensemble_change is not None:
            return
        pending = self._pending
        required = self._required_acks
        completed = 0
        now = time.monotonic()
        while pending and len(pending[0].acked_slots) >= required:
            op = pending.popleft()
            op.done = True
            self.last_add_confirmed = op.entry_id
            self.length_bytes += len(op.payload)
            STORAGE_WRITE_LATENCY_SECONDS.observe(now - op.started)
            completed += 1
            if not op.future.done():
                op.future.set_result(op.entry_id)
        if completed:
            ML_ADDS.inc(completed)

    # ---- ensemble change ---------------------------------------------------------------

    def _on_bookie_failure(self, slot: int, generation: int, address: str, exc: Exception) -> None:
        if self._failure is not None or generation != self._generation[slot]:
            return  # already failed, or this bookie was already replaced
        if slot in self._given_up:
            return
        if self._closed and not self._pending:
            # Closing with every add confirmed: nothing is left to re-send, and an empty
            # fragment would only add a bookie to the ledger. The missing copy is left to
            # autorecovery, like any write error beyond the ack quorum (BP-31).
            log.warning(
                "ledger %d: bookie %s failed while closing: %s",
                self.ledger_id,
                address,
                exc,
                extra=log_fields(ledger=self.ledger_id),
            )
            return
        if slot not in self._failed_slots:
            log.warning(
                "ledger %d: bookie %s (ensemble position %d) failed: %s",
                self.ledger_id,
                address,
                slot,
                exc,
                extra=log_fields(ledger=self.ledger_id),
            )
            self._failed_slots[slot] = address
            self._excluded.add(address)
        if self._ensemble_change is None:
            self._ensemble_change = asyncio.get_running_loop().create_task(
                self._run_ensemble_changes()
            )

    async def _run_ensemble_changes(self) -> None:
        """Replace failed bookies until none is left (owned task; one at a time)."""
        try:
            for _ in range(self._config.max_ensemble_changes):
                if not self._failed_slots or self._failure is not None:
                    break
                await self._change_ensemble()
            else:
                if self._failed_slots:
                    raise LedgerClientError(
                        f"more than {self._config.max_ensemble_changes} ensemble changes in a row"
                    )
        except asyncio.CancelledError:
            self._ensemble_change = None
            raise
        except Exception as exc:
            self._ensemble_change = None
            if not (isinstance(exc, NotEnoughBookiesError) and self._give_up_failed_slots(exc)):
                self._fail(self._error_for(exc), exc)
                return
        self._ensemble_change = None
        self._complete_in_order()

    def _give_up_failed_slots(self, exc: NotEnoughBookiesError) -> bool:
        """When no bookie can replace a failed one: settle for Qa copies.

        A recovery that insisted on Qw could never finish while one bookie hangs in a cluster
        with no spare (BK #1067); BookKeeper completes recovery adds at Qa too. A writer does
        the same with ``delay_ensemble_change`` (BookKeeper's delayEnsembleChange): the
        position stays in the ensemble (the metadata does not change), gets no more entries,
        and every entry is acknowledged by the Qa bookies left in its write set — the ack
        guarantee is unchanged, the copies beyond it are missing until the managed ledger
        rolls over to a full ensemble. Possible only while every write set keeps Qa positions
        that have not failed.
        """
        metadata = self.metadata
        given_up = self._given_up | set(self._failed_slots)
        allowed = self._recovery or self._config.delay_ensemble_change
        if not allowed or len(given_up) > metadata.write_quorum - metadata.ack_quorum:
            return False
        log.warning(
            "ledger %d: %s with Qa=%d copies only, giving up on %s: %s",
            self.ledger_id,
            "recovery writes back" if self._recovery else "writing on",
            metadata.ack_quorum,
            sorted(self._failed_slots.values()),
            exc,
            extra=log_fields(ledger=self.ledger_id),
        )
        self._given_up = given_up
        self._failed_slots.clear()
        self._required_acks = metadata.ack_quorum
        return True

    def _error_for(self, exc: Exception) -> LedgerClosedError:
        if isinstance(exc, LedgerClosedError):
            return exc
        if isinstance(exc, NotEnoughBookiesError):
            return LedgerClosedError(f"ledger {self.ledger_id}: {exc}")
        return LedgerClosedError(f"ledger {self.ledger_id}: ensemble change failed: {exc}")

    async def _change_ensemble(self) -> None:
        failed = dict(self._failed_slots)
        first = self.last_add_confirmed + 1
        assert first >= self._fragment_first
        new_ensemble = list(self._ensemble)
        for slot, replacement in self._choose_replacements(failed).items():
            new_ensemble[slot] = replacement
        ours = self.metadata
        current_first = self._fragment_first
        expected_state = self._expected_state
        ledger_id = self.ledger_id

        def mutate(current: LedgerMetadata) -> LedgerMetadata:
            if current.state != expected_state:
                raise LedgerClosedError(
                    f"ledger {ledger_id} was fenced: its state is {current.state}", fenced=True
                )
            merged = merge_ensembles(current.ensembles, ours.ensembles, current_first)
            merged[first] = list(new_ensemble)
            return replace(current, ensembles=merged)

        log.info(
            "ledger %d: ensemble change at entry %d: %s -> %s",
            ledger_id,
            first,
            self._ensemble,
            new_ensemble,
            extra=log_fields(ledger=ledger_id),
        )
        updated = await self._manager.update_metadata(ours, mutate)
        if self._failure is not None:
            return
        # The new ensemble is in the metadata store: from here on it is the truth.
        self.metadata = updated
        self._fragment_first = first
        self._ensemble = new_ensemble
        self.ensemble_changes += 1
        ML_ENSEMBLE_CHANGES.inc()
        for slot in failed:
            self._generation[slot] += 1
            del self._failed_slots[slot]
        for op in self._pending:
            for slot in failed:
                if slot in op.slots:
                    op.acked_slots.discard(slot)
                    self._start_send(op, slot)

    def _choose_replacements(self, failed: dict[int, str]) -> dict[int, str]:
        live = self._manager.live_bookies()
        in_use = set(self._ensemble)
        chosen: dict[int, str] = {}
        for slot in sorted(failed):
            candidates = [b for b in live if b not in in_use and b not in self._excluded]
            if not candidates:
                raise NotEnoughBookiesError(
                    f"no bookie can replace {failed[slot]} (ensemble position {slot}): "
                    f"{len(live)} live bookies, all in the ensemble {self._ensemble} "
                    f"or failed before"
                )
            pick = candidates[(self.ledger_id + slot) % len(candidates)]
            chosen[slot] = pick
            in_use.add(pick)
        return chosen

    # ---- failure and shutdown ----------------------------------------------------------

    def _fail(
        self, error: LedgerClosedError, cause: BaseException | None = None, *, quiet: bool = False
    ) -> None:
        if self._failure is not None:
            return
        if cause is not None and error is not cause and error.__cause__ is None:
            error.__cause__ = cause
        self._failure = error
        if not quiet:
            log.warning(
                "ledger %d writer failed: %s",
                self.ledger_id,
                error,
                extra=log_fields(ledger=self.ledger_id),
            )
        if self._pending:
            ML_ADD_FAILURES.inc(len(self._pending))
        while self._pending:
            op = self._pending.popleft()
            op.done = True
            if not op.future.done():
                op.future.set_exception(error)
        current = asyncio.current_task()
        for send in list(self._sends):
            send.cancel()
        if self._ensemble_change is not None and self._ensemble_change is not current:
            self._ensemble_change.cancel()

    async def _stop_tasks(self) -> None:
        tasks: list[asyncio.Future[None]] = list(self._sends)
        if self._monitor is not None:
            tasks.append(self._monitor)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def abort(self) -> None:
        """Stop writing without touching the metadata: pending adds fail, tasks end."""
        self._closed = True
        self._fail(
            LedgerClosedError(f"ledger {self.ledger_id}: the writer was aborted"), quiet=True
        )
        change = self._ensemble_change
        if change is not None:
            change.cancel()
            await asyncio.gather(change, return_exceptions=True)
        await self._stop_tasks()

    async def close(self) -> LedgerMetadata:
        """Wait for pending adds and in-flight writes, then record the ledger CLOSED at its LAC
        (compare-and-set).

        After a conflicting change by an autorecovery worker (the ledger still OPEN) the close
        merges and retries. Raises ``LedgerMetadataConflictError`` when the ledger was fenced
        or closed elsewhere at another entry; a recovery handle raises ``LedgerRecoveryError``
        if any recovered entry could not be written back.
        """
        if self._closed and self.metadata.state == STATE_CLOSED:
            return self.metadata
        self._closed = True
        if self._pending:
            await asyncio.gather(*(op.future for op in list(self._pending)), return_exceptions=True)
        # Let the writes beyond the ack quorum finish (each is bounded by the add timeout), so
        # that a healthy ensemble holds the last entries Qw times, not just Qa times.
        if self._sends:
            await asyncio.wait(list(self._sends))
        await self._stop_tasks()
        change = self._ensemble_change
        if change is not None:
            await asyncio.gather(change, return_exceptions=True)
        failure = self._failure
        if failure is not None and self._recovery:
            raise LedgerRecoveryError(
                f"ledger {self.ledger_id}: recovered entries could not be written back: {failure}"
            ) from failure
        if failure is not None and failure.fenced:
            raise LedgerMetadataConflictError(
                f"ledger {self.ledger_id} was fenced by a new owner"
            ) from failure
        ours = self.metadata
        current_first = self._fragment_first
        last_entry_id = self.last_add_confirmed
        length = self.length_bytes
        expected_state = self._expected_state
        recovery = self._recovery
        ledger_id = self.ledger_id

        def mutate(current: LedgerMetadata) -> LedgerMetadata | None:
            if current.state == STATE_CLOSED:
                if recovery or current.last_entry_id == last_entry_id:
                    return None  # closed already (a concurrent recovery converged first)
                raise LedgerMetadataConflictError(
                    f"ledger {ledger_id} was closed elsewhere at entry {current.last_entry_id}, "
                    f"not at {last_entry_id}",
                    current=current,
                )
            if current.state != expected_state:
                raise LedgerMetadataConflictError(
                    f"ledger {ledger_id} was fenced: its state is {current.state}",
                    current=current,
                )
            merged = merge_ensembles(current.ensembles, ours.ensembles, current_first)
            return replace(
                current,
                ensembles=merged,
                state=STATE_CLOSED,
                last_entry_id=last_entry_id,
                length_bytes=length,
            )

        self.metadata = await self._manager.update_metadata(ours, mutate)
        return self.metadata
