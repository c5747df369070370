"""In-process metadata stores: the in-memory driver and the machinery it shares with embedded.

Three layers, from the data up:

* :class:`StoreEngine` is the synchronous state machine: compare-and-set, versions, revisions
  and ephemeral ownership, written once over a few storage primitives (read a row, write a
  row, remove a row, persist the revision). :class:`MemoryEngine` keeps rows in a dict; the
  embedded driver's engine keeps them in SQLite.
* :class:`LocalBackend` owns one engine, runs its calls (inline, or on a worker thread so that
  the event loop never waits for the disk), and fans the engine's change events out to the
  watches of every session, in revision order.
* :class:`LocalMetadataStore` is one session on a backend: the :class:`MetadataStore` that
  callers hold. The first session owns the backend and closes it.
"""

from __future__ import annotations

import abc
import asyncio
import builtins
import contextlib
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from typing import TypeVar, TypeVarTuple

from prometheus_client import Histogram

from strata.metadata.base import (
    DEFAULT_MAX_PENDING_EVENTS,
    BadVersionError,
    BufferedWatch,
    EventType,
    MetadataStore,
    MetadataStoreClosedError,
    Record,
    Watch,
    WatchEvent,
    check_expected_version,
    check_key,
    check_prefix,
    check_value,
)
from strata.metrics import METADATA_STORE_READ_LATENCY_SECONDS as READ_LATENCY
from strata.metrics import METADATA_STORE_WRITE_LATENCY_SECONDS as WRITE_LATENCY

_T = TypeVar("_T")
_Ts = TypeVarTuple("_Ts")

EventSink = Callable[[builtins.list[WatchEvent]], None]


class StoreEngine(abc.ABC):
    """The store's semantics over abstract row storage; every method is synchronous.

    Lifecycle: built by a driver, then called by one :class:`LocalBackend` from a single
    thread at a time, until :meth:`close`. Each change is applied in one transaction; the
    events it produced go to ``event_sink`` only after the transaction committed, so a
    watcher never sees a change that could still be rolled back.
    """

    def __init__(self) -> None:
        self.revision = 0
        self.event_sink: EventSink = _drop_events

    # Storage primitives, all called inside _transaction() (or _reading() for the reads).

    @abc.abstractmethod
    def _read(self, key: str) -> tuple[Record, str | None] | None:
        """Return the record of ``key`` and its ephemeral session (None if persistent)."""

    @abc.abstractmethod
    def _scan(self, prefix: str) -> builtins.list[Record]:
        """Return the records of the keys starting with ``prefix``, sorted by key."""

    @abc.abstractmethod
    def _scan_keys(self, prefix: str) -> builtins.list[str]:
        """Return the keys starting with ``prefix``, sorted."""

    @abc.abstractmethod
    def _ephemeral_keys(self, session: str | None) -> builtins.list[str]:
        """Return the keys ephemeral to ``session``, or to any session if it is None."""

    @abc.abstractmethod
    def _write(self, record: Record, session: str | None) -> None:
        """Insert or replace the row of ``record.key``."""

    @abc.abstractmethod
    def _remove(self, key: str) -> None:
        """Remove the row of ``key``, which exists."""

    @abc.abstractmethod
    def _save_revision(self, revision: int) -> None:
        """Persist the store-wide revision, in the same transaction as the rows."""

    @abc.abstractmethod
    def _transaction(self) -> contextlib.AbstractContextManager[None]:
        """Group writes: all or nothing, and durable when the block exits normally."""

    def _reading(self) -> contextlib.AbstractContextManager[None]:
        """Surround a read; drivers use it to translate their storage errors."""
        return contextlib.nullcontext()

    @abc.abstractmethod
    def close(self) -> None:
        """Release the storage; no method is called afterwards."""

    # Operations.

    def get(self, key: str) -> Record | None:
        with self._reading():
            row = self._read(key)
        return None if row is None else row[0]

    def list(self, prefix: str) -> builtins.list[Record]:
        with self._reading():
            return self._scan(prefix)

    def list_keys(self, prefix: str) -> builtins.list[str]:
        with self._reading():
            return self._scan_keys(prefix)

    def put(
        self, key: str, value: bytes, expected_version: int | None, session: str | None
    ) -> Record:
        with self._transaction():
            row = self._read(key)
            actual_version = 0 if row is None else row[0].version
            if expected_version is not None and expected_version != actual_version:
                raise BadVersionError(key, expected_version, actual_version)
            revision = self.revision + 1
            record = Record(key, value, actual_version + 1, revision)
            self._write(record, session)
            self._save_revision(revision)
        self.revision = revision
        self.event_sink([WatchEvent(EventType.PUT, key, record, revision)])
        return record

    def delete(self, key: str, expected_version: int | None) -> bool:
        with self._transaction():
            row = self._read(key)
            actual_version = 0 if row is None else row[0].version
            if expected_version is not None and expected_version != actual_version:
                raise BadVersionError(key, expected_version, actual_version)
            if row is None:
                return False
            revision = self.revision + 1
            self._remove(key)
            self._save_revision(revision)
        self.revision = revision
        self.event_sink([WatchEvent(EventType.DELETE, key, None, revision)])
        return True

    def end_session(self, session: str | None) -> int:
        """Delete the keys ephemeral to ``session`` (to any session if None); return how many.

        One transaction, one revision per key, so that every DELETE event has its own
        revision as it would for an ordinary delete.
        """
        with self._transaction():
            keys = self._ephemeral_keys(session)
            revision = self.revision
            events = []
            for key in keys:
                revision += 1
                self._remove(key)
                events.append(WatchEvent(EventType.DELETE, key, None, revision))
            if keys:
                self._save_revision(revision)
        self.revision = revision
        if events:
            self.event_sink(events)
        return len(keys)


def _drop_events(events: builtins.list[WatchEvent]) -> None:
    """The event sink of an engine that no backend has adopted yet."""


class MemoryEngine(StoreEngine):
    """Rows in a dict; nothing survives the process. For unit tests and throwaway stores."""

    def __init__(self) -> None:
        super().__init__()
        self._rows: dict[str, tuple[Record, str | None]] = {}

    def _read(self, key: str) -> tuple[Record, str | None] | None:
        return self._rows.get(key)

    def _scan(self, prefix: str) -> builtins.list[Record]:
        return [self._rows[key][0] for key in self._scan_keys(prefix)]

    def _scan_keys(self, prefix: str) -> builtins.list[str]:
        # Python orders str by code point, the same order as UTF-8 bytes (etcd, SQLite).
        return sorted(key for key in self._rows if key.startswith(prefix))

    def _ephemeral_keys(self, session: str | None) -> builtins.list[str]:
        return sorted(
            key
            for key, (_, owner) in self._rows.items()
            if owner is not None and (session is None or owner == session)
        )

    def _write(self, record: Record, session: str | None) -> None:
        self._rows[record.key] = (record, session)

    def _remove(self, key: str) -> None:
        del self._rows[key]

    def _save_revision(self, revision: int) -> None:
        pass  # The revision lives in StoreEngine.revision; there is nothing to persist.

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        # Every operation checks its condition before its first write and cannot fail after
        # it, so an in-memory "transaction" has nothing to roll back.
        yield

    def close(self) -> None:
        self._rows.clear()


class LocalBackend:
    """One engine shared by the sessions of an in-process store, and the watches on it.

    Lifecycle: created by a driver's ``open``, closed by the owning session's ``close()``
    after every other session ended. With an ``executor`` (one worker thread) every engine
    call runs there and the engine's events come back through ``call_soon_threadsafe``:
    the single worker makes them arrive in revision order, and before the caller's own
    result, so a put that returned has already been delivered to every watch. Without an
    executor, calls run inline on the event loop.
    """

    def __init__(
        self,
        engine: StoreEngine,
        *,
        executor: Executor | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        description: str = "in-memory store",
    ) -> None:
        self.engine = engine
        self.description = description
        self._executor = executor
        self._loop = loop or asyncio.get_running_loop()
        self._watches: set[BufferedWatch] = set()
        self.sessions: builtins.list[LocalMetadataStore] = []
        self.closed = False
        if executor is None:
            engine.event_sink = self.dispatch
        else:
            engine.event_sink = self._dispatch_from_worker

    async def call(self, function: Callable[[*_Ts], _T], *args: *_Ts) -> _T:
        """Run ``function(*args)`` where the engine may be touched, and return its result."""
        if self._executor is None:
            return function(*args)
        return await self._loop.run_in_executor(self._executor, function, *args)

    def _dispatch_from_worker(self, events: builtins.list[WatchEvent]) -> None:
        self._loop.call_soon_threadsafe(self.dispatch, events)

    def dispatch(self, events: builtins.list[WatchEvent]) -> None:
        """Hand committed ``events`` to every watch whose prefix matches; on the event loop."""
        for event in events:
            # A copy: a watch that overflows removes itself from the set while we iterate.
            for watch in tuple(self._watches):
                if event.key.startswith(watch.prefix):
                    watch.deliver(event)

    def add_watch(self, watch: BufferedWatch) -> None:
        self._watches.add(watch)

    def forget_watch(self, watch: BufferedWatch) -> None:
        self._watches.discard(watch)

    async def close(self) -> None:
        """Close the engine and stop the worker; the sessions must already be closed."""
        if self.closed:
            return
        self.closed = True
        for watch in tuple(self._watches):
            watch.end()
        try:
            await self.call(self.engine.close)
        finally:
            if self._executor is not None:
                # The worker has just finished its last job, so this join returns at once.
                self._executor.shutdown(wait=True)


class LocalMetadataStore(MetadataStore):
    """One session on a :class:`LocalBackend`: the store object callers hold.

    Lifecycle: the session a driver's ``open`` returns owns the backend; sessions made by
    :meth:`open_session` share it. Closing a session deletes its ephemeral keys and ends its
    watches; closing the owner first closes every other session, then the backend.
    """

    def __init__(self, backend: LocalBackend, *, owns_backend: bool) -> None:
        self._backend = backend
        self._owns_backend = owns_backend
        self._session_id = uuid.uuid4().hex
        self._watches: set[BufferedWatch] = set()
        self._closed = False
        backend.sessions.append(self)

    @property
    def session_id(self) -> str:
        return self._session_id

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        description = self._backend.description
        return f"<{type(self).__name__} {description} session={self._session_id} {state}>"

    def _check_open(self) -> None:
        if self._closed or self._backend.closed:
            raise MetadataStoreClosedError(
                f"{self._backend.description}: session {self._session_id} is closed"
            )

    async def _timed(self, histogram: Histogram, function: Callable[[*_Ts], _T], *args: *_Ts) -> _T:
        """``function(*args)`` on the backend, its duration observed as the etcd driver's
        requests are (``strata_metadata_store_op_latency_seconds``)."""
        started = time.monotonic()
        try:
            return await self._backend.call(function, *args)
        finally:
            histogram.observe(time.monotonic() - started)

    async def get(self, key: str) -> Record | None:
        check_key(key)
        self._check_open()
        return await self._timed(READ_LATENCY, self._backend.engine.get, key)

    async def put(
        self,
        key: str,
        value: bytes,
        *,
        expected_version: int | None = None,
        ephemeral: bool = False,
    ) -> Record:
        check_key(key)
        value = check_value(value)
        check_expected_version(expected_version)
        self._check_open()
        session = self._session_id if ephemeral else None
        return await self._timed(
            WRITE_LATENCY, self._backend.engine.put, key, value, expected_version, session
        )

    async def delete(self, key: str, *, expected_version: int | None = None) -> bool:
        check_key(key)
        check_expected_version(expected_version)
        self._check_open()
        return await self._timed(WRITE_LATENCY, self._backend.engine.delete, key, expected_version)

    async def list(self, prefix: str) -> builtins.list[Record]:
        check_prefix(prefix)
        self._check_open()
        return await self._timed(READ_LATENCY, self._backend.engine.list, prefix)

    async def list_keys(self, prefix: str) -> builtins.list[str]:
        check_prefix(prefix)
        self._check_open()
        return await self._timed(READ_LATENCY, self._backend.engine.list_keys, prefix)

    def watch(self, prefix: str, *, max_pending_events: int = DEFAULT_MAX_PENDING_EVENTS) -> Watch:
        check_prefix(prefix)
        self._check_open()
        # Registered before returning: every change dispatched from now on reaches it.
        watch = BufferedWatch(
            prefix, max_pending_events=max_pending_events, on_close=self._forget_watch
        )
        self._watches.add(watch)
        self._backend.add_watch(watch)
        return watch

    def _forget_watch(self, watch: BufferedWatch) -> None:
        self._watches.discard(watch)
        self._backend.forget_watch(watch)

    async def open_session(self) -> LocalMetadataStore:
        self._check_open()
        return LocalMetadataStore(self._backend, owns_backend=False)

    async def close(self) -> None:
        try:
            if self._owns_backend:
                # Other sessions first: their ephemeral keys go while the engine is still open.
                for session in tuple(self._backend.sessions):
                    if session is not self:
                        await session.close()
            await self._end_session()
        finally:
            if self._owns_backend:
                await self._backend.close()

    async def _end_session(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if not self._backend.closed:
                await self._backend.call(self._backend.engine.end_session, self._session_id)
        finally:
            for watch in tuple(self._watches):
                watch.end()
            self._backend.sessions.remove(self)


class InMemoryMetadataStore(LocalMetadataStore):
    """A metadata store that lives in this process's memory and dies with it.

    Lifecycle: ``await InMemoryMetadataStore.open()`` (or ``open_metadata_store("memory://")``)
    gives a fresh, empty store; ``close()`` discards it. Sessions from :meth:`open_session`
    behave as separate clients of the same store, which makes this driver a fast stand-in
    for the embedded and etcd drivers in unit tests.
    """

    @classmethod
    async def open(cls) -> InMemoryMetadataStore:
        return cls(LocalBackend(MemoryEngine()), owns_backend=True)
