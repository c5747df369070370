"""``EphemeralRegistration``: keep one ephemeral key present for as long as a process runs.

Bookies and brokers announce themselves this way. The key lives in a session of its own,
opened from the given store (which then never holds a lease that could expire). If that
session ends (its lease expired during a long pause) or the key disappears, a check every
``check_interval_ms`` opens a new session and puts the key again.

Lifecycle: ``start`` puts the key and starts the owned check task; ``close`` cancels it and
closes the session, which deletes the key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from strata.metadata.base import MetadataError, MetadataStore, MetadataStoreClosedError

log = logging.getLogger(__name__)

DEFAULT_CHECK_INTERVAL_MS = 1000


class RegistrationConflictError(MetadataError):
    """Another live process holds the key."""


class EphemeralRegistration:
    def __init__(
        self,
        store: MetadataStore,
        key: str,
        value: bytes,
        *,
        is_ours: Callable[[bytes], bool],
        check_interval_ms: int = DEFAULT_CHECK_INTERVAL_MS,
    ) -> None:
        """``is_ours(value)`` tells a key left by this process's earlier session (replaced)
        from another process's (``start`` raises RegistrationConflictError)."""
        self._store = store
        self.key = key
        self._value = value
        self._is_ours = is_ours
        self._check_interval_ms = check_interval_ms
        self._session: MetadataStore | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._register()
        self._task = asyncio.get_running_loop().create_task(
            self._keep(), name=f"registration {self.key}"
        )

    async def drop_session(self) -> None:
        """End the current session as a lease expiry would (tests use it)."""
        if self._session is not None:
            await self._session.close()

    async def _register(self) -> None:
        if self._session is not None:
            with contextlib.suppress(MetadataError):
                await self._session.close()
        self._session = session = await self._store.open_session()
        record = await session.get(self.key)
        if record is not None:
            if not self._is_ours(record.value):
                raise RegistrationConflictError(f"{self.key} is held by another live process")
            # Ours, from a session that is ending: replace it in this session.
            await session.delete(self.key)
        await session.put(self.key, self._value, ephemeral=True)

    async def _keep(self) -> None:
        while True:
            await asyncio.sleep(self._check_interval_ms / 1000)
            try:
                assert self._session is not None
                present = await self._session.get(self.key)
            except MetadataStoreClosedError:
                present = None  # the session's lease expired
            except MetadataError as exc:
                log.warning("%s: registration check failed: %s", self.key, exc)
                continue
            if present is not None:
                continue
            log.warning("%s: registration lost; registering again", self.key)
            try:
                await self._register()
            except MetadataStoreClosedError:
                return  # the store itself was closed: the process is stopping
            except MetadataError as exc:
                log.warning("%s: registering again failed: %s", self.key, exc)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._session is not None:
            with contextlib.suppress(MetadataError):
                await self._session.close()
