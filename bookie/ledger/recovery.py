"""Ledger recovery: fence, find the end, write the tail back, close (BookKeeper's
``LedgerRecoveryOp``, ``ReadLastConfirmedOp`` with fencing and the recovery ``PendingReadOp``).

A new owner of a ledger left OPEN by a writer that may still be running:

1. marks the ledger IN_RECOVERY by compare-and-set: from now on the old writer's ensemble
   changes and its close fail;
2. fences every bookie of the last fragment (``FenceOp``) and proceeds as soon as the fenced
   bookies cover every write set with Qw-Qa+1 of its members: each write set then has fewer
   than Qa unfenced bookies, so the old writer can never complete another add. A hung bookie
   is not waited for (BK #1067);
3. starts from the highest LAC the fences reported, and at least from the last fragment's
   first entry - 1: earlier fragments were confirmed by the ensemble change that ended them,
   and recovery never writes into them;
4. reads forward. Entry *e* exists if any bookie returns it. It is absent only after Qw-Qa+1
   explicit NoSuchEntry answers from bookies whose fence succeeded in this recovery: a bookie
   whose fence failed or is still pending is fenced (again) before its answer counts, so a
   "no" stays a "no" (BK #2614). An error, a timeout or a corrupt record is never "absent"
   (BK #2908): the recovery fails with ``LedgerRecoveryError`` (retriable) and the ledger stays
   IN_RECOVERY;
5. writes every recovered entry back with ``recovery_add`` through a recovery
   ``LedgerHandle``: all Qw bookies of its write set must have it, and a bookie that fails
   or times out is replaced by an ensemble change as a writer would. Only when no bookie can
   replace it does the recovery settle for Qa copies (as BookKeeper's recovery adds do), so
   that one hung bookie cannot block recovery in a cluster without a spare (BK #1067);
6. closes the ledger at the last recovered entry, with its length, by compare-and-set. When
   another recovery closed it first, its result is returned.

Known limit (BK #2612): a bookie that lost its data and came back under the same identity
answers NoSuchEntry like one that never had the entry; the bookie has no "limbo" state yet.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from typing import TYPE_CHECKING, Final

from bookie.api import LedgerEntry, LedgerState
from bookie.errors import CorruptEntryError, NoSuchEntryError, NoSuchLedgerError
from bookie.ledger.errors import LedgerClientError, LedgerRecoveryError
from bookie.ledger.metadata import (
    STATE_CLOSED,
    STATE_IN_RECOVERY,
    STATE_OPEN,
    LedgerMetadata,
    write_set_slots,
)
from bookie.ledger.reader import LedgerReader
from bookie.ledger.writer import LedgerHandle
from strata.logging_setup import log_fields

if TYPE_CHECKING:
    from bookie.ledger.manager import LedgerManager

log = logging.getLogger(__name__)


class _Absent:
    """An explicit NoSuchEntry from a bookie fenced in this recovery."""


ABSENT: Final = _Absent()
# What one bookie said about one entry: the entry, an explicit absence, or why neither.
Answer = LedgerEntry | _Absent | str


class FenceOp:
    """Fences the bookies of one ensemble for one recovery and tracks which fences succeeded.

    Lifecycle: ``start()`` sends every fence; ``wait_for_coverage()`` returns once the fenced
    bookies cover every write set with Qw-Qa+1 members; ``ensure_fenced(b)`` re-fences a bookie
    whose fence failed (at most ``max_fence_attempts`` per bookie); ``close()`` cancels what is
    still in flight. Every fence is bounded by ``fence_timeout_ms``.
    """

    def __init__(self, manager: LedgerManager, metadata: LedgerMetadata, ensemble: list[str]):
        self._manager = manager
        self._metadata = metadata
        self._ensemble = list(ensemble)
        self._master_key = bytes.fromhex(metadata.password)
        self._tasks: dict[str, asyncio.Task[LedgerState]] = {}
        self._attempts: dict[str, int] = {}
        self._errors: dict[str, str] = {}
        self.fenced: set[str] = set()
        self.max_last_add_confirmed = -1

    def start(self) -> None:
        for address in dict.fromkeys(self._ensemble):
            self._launch(address)

    def _launch(self, address: str) -> asyncio.Task[LedgerState]:
        self._attempts[address] = self._attempts.get(address, 0) + 1
        task = asyncio.get_running_loop().create_task(self._fence(address))
        # The outcome is read through self.fenced / self._errors; retrieve it so that a failed
        # fence is not reported as "exception never retrieved".
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        self._tasks[address] = task
        return task

    async def _fence(self, address: str) -> LedgerState:
        timeout_ms = self._manager.config.fence_timeout_ms
        try:
            async with asyncio.timeout(timeout_ms / 1000):
                state = await self._manager.resolve(address).fence_ledger(
                    self._metadata.ledger_id, self._master_key
                )
        except TimeoutError:
            self._errors[address] = f"fence: no answer within {timeout_ms} ms"
            raise
        except Exception as exc:
            self._errors[address] = f"fence: {exc}"
            raise
        self.fenced.add(address)
        self._errors.pop(address, None)
        self.max_last_add_confirmed = max(self.max_last_add_confirmed, state.last_add_confirmed)
        return state

    def covered(self) -> bool:
        """True when every write set has at least Qw-Qa+1 fenced bookies."""
        metadata = self._metadata
        needed = metadata.write_quorum - metadata.ack_quorum + 1
        for start in range(metadata.ensemble_size):
            slots = write_set_slots(start, metadata.ensemble_size, metadata.write_quorum)
            if sum(1 for s in slots if self._ensemble[s] in self.fenced) < needed:
                return False
        return True

    async def wait_for_coverage(self) -> None:
        # Bounded: every fence task ends within fence_timeout_ms.
        while not self.covered():
            pending = [t for t in self._tasks.values() if not t.done()]
            if not pending:
                raise LedgerRecoveryError(
                    f"ledger {self._metadata.ledger_id}: could not fence enough bookies of "
                    f"{self._ensemble} (fenced {sorted(self.fenced)}): {self._errors}"
                )
            await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)

    async def ensure_fenced(self, address: str) -> bool:
        """True once ``address`` is fenced in this recovery; False when it cannot be."""
        max_attempts = self._manager.config.max_fence_attempts
        for _ in range(max_attempts + 1):
            if address in self.fenced:
                return True
            task = self._tasks.get(address)
            if task is None or task.done():
                if self._attempts.get(address, 0) >= max_attempts:
                    return False
                task = self._launch(address)
            # Waits without cancelling the shared fence when this caller is cancelled.
            await asyncio.wait([task])
        return address in self.fenced

    def error_of(self, address: str) -> str:
        return self._errors.get(address, "not fenced")

    async def close(self) -> None:
        tasks = [t for t in self._tasks.values() if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


def _retrieve(future: asyncio.Future[int]) -> None:
    if not future.cancelled():
        future.exception()


def _mark_in_recovery(current: LedgerMetadata) -> LedgerMetadata | None:
    if current.state == STATE_OPEN:
        return replace(current, state=STATE_IN_RECOVERY)
    return None


class LedgerRecoveryOp:
    """One recovery of one ledger; see the module docstring. ``run()`` once."""

    def __init__(self, manager: LedgerManager, ledger_id: int) -> None:
        self._manager = manager
        self._config = manager.config
        self._ledger_id = ledger_id

    async def run(self) -> LedgerMetadata:
        manager = self._manager
        metadata = await manager.read_metadata(self._ledger_id)
        if metadata is None:
            raise LedgerClientError(f"ledger {self._ledger_id} has no metadata")
        if metadata.state == STATE_CLOSED:
            return metadata
        metadata = await manager.update_metadata(metadata, _mark_in_recovery)
        if metadata.state == STATE_CLOSED:
            return metadata
        fragment_first = metadata.last_fragment_first
        ensemble = metadata.ensembles[fragment_first]
        fence = FenceOp(manager, metadata, ensemble)
        handle: LedgerHandle | None = None
        try:
            fence.start()
            await fence.wait_for_coverage()
            start = max(fence.max_last_add_confirmed, fragment_first - 1)
            # Bookies whose fence has not succeeded may be hung: ask them last.
            unfenced = set(ensemble) - fence.fenced
            length = await self._length_through(metadata, start, unfenced)
            handle = LedgerHandle(manager, metadata, recovery_from=(start, length))
            last = await self._read_forward(metadata, fence, handle, start + 1)
            closed = await handle.close()
            log.info(
                "ledger %d recovered: last entry %d (LAC from fences %d, %d entries rewritten)",
                self._ledger_id,
                closed.last_entry_id,
                fence.max_last_add_confirmed,
                last - start,
                extra=log_fields(ledger=self._ledger_id),
            )
            return closed
        except LedgerClientError as exc:
            # A concurrent recovery may have closed the ledger first: its answer stands.
            current = await manager.read_metadata(self._ledger_id)
            if current is not None and current.state == STATE_CLOSED:
                return current
            if isinstance(exc, LedgerRecoveryError):
                raise
            raise LedgerRecoveryError(f"ledger {self._ledger_id}: recovery failed: {exc}") from exc
        finally:
            await fence.close()
            if handle is not None and handle.metadata.state != STATE_CLOSED:
                await handle.abort()

    async def _length_through(
        self, metadata: LedgerMetadata, last_entry_id: int, avoid: set[str]
    ) -> int:
        """Payload bytes of entries 0..last_entry_id (the confirmed prefix)."""
        reader = LedgerReader(self._manager, metadata, avoid=avoid)
        total = 0
        next_id = 0
        while next_id <= last_entry_id:
            try:
                entries = await reader.read(next_id, last_entry_id)
            except Exception as exc:
                raise LedgerRecoveryError(
                    f"ledger {self._ledger_id}: cannot read confirmed entry {next_id}: {exc}"
                ) from exc
            total += sum(len(e.payload) for e in entries)
            next_id = entries[-1].entry_id + 1
        return total

    async def _read_forward(
        self, metadata: LedgerMetadata, fence: FenceOp, handle: LedgerHandle, first: int
    ) -> int:
        """Read and rewrite entries from ``first`` until one is absent; return the last one.

        Reads ``recovery_read_batch_entries`` entries ahead concurrently; each window's
        rewrites are confirmed before the next window is read. Ends at the first absent
        entry: the tail the old writer left is finite.
        """
        batch = self._config.recovery_read_batch_entries
        next_id = first
        while True:
            window = [
                asyncio.get_running_loop().create_task(self._recover_entry(metadata, fence, e))
                for e in range(next_id, next_id + batch)
            ]
            added: list[asyncio.Future[int]] = []
            end_found = False
            try:
                for task in window:
                    entry = await task
                    if entry is None:
                        end_found = True
                        break
                    future = handle.add_entry(entry.payload)
                    # Read below, or abandoned when the recovery fails: never left unretrieved.
                    future.add_done_callback(_retrieve)
                    added.append(future)
            finally:
                for task in window:
                    task.cancel()
                await asyncio.gather(*window, return_exceptions=True)
            if added:
                results = await asyncio.gather(*added, return_exceptions=True)
                for result in results:
                    if isinstance(result, BaseException):
                        raise LedgerRecoveryError(
                            f"ledger {self._ledger_id}: writing recovered entries back failed: "
                            f"{result}"
                        ) from result
            next_id += len(added)
            if end_found:
                return next_id - 1

    async def _recover_entry(
        self, metadata: LedgerMetadata, fence: FenceOp, entry_id: int
    ) -> LedgerEntry | None:
        """The entry, or None when it is certainly absent; raises when undecided."""
        write_set = metadata.write_set(entry_id)
        needed = metadata.write_quorum - metadata.ack_quorum + 1
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(self._ask(fence, a, entry_id)) for a in write_set]
        absent = 0
        problems: list[str] = []
        try:
            for next_answer in asyncio.as_completed(tasks):
                answer = await next_answer
                if isinstance(answer, LedgerEntry):
                    return answer
                if isinstance(answer, _Absent):
                    absent += 1
                    if absent >= needed:
                        return None
                else:
                    problems.append(answer)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        raise LedgerRecoveryError(
            f"ledger {self._ledger_id} entry {entry_id}: cannot tell whether it exists "
            f"({absent} of {needed} explicit absent answers needed): {'; '.join(problems)}"
        )

    async def _ask(self, fence: FenceOp, address: str, entry_id: int) -> Answer:
        # Fence first: a "no" from a bookie that the old writer can still write to could turn
        # into a "yes" a moment later (BK #2614).
        fenced = await fence.ensure_fenced(address)
        timeout_ms = self._config.read_timeout_ms
        try:
            async with asyncio.timeout(timeout_ms / 1000):
                entries = await self._manager.resolve(address).read_entries(
                    self._ledger_id, entry_id, entry_id
                )
        except (NoSuchEntryError, NoSuchLedgerError) as exc:
            if fenced:
                return ABSENT
            return f"{address}: {exc} but it is not fenced ({fence.error_of(address)})"
        except TimeoutError:
            return f"{address}: no answer within {timeout_ms} ms"
        except CorruptEntryError as exc:
            return f"{address}: corrupt record: {exc}"
        except Exception as exc:
            return f"{address}: {type(exc).__name__}: {exc}"
        if entries and entries[0].entry_id == entry_id:
            return entries[0]
        return f"{address}: answered {[e.entry_id for e in entries]} for entry {entry_id}"
