"""A managed ledger's list of ledgers: its stored form, its compare-and-set, and positions.

The list lives in the metadata store under ``/managed-ledgers/<tenant>/<namespace>/persistent/
<topic>`` as JSON (``encode_ledger_list`` / ``decode_ledger_list``, pure). ``LedgerList`` holds
it in memory with the version it was read or written at, and stores it only by
compare-and-set against that version: a ``BadVersionError`` means another broker took the
topic over, and the managed ledger is fenced at once (``TopicFencedError``; the topic
unloads). Every store goes through one lock, so two writers of this process (a rollover and
an offload state change) never race with the same expected version.

Positions are ``(ledger_id, entry_id)`` pairs, ordered as tuples because ledger ids only grow;
the arithmetic over them (first, end, next, how many between) reads the list and nothing else.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from broker.errors import TopicFencedError
from strata.metadata import BadVersionError, MetadataStore
from tiered import OffloadContext

Position = tuple[int, int]
MANAGED_LEDGERS_PREFIX = "/managed-ledgers/"


@dataclass(slots=True)
class LedgerInfo:
    ledger_id: int
    entries: int = 0
    size_bytes: int = 0
    timestamp_ms: int = 0
    offload: OffloadContext | None = None  # tiered storage state (``tiered.state``)

    @classmethod
    def from_dict(cls, body: dict[str, Any]) -> LedgerInfo:
        offload = body.get("offload")
        return cls(
            ledger_id=int(body["ledger_id"]),
            entries=int(body.get("entries", 0)),
            size_bytes=int(body.get("size_bytes", 0)),
            timestamp_ms=int(body.get("timestamp_ms", 0)),
            offload=OffloadContext.from_dict(offload) if offload else None,
        )

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "ledger_id": self.ledger_id,
            "entries": self.entries,
            "size_bytes": self.size_bytes,
            "timestamp_ms": self.timestamp_ms,
        }
        if self.offload is not None:
            body["offload"] = self.offload.to_dict()
        return body


def encode_ledger_list(ledgers: list[LedgerInfo]) -> bytes:
    body: dict[str, Any] = {"ledgers": [i.to_dict() for i in ledgers]}
    return json.dumps(body).encode()


def decode_ledger_list(value: bytes) -> list[LedgerInfo]:
    return [LedgerInfo.from_dict(info) for info in json.loads(value)["ledgers"]]


class LedgerList:
    """The ledger list of one managed ledger and the only way to store it (compare-and-set).

    Lifecycle: ``load()`` reads the stored list (creating an empty one) → the managed ledger
    changes ``ledgers`` in memory and calls ``store()`` (or ``put()`` under ``lock`` when it
    must undo its change on failure) → ``delete()`` with the topic. ``fence`` is called with
    the error once a compare-and-set failed; it returns the error the managed ledger is fenced
    with (the first one), which ``put()`` raises.
    """

    def __init__(
        self,
        store: MetadataStore,
        name: str,
        fence: Callable[[BaseException], BaseException],
    ) -> None:
        self.name = name
        self.key = MANAGED_LEDGERS_PREFIX + name
        self.ledgers: list[LedgerInfo] = []
        self.version = 0
        self.lock = asyncio.Lock()
        self._store = store
        self._fence = fence

    async def load(self) -> None:
        record = await self._store.get(self.key)
        if record is not None:
            self.ledgers = decode_ledger_list(record.value)
        else:
            record = await self._store.put(
                self.key, encode_ledger_list(self.ledgers), expected_version=0
            )
        self.version = record.version

    async def store(self) -> None:
        async with self.lock:
            await self.put()

    async def put(self) -> None:
        """Store the list by compare-and-set; the caller holds ``lock``."""
        assert self.lock.locked()
        try:
            record = await self._store.put(
                self.key, encode_ledger_list(self.ledgers), expected_version=self.version
            )
        except BadVersionError as exc:
            error = TopicFencedError(f"managed ledger {self.name} changed by another owner")
            raise self._fence(error) from exc
        self.version = record.version

    async def delete(self) -> None:
        self.ledgers = []
        await self._store.delete(self.key)

    def info(self, ledger_id: int) -> LedgerInfo | None:
        for info in self.ledgers:
            if info.ledger_id == ledger_id:
                return info
        return None

    # ---- positions ---------------------------------------------------------------------

    def first_position(self) -> Position:
        """The position of the oldest entry still in the log (or where the next will go)."""
        for info in self.ledgers:
            if info.entries > 0:
                return (info.ledger_id, 0)
        return (self.ledgers[-1].ledger_id, 0) if self.ledgers else (-1, 0)

    def end_position(self) -> Position:
        """The position the next add will get, as far as readers are concerned."""
        last = self.ledgers[-1]
        return (last.ledger_id, last.entries)

    def normalize(self, position: Position) -> Position:
        """Move a position past the end of a closed ledger to the start of the next one."""
        ledger_id, entry_id = position
        for index, info in enumerate(self.ledgers):
            if info.ledger_id < ledger_id:
                continue
            if info.ledger_id > ledger_id:
                return (info.ledger_id, 0)
            if entry_id < info.entries or index == len(self.ledgers) - 1:
                return (ledger_id, entry_id)
            ledger_id, entry_id = self.ledgers[index + 1].ledger_id, 0
        return (ledger_id, entry_id)

    def next_position(self, position: Position) -> Position:
        return self.normalize((position[0], position[1] + 1))

    def contains(self, position: Position) -> bool:
        info = self.info(position[0])
        return info is not None and 0 <= position[1] < info.entries

    def entries_between(self, start_exclusive: Position, end_inclusive: Position) -> int:
        """Number of entries after ``start_exclusive`` up to ``end_inclusive``."""
        count = 0
        for info in self.ledgers:
            lo = 0
            hi = info.entries - 1
            if info.ledger_id < start_exclusive[0] or info.ledger_id > end_inclusive[0]:
                continue
            if info.ledger_id == start_exclusive[0]:
                lo = start_exclusive[1] + 1
            if info.ledger_id == end_inclusive[0]:
                hi = min(hi, end_inclusive[1])
            if hi >= lo:
                count += hi - lo + 1
        return count

    @property
    def total_entries(self) -> int:
        return sum(i.entries for i in self.ledgers)

    @property
    def total_size_bytes(self) -> int:
        return sum(i.size_bytes for i in self.ledgers)
