"""Backlog quotas (issue 13 item 4; Pulsar's ``BacklogQuotaManager``).

A namespace's quota bounds the backlog of each of its topics — the bytes after the slowest
subscription's mark-delete position (``limit_bytes``) and the age of its oldest unacknowledged
message (``limit_time_s``); -1 leaves that kind unbounded. Each housekeeping pass checks every
loaded topic (``check``) and records whether it is over (``Topic.backlog_quota_exceeded``,
the refusal text naming the quota); a producer opening on a topic over quota is checked at
once too. What happens then is the policy's:

* ``producer_request_hold`` (Pulsar's default): a producer's next batch waits until the
  backlog is under quota again, at most ``--backlog-quota-hold-timeout-seconds`` (30, the
  SDK's default send timeout); then the stream ends RESOURCE_EXHAUSTED naming the quota.
* ``producer_exception``: new producers are refused and a connected producer's next batch
  ends its stream, RESOURCE_EXHAUSTED naming the quota, at once.
* ``consumer_backlog_eviction``: nothing is refused; the slowest subscriptions are moved
  forward, oldest entries first (whole closed ledgers for size — in the ledger open for
  writing, entries down to 90 % of the quota — and what is past the age for time), at most
  ``MAX_EVICTED_ENTRIES_PER_PASS`` entries per pass, until the backlog fits.

Nothing stored is deleted here: eviction only acknowledges on the subscriptions' behalf, and
trimming then applies the retention policy as for any acknowledged data.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from strata.clock import now_ms
from strata.logging_setup import log_fields

if TYPE_CHECKING:
    from broker.subscription import Subscription
    from broker.topic import Topic

log = logging.getLogger(__name__)

HOLD = "producer_request_hold"
EXCEPTION = "producer_exception"
EVICTION = "consumer_backlog_eviction"
POLICIES = (HOLD, EXCEPTION, EVICTION)
MAX_EVICTED_ENTRIES_PER_PASS = 10_000


@dataclass(frozen=True, slots=True)
class BacklogQuota:
    limit_bytes: int = -1  # -1: no size limit
    limit_time_s: int = -1  # -1: no age limit
    policy: str = HOLD

    @property
    def unlimited(self) -> bool:
        return self.limit_bytes < 0 and self.limit_time_s < 0

    def describe(self) -> str:
        limits = []
        if self.limit_bytes >= 0:
            limits.append(f"{self.limit_bytes} bytes")
        if self.limit_time_s >= 0:
            limits.append(f"{self.limit_time_s} s")
        return f"backlog quota of {' and '.join(limits)} ({self.policy})"


NO_QUOTA = BacklogQuota()


def backlog_size_bytes(topic: Topic) -> int:
    """Bytes after the slowest subscription's mark-delete position (0 without any); the
    mark-delete ledger is counted in proportion to its entries still unacknowledged."""
    slowest = topic.slowest_mark_delete()
    if slowest is None:
        return 0
    size = 0
    for info in topic.ledger.ledgers:
        if info.ledger_id > slowest[0]:
            size += info.size_bytes
        elif info.ledger_id == slowest[0] and info.entries:
            left = info.entries - 1 - slowest[1]
            size += info.size_bytes * max(left, 0) // info.entries
    return size


def _slowest(topic: Topic) -> Subscription | None:
    subscriptions = [s for s in topic.subscriptions.values()]
    return min(subscriptions, key=lambda s: s.cursor.mark_delete, default=None)


async def oldest_unacked_age_s(topic: Topic) -> float:
    """Seconds since the oldest unacknowledged message of any subscription was published."""
    from broker.entry_format import publish_time_of

    slowest = _slowest(topic)
    if slowest is None or slowest.cursor.backlog_entries() == 0:
        return 0.0
    entry = await topic.ledger.read_entry(topic.ledger.next_position(slowest.cursor.mark_delete))
    if entry is None:
        return 0.0
    return max(0.0, (now_ms() - publish_time_of(entry.data)) / 1000)


async def check(topic: Topic, quota: BacklogQuota) -> None:
    """Apply ``quota`` to the topic now (see the module docstring)."""
    topic.backlog_quota = quota
    if quota.unlimited or not topic.subscriptions:
        topic.set_backlog_quota_exceeded(None)
        return
    if quota.policy == EVICTION:
        await _evict(topic, quota)
        topic.set_backlog_quota_exceeded(None)
        return
    topic.set_backlog_quota_exceeded(await _exceeded(topic, quota))


async def _exceeded(topic: Topic, quota: BacklogQuota) -> str | None:
    if quota.limit_bytes >= 0:
        size = backlog_size_bytes(topic)
        if size > quota.limit_bytes:
            return f"{topic.name} exceeds its {quota.describe()}: backlog of {size} bytes"
    if quota.limit_time_s >= 0:
        age = await oldest_unacked_age_s(topic)
        if age > quota.limit_time_s:
            return (
                f"{topic.name} exceeds its {quota.describe()}: oldest unacknowledged "
                f"message is {age:.0f} s old"
            )
    return None


async def _evict(topic: Topic, quota: BacklogQuota) -> None:
    from broker.subscription_admin import expire_messages, skip_entries_until

    evicted = 0
    if quota.limit_time_s >= 0 and await oldest_unacked_age_s(topic) > quota.limit_time_s:
        for name in list(topic.subscriptions):
            evicted += await expire_messages(
                topic, name, quota.limit_time_s, MAX_EVICTED_ENTRIES_PER_PASS
            )
    budget = MAX_EVICTED_ENTRIES_PER_PASS
    while quota.limit_bytes >= 0 and backlog_size_bytes(topic) > quota.limit_bytes and budget > 0:
        slowest = _slowest(topic)
        if slowest is None:
            break
        # The rest of the slowest subscription's oldest ledger goes (Pulsar drops by ledger);
        # in the ledger open for writing, only as many entries (of its average size) as
        # bring the backlog to 90 % of the quota.
        ledger_id = topic.ledger.next_position(slowest.cursor.mark_delete)[0]
        current = topic.ledger.ledgers[-1]
        limit = budget
        if ledger_id == current.ledger_id and current.entries:
            average = max(1, current.size_bytes // current.entries)
            excess = backlog_size_bytes(topic) - quota.limit_bytes * 9 // 10
            limit = min(budget, max(1, -(-excess // average)))
        skipped, entries = await skip_entries_until(topic, slowest, ledger_id, limit)
        if entries == 0:
            break
        evicted += skipped
        budget -= entries
    if evicted:
        log.info(
            "evicted %d messages of %s over its %s",
            evicted,
            topic.name,
            quota.describe(),
            extra=log_fields(topic=topic.name),
        )
