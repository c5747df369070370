"""The metadata-store interface: records, watch events, errors, key rules and the store ABC.

The metadata store holds everything the brokers cannot rebuild from the bookies: tenants,
namespaces and policies, partitioned-topic metadata, bundle ownership, broker and bookie
registrations, ledger metadata, managed-ledger ledger lists, cursor positions and schemas
(DESIGN.md, "Metadata store"). Every driver implements :class:`MetadataStore`; the
conformance suite in ``tests/metadata_conformance.py`` pins down the behaviour they share.

Errors::

    MetadataError                      base class; ``retriable`` is False
    ├── BadVersionError                a compare-and-set condition did not hold
    ├── MetadataStoreUnavailableError  the store cannot be reached now (retriable)
    ├── MetadataStoreClosedError       the store or session was closed by its owner
    ├── WatchOverflowError             a watcher fell too far behind; its watch was cancelled
    ├── InvalidKeyError                a key or prefix breaks the key rules (also a ValueError)
    └── ValueTooLargeError             a value is longer than MAX_VALUE_BYTES (also a ValueError)

Retry code asks ``err.retriable`` rather than matching classes.

This module does no I/O; :class:`BufferedWatch` is the one piece of machinery here, a bounded
event buffer that every driver hands out as its :class:`Watch`.
"""

from __future__ import annotations

import abc
import asyncio
import builtins
import collections
import enum
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import ClassVar, Self

MAX_KEY_LENGTH = 1024
MAX_VALUE_BYTES = 1024 * 1024
DEFAULT_MAX_PENDING_EVENTS = 10_000


# --- Errors -------------------------------------------------------------------------------


class MetadataError(Exception):
    """Base class of every metadata-store error; see the module docstring for the tree."""

    retriable: ClassVar[bool] = False


class BadVersionError(MetadataError):
    """A put or delete carried an ``expected_version`` that did not match the key's version.

    ``actual_version`` is 0 when the key is absent. Retrying the same call fails the same
    way: re-read the key and decide again.
    """

    def __init__(self, key: str, expected_version: int, actual_version: int) -> None:
        state = " (absent)" if actual_version == 0 else ""
        super().__init__(
            f"bad version for key {key!r}: expected {expected_version}, "
            f"actual {actual_version}{state}"
        )
        self.key = key
        self.expected_version = expected_version
        self.actual_version = actual_version


class MetadataStoreUnavailableError(MetadataError):
    """The store cannot be reached right now (network, leader election); retry later."""

    retriable = True


class MetadataStoreClosedError(MetadataError):
    """The store or session was closed; a closed store never reopens, open a new one."""


class WatchOverflowError(MetadataError):
    """A watcher let more than ``max_pending_events`` events pile up, so its watch was cancelled.

    Events are never dropped silently: the watch stops instead. The remedy is to start a new
    watch and then re-read the state with ``list()``.
    """


class InvalidKeyError(MetadataError, ValueError):
    """A key or prefix breaks the key rules of :func:`check_key` / :func:`check_prefix`."""


class ValueTooLargeError(MetadataError, ValueError):
    """A value is longer than :data:`MAX_VALUE_BYTES`."""


# --- Validation (pure functions; drivers call them before any I/O) --------------------------


def _check_characters(what: str, text: str) -> None:
    if len(text) > MAX_KEY_LENGTH:
        raise InvalidKeyError(f"{what} is longer than {MAX_KEY_LENGTH} characters")
    if not text.startswith("/"):
        raise InvalidKeyError(f"{what} {text!r} must start with '/'")
    # Control characters would make keys unprintable in logs and differ between drivers
    # (etcd keys are bytes, SQLite text is UTF-8), so they are refused outright.
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in text):
        raise InvalidKeyError(f"{what} {text!r} holds a control character")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise InvalidKeyError(f"{what} {text!r} is not valid Unicode text") from error


def check_key(key: str) -> str:
    """Return ``key`` if it is a valid key, else raise :class:`InvalidKeyError`.

    A key starts with ``/``, has no empty segment (so no ``//`` and no trailing ``/``), holds
    no control character and is at most :data:`MAX_KEY_LENGTH` characters long.
    """
    if not isinstance(key, str):
        raise InvalidKeyError(f"key must be a str, not {type(key).__name__}")
    _check_characters("key", key)
    if "" in key.split("/")[1:]:
        raise InvalidKeyError(f"key {key!r} has an empty segment ('//' or a trailing '/')")
    return key


def check_prefix(prefix: str) -> str:
    """Return ``prefix`` if it is a valid list/watch prefix, else raise :class:`InvalidKeyError`.

    A prefix follows the key rules except that it may end with ``/`` (``"/"`` matches every
    key). Matching is by string prefix: ``"/a/b"`` matches ``"/a/bc"``, ``"/a/b/"`` does not.
    """
    if not isinstance(prefix, str):
        raise InvalidKeyError(f"prefix must be a str, not {type(prefix).__name__}")
    _check_characters("prefix", prefix)
    if "" in prefix.split("/")[1:-1]:
        raise InvalidKeyError(f"prefix {prefix!r} has an empty segment ('//')")
    return prefix


def check_value(value: bytes) -> bytes:
    """Return ``value`` as ``bytes`` if it may be stored, else raise."""
    if not isinstance(value, bytes | bytearray | memoryview):
        raise TypeError(f"value must be bytes, not {type(value).__name__}")
    if len(value) > MAX_VALUE_BYTES:
        raise ValueTooLargeError(
            f"value of {len(value)} bytes is larger than the limit of {MAX_VALUE_BYTES} bytes"
        )
    return bytes(value)


def check_expected_version(expected_version: int | None) -> int | None:
    """Return ``expected_version`` if it is None or a non-negative int, else raise ValueError."""
    if expected_version is not None and (
        not isinstance(expected_version, int) or expected_version < 0
    ):
        raise ValueError(f"expected_version must be None or >= 0, not {expected_version!r}")
    return expected_version


# --- Data types -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Record:
    """One key's value as stored, with its versions.

    ``version`` counts puts of this key: 1 on create, +1 on each put; a delete followed by a
    re-create starts at 1 again. ``mod_revision`` is the store-wide revision of this key's last
    change; revisions increase monotonically across the whole store.
    """

    key: str
    value: bytes
    version: int
    mod_revision: int


class EventType(enum.Enum):
    PUT = "put"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One change seen by a watch: the new record for a PUT, None for a DELETE."""

    type: EventType
    key: str
    record: Record | None
    revision: int


# --- Watches ----------------------------------------------------------------------------------


class Watch(abc.ABC):
    """A stream of the changes under one prefix: an async iterator and an async context manager.

    Lifecycle: created by :meth:`MetadataStore.watch`; it sees every change made after it
    started, in revision order, with none lost. It ends (the iterator stops) when closed,
    when its ``async with`` block exits or when its store closes; it fails with
    :class:`WatchOverflowError` when its consumer falls more than ``max_pending_events``
    behind. To follow a subtree without gaps, start the watch first and then ``list()``: a
    change may then be seen twice (in the listing and as an event), never missed.
    """

    @property
    @abc.abstractmethod
    def prefix(self) -> str:
        """The prefix this watch follows."""

    @abc.abstractmethod
    async def __anext__(self) -> WatchEvent:
        """Wait for and return the next event; StopAsyncIteration once the watch ended."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop watching; idempotent. Events not yet consumed are discarded."""

    def __aiter__(self) -> Self:
        return self

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()


class BufferedWatch(Watch):
    """A :class:`Watch` fed by its driver through :meth:`deliver`, buffering at most
    ``max_pending_events`` events.

    Drivers create one per ``watch()`` call, push events with :meth:`deliver` (on the event
    loop, in revision order), and end it with :meth:`end` or :meth:`fail`. ``on_close`` runs
    once when the watch ends for any reason, so that the driver can forget it. A single
    consumer is expected.
    """

    def __init__(
        self,
        prefix: str,
        *,
        max_pending_events: int = DEFAULT_MAX_PENDING_EVENTS,
        on_close: Callable[[BufferedWatch], None] | None = None,
    ) -> None:
        if max_pending_events < 1:
            raise ValueError(f"max_pending_events must be >= 1, not {max_pending_events}")
        self._prefix = prefix
        self._max_pending_events = max_pending_events
        self._on_close = on_close
        self._pending: collections.deque[WatchEvent] = collections.deque()
        self._error: MetadataError | None = None
        self._ended = False
        # Set whenever the consumer may have something to do: an event, an end, an error.
        self._wakeup = asyncio.Event()

    @property
    def prefix(self) -> str:
        return self._prefix

    @property
    def ended(self) -> bool:
        return self._ended

    def deliver(self, event: WatchEvent) -> None:
        """Queue ``event``; cancels the watch with WatchOverflowError if the buffer is full."""
        if self._ended:
            return
        if len(self._pending) >= self._max_pending_events:
            self.fail(
                WatchOverflowError(
                    f"watch on {self._prefix!r} fell more than {self._max_pending_events} "
                    f"events behind at revision {event.revision}; watch again, then list()"
                )
            )
            return
        self._pending.append(event)
        self._wakeup.set()

    def fail(self, error: MetadataError) -> None:
        """End the watch so that its iterator raises ``error``; pending events are dropped."""
        if self._ended:
            return
        self._error = error
        self.end()

    def end(self) -> None:
        """End the watch so that its iterator stops; pending events are dropped."""
        if self._ended:
            return
        self._ended = True
        self._pending.clear()
        self._wakeup.set()
        if self._on_close is not None:
            on_close, self._on_close = self._on_close, None
            on_close(self)

    async def close(self) -> None:
        self.end()

    async def __anext__(self) -> WatchEvent:
        while True:
            if self._pending:
                return self._pending.popleft()
            if self._error is not None:
                raise self._error
            if self._ended:
                raise StopAsyncIteration
            # Nothing between the checks above and this clear() yields to the loop, so a
            # deliver() cannot slip in unseen.
            self._wakeup.clear()
            await self._wakeup.wait()


# --- The store --------------------------------------------------------------------------------


class MetadataStore(abc.ABC):
    """A session on a metadata store: versioned keys, prefix listing, watches, ephemeral keys.

    Lifecycle: a driver's ``open`` (or :func:`strata.metadata.open_metadata_store`) returns
    an open store, which is also the store's first session. :meth:`open_session` starts more
    sessions on the same store; each owns its own ephemeral keys and watches. :meth:`close`
    ends the session: its ephemeral keys are deleted and its watches end. Closing the store
    that was opened first also closes every session opened from it and releases the store's
    resources. After close every call raises :class:`MetadataStoreClosedError`. A store can
    be used as ``async with`` block, which closes it on exit.

    All methods must be called from the event loop the store was opened on. A call that is
    cancelled may or may not have taken effect.
    """

    @abc.abstractmethod
    async def get(self, key: str) -> Record | None:
        """Return the record of ``key``, or None if it is absent."""

    @abc.abstractmethod
    async def put(
        self,
        key: str,
        value: bytes,
        *,
        expected_version: int | None = None,
        ephemeral: bool = False,
    ) -> Record:
        """Store ``value`` under ``key`` and return the new record once it is durable.

        ``expected_version``: None puts unconditionally; 0 creates only if the key is absent;
        N > 0 puts only if the current version is N. A failed condition raises
        :class:`BadVersionError`.

        ``ephemeral=True`` binds the key to this session: it is deleted when the session ends
        (close, process death, lost lease). Putting an existing key ephemerally makes it
        ephemeral to this session; putting an ephemeral key with ``ephemeral=False`` makes it
        persistent again (as a put without a lease does in etcd).
        """

    @abc.abstractmethod
    async def delete(self, key: str, *, expected_version: int | None = None) -> bool:
        """Delete ``key``; True if it was deleted, False if it was absent.

        With ``expected_version`` N the key is deleted only if its version is N (0 meaning
        "absent", in which case nothing is deleted and False is returned); a failed condition
        raises :class:`BadVersionError`.
        """

    @abc.abstractmethod
    async def list(self, prefix: str) -> builtins.list[Record]:
        """Return the records of every key starting with ``prefix``, sorted by key."""

    async def list_keys(self, prefix: str) -> builtins.list[str]:
        """Return every key starting with ``prefix``, sorted."""
        return [record.key for record in await self.list(prefix)]

    @abc.abstractmethod
    def watch(self, prefix: str, *, max_pending_events: int = DEFAULT_MAX_PENDING_EVENTS) -> Watch:
        """Start watching the keys under ``prefix``; see :class:`Watch` for the guarantees.

        Use it as ``async with store.watch("/a/") as watch: async for event in watch: ...``.
        """

    @abc.abstractmethod
    async def open_session(self) -> MetadataStore:
        """Start another session on the same store, with its own ephemeral keys and watches.

        The new session shares the store's connection or files; closing it ends only that
        session, while closing the first store also closes it.
        """

    @abc.abstractmethod
    async def close(self) -> None:
        """End this session (its ephemeral keys are deleted, its watches end); idempotent."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()
