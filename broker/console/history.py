"""The cluster's message rates over the last 15 minutes, for the console's overview plot.

A task on the broker's loop samples the cluster's rates in and out every
``HISTORY_INTERVAL_SECONDS`` (the sum of the brokers' load reports, as ``ListBrokers``
answers; on a standalone its own topics) into a ring of ``HISTORY_POINTS`` points, so that a
page opened now starts with 15 minutes of history. The page appends its own points while it
stays open. Reads from the HTTP threads take a copy under a lock.

Lifecycle: ``start()`` on the loop, ``close()`` cancels and awaits the task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

HISTORY_INTERVAL_SECONDS = 5.0
HISTORY_POINTS = 180  # 15 minutes at one point per 5 s

# (seconds since the epoch, messages in per second, messages out per second)
RatePoint = tuple[float, float, float]


class RateHistory:
    def __init__(
        self,
        sample: Callable[[], Awaitable[tuple[float, float]]],
        interval_seconds: float = HISTORY_INTERVAL_SECONDS,
        points: int = HISTORY_POINTS,
    ) -> None:
        self._sample = sample
        self._interval_seconds = interval_seconds
        self._points: deque[RatePoint] = deque(maxlen=points)
        self._lock = threading.Lock()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        assert self._task is None, "started twice"
        self._task = asyncio.get_running_loop().create_task(self._run(), name="console-history")

    async def _run(self) -> None:
        while True:
            try:
                rate_in, rate_out = await self._sample()
            except Exception:  # the store is away: a gap in the plot, not a dead sampler
                log.info("console: cluster rates not sampled", exc_info=True)
            else:
                with self._lock:
                    self._points.append((time.time(), rate_in, rate_out))
            await asyncio.sleep(self._interval_seconds)

    def points(self) -> list[RatePoint]:
        with self._lock:
            return list(self._points)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
