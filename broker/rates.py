"""``RateMeter``: a running total that also reads as a per-second rate (Pulsar's
``msgRateIn``/``msgRateOut``), for topic and subscription stats, load reports and metrics."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class RateMeter:
    """Counts that become a per-second rate between two reads of ``rate()``.

    ``total`` is either added to by its owner or, with ``source``, read from it at each
    ``rate()`` (a topic's outbound counts are the sum of its subscriptions')."""

    total: int = 0
    source: Callable[[], int] | None = None
    _last_total: int = 0
    _last_time: float = 0.0
    _last_rate: float = 0.0

    def rate(self) -> float:
        if self.source is not None:
            self.total = self.source()
        now = time.monotonic()
        elapsed = now - self._last_time
        if self._last_time == 0.0:
            self._last_time, self._last_total = now, self.total
            return 0.0
        if elapsed >= 1.0:
            self._last_rate = (self.total - self._last_total) / elapsed
            self._last_time, self._last_total = now, self.total
        return self._last_rate
