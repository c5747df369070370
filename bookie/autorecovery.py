"""Autorecovery: find ledgers with fewer than Qw good copies and copy them back to health.

Two roles run in every bookie process (BookKeeper's ``Auditor`` and ``ReplicationWorker``):

* **Auditor** — one at a time in the cluster, elected by creating the ephemeral key
  ``/autorecovery/auditor`` (the holder's session ending frees it for the next candidate).
  It audits every ledger when the set of live bookies changes (after ``lost_bookie_grace_ms``)
  and every ``audit_interval_ms``. A fragment is *under-replicated* when its ensemble lists

  - a bookie that is not available, or
  - a bookie the writer replaced in the next fragment (an ensemble change after an error or a
    timeout: that bookie may miss entries the others acknowledged, e.g. while it was paused).

  The last fragment of an OPEN ledger is left to its writer, which changes the ensemble
  itself when a bookie fails. The auditor writes ``/autorecovery/underreplicated/<ledger id>``
  with the bookies to replace, and removes markers of ledgers that no longer need repair.

* **Worker** — in every bookie. It takes a marker, locks the ledger with the ephemeral key
  ``/autorecovery/locks/<ledger id>``, and for each under-replicated fragment copies the
  entries of the bookie to replace from the surviving copies to a live bookie outside the
  fragment's ensemble, then swaps it into the ledger metadata by compare-and-set
  (``LedgerManager.replace_bookie``). When nothing is left to repair the marker goes.

Both are bounded: one audit at a time, one ledger repaired at a time per worker, every pause
has its unit in its name. ``Autorecovery.close`` cancels and awaits every task it owns.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass

import grpc

from bookie.errors import BookieError
from bookie.ledger import LEDGERS_PREFIX, LedgerClientConfig, LedgerManager
from bookie.ledger.metadata import (
    STATE_CLOSED,
    LedgerMetadata,
    ledger_fragments,
    slot_stores_entry,
)
from bookie.registry import (
    AUDITOR_KEY,
    UNDER_REPLICATED_PREFIX,
    BookieClientPool,
    BookieRegistry,
)
from strata.auth.credentials import TokenSource
from strata.config_binding import setting
from strata.logging_setup import log_fields
from strata.metadata import BadVersionError, MetadataError, MetadataStore, MetadataStoreClosedError

log = logging.getLogger(__name__)

LOCKS_PREFIX = "/autorecovery/locks/"


@dataclass(frozen=True, slots=True)
class AutorecoveryConfig:
    # How long a bookie must stay unavailable before its ledgers count as under-replicated
    # (a quick restart then costs no copying).
    lost_bookie_grace_ms: int = setting(
        5_000, "how long a bookie stays gone before the auditor re-replicates its ledgers"
    )
    # A full audit also runs this often, catching anything a missed change left behind.
    audit_interval_ms: int = setting(60_000, "how often the auditor checks every ledger")
    worker_poll_interval_ms: int = setting(
        2_000, "how often a worker looks for under-replicated ledgers (and at once after an audit)"
    )
    election_interval_ms: int = setting(2_000, "how often auditor candidates retry the election")
    check_timeout_ms: int = setting(
        5_000, "one check of what a bookie holds (a read of its last entry) during an audit"
    )
    max_entry_size_bytes: int = setting(
        8 * 1024 * 1024 + 64 * 1024, "largest entry a copy moves between bookies"
    )


def marker_key(ledger_id: int) -> str:
    return f"{UNDER_REPLICATED_PREFIX}{ledger_id:020d}"


def lock_key(ledger_id: int) -> str:
    return f"{LOCKS_PREFIX}{ledger_id:020d}"


@dataclass(frozen=True, slots=True)
class Suspects:
    """Per fragment (by first entry id): bookies that are down, and bookies the writer
    replaced in the next fragment (which may or may not hold every entry they should)."""

    unavailable: dict[int, list[str]]
    replaced: dict[int, list[tuple[int, str, int]]]  # (slot, bookie, fragment's last entry)


def find_suspects(metadata: LedgerMetadata, available: set[str]) -> Suspects:
    """Pure part of the audit of one ledger (see the module doc)."""
    fragments = ledger_fragments(metadata)
    unavailable: dict[int, list[str]] = {}
    replaced: dict[int, list[tuple[int, str, int]]] = {}
    for index, fragment in enumerate(fragments):
        if index == len(fragments) - 1 and metadata.state != STATE_CLOSED:
            continue  # the open tail: its writer replaces failed bookies itself
        last = fragment.last_entry_id
        if last is None or last < fragment.first_entry_id:
            continue  # empty fragment: nothing stored, nothing to copy
        down = [b for b in fragment.ensemble if b not in available]
        if down:
            unavailable[fragment.first_entry_id] = down
        if index + 1 < len(fragments):
            following = fragments[index + 1].ensemble
            changed = [
                (slot, bookie, last)
                for slot, bookie in enumerate(fragment.ensemble)
                if bookie in available and bookie not in following
            ]
            if changed:
                replaced[fragment.first_entry_id] = changed
    return Suspects(unavailable, replaced)


def last_entry_on_slot(
    metadata: LedgerMetadata, slot: int, first_entry_id: int, last_entry_id: int
) -> int:
    """The highest entry of the fragment that the bookie at ``slot`` must hold (-1: none)."""
    for entry_id in range(
        last_entry_id, max(first_entry_id, last_entry_id - metadata.ensemble_size) - 1, -1
    ):
        if slot_stores_entry(slot, entry_id, metadata.ensemble_size, metadata.write_quorum):
            return entry_id
    return -1


class Autorecovery:
    """The auditor candidate and the replication worker of one bookie process."""

    def __init__(
        self,
        store: MetadataStore,
        bookie_id: str,
        registry: BookieRegistry,
        manager: LedgerManager,
        config: AutorecoveryConfig,
        *,
        owned: tuple[BookieRegistry, BookieClientPool] | None = None,
    ) -> None:
        self._store = store
        self._bookie_id = bookie_id
        self._registry = registry
        self._manager = manager
        self.config = config
        self._owned = owned
        self._tasks: list[asyncio.Task[None]] = []
        # Auditor key and ledger locks are ephemeral, in a session of their own (reopened if
        # its lease expires), so that they vanish with this process.
        self._session: MetadataStore | None = None
        self._audit_due = asyncio.Event()
        self._work_due = asyncio.Event()
        self.is_auditor = False
        self.audits_run = 0
        self.fragments_replicated = 0
        self.under_replicated_ledgers = 0  # marked by this process's last audit

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._registry.add_listener(self._on_bookies_changed)
        self._tasks = [
            loop.create_task(self._auditor_loop(), name="autorecovery-auditor"),
            loop.create_task(self._worker_loop(), name="autorecovery-worker"),
        ]

    def _on_bookies_changed(self) -> None:
        self._audit_due.set()

    # ---- auditor ---------------------------------------------------------------------------

    async def _auditor_loop(self) -> None:
        while True:
            try:
                if not self.is_auditor:
                    await self._try_become_auditor()
                if self.is_auditor:
                    await self._audit_cycle()
                else:
                    await asyncio.sleep(self.config.election_interval_ms / 1000)
            except MetadataError as exc:
                # Also a session whose lease expired (MetadataStoreClosedError): the next
                # round opens a new one. The owner cancels this task when the store closes.
                log.warning("auditor: metadata store error: %s", exc)
                self.is_auditor = False
                await asyncio.sleep(self.config.election_interval_ms / 1000)

    async def _ephemeral_session(self) -> MetadataStore:
        session = self._session
        if session is not None:
            try:
                await session.get(AUDITOR_KEY)  # raises once the session's lease is gone
                return session
            except MetadataStoreClosedError:
                self.is_auditor = False
        self._session = await self._store.open_session()
        return self._session

    async def _try_become_auditor(self) -> None:
        session = await self._ephemeral_session()
        try:
            await session.put(
                AUDITOR_KEY, self._bookie_id.encode(), expected_version=0, ephemeral=True
            )
        except BadVersionError:
            return
        self.is_auditor = True
        log.info("bookie %s is now the autorecovery auditor", self._bookie_id)

    async def _audit_cycle(self) -> None:
        """Audit now, then wait for a bookie change (plus the grace period) or the interval."""
        await self.audit_once()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.config.audit_interval_ms / 1000):
                await self._audit_due.wait()
                await asyncio.sleep(self.config.lost_bookie_grace_ms / 1000)
        self._audit_due.clear()
        # Still the auditor? The key is ours only while our session lives.
        record = await self._store.get(AUDITOR_KEY)
        if record is None or record.value.decode() != self._bookie_id:
            self.is_auditor = False

    async def audit_once(self) -> int:
        """Mark every under-replicated ledger and clear stale markers; returns how many are
        marked now."""
        available = set(self._registry.available())
        marked: set[int] = set()
        for record in await self._store.list(LEDGERS_PREFIX):
            metadata = LedgerMetadata.from_json(record.value, record.version)
            bad = await self.under_replicated(metadata, available)
            if not bad:
                continue
            marked.add(metadata.ledger_id)
            body = json.dumps({str(k): v for k, v in sorted(bad.items())}, sort_keys=True)
            existing = await self._store.get(marker_key(metadata.ledger_id))
            if existing is None or existing.value != body.encode():
                await self._store.put(marker_key(metadata.ledger_id), body.encode())
                log.info(
                    "ledger %d is under-replicated: %s",
                    metadata.ledger_id,
                    body,
                    extra=log_fields(ledger=metadata.ledger_id),
                )
        for key in await self._store.list_keys(UNDER_REPLICATED_PREFIX):
            if int(key[len(UNDER_REPLICATED_PREFIX) :]) not in marked:
                await self._store.delete(key)
        self.audits_run += 1
        self.under_replicated_ledgers = len(marked)
        if marked:
            self._work_due.set()
        return len(marked)

    async def under_replicated(
        self, metadata: LedgerMetadata, available: set[str]
    ) -> dict[int, list[str]]:
        """Fragment first entry id → bookies to replace: those down, and those the writer
        replaced that do not hold every entry of the fragment they should (a bookie paused
        for a while misses the entries the others acknowledged meanwhile)."""
        suspects = find_suspects(metadata, available)
        result = {first: list(bad) for first, bad in suspects.unavailable.items()}
        for first, changed in suspects.replaced.items():
            for slot, bookie, last in changed:
                needed = last_entry_on_slot(metadata, slot, first, last)
                if needed < 0 or await self._holds(bookie, metadata.ledger_id, needed):
                    continue
                result.setdefault(first, []).append(bookie)
        return result

    async def _holds(self, bookie: str, ledger_id: int, entry_id: int) -> bool:
        """True if ``bookie`` stores entries of the ledger up to ``entry_id``; an error counts
        as "no" (copying a fragment again is harmless, missing a copy is not)."""
        try:
            async with asyncio.timeout(self.config.check_timeout_ms / 1000):
                state = await self._manager.resolve(bookie).read_last_add_confirmed(ledger_id)
        except (BookieError, TimeoutError, OSError):
            return False
        return state.last_entry_id >= entry_id

    def _replacement(
        self, metadata: LedgerMetadata, first_entry_id: int, old: str, available: set[str]
    ) -> str | None:
        """A live bookie outside the fragment's ensemble; the writer's own replacement (the
        bookie in the same slot of the next fragment) when it qualifies."""
        ensemble = metadata.ensembles[first_entry_id]
        later = sorted(k for k in metadata.ensembles if k > first_entry_id)
        if later:
            following = metadata.ensembles[later[0]][ensemble.index(old)]
            if following in available and following not in ensemble:
                return following
        candidates = sorted(available - set(ensemble))
        if not candidates:
            return None
        return candidates[(metadata.ledger_id + first_entry_id) % len(candidates)]

    # ---- worker ----------------------------------------------------------------------------

    async def _worker_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.worker_poll_interval_ms / 1000):
                    await self._work_due.wait()
            self._work_due.clear()
            try:
                await self.work_once()
            except MetadataError as exc:
                log.warning("replication worker: metadata store error: %s", exc)

    async def work_once(self) -> int:
        """Repair every marked ledger this worker can lock; returns fragments copied."""
        copied = 0
        for key in await self._store.list_keys(UNDER_REPLICATED_PREFIX):
            ledger_id = int(key[len(UNDER_REPLICATED_PREFIX) :])
            session = await self._ephemeral_session()
            try:
                await session.put(
                    lock_key(ledger_id),
                    self._bookie_id.encode(),
                    expected_version=0,
                    ephemeral=True,
                )
            except BadVersionError:
                continue  # another worker has it
            try:
                copied += await self._repair(ledger_id)
            finally:
                with contextlib.suppress(MetadataError):
                    await session.delete(lock_key(ledger_id))
        return copied

    async def _repair(self, ledger_id: int) -> int:
        metadata = await self._manager.read_metadata(ledger_id)
        if metadata is None:
            await self._store.delete(marker_key(ledger_id))
            return 0
        copied = 0
        available = set(self._registry.available())
        for first_entry_id, bad in (await self.under_replicated(metadata, available)).items():
            for old in bad:
                current = await self._manager.read_metadata(ledger_id)
                if current is None:
                    return copied
                ensemble = current.ensembles.get(first_entry_id, [])
                if old not in ensemble:
                    continue
                new = self._replacement(current, first_entry_id, old, available)
                if new is None:
                    log.warning(
                        "ledger %d: no bookie to replace %s with; will retry",
                        ledger_id,
                        old,
                        extra=log_fields(ledger=ledger_id),
                    )
                    return copied
                try:
                    await self._manager.replace_bookie(ledger_id, first_entry_id, old, new)
                except Exception as exc:
                    log.warning(
                        "ledger %d: copying fragment %d from %s to %s failed: %s",
                        ledger_id,
                        first_entry_id,
                        old,
                        new,
                        exc,
                        extra=log_fields(ledger=ledger_id),
                    )
                    return copied
                copied += 1
                self.fragments_replicated += 1
                log.info(
                    "ledger %d: fragment %d re-replicated, %s replaced by %s",
                    ledger_id,
                    first_entry_id,
                    old,
                    new,
                    extra=log_fields(ledger=ledger_id),
                )
        final = await self._manager.read_metadata(ledger_id)
        if final is None or not await self.under_replicated(final, set(self._registry.available())):
            await self._store.delete(marker_key(ledger_id))
        return copied

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self._session is not None:
            with contextlib.suppress(MetadataError):
                await self._session.close()  # frees the auditor key and any lock
        if self._owned is not None:
            registry, pool = self._owned
            await registry.close()
            await pool.close()


async def start_autorecovery(
    store: MetadataStore,
    bookie_id: str,
    config: AutorecoveryConfig | None = None,
    ledger_config: LedgerClientConfig | None = None,
    token: TokenSource | None = None,
    credentials: grpc.ChannelCredentials | None = None,
) -> Autorecovery:
    """Start the auditor candidate and a worker for a bookie process; the returned object owns
    its registry, bookie clients and tasks."""
    config = config or AutorecoveryConfig()
    registry = BookieRegistry(store)
    await registry.start()
    pool = BookieClientPool(
        max_entry_size_bytes=config.max_entry_size_bytes, token=token, credentials=credentials
    )
    manager = LedgerManager(store, registry.available, pool.get, ledger_config)
    recovery = Autorecovery(store, bookie_id, registry, manager, config, owned=(registry, pool))
    recovery.start()
    return recovery
