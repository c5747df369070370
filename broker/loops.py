"""Owned background loops: every periodic task of the broker has an owner that starts it,
hears at once when it dies, and cancels and awaits it in ``close()``.

A loop catches the errors it expects (a failed round is logged and the next one runs); an
exception it did not expect ends it, and then the done-callback logs it with its traceback
right away, rather than asyncio's "exception was never retrieved" whenever the task happens to
be garbage-collected, or nothing at all while the owner still holds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any


class OwnedLoops:
    """The background loops of one owner (its name heads their log lines)."""

    def __init__(self, owner: str, log: logging.Logger) -> None:
        self._owner = owner
        self._log = log
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, loop: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(loop, name=name)
        task.add_done_callback(self._on_done)
        self._tasks.append(task)
        return task

    @property
    def dead(self) -> list[str]:
        """Names of the loops that ended before ``close`` (each was logged when it did)."""
        return [t.get_name() for t in self._tasks if t.done() and not t.cancelled()]

    def _on_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        error = task.exception()
        if error is None:
            self._log.error(
                "%s: loop %s returned; it should run until closed", self._owner, task.get_name()
            )
            return
        self._log.error("%s: loop %s died", self._owner, task.get_name(), exc_info=error)

    async def close(self) -> None:
        """Cancel every loop and wait until each has ended."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            # A loop that died was logged by _on_done; its error is not raised again here.
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
