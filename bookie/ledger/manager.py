"""``LedgerManager``: creates, recovers, deletes and repairs ledgers.

It owns no task and no connection: it holds the metadata store, the function that lists the
live bookies and the function that turns a bookie address into a ``BookieClient``. Handles,
readers and the multi-step operations (``LedgerRecoveryOp``, ``FragmentReplicator``) borrow
them. Every metadata change goes through :meth:`LedgerManager.update_metadata`, the one
compare-and-set loop (BookKeeper's ``MetadataUpdateLoop``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

from bookie.api import BookieClient
from bookie.ledger.config import LedgerClientConfig
from bookie.ledger.errors import (
    BookieTimeoutError,
    LedgerClientError,
    LedgerMetadataConflictError,
    NotEnoughBookiesError,
)
from bookie.ledger.metadata import Fragment, LedgerMetadata, ledger_fragments, ledger_key
from bookie.ledger.recovery import LedgerRecoveryOp
from bookie.ledger.replication import FragmentReplicator
from bookie.ledger.writer import LedgerHandle
from strata.metadata import (
    BadVersionError,
    MetadataError,
    MetadataStore,
    MetadataStoreUnavailableError,
    Record,
)

log = logging.getLogger(__name__)

LEDGER_ID_COUNTER_KEY = "/counters/ledger-id"
ID_ALLOCATION_MAX_ATTEMPTS = 100

BookieResolver = Callable[[str], BookieClient]
# Given the metadata as stored, return the metadata wanted (same version), or None when the
# stored metadata already is as wanted. May raise to give up.
MetadataMutation = Callable[[LedgerMetadata], LedgerMetadata | None]


class LedgerManager:
    """Creates, opens, recovers, deletes and repairs ledgers; owns nothing but references.

    ``bookies`` lists the addresses of the live bookies (an ensemble, or a replacement, is
    chosen among them); ``resolve`` turns an address into a client. Both are given by the
    process role (standalone: one local bookie). ``config`` bounds every call.
    """

    def __init__(
        self,
        store: MetadataStore,
        bookies: Callable[[], Sequence[str]],
        resolve: BookieResolver,
        config: LedgerClientConfig | None = None,
    ) -> None:
        self._store = store
        self._bookies = bookies
        self._resolve = resolve
        self._config = config or LedgerClientConfig()

    @property
    def store(self) -> MetadataStore:
        return self._store

    @property
    def config(self) -> LedgerClientConfig:
        return self._config

    def resolve(self, address: str) -> BookieClient:
        return self._resolve(address)

    def live_bookies(self) -> list[str]:
        """The live bookie addresses, without duplicates, in the order ``bookies()`` gives."""
        return list(dict.fromkeys(self._bookies()))

    # ---- metadata ----------------------------------------------------------------------

    async def _get(self, key: str) -> Record | None:
        try:
            async with asyncio.timeout(self._config.metadata_timeout_ms / 1000):
                return await self._store.get(key)
        except TimeoutError:
            raise MetadataStoreUnavailableError(
                f"metadata store did not answer a get of {key} within "
                f"{self._config.metadata_timeout_ms} ms"
            ) from None

    async def _put(self, key: str, value: bytes, expected_version: int) -> Record:
        try:
            async with asyncio.timeout(self._config.metadata_timeout_ms / 1000):
                return await self._store.put(key, value, expected_version=expected_version)
        except TimeoutError:
            # The put may or may not have taken effect; update_metadata re-reads to find out.
            raise MetadataStoreUnavailableError(
                f"metadata store did not answer a put of {key} within "
                f"{self._config.metadata_timeout_ms} ms"
            ) from None

    async def read_metadata(self, ledger_id: int) -> LedgerMetadata | None:
        record = await self._get(ledger_key(ledger_id))
        if record is None:
            return None
        return LedgerMetadata.from_json(record.value, record.version)

    async def write_metadata(self, metadata: LedgerMetadata) -> LedgerMetadata:
        """Compare-and-set the metadata at the version it was read; raise on a conflict."""
        try:
            record = await self._put(
                ledger_key(metadata.ledger_id), metadata.to_json(), metadata.version
            )
        except BadVersionError as exc:
            raise LedgerMetadataConflictError(
                f"ledger {metadata.ledger_id} metadata changed concurrently"
            ) from exc
        return replace(metadata, version=record.version)

    async def update_metadata(
        self, base: LedgerMetadata, mutate: MetadataMutation
    ) -> LedgerMetadata:
        """Apply ``mutate`` by compare-and-set until it lands (BookKeeper's MetadataUpdateLoop).

        ``mutate`` first sees ``base``; after a lost compare-and-set it sees the metadata as
        stored now and decides again (merge, give up by raising, or return None when nothing
        is left to do). A store error or timeout leaves the outcome unknown: the metadata is
        re-read and, if it already holds what we wanted, that counts as success. Bounded by
        ``max_metadata_update_attempts``.
        """
        config = self._config
        current = base
        last_error: BaseException | None = None
        for attempt in range(1, config.max_metadata_update_attempts + 1):
            desired = mutate(current)
            if desired is None:
                return current
            try:
                return await self.write_metadata(desired)
            except LedgerMetadataConflictError as exc:
                last_error = exc
            except MetadataError as exc:
                if not exc.retriable:
                    raise
                last_error = exc
                await asyncio.sleep(config.metadata_retry_backoff_ms * attempt / 1000)
            try:
                fresh = await self.read_metadata(base.ledger_id)
            except MetadataError as exc:
                if not exc.retriable:
                    raise
                last_error = exc
                await asyncio.sleep(config.metadata_retry_backoff_ms * attempt / 1000)
                continue
            if fresh is None:
                raise LedgerClientError(f"ledger {base.ledger_id} was deleted")
            if fresh.same_content(desired):
                return fresh  # our own write landed although its answer was lost
            current = fresh
        raise LedgerClientError(
            f"ledger {base.ledger_id}: metadata update gave up after "
            f"{config.max_metadata_update_attempts} attempts: {last_error}"
        ) from last_error

    # ---- create / delete ---------------------------------------------------------------

    async def _allocate_ledger_id(self) -> int:
        for _ in range(ID_ALLOCATION_MAX_ATTEMPTS):
            record = await self._get(LEDGER_ID_COUNTER_KEY)
            current = int(record.value) if record else 0
            try:
                await self._put(
                    LEDGER_ID_COUNTER_KEY,
                    str(current + 1).encode(),
                    record.version if record else 0,
                )
            except BadVersionError:
                continue
            return current + 1
        raise LedgerClientError("could not allocate a ledger id: too much contention")

    async def create_ledger(
        self,
        ensemble_size: int,
        write_quorum: int,
        ack_quorum: int,
        custom: dict[str, str] | None = None,
    ) -> LedgerHandle:
        """Create an OPEN ledger on E distinct live bookies and return its writer."""
        if not 1 <= ack_quorum <= write_quorum <= ensemble_size:
            raise ValueError(
                f"need 1 <= ack quorum ({ack_quorum}) <= write quorum ({write_quorum}) "
                f"<= ensemble size ({ensemble_size})"
            )
        available = self.live_bookies()
        if len(available) < ensemble_size:
            raise NotEnoughBookiesError(
                f"ensemble size {ensemble_size} needs that many bookies; {len(available)} available"
            )
        ledger_id = await self._allocate_ledger_id()
        start = ledger_id % len(available)
        ensemble = [available[(start + i) % len(available)] for i in range(ensemble_size)]
        metadata = LedgerMetadata(
            ledger_id=ledger_id,
            ensemble_size=ensemble_size,
            write_quorum=write_quorum,
            ack_quorum=ack_quorum,
            ensembles={0: ensemble},
            created_ms=int(time.time() * 1000),
            password=os.urandom(16).hex(),
            custom=dict(custom or {}),
        )
        record = await self._put(ledger_key(ledger_id), metadata.to_json(), 0)
        return LedgerHandle(self, replace(metadata, version=record.version))

    async def delete_ledger(self, ledger_id: int) -> None:
        """Delete the ledger on every bookie of every fragment, then its metadata.

        A crash in between leaks space on the bookies, never loses data another ledger needs.
        If a bookie cannot be reached the metadata is kept (so the deletion can be retried)
        and the error is raised after every bookie was tried.
        """
        metadata = await self.read_metadata(ledger_id)
        if metadata is None:
            return
        addresses = sorted(metadata.all_bookies())
        results = await asyncio.gather(
            *(self._delete_on(address, ledger_id) for address in addresses),
            return_exceptions=True,
        )
        failures = [(a, r) for a, r in zip(addresses, results, strict=True) if r is not None]
        if failures:
            detail = "; ".join(f"{a}: {r}" for a, r in failures)
            raise LedgerClientError(f"could not delete ledger {ledger_id} on {detail}") from (
                failures[0][1]
            )
        await self._store.delete(ledger_key(ledger_id))

    async def _delete_on(self, address: str, ledger_id: int) -> None:
        try:
            async with asyncio.timeout(self._config.delete_timeout_ms / 1000):
                await self._resolve(address).delete_ledger(ledger_id)
        except TimeoutError:
            raise BookieTimeoutError(
                f"{address} did not answer a delete within {self._config.delete_timeout_ms} ms"
            ) from None

    # ---- recovery and repair -----------------------------------------------------------

    async def open_and_recover(self, ledger_id: int) -> LedgerMetadata:
        """Fence the ledger and close it at its recovered end; see ``LedgerRecoveryOp``.

        Returns the CLOSED metadata. Raises ``LedgerRecoveryError`` (retriable) when the end
        cannot be decided yet; the ledger then stays IN_RECOVERY and a later call continues.
        """
        return await LedgerRecoveryOp(self, ledger_id).run()

    async def list_fragments(self, ledger_id: int) -> list[Fragment]:
        """The ledger's fragments ``[(first, last, ensemble)]``; ``last`` is None for the
        open tail of a ledger not yet closed."""
        metadata = await self.read_metadata(ledger_id)
        if metadata is None:
            raise LedgerClientError(f"ledger {ledger_id} has no metadata")
        return ledger_fragments(metadata)

    async def replace_bookie(
        self,
        ledger_id: int,
        fragment_first_entry_id: int,
        old_bookie: str,
        new_bookie: str,
    ) -> LedgerMetadata:
        """Copy ``old_bookie``'s share of one fragment to ``new_bookie`` and swap it in the
        metadata; see ``FragmentReplicator``. Refuses the current fragment of a ledger that is
        not CLOSED (recover it first). Returns the updated metadata."""
        return await FragmentReplicator(
            self, ledger_id, fragment_first_entry_id, old_bookie, new_bookie
        ).run()
