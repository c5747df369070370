"""Bookie membership in the metadata store: registration, instance cookies, the live set.

Keys::

    /bookies/available/<bookie id>   ephemeral, JSON BookieInfo; present while the bookie runs
    /bookies/cookies/<bookie id>     persistent, JSON {"bookie_id", "instance_id"}

A bookie's id is its advertised ``host:port``; the ledger metadata's ensembles list ids, and a
client dials the id itself.

**Instance cookies** (BookKeeper's ``Cookie``). The first start of a bookie writes a random
instance id to ``COOKIE`` in its data directory and to ``/bookies/cookies/<id>``. Every later
start compares the two and refuses to run when they differ or one is missing: a bookie whose
disk was wiped, or swapped for another bookie's, would otherwise answer "no such entry" for
entries it acknowledged, and a ledger recovery could take that as authoritative and truncate
acknowledged data (BookKeeper #2612). The operator's way out is ``strata admin bookies
decommission ID`` once autorecovery has re-replicated the lost bookie's ledgers: it removes
the stored cookie, and the bookie then starts as a new instance.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc

from bookie.api import BookieClient

# Raised here; re-exported because the entry point and the admin service import them from here.
from bookie.errors import CookieMismatchError as CookieMismatchError
from bookie.errors import DecommissionRefusedError as DecommissionRefusedError
from bookie.grpc_client import GrpcBookieClient
from bookie.ledger import LEDGERS_PREFIX, LedgerMetadata
from strata.auth.credentials import TokenSource
from strata.clock import now_ms as now_ms  # re-exported for the entry points
from strata.metadata import (
    BadVersionError,
    EventType,
    MetadataError,
    MetadataStore,
    MetadataStoreClosedError,
)
from strata.metadata.registration import EphemeralRegistration

log = logging.getLogger(__name__)

AVAILABLE_PREFIX = "/bookies/available/"
COOKIES_PREFIX = "/bookies/cookies/"
COOKIE_FILE_NAME = "COOKIE"
# After a watch ends (overflow, store reconnect), the registry re-lists after this pause.
REWATCH_DELAY_MS = 200


@dataclass(frozen=True, slots=True)
class BookieInfo:
    """What a running bookie publishes about itself."""

    bookie_id: str
    instance_id: str
    metrics_port: int = -1
    registered_ms: int = 0

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> BookieInfo:
        body = json.loads(data)
        return cls(
            bookie_id=str(body["bookie_id"]),
            instance_id=str(body["instance_id"]),
            metrics_port=int(body.get("metrics_port", -1)),
            registered_ms=int(body.get("registered_ms", 0)),
        )


def available_key(bookie_id: str) -> str:
    return AVAILABLE_PREFIX + bookie_id


def cookie_key(bookie_id: str) -> str:
    return COOKIES_PREFIX + bookie_id


def _read_local_cookie(data_dir: Path) -> dict[str, str] | None:
    path = data_dir / COOKIE_FILE_NAME
    try:
        body = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise CookieMismatchError(f"cookie file {path} is unreadable: {exc}") from exc
    return {"bookie_id": str(body["bookie_id"]), "instance_id": str(body["instance_id"])}


def _write_local_cookie(data_dir: Path, cookie: dict[str, str]) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / COOKIE_FILE_NAME
    temporary = path.with_suffix(".tmp")
    with open(temporary, "wb") as file:
        file.write(json.dumps(cookie, sort_keys=True).encode())
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
    directory = os.open(data_dir, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _has_data(data_dir: Path) -> bool:
    return data_dir.exists() and any(child.name != COOKIE_FILE_NAME for child in data_dir.iterdir())


async def check_cookie(
    store: MetadataStore, data_dir: Path, bookie_id: str, *, journal_dir: Path | None = None
) -> str:
    """Verify (or, on a first start, create) this bookie's instance cookie; returns the
    instance id. Raises ``CookieMismatchError`` with the operator's remedy otherwise. A
    journal directory outside ``data_dir`` (a volume of its own) carries a copy of the cookie,
    as each BookKeeper directory does: a journal volume that was replaced or mounted from
    another bookie is refused instead of served as this instance's entries."""
    instance_id, created = await _check_data_dir_cookie(store, data_dir, bookie_id)
    if journal_dir is not None:
        await asyncio.to_thread(
            _check_journal_cookie, journal_dir, bookie_id, instance_id, created=created
        )
    return instance_id


def _check_journal_cookie(
    journal_dir: Path, bookie_id: str, instance_id: str, *, created: bool
) -> None:
    local = _read_local_cookie(journal_dir)
    if local is None:
        if _has_journal_data(journal_dir):
            raise CookieMismatchError(
                f"journal directory {journal_dir} holds journal segments but no cookie; it was "
                f"not written by bookie {bookie_id}"
            )
        if not created:
            raise CookieMismatchError(
                f"journal directory {journal_dir} has no cookie but {bookie_id} is an existing "
                f"instance ({instance_id}): the journal volume was replaced or is the wrong one, "
                "and its entries are not here. Mount the right volume, or let autorecovery "
                "re-replicate the bookie's ledgers, decommission it and start it afresh"
            )
        _write_local_cookie(journal_dir, {"bookie_id": bookie_id, "instance_id": instance_id})
        return
    if local["bookie_id"] != bookie_id or local["instance_id"] != instance_id:
        raise CookieMismatchError(
            f"journal directory {journal_dir} belongs to instance {local['instance_id']} of "
            f"bookie {local['bookie_id']}, not instance {instance_id} of {bookie_id}"
        )


def _has_journal_data(journal_dir: Path) -> bool:
    return journal_dir.exists() and any(
        child.name not in (COOKIE_FILE_NAME, "LOCK") for child in journal_dir.iterdir()
    )


async def _check_data_dir_cookie(
    store: MetadataStore, data_dir: Path, bookie_id: str
) -> tuple[str, bool]:
    """The instance id in ``data_dir``'s cookie, and whether this start created it."""
    local = await asyncio.to_thread(_read_local_cookie, data_dir)
    has_data = await asyncio.to_thread(_has_data, data_dir)
    record = await store.get(cookie_key(bookie_id))
    stored = json.loads(record.value) if record is not None else None
    if local is None and stored is None:
        if has_data:
            raise CookieMismatchError(
                f"{data_dir} holds bookie data but no cookie; it was not written by a bookie "
                f"registered as {bookie_id}"
            )
        cookie = {"bookie_id": bookie_id, "instance_id": uuid.uuid4().hex}
        # Local first: a crash before the store write leaves a local cookie alone, which the
        # next start completes below; the reverse order would strand a stored cookie.
        await asyncio.to_thread(_write_local_cookie, data_dir, cookie)
        try:
            await store.put(
                cookie_key(bookie_id),
                json.dumps(cookie, sort_keys=True).encode(),
                expected_version=0,
            )
        except BadVersionError as exc:
            raise CookieMismatchError(
                f"another bookie registered the id {bookie_id} at the same time"
            ) from exc
        log.info("bookie %s: new instance %s", bookie_id, cookie["instance_id"])
        return cookie["instance_id"], True
    if stored is None:
        assert local is not None
        if local["bookie_id"] != bookie_id:
            raise CookieMismatchError(
                f"{data_dir} belongs to bookie {local['bookie_id']}, not {bookie_id}"
            )
        if has_data:
            raise CookieMismatchError(
                f"bookie {bookie_id} has a local cookie but none in the metadata store (was it "
                "decommissioned?); remove its data directory to start it as a new instance"
            )
        await store.put(
            cookie_key(bookie_id), json.dumps(local, sort_keys=True).encode(), expected_version=0
        )
        return local["instance_id"], False
    if local is None:
        raise CookieMismatchError(
            f"bookie {bookie_id} was registered before (instance {stored['instance_id']}) but "
            f"{data_dir} has no cookie: its data was lost or the directory is wrong. It must not "
            "serve as that instance. Let autorecovery re-replicate its ledgers, then run "
            f"`strata admin bookies decommission {bookie_id}` and start it again"
        )
    if local["bookie_id"] != bookie_id or local["instance_id"] != stored["instance_id"]:
        raise CookieMismatchError(
            f"cookie mismatch for bookie {bookie_id}: {data_dir} holds instance "
            f"{local['instance_id']} of {local['bookie_id']}, the metadata store has instance "
            f"{stored['instance_id']}"
        )
    return local["instance_id"], False


def bookie_registration(store: MetadataStore, info: BookieInfo) -> EphemeralRegistration:
    """The availability key of a running bookie, kept present in a session of its own; a
    registration by another instance under the same id is refused."""
    return EphemeralRegistration(
        store,
        available_key(info.bookie_id),
        info.to_json(),
        is_ours=lambda value: BookieInfo.from_json(value).instance_id == info.instance_id,
    )


class BookieRegistry:
    """The set of live bookies, followed by a watch on ``/bookies/available/``.

    ``available()`` is what a ledger client may put in a new ensemble. ``on_change`` callbacks
    run on the event loop after each change (the auditor uses them). Lifecycle: ``start``
    lists the current set and starts the owned watch task; ``close`` cancels it.
    """

    def __init__(self, store: MetadataStore) -> None:
        self._store = store
        self._bookies: dict[str, BookieInfo] = {}
        self._task: asyncio.Task[None] | None = None
        self._listeners: list[Callable[[], None]] = []
        self._loaded = asyncio.Event()

    def available(self) -> list[str]:
        return sorted(self._bookies)

    def info(self, bookie_id: str) -> BookieInfo | None:
        return self._bookies.get(bookie_id)

    def add_listener(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._follow(), name="bookie-registry")
        await self._loaded.wait()

    async def _reload(self) -> None:
        records = await self._store.list(AVAILABLE_PREFIX)
        bookies: dict[str, BookieInfo] = {}
        for record in records:
            try:
                info = BookieInfo.from_json(record.value)
            except (ValueError, KeyError) as exc:
                log.warning("ignoring a malformed bookie registration %s: %s", record.key, exc)
                continue
            bookies[record.key[len(AVAILABLE_PREFIX) :]] = info
        self._set(bookies)

    def _set(self, bookies: dict[str, BookieInfo]) -> None:
        changed = bookies.keys() != self._bookies.keys()
        self._bookies = bookies
        self._loaded.set()
        if changed:
            log.info("available bookies: %s", ", ".join(sorted(bookies)) or "none")
            for listener in self._listeners:
                listener()

    async def _follow(self) -> None:
        while True:
            try:
                async with self._store.watch(AVAILABLE_PREFIX) as watch:
                    # List after the watch started, so no change falls between the two.
                    await self._reload()
                    async for event in watch:
                        bookies = dict(self._bookies)
                        bookie_id = event.key[len(AVAILABLE_PREFIX) :]
                        if event.type is EventType.DELETE or event.record is None:
                            bookies.pop(bookie_id, None)
                        else:
                            try:
                                bookies[bookie_id] = BookieInfo.from_json(event.record.value)
                            except (ValueError, KeyError):
                                continue
                        self._set(bookies)
            except MetadataStoreClosedError:
                return
            except MetadataError as exc:
                log.warning("bookie registry watch ended (%s); following again", exc)
            await asyncio.sleep(REWATCH_DELAY_MS / 1000)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class BookieClientPool:
    """One ``GrpcBookieClient`` per bookie id, created on first use; owns and closes them."""

    def __init__(
        self,
        *,
        max_entry_size_bytes: int,
        token: TokenSource | None = None,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self._credentials = credentials
        self._clients: dict[str, GrpcBookieClient] = {}
        self._max_entry_size_bytes = max_entry_size_bytes
        self._token = token

    def get(self, bookie_id: str) -> BookieClient:
        client = self._clients.get(bookie_id)
        if client is None:
            client = self._clients[bookie_id] = GrpcBookieClient(
                bookie_id,
                max_entry_size_bytes=self._max_entry_size_bytes,
                token=self._token,
                credentials=self._credentials,
            )
        return client

    async def close(self) -> None:
        clients, self._clients = self._clients, {}
        for client in clients.values():
            await client.close()


UNDER_REPLICATED_PREFIX = "/autorecovery/underreplicated/"
AUDITOR_KEY = "/autorecovery/auditor"


@dataclass(frozen=True, slots=True)
class BookieStatus:
    bookie_id: str
    available: bool
    instance_id: str
    ledger_count: int


@dataclass(frozen=True, slots=True)
class ClusterBookies:
    bookies: list[BookieStatus]
    under_replicated_ledger_count: int
    auditor: str


async def _ledger_counts(store: MetadataStore) -> dict[str, int]:
    counts: dict[str, int] = {}
    for record in await store.list(LEDGERS_PREFIX):
        metadata = LedgerMetadata.from_json(record.value, record.version)
        for bookie_id in {b for ensemble in metadata.ensembles.values() for b in ensemble}:
            counts[bookie_id] = counts.get(bookie_id, 0) + 1
    return counts


async def describe_bookies(store: MetadataStore) -> ClusterBookies:
    """Every bookie known by cookie or registration, with its state and ledger count."""
    cookies = {
        record.key[len(COOKIES_PREFIX) :]: str(json.loads(record.value)["instance_id"])
        for record in await store.list(COOKIES_PREFIX)
    }
    available = {
        record.key[len(AVAILABLE_PREFIX) :]: BookieInfo.from_json(record.value)
        for record in await store.list(AVAILABLE_PREFIX)
    }
    counts = await _ledger_counts(store)
    bookies = []
    for bookie_id in sorted(cookies.keys() | available.keys()):
        info = available.get(bookie_id)
        instance = cookies.get(bookie_id) or (info.instance_id if info else "")
        bookies.append(
            BookieStatus(bookie_id, info is not None, instance, counts.get(bookie_id, 0))
        )
    auditor = await store.get(AUDITOR_KEY)
    return ClusterBookies(
        bookies,
        len(await store.list_keys(UNDER_REPLICATED_PREFIX)),
        auditor.value.decode() if auditor is not None else "",
    )


async def decommission_bookie(store: MetadataStore, bookie_id: str) -> None:
    """Forget ``bookie_id``'s cookie once it is down and no ledger lists it any more."""
    if await store.get(available_key(bookie_id)) is not None:
        raise DecommissionRefusedError(f"bookie {bookie_id} is running; stop it first")
    remaining = (await _ledger_counts(store)).get(bookie_id, 0)
    if remaining:
        raise DecommissionRefusedError(
            f"{remaining} ledgers still list bookie {bookie_id}; wait for autorecovery to "
            "re-replicate them"
        )
    if not await store.delete(cookie_key(bookie_id)):
        raise KeyError(bookie_id)
