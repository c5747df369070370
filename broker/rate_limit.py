"""Publish and dispatch rate limits (issue 13 item 5): token buckets, Pulsar's policies.

``set-publish-rate NS --msg-rate N --byte-rate B`` bounds what each topic of the namespace
accepts per second: a producer's batch is charged on arrival and, when the bucket is in
debt, the producer stream stops reading until the debt is paid — gRPC flow control then
slows the client, and nothing is refused (Pulsar also throttles by pausing reads). ``set-
dispatch-rate NS --msg-rate N --byte-rate B`` bounds each subscription's deliveries per
second the same way: a dispatch round waits for the bucket, then delivers and is charged.
A bucket holds at most one second of tokens (a burst), starts full, and may go into debt by
one batch or one read; over a run the rate is the configured one. 0 or -1 = no limit.
``publish_rate_limited_times`` (topic) and ``dispatch_throttled_times`` (subscription) in
``topics stats`` count the waits.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RateLimit:
    """Per second: messages and bytes (0 or less = that kind is not limited)."""

    msg_rate: int = -1
    byte_rate: int = -1

    @property
    def unlimited(self) -> bool:
        return self.msg_rate <= 0 and self.byte_rate <= 0


NO_LIMIT = RateLimit()


class TokenBucket:
    """``rate`` tokens per second, at most one second's worth held; charges may run into
    debt, which ``delay_s`` says how long to wait off."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        assert rate > 0
        self.rate = rate
        self._clock = clock
        self.tokens = rate
        self._last = clock()

    def _refill(self) -> None:
        now = self._clock()
        self.tokens = min(self.rate, self.tokens + (now - self._last) * self.rate)
        self._last = now

    def charge(self, amount: int) -> None:
        self._refill()
        self.tokens -= amount

    def delay_s(self) -> float:
        self._refill()
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


class RateLimiter:
    """A message bucket and a byte bucket (either may be absent) for one topic's publishing
    or one subscription's dispatching."""

    def __init__(self, limit: RateLimit, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self._messages = TokenBucket(limit.msg_rate, clock) if limit.msg_rate > 0 else None
        self._bytes = TokenBucket(limit.byte_rate, clock) if limit.byte_rate > 0 else None
        self.throttled_times = 0

    def charge(self, messages: int, size_bytes: int) -> None:
        if self._messages is not None:
            self._messages.charge(messages)
        if self._bytes is not None:
            self._bytes.charge(size_bytes)

    def delay_s(self) -> float:
        return max(
            self._messages.delay_s() if self._messages is not None else 0.0,
            self._bytes.delay_s() if self._bytes is not None else 0.0,
        )

    async def wait(self) -> None:
        """Return once no bucket is in debt."""
        delay = self.delay_s()
        if delay > 0:
            self.throttled_times += 1
            while delay > 0:
                await asyncio.sleep(delay)
                delay = self.delay_s()


def limiter_for(current: RateLimiter | None, limit: RateLimit) -> RateLimiter | None:
    """The limiter for ``limit``: the current one when it is unchanged (its debt and counts
    kept), a new one when it changed, None when unlimited."""
    if limit.unlimited:
        return None
    if current is not None and current.limit == limit:
        return current
    return RateLimiter(limit)
