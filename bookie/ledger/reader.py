"""``LedgerReader``: reads confirmed entries of a ledger across its fragments.

Each read stays inside one fragment and asks the bookies of the first entry's write set in
turn (an error, a timeout or NoSuchEntry moves on to the next one). It returns a run of
consecutive entries starting at the first one asked for, never a gap; when no bookie of the
write set can serve the first entry, it raises. Every RPC is bounded by ``read_timeout_ms``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from typing import TYPE_CHECKING

from bookie.api import LedgerEntry
from bookie.errors import CorruptEntryError, NoSuchEntryError, NoSuchLedgerError
from bookie.ledger.errors import BookieTimeoutError
from bookie.ledger.metadata import STATE_CLOSED, LedgerMetadata

if TYPE_CHECKING:
    from bookie.ledger.manager import LedgerManager


class LedgerReader:
    """Reads entries of one ledger as ``metadata`` describes it.

    ``avoid`` names bookies to ask last (a fragment copy reads from the survivors first).
    Holds no task and no state but the metadata; make a new reader for newer metadata.
    """

    def __init__(
        self,
        manager: LedgerManager,
        metadata: LedgerMetadata,
        *,
        avoid: Collection[str] = (),
    ) -> None:
        self._manager = manager
        self.metadata = metadata
        self._avoid = frozenset(avoid)

    async def read(
        self, first_entry_id: int, last_entry_id: int, max_bytes: int = 0
    ) -> list[LedgerEntry]:
        """Entries ``first_entry_id``.. at most ``last_entry_id``, consecutive, at least one.

        The run may end early: at the end of the fragment, at a gap on the bookie that
        answered, or after ``max_bytes`` of payload (0: the bookie's limit).
        """
        metadata = self.metadata
        if first_entry_id < 0 or last_entry_id < first_entry_id:
            raise ValueError(f"invalid entry range {first_entry_id}..{last_entry_id}")
        if metadata.state == STATE_CLOSED:
            if first_entry_id > metadata.last_entry_id:
                raise NoSuchEntryError(
                    f"ledger {metadata.ledger_id} ends at entry {metadata.last_entry_id}"
                )
            last_entry_id = min(last_entry_id, metadata.last_entry_id)
        fragment_end = metadata.fragment_end(first_entry_id)
        if fragment_end is not None:
            last_entry_id = min(last_entry_id, fragment_end)
        write_set = metadata.write_set(first_entry_id)
        order = [a for a in write_set if a not in self._avoid]
        order += [a for a in write_set if a in self._avoid]
        timeout_ms = self._manager.config.read_timeout_ms
        errors: list[tuple[str, Exception]] = []
        for address in order:
            try:
                async with asyncio.timeout(timeout_ms / 1000):
                    entries = await self._manager.resolve(address).read_entries(
                        metadata.ledger_id, first_entry_id, last_entry_id, max_bytes
                    )
            except TimeoutError:
                errors.append((address, BookieTimeoutError(f"no answer within {timeout_ms} ms")))
                continue
            except Exception as exc:
                errors.append((address, exc))
                continue
            run = contiguous_run(entries, first_entry_id, last_entry_id)
            if run:
                return run
            errors.append((address, NoSuchEntryError(f"entry {first_entry_id} not returned")))
        raise read_failure(metadata.ledger_id, first_entry_id, errors)


def contiguous_run(
    entries: list[LedgerEntry], first_entry_id: int, last_entry_id: int
) -> list[LedgerEntry]:
    """The consecutive entries from ``first_entry_id`` on (a bookie holding only some entries
    of a striped ledger stops at its first gap)."""
    result: list[LedgerEntry] = []
    expected = first_entry_id
    for entry in entries:
        if entry.entry_id != expected or expected > last_entry_id:
            break
        result.append(entry)
        expected += 1
    return result


def read_failure(ledger_id: int, entry_id: int, errors: list[tuple[str, Exception]]) -> Exception:
    """The error to raise when no bookie served ``entry_id``: a retriable one if any (the
    caller may try again), then a corruption, and NoSuchEntry only if every bookie said so."""
    summary = "; ".join(f"{address}: {exc}" for address, exc in errors)
    absent = (NoSuchEntryError, NoSuchLedgerError)
    chosen: Exception | None = None
    for _, exc in errors:
        if getattr(exc, "retriable", False) or isinstance(exc, OSError):
            chosen = exc
            break
    if chosen is None:
        for _, exc in errors:
            if isinstance(exc, CorruptEntryError) or not isinstance(exc, absent):
                chosen = exc
                break
    if chosen is None:
        return NoSuchEntryError(
            f"ledger {ledger_id} entry {entry_id}: no bookie has it ({summary})"
        )
    chosen.add_note(f"ledger {ledger_id} entry {entry_id}: every bookie failed: {summary}")
    return chosen
