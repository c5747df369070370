"""Trimming: which ledgers of a managed ledger may go, and the order of their deletion.

A ledger may go once every durable cursor has consumed all of it (``consumed_ledgers``), but
never the last ledger (the one open for writing), nor a ledger being offloaded or any after
it (Pulsar #13219). Retention policies belong here when they come.

Architecture invariant: the shortened ledger list is stored before ledgers are deleted, so a
crash in between leaks space (bookie ledgers, offloaded objects) and never loses an entry a
cursor still needs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from broker.managed_ledger.ledger_list import LedgerInfo, LedgerList, Position
from broker.managed_ledger.offload_state import OffloadState


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
) -> int:
    """Store the list without the consumed ledgers, then delete them from the bookies and
    the object store; returns how many went."""
    if len(ledgers.ledgers) <= 1:
        return 0
    count = consumed_ledgers(ledgers.ledgers, slowest_mark_delete, offloads.offloading)
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
