"""Offloading a topic's closed ledgers to object storage: when, in what order, and the state
machine that makes it safe (Pulsar's ``ManagedLedgerImpl.offloadPrefix`` and
``OffloadContext``, ``../shared/reference/pulsar-bookkeeper.md`` §8).

``LedgerOffloadOp`` offloads one closed ledger. Its steps, each a compare-and-set of the
topic's ledger list (``OffloadState.update`` of ``broker.managed_ledger``) where state
changes::

    1. generate a UUID; CAS the ledger's offload state IN_PROGRESS (uuid, object keys)
       — before a single byte is uploaded, so every object ever written is named by a UUID
       that was recorded first
    2. upload the data object and the index object (``tiered``)
    3. verify: read both back, check every block's CRC32C and the whole object's
    4. CAS COMPLETE (checksums, length, completed_ms)
    ... after the namespace's offload deletion lag ...
    5. CAS BOOKIE_DELETED, then delete the bookie copy (metadata first, data second)

A crash or an error between 1 and 4 leaves the ledger IN_PROGRESS with objects that are never
read: the next attempt records a new UUID (and deletes the old attempt's objects), and the
orphan sweep deletes every object under the topic's prefix whose UUID is not recorded
COMPLETE. The sweep lists first and then compare-and-sets the ledger list (clearing stale
IN_PROGRESS records) before it deletes anything, so an attempt it may delete can never be
recorded COMPLETE afterwards, even by a stale owner. Nothing ever deletes the bookie copy of
a ledger that is not COMPLETE, and trimming skips a ledger while it is being offloaded.

``ManagedLedgerOffloader`` is the per-topic owner of one background task that runs offload
passes one at a time: after a ledger rolls over and at housekeeping (automatic: offload the
oldest closed ledgers while the bytes kept on bookies exceed the namespace's offload
threshold), on an admin request (manual: every closed ledger past the given threshold), then
the deletions whose lag has passed. A failed pass is retried with backoff from housekeeping.
The task is cancelled when the topic's managed ledger closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from bookie.ledger import STATE_CLOSED, LedgerReader
from broker.managed_ledger import LedgerInfo, ManagedLedger
from broker.metrics import OFFLOAD_BYTES, OFFLOAD_DURATION_SECONDS, OFFLOAD_ERRORS
from strata.clock import now_ms
from strata.logging_setup import log_fields
from strata.naming import TopicName
from tiered import OFFLOAD_COMPLETE, OFFLOAD_IN_PROGRESS, OffloadContext, Offloader
from tiered.format import OffloadKeys

log = logging.getLogger(__name__)

STATUS_NOT_RUN = "NOT_RUN"
STATUS_RUNNING = "RUNNING"
STATUS_SUCCESS = "SUCCESS"
STATUS_ERROR = "ERROR"
TRIGGER_MANUAL = "manual"
TRIGGER_AUTOMATIC = "automatic"
# Offload passes one task runs before it ends (a new request starts a new task).
MAX_PASSES_PER_TASK = 100
# A failed manual request is retried this many times, then given up (status stays ERROR).
MAX_MANUAL_ATTEMPTS = 30
RETRY_INITIAL_BACKOFF_MS = 1_000
RETRY_MAX_BACKOFF_MS = 5 * 60 * 1000
# The orphan sweep lists the topic's objects at load, after a failure, and this often.
SWEEP_INTERVAL_MS = 60 * 60 * 1000
# A topic whose namespace has automatic offload off re-reads the policy this often.
POLICY_REFRESH_MS = 30_000
MAX_ERROR_LENGTH = 1000


@dataclass(frozen=True, slots=True)
class OffloadPolicy:
    """A namespace's offload policy: ``threshold_bytes`` < 0 turns automatic offload off."""

    threshold_bytes: int
    deletion_lag_ms: int


@dataclass(frozen=True, slots=True)
class OffloadStatus:
    """What ``strata admin topics offload-status`` shows: the last run, and the topic now."""

    status: str = STATUS_NOT_RUN
    error: str = ""
    trigger: str = ""
    started_ms: int = 0
    finished_ms: int = 0
    run_ledgers_offloaded: int = 0
    run_bytes_offloaded: int = 0
    offloaded_ledgers: int = 0
    bookie_deleted_ledgers: int = 0
    offloaded_bytes: int = 0
    bookie_resident_bytes: int = 0
    closed_ledgers: int = 0


def ledgers_to_offload(ledgers: list[LedgerInfo], threshold_bytes: int) -> list[int]:
    """Pulsar's rule: walking from the newest ledger back, once the bytes summed exceed the
    threshold, every older closed ledger not yet offloaded is a candidate. Oldest first; the
    last ledger (the one open for writing) never is one."""
    if not ledgers:
        return []
    total = ledgers[-1].size_bytes
    chosen: list[int] = []
    for info in reversed(ledgers[:-1]):
        total += info.size_bytes
        if info.entries == 0 or (info.offload is not None and info.offload.complete):
            continue
        if total > threshold_bytes:
            chosen.append(info.ledger_id)
    chosen.reverse()
    return chosen


class LedgerOffloadOp:
    """Offloads one closed ledger of a managed ledger; see the module docstring for the steps.

    ``run()`` returns the bytes uploaded, or 0 when there was nothing to do (the ledger left
    the list, is the open one, is not closed, or is already offloaded). It raises on any
    failure, leaving the ledger IN_PROGRESS for the next attempt and the sweep.
    """

    def __init__(
        self,
        ledger: ManagedLedger,
        offloader: Offloader,
        topic: TopicName,
        ledger_id: int,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self._ledger = ledger
        self._offloader = offloader
        self._topic = topic
        self._ledger_id = ledger_id
        self._clock = clock

    async def run(self) -> int:
        ledger, offloader, ledger_id = self._ledger, self._offloader, self._ledger_id
        info = ledger.ledger_info(ledger_id)
        if info is None or info.entries == 0 or not ledger.ledgers:
            return 0
        if ledger.ledgers[-1].ledger_id == ledger_id:
            return 0
        if info.offload is not None and info.offload.complete:
            return 0
        metadata = await ledger.manager.read_metadata(ledger_id)
        if metadata is None or metadata.state != STATE_CLOSED:
            log.info("ledger %d of %s is not closed; not offloaded", ledger_id, ledger.name)
            return 0
        previous = info.offload
        attempt = uuid.uuid4().hex
        keys = offloader.keys(self._topic, ledger_id, attempt)
        context = OffloadContext(
            uuid=attempt,
            state=OFFLOAD_IN_PROGRESS,
            driver=offloader.driver,
            location=dict(offloader.location),
            data_key=keys.data_key,
            index_key=keys.index_key,
            started_ms=self._clock(),
        )
        ledger.offload_state.offloading.add(ledger_id)
        try:
            # Step 1: recorded before any upload.
            if ledger_id not in await ledger.offload_state.update({ledger_id: context}):
                return 0
            if previous is not None:
                # The earlier attempt can no longer be completed (its UUID was replaced).
                await self._delete_quietly(OffloadKeys(previous.data_key, previous.index_key))
            # Steps 2 and 3.
            result = await offloader.offload(
                LedgerReader(ledger.manager, metadata), self._topic, attempt
            )
            await offloader.verify(result)
            # Step 4.
            complete = context.completed(
                result.data_length, result.data_crc32c, result.index_crc32c, self._clock()
            )
            if ledger_id not in await ledger.offload_state.update({ledger_id: complete}):
                await self._delete_quietly(result.keys)
                return 0
            OFFLOAD_BYTES.inc(result.data_length)
            OFFLOAD_DURATION_SECONDS.observe((self._clock() - context.started_ms) / 1000)
            log.info(
                "offloaded ledger %d of %s (%d entries, %d bytes) to %s",
                ledger_id,
                ledger.name,
                result.entry_count,
                result.data_length,
                keys.data_key,
                extra=log_fields(topic=ledger.name, ledger=ledger_id),
            )
            return result.data_length
        finally:
            ledger.offload_state.offloading.discard(ledger_id)

    async def _delete_quietly(self, keys: OffloadKeys) -> None:
        if not keys.data_key:
            return
        try:
            await self._offloader.delete(keys)
        except Exception as exc:
            log.warning("could not delete %s (the sweep will): %s", keys.data_key, exc)


class ManagedLedgerOffloader:
    """The offloading of one topic: one owned background task, one pass at a time.

    Created by the managed ledger it serves, from the factory ``BrokerService`` passes to its
    constructor when an offloader is configured, and reached as ``ledger.offload``. Lifecycle:
    ``request_offload()`` / ``on_ledger_closed()`` (told by the ledger's rollover) /
    ``on_housekeeping()`` start the task if it is not running → passes → ``close()`` (run by
    the managed ledger's close) cancels it.
    """

    def __init__(
        self,
        ledger: ManagedLedger,
        topic: TopicName,
        offloader: Offloader,
        policy: Callable[[], Awaitable[OffloadPolicy]],
        *,
        retry_initial_backoff_ms: int = RETRY_INITIAL_BACKOFF_MS,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self._ledger = ledger
        self._topic = topic
        self._offloader = offloader
        self._policy = policy
        self._clock = clock
        self._retry_initial_backoff_ms = retry_initial_backoff_ms
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._manual: int | None = None  # requested threshold of a manual offload
        self._automatic = False
        self._status = OffloadStatus()
        # After a failed pass: what to retry, and when.
        self._failed_manual: int | None = None
        self._failures = 0
        self._manual_attempts = 0
        self._retry_at_ms = 0
        self._sweep_due_ms = 0  # 0: sweep at the next pass
        # Until then housekeeping skips this topic (automatic offload was off at the last
        # look and nothing awaited deletion); 0: look at every housekeeping.
        self._idle_until_ms = 0

    # ---- triggers ------------------------------------------------------------------------

    def request_offload(self, threshold_bytes: int) -> OffloadStatus:
        """Manual offload of every closed ledger past ``threshold_bytes`` (0: all of them).
        A request while a pass runs is queued (the smallest threshold wins)."""
        assert threshold_bytes >= 0
        if self._manual is None or threshold_bytes < self._manual:
            self._manual = threshold_bytes
        self._manual_attempts = 0
        self._failed_manual = None
        self._status = replace(
            self._status,
            status=STATUS_RUNNING,
            error="",
            trigger=TRIGGER_MANUAL,
            started_ms=self._clock(),
            finished_ms=0,
            run_ledgers_offloaded=0,
            run_bytes_offloaded=0,
        )
        self._ensure_task()
        return self.status()

    def on_ledger_closed(self) -> None:
        self._automatic = True
        self._ensure_task()

    def on_housekeeping(self) -> None:
        """Periodic: automatic offload, deletions whose lag has passed, retries."""
        now = self._clock()
        if self._failures and now < self._retry_at_ms:
            return
        if self._failed_manual is not None and self._manual is None:
            self._manual = self._failed_manual
        elif self._idle_until_ms > now and not any(
            info.offload is not None and not info.offload.bookie_deleted
            for info in self._ledger.ledgers
        ):
            # Automatic offload is off for the namespace and nothing awaits deletion: read the
            # policy again only now and then (a broker may hold thousands of idle topics).
            return
        self._automatic = True
        self._ensure_task()

    def _ensure_task(self) -> None:
        if self._closed or self._ledger.is_fenced:
            return
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def status(self) -> OffloadStatus:
        ledgers = self._ledger.ledgers
        closed = ledgers[:-1]
        complete = [i for i in closed if i.offload is not None and i.offload.complete]
        return replace(
            self._status,
            offloaded_ledgers=len(complete),
            bookie_deleted_ledgers=sum(
                1 for i in complete if i.offload and i.offload.bookie_deleted
            ),
            offloaded_bytes=sum(i.size_bytes for i in complete),
            bookie_resident_bytes=sum(
                i.size_bytes for i in ledgers if i.offload is None or not i.offload.bookie_deleted
            ),
            closed_ledgers=sum(1 for i in closed if i.entries > 0),
        )

    # ---- the task ------------------------------------------------------------------------

    async def _run(self) -> None:
        for _ in range(MAX_PASSES_PER_TASK):
            if self._closed or self._ledger.is_fenced:
                return
            manual, automatic = self._manual, self._automatic
            if manual is None and not automatic:
                return
            self._manual, self._automatic = None, False
            try:
                await self._pass(manual)
            except Exception:
                # A bug, not an outage (those are handled in the pass): logged, and the next
                # trigger runs a new pass rather than the task dying unseen.
                log.exception("offload pass of %s failed", self._ledger.name)
                return

    async def _pass(self, manual: int | None) -> None:
        try:
            policy = await self._policy()
        except Exception as exc:
            self._failed(manual, f"reading the namespace's offload policy: {exc}")
            return
        threshold = manual if manual is not None else policy.threshold_bytes
        self._idle_until_ms = self._clock() + POLICY_REFRESH_MS if policy.threshold_bytes < 0 else 0
        if self._sweep_due_ms <= self._clock() and (
            threshold >= 0 or any(i.offload is not None for i in self._ledger.ledgers)
        ):
            await self._sweep()
        if threshold >= 0:
            candidates = ledgers_to_offload(self._ledger.ledgers, threshold)
            if candidates or manual is not None:
                await self._offload(candidates, manual)
        # Also after a failure: the ledgers verified before it need no object store for this.
        await self._delete_bookie_copies(policy.deletion_lag_ms)

    async def _offload(self, candidates: list[int], manual: int | None) -> None:
        if manual is None:
            self._status = replace(
                self._status,
                status=STATUS_RUNNING,
                error="",
                trigger=TRIGGER_AUTOMATIC,
                started_ms=self._clock(),
                finished_ms=0,
                run_ledgers_offloaded=0,
                run_bytes_offloaded=0,
            )
        try:
            for ledger_id in candidates:
                uploaded = await LedgerOffloadOp(
                    self._ledger, self._offloader, self._topic, ledger_id, self._clock
                ).run()
                if uploaded:
                    self._status = replace(
                        self._status,
                        run_ledgers_offloaded=self._status.run_ledgers_offloaded + 1,
                        run_bytes_offloaded=self._status.run_bytes_offloaded + uploaded,
                    )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning(
                "offloading %s failed: %s",
                self._ledger.name,
                exc,
                extra=log_fields(topic=self._ledger.name),
            )
            self._failed(manual, str(exc) or type(exc).__name__)
            return
        self._failures = 0
        self._failed_manual = None
        if self._manual is None:  # a request queued meanwhile keeps the status RUNNING
            self._status = replace(
                self._status, status=STATUS_SUCCESS, error="", finished_ms=self._clock()
            )

    def _failed(self, manual: int | None, error: str) -> None:
        OFFLOAD_ERRORS.inc()
        self._failures += 1
        backoff = min(
            self._retry_initial_backoff_ms * 2 ** min(self._failures - 1, 20),
            RETRY_MAX_BACKOFF_MS,
        )
        self._retry_at_ms = self._clock() + backoff
        self._sweep_due_ms = 0
        if manual is not None:
            self._manual_attempts += 1
            self._failed_manual = manual if self._manual_attempts < MAX_MANUAL_ATTEMPTS else None
        self._status = replace(
            self._status,
            status=STATUS_ERROR,
            error=error[:MAX_ERROR_LENGTH],
            finished_ms=self._clock(),
        )

    async def _delete_bookie_copies(self, deletion_lag_ms: int) -> None:
        """Step 5 for every COMPLETE ledger whose lag has passed: CAS, then delete."""
        now = self._clock()
        due = {
            info.ledger_id: info.offload.with_bookie_deleted(now)
            for info in self._ledger.ledgers[:-1]
            if info.offload is not None
            and info.offload.state == OFFLOAD_COMPLETE
            and now - info.offload.completed_ms >= deletion_lag_ms
        }
        if not due:
            return
        try:
            recorded = await self._ledger.offload_state.update(due)
        except Exception as exc:
            log.warning("recording bookie deletions of %s failed: %s", self._ledger.name, exc)
            return
        for ledger_id in sorted(recorded):
            await self._ledger.offload_state.delete_bookie_copy(ledger_id)

    async def _sweep(self) -> None:
        """Delete objects under the topic's prefix that no COMPLETE record names (orphans of
        crashed or failed attempts), and bookie copies a BOOKIE_DELETED record says are gone
        but whose deletion failed. See the module docstring for why the order is safe."""
        ledger = self._ledger
        try:
            listed = await self._offloader.list_objects(self._topic)
            stale: dict[int, OffloadContext | None] = {
                info.ledger_id: None
                for info in ledger.ledgers
                if info.offload is not None
                and info.offload.state == OFFLOAD_IN_PROGRESS
                and info.ledger_id not in ledger.offload_state.offloading
            }
            keep = self._kept_attempts()
            orphans = [o.info for o in listed if o.name is not None and o.name.uuid not in keep]
            if orphans or stale:
                # Stored even without changes: success proves we still own the list, and the
                # new version makes any other writer's later compare-and-set fail.
                await ledger.offload_state.update(stale)
                keep = self._kept_attempts()
                orphans = [o.info for o in listed if o.name is not None and o.name.uuid not in keep]
            if orphans:
                log.info("deleting %d orphan objects of %s", len(orphans), ledger.name)
                await self._offloader.delete_objects(orphans)
            for info in list(ledger.ledgers[:-1]):
                if info.offload is not None and info.offload.bookie_deleted:
                    if await ledger.manager.read_metadata(info.ledger_id) is not None:
                        await ledger.offload_state.delete_bookie_copy(info.ledger_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("orphan sweep of %s failed: %s", ledger.name, exc)
            self._sweep_due_ms = self._clock() + self._retry_initial_backoff_ms
            return
        self._sweep_due_ms = self._clock() + SWEEP_INTERVAL_MS

    def _kept_attempts(self) -> set[str]:
        """UUIDs whose objects may hold data: recorded COMPLETE, or being uploaded by this
        process right now."""
        ledger = self._ledger
        return {
            info.offload.uuid
            for info in ledger.ledgers
            if info.offload is not None
            and (info.offload.complete or info.ledger_id in ledger.offload_state.offloading)
        }

    async def wait_idle(self, timeout_s: float) -> None:
        """Until no pass is running (for tests and tools)."""
        async with asyncio.timeout(timeout_s):
            while self._task is not None and not self._task.done():
                await asyncio.wait([self._task])

    async def close(self) -> None:
        self._closed = True
        task = self._task
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self._task = None
