"""Trimming: which ledgers of a managed ledger may go, and the order of their deletion.

A ledger may go once every durable cursor has consumed all of it (``consumed_ledgers``), but
never the last ledger (the one open for writing), nor a ledger being offloaded or any after
it (Pulsar #13219). Of the consumed ledgers, the retention policy (``Retention``, Pulsar's
``retentionTimeInMinutes``/``retentionSizeInMB``) keeps the newest: oldest first, a consumed
ledger goes while it closed longer ago than the retention time or while the topic without it
would still hold more than the retention size (-1: that limit never trims; 0/0, the
default: every consumed ledger goes), as Pulsar's ``internalTrimLedgers``.

Architecture invariant: the shortened ledger list is stored before ledgers are deleted, so a
crash in between leaks space (bookie ledgers, offloaded objects) and never loses an entry a
cursor still needs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from broker.managed_ledger.ledger_list import LedgerInfo, LedgerList, Position
from broker.managed_ledger.offload_state import OffloadState

MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Retention:
    """How much consumed data a topic keeps: minutes since a ledger closed and MiB of the
    whole topic (-1 = no limit of that kind)."""

    time_minutes: int = 0
    size_mb: int = 0

    @property
    def infinite(self) -> bool:
        return self.time_minutes < 0 and self.size_mb < 0


NO_RETENTION = Retention()


def retained_from(
    ledgers: list[LedgerInfo], consumed: int, retention: Retention, now_ms: int
) -> int:
    """How many of the first ``consumed`` ledgers the retention policy lets go."""
    if retention.infinite:
        return 0
    total = sum(info.size_bytes for info in ledgers)
    removed = 0
    count = 0
    for info in ledgers[:consumed]:
        expired = (
            retention.time_minutes >= 0
            and info.timestamp_ms > 0  # closed before timestamps were kept: kept by time
            and now_ms - info.timestamp_ms > retention.time_minutes * 60_000
        )
        over_size = retention.size_mb >= 0 and total - removed > retention.size_mb * MIB
        if not (expired or over_size):
            break
        removed += info.size_bytes
        count += 1
    return count


def consumed_ledgers(
    ledgers: list[LedgerInfo], slowest_mark_delete: Position | None, offloading: set[int]
) -> int:
    """How many ledgers from the head of the list may be deleted (None: no cursor)."""
    count = 0
    for info in ledgers[:-1]:
        if info.ledger_id in offloading:
            break  # never delete a ledger mid-offload (Pulsar #13219)
        if slowest_mark_delete is not None and not (
            info.ledger_id < slowest_mark_delete[0]
            or (
                info.ledger_id == slowest_mark_delete[0]
                and slowest_mark_delete[1] >= info.entries - 1
            )
        ):
            break
        count += 1
    return count


async def trim_ledgers(
    ledgers: LedgerList,
    offloads: OffloadState,
    delete_ledger: Callable[[int], Awaitable[None]],
    slowest_mark_delete: Position | None,
    retention: Retention = NO_RETENTION,
    now_ms: int = 0,
) -> int:
    """Store the list without the consumed ledgers retention lets go, then delete them from
    the bookies and the object store; returns how many went."""
    if len(ledgers.ledgers) <= 1:
        return 0
    count = consumed_ledgers(ledgers.ledgers, slowest_mark_delete, offloads.offloading)
    count = retained_from(ledgers.ledgers, count, retention, now_ms)
    if count == 0:
        return 0
    previous = ledgers.ledgers
    ledgers.ledgers = previous[count:]
    try:
        await ledgers.store()
    except BaseException:
        ledgers.ledgers = previous
        raise
    for info in previous[:count]:
        await delete_ledger(info.ledger_id)
        await offloads.delete_objects_quietly(info)
    return count
