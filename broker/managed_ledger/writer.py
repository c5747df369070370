"""``LedgerWriter``: the write path of one managed ledger, and the one owner of its state.

The writer owns the ledger open for writing (the last one of the list), what was issued to it
(entries, bytes), the adds waiting for a rollover, the failed adds waiting to be resubmitted,
the rollover task, and whether the managed ledger is closing or fenced. Nothing else changes
them; the rollover (``rollover.RolloverOp``) works through the methods of the "Rollover"
section below.

The add path, once per entry (a producer batch), so kept cheap — no awaits, no objects per
message::

    add_entry() ─ rollover running, no ledger open or adds waiting? ─ yes → queue, ensure rollover
                                                                  └ no  → issue to the ledger
    issue: count entries and bytes; the ledger full (entries, size or age)? → start the rollover
           (postponed while fewer bookies are live than its ensemble and it still takes writes)
    confirmed: the list's last ledger grows, the entry cache gets the entry, the future its
                position, the listener hears ``new_entries``
    failed:    resubmitted to the next ledger (at most ``MAX_ADD_ATTEMPTS`` times) ahead of the
               adds queued after it — failures of one handle arrive in entry order

A rollover that succeeds ends with ``issue_pending()``: the waiting adds go to the new ledger
in order, until it is full; the rest wait for the next rollover. One that fails ends with
``fail_pending()``. The rollover task is the writer's: ``close()`` awaits it.

Lifecycle: built by ``ManagedLedger`` → ``write_to()`` the ledger its ``open()`` created →
adds and rollovers → ``begin_close()`` (adds are refused, no rollover starts) → ``close()``
(awaits the rollover, closes the ledger and stores its final size in the list).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from bookie.errors import BookieError
from bookie.ledger import LedgerClientError, LedgerHandle
from broker.errors import ServiceUnavailableError, TopicFencedError
from broker.managed_ledger.entry_cache import Entry, EntryCache
from broker.managed_ledger.ledger_list import LedgerList, Position
from strata.clock import now_ms
from strata.logging_setup import log_fields

if TYPE_CHECKING:
    from broker.managed_ledger.ledger import ManagedLedgerConfig, ManagedLedgerListener

log = logging.getLogger(__name__)

# A write that failed is resubmitted to a new ledger at most this many times.
MAX_ADD_ATTEMPTS = 3


class _QueuedAdd:
    __slots__ = ("attempts", "data", "deliver_at_ms", "future", "num_messages")

    def __init__(
        self,
        data: bytes,
        num_messages: int,
        future: asyncio.Future[Position],
        deliver_at_ms: int = 0,
    ) -> None:
        self.data = data
        self.num_messages = num_messages
        self.deliver_at_ms = deliver_at_ms
        self.future = future
        self.attempts = 0


class LedgerWriter:
    """The write path of one managed ledger; see the module docstring. Not thread-safe; every
    method runs on the broker's event loop."""

    def __init__(
        self,
        name: str,
        config: ManagedLedgerConfig,
        ledgers: LedgerList,
        cache: EntryCache,
        listener: ManagedLedgerListener,
        rollover: Callable[[], Coroutine[Any, Any, None]],
        live_bookies: Callable[[], int] = lambda: 1 << 30,
    ) -> None:
        """``rollover`` makes the coroutine of one rollover, run as the writer's task;
        ``live_bookies`` counts the bookies a new ledger could be placed on now."""
        self._name = name
        self._config = config
        self._list = ledgers
        self._cache = cache
        self._on_new_entries = listener.new_entries
        self._on_fenced = listener.fenced
        self._new_rollover = rollover
        self._live_bookies = live_bookies
        # A full ledger kept open because no new one could be placed (see _roll_over_if_full).
        self._rollover_postponed = False
        # The ledger open for writing, what was issued to it, the adds waiting for a rollover.
        self._current: LedgerHandle | None = None
        self._current_created_ms = 0
        self._issued_entries = 0
        self._issued_bytes = 0
        self._queue: list[_QueuedAdd] = []
        self._resubmit: list[_QueuedAdd] = []
        self._rolling: asyncio.Task[None] | None = None
        self._fenced: BaseException | None = None
        self._closed = False
        # The last confirmed position: the last entry of the list's last closed ledger after
        # the managed ledger's open(), then of every add confirmed.
        self.last_confirmed: Position = (-1, -1)
        self.entries_added = 0

    @property
    def current(self) -> LedgerHandle | None:
        """The ledger open for writing; None during a rollover and after ``close()``."""
        return self._current

    @property
    def rollover(self) -> asyncio.Task[None] | None:
        """The running rollover task, or None."""
        return self._rolling

    @property
    def fenced(self) -> BaseException | None:
        """Why another owner took over (every add and list change then fails), or None."""
        return self._fenced

    def fence(self, exc: BaseException) -> BaseException:
        """Record that another owner took over, tell the listener once (the first reason
        wins); returns the reason."""
        if self._fenced is None:
            self._fenced = exc
            log.warning(
                "managed ledger %s fenced: %s", self._name, exc, extra=log_fields(topic=self._name)
            )
            self._on_fenced()
        return self._fenced

    # ---- the add path ------------------------------------------------------------------

    def add_entry(
        self, data: bytes, num_messages: int, deliver_at_ms: int = 0
    ) -> asyncio.Future[Position]:
        """Append one entry; the future resolves to its position once it is durable."""
        future: asyncio.Future[Position] = asyncio.get_running_loop().create_future()
        if self._fenced is not None:
            future.set_exception(self._fenced)
            return future
        if self._closed:
            future.set_exception(ServiceUnavailableError(f"topic {self._name} is closing"))
            return future
        op = _QueuedAdd(data, num_messages, future, deliver_at_ms)
        if self._rolling is not None or self._current is None or self._queue:
            self._queue.append(op)
            self._ensure_rollover()
        else:
            self._issue(op)
        return future

    def _issue(self, op: _QueuedAdd) -> None:
        handle = self._current
        assert handle is not None
        op.attempts += 1
        added = handle.add_entry(op.data)
        self._issued_entries += 1
        self._issued_bytes += len(op.data)
        added.add_done_callback(lambda f: self._on_added(handle, op, f))
        if self._is_full():
            self._roll_over_if_placeable(handle)

    def _roll_over_if_placeable(self, handle: LedgerHandle) -> None:
        """Roll a full ledger over, unless fewer bookies are live than its ensemble needs
        while it still takes writes (a bookie down in a cluster with no spare): a new ledger
        could not be created, so the full one keeps the writes — past its maximum — until
        the next add finds enough bookies again. A failed ledger rolls over regardless."""
        if not handle.failed and self._live_bookies() < handle.metadata.ensemble_size:
            if not self._rollover_postponed:
                self._rollover_postponed = True
                log.warning(
                    "%s: ledger %d is full, but only %d bookies are live for an ensemble of %d: "
                    "writing on to it until a new ledger can be placed",
                    self._name,
                    handle.ledger_id,
                    self._live_bookies(),
                    handle.metadata.ensemble_size,
                )
            return
        self._rollover_postponed = False
        self._ensure_rollover()

    def _is_full(self) -> bool:
        cfg = self._config
        return (
            self._issued_entries >= cfg.max_entries_per_ledger
            or self._issued_bytes >= cfg.max_size_per_ledger_bytes
            or int(time.time() * 1000) - self._current_created_ms >= cfg.max_ledger_rollover_time_ms
        )

    def _on_added(self, handle: LedgerHandle, op: _QueuedAdd, added: asyncio.Future[int]) -> None:
        if added.cancelled() or added.exception() is not None:
            error = added.exception() if not added.cancelled() else None
            if op.attempts < MAX_ADD_ATTEMPTS and self._fenced is None and not self._closed:
                # Resubmit to a new ledger, in order: failures of one handle arrive in entry
                # order, and they go to the front of the queue ahead of later adds.
                self._resubmit.append(op)
                self._ensure_rollover()
            elif not op.future.done():
                op.future.set_exception(
                    ServiceUnavailableError(f"could not write to {self._name}: {error}")
                )
            return
        entry_id = added.result()
        info = self._list.ledgers[-1]
        if info.ledger_id == handle.ledger_id:
            info.entries = entry_id + 1
            info.size_bytes += len(op.data)
        position = (handle.ledger_id, entry_id)
        self.last_confirmed = position
        self.entries_added += 1
        self._cache.put(
            self._name,
            Entry(handle.ledger_id, entry_id, op.data, op.num_messages, op.deliver_at_ms),
        )
        if not op.future.done():
            op.future.set_result(position)
        self._on_new_entries()

    def _ensure_rollover(self) -> None:
        if self._rolling is None and not self._closed:
            self._rolling = asyncio.get_running_loop().create_task(self._new_rollover())

    def maybe_rollover_by_time(self) -> None:
        """Start a rollover when the ledger open for writing has entries and has reached its
        maximum age (housekeeping calls this: an idle topic issues nothing that would)."""
        if (
            self._current is not None
            and self._rolling is None
            and self._issued_entries > 0
            and int(time.time() * 1000) - self._current_created_ms
            >= self._config.max_ledger_rollover_time_ms
        ):
            self._roll_over_if_placeable(self._current)

    # ---- Rollover (``RolloverOp``, the rollover task) ------------------------------------

    def take_current(self) -> LedgerHandle | None:
        """Take the ledger open for writing out of service and return it (None when there was
        none): adds queue up until ``write_to()`` names the next one."""
        handle = self._current
        self._current = None
        return handle

    def write_to(self, handle: LedgerHandle, created_ms: int) -> None:
        """Make a ledger just recorded in the list (its last one) the one open for writing;
        nothing is issued to it yet."""
        self._current = handle
        self._current_created_ms = created_ms
        self._issued_entries = 0
        self._issued_bytes = 0

    def rollover_finished(self) -> None:
        """The rollover task ends (done or failed): the next add that fills the ledger, or
        fails, starts a new one."""
        self._rolling = None

    def issue_pending(self) -> None:
        """Issue the adds that waited for the rollover to the new ledger, resubmitted ones
        first, in order. Called after ``rollover_finished()``: when the new ledger fills up
        meanwhile (a new rollover started), the rest waits for the next ledger, still in order
        — a ledger never takes more than its maximum however many adds queued up."""
        pending = self._take_pending()
        for index, op in enumerate(pending):
            if self._rolling is not None:
                self._queue = pending[index:]
                break
            self._issue(op)

    def fail_pending(self, error: BaseException) -> None:
        """Fail every add waiting for the rollover (resubmitted and queued) with ``error``."""
        pending = self._take_pending()
        for op in pending:
            if not op.future.done():
                op.future.set_exception(error)

    def _take_pending(self) -> list[_QueuedAdd]:
        """Every add waiting for the rollover, resubmitted ones first, each in order."""
        pending = self._resubmit + self._queue
        self._resubmit = []
        self._queue = []
        return pending

    # ---- shutdown ------------------------------------------------------------------------

    def begin_close(self) -> None:
        """Refuse adds from now on and start no rollover (the first step of closing)."""
        self._closed = True

    async def close(self) -> None:
        """Await the rollover task, then close the ledger open for writing and store its
        final entry count and length in the list (a failed ledger is left to recovery)."""
        self._closed = True
        if self._rolling is not None:
            await asyncio.gather(self._rolling, return_exceptions=True)
        if self._current is not None and not self._current.failed:
            try:
                metadata = await self._current.close()
                info = self._list.ledgers[-1]
                info.entries = metadata.last_entry_id + 1
                info.size_bytes = metadata.length_bytes
                info.timestamp_ms = now_ms()
                await self._list.store()
            except (BookieError, LedgerClientError, TopicFencedError) as exc:
                log.warning("closing %s: %s", self._name, exc, extra=log_fields(topic=self._name))
        self._current = None
