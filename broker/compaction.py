"""Topic compaction (issue 13 item 6): Kafka's log compaction, Pulsar's compacted topics.

``TopicCompaction.run`` reads the previous compacted ledger and the topic's entries after the
previous horizon up to the last one stored now (the new horizon), keeps the latest message
of each key (a message's ``partition_key``; messages without one are left out, as Pulsar
does; an empty payload is a tombstone that removes its key), and writes a new compacted
ledger. Each of its entries is a ``Delivery`` holding one original entry unchanged — its
position, its ``StoredEntry`` bytes — and, as ``acked_batch_indexes``, the batch indexes
compacted away, so a consumer delivers exactly the surviving messages with their original
ids and no client code changes. Chunked messages are left out.

The new state ``{ledger_id, horizon, entries, keys}`` replaces the old under
``/compaction/<tenant>/<namespace>/<topic>`` by compare-and-set, and only then is the old
compacted ledger deleted: a ``kill -9`` mid-compaction leaves the previous state valid (and
at most an orphan ledger). Entries of offloaded ledgers are read back from object storage
through the managed ledger like any read.

Readers and consumers with ``read_compacted`` (``CompactedView``) read the compacted ledger
up to the horizon, then the topic after it. Trimming keeps the topic's entries after the
horizon (``hold_position``). Memory: the latest message of each live key is kept while
compacting (keys times entry size), as Pulsar's phase one keeps ids.
"""

from __future__ import annotations

import asyncio
import bisect
import enum
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import quote

from bookie.ledger import LedgerReader
from broker.managed_ledger import Entry, Position
from strata.batch_codec import bitset_words, decode_message_batch, decompress
from strata.clock import now_ms
from strata.logging_setup import log_fields
from strata.metadata import BadVersionError, MetadataStore
from strata.naming import TopicName
from strata.v1 import messaging_pb2

if TYPE_CHECKING:
    from bookie.ledger import LedgerManager
    from broker.managed_ledger import ManagedLedger

log = logging.getLogger(__name__)

COMPACTION_PREFIX = "/compaction/"
READ_CHUNK_ENTRIES = 100
# Adds in flight while writing the compacted ledger.
MAX_PENDING_WRITES = 500


class CompactionRunStatus(enum.Enum):
    NOT_RUN = "NOT_RUN"
    RUNNING = "RUNNING"
    SUCCESS = "SUCCESS"
    ERROR = "ERROR"


@dataclass(frozen=True, slots=True)
class CompactedState:
    ledger_id: int  # -1: nothing survived
    horizon: Position
    entries: int
    keys: int


def bytes_after(ledger: ManagedLedger, position: Position) -> int:
    """Bytes of the entries after ``position`` (a ledger cut in the middle counts in
    proportion to its entries)."""
    size = 0
    for info in ledger.ledgers:
        if info.ledger_id > position[0]:
            size += info.size_bytes
        elif info.ledger_id == position[0] and info.entries:
            size += info.size_bytes * max(info.entries - 1 - position[1], 0) // info.entries
    return size


def state_key(name: TopicName) -> str:
    return f"{COMPACTION_PREFIX}{name.tenant}/{name.namespace}/{quote(name.local_name, safe='')}"


class TopicCompaction:
    """A topic's compaction: its state, its one run at a time (an owned task), and the
    view readers use. Owned by ``Topic``; ``close()`` cancels a run."""

    def __init__(
        self,
        name: TopicName,
        ledger: ManagedLedger,
        store: MetadataStore,
        persistence: tuple[int, int, int] = (1, 1, 1),
    ) -> None:
        self._name = name
        self._ledger = ledger
        self._store = store
        self.persistence = persistence
        self.state: CompactedState | None = None
        self._version = 0
        self._loaded = False
        self._task: asyncio.Task[None] | None = None
        self.status = CompactionRunStatus.NOT_RUN
        self.error = ""
        self.started_ms = 0
        self.finished_ms = 0
        self.last_run_messages_read = 0
        self.last_run_seconds = 0.0
        self.last_run_bytes_read = 0
        self._view: CompactedView | None = None
        self.trigger = ""  # "manual" or "automatic": what started the last run

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def load(self) -> CompactedState | None:
        if not self._loaded:
            record = await self._store.get(state_key(self._name))
            if record is not None:
                body = json.loads(record.value)
                self.state = CompactedState(
                    int(body["ledger_id"]),
                    (int(body["horizon"][0]), int(body["horizon"][1])),
                    int(body["entries"]),
                    int(body["keys"]),
                )
                self._version = record.version
            self._loaded = True
        return self.state

    def hold_position(self) -> Position | None:
        """Trimming keeps the entries after this (the horizon); None: nothing held."""
        return self.state.horizon if self.state is not None else None

    async def maybe_start(self, threshold_bytes: int) -> bool:
        """Start a run when ``threshold_bytes`` (> 0) follow the horizon (automatic)."""
        if threshold_bytes <= 0 or self.running:
            return False
        state = await self.load()
        after = bytes_after(self._ledger, state.horizon if state is not None else (-1, -1))
        if after < threshold_bytes:
            return False
        self.trigger = "automatic"
        return self.start()

    def start(self) -> bool:
        """Start a run unless one is running; True if this call started it."""
        if self.running:
            return False
        self.status = CompactionRunStatus.RUNNING
        self.error = ""
        self.started_ms = now_ms()
        self._task = asyncio.get_running_loop().create_task(self._run_logged())
        return True

    async def wait(self) -> None:
        if self._task is not None:
            await asyncio.wait([self._task])

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.wait([self._task])

    async def _run_logged(self) -> None:
        try:
            await self.run()
        except asyncio.CancelledError:
            self.status = CompactionRunStatus.ERROR
            self.error = "cancelled (the topic closed)"
            raise
        except Exception as exc:
            self.status = CompactionRunStatus.ERROR
            self.error = str(exc)[:500]
            log.warning(
                "compaction of %s failed: %s", self._name, exc, extra=log_fields(topic=self._name)
            )
        else:
            self.status = CompactionRunStatus.SUCCESS
        finally:
            self.finished_ms = now_ms()

    # ---- the run ---------------------------------------------------------------------------

    async def run(self) -> None:
        started = time.monotonic()
        previous = await self.load()
        end = self._ledger.last_confirmed
        if end[0] < 0 or (previous is not None and previous.horizon >= end):
            return  # nothing new
        latest: dict[str, tuple[Position, int]] = {}
        survivors: dict[Position, set[int]] = {}
        kept: dict[Position, tuple[bytes, int]] = {}
        read = [0, 0]  # messages, bytes

        def consider(position: Position, data: bytes, dropped: set[int]) -> None:
            stored = messaging_pb2.StoredEntry.FromString(data)
            if stored.HasField("chunk"):
                return
            raw = decompress(stored.payload, stored.compression, stored.uncompressed_size)
            payloads, metadata = decode_message_batch(raw, stored.num_messages)
            read[0] += len(payloads)
            read[1] += len(data)
            for index, payload in enumerate(payloads):
                if index in dropped:
                    continue
                if not metadata or not metadata[index].HasField("partition_key"):
                    continue  # no key: left out of the compacted view
                key = metadata[index].partition_key
                old = latest.pop(key, None)
                if old is not None:
                    left = survivors[old[0]]
                    left.discard(old[1])
                    if not left:
                        del survivors[old[0]]
                        del kept[old[0]]
                if not payload:
                    continue  # a tombstone: the key is gone
                latest[key] = (position, index)
                survivors.setdefault(position, set()).add(index)
                kept[position] = (data, len(payloads))

        if previous is not None and previous.ledger_id >= 0:
            async for delivery in self._compacted_entries(previous.ledger_id):
                words = list(delivery.acked_batch_indexes)
                dropped = {
                    64 * w + b for w, word in enumerate(words) for b in range(64) if word >> b & 1
                }
                consider((delivery.ledger_id, delivery.entry_id), delivery.entry, dropped)
        start = previous.horizon if previous is not None else (-1, -1)
        async for entry in self._log_entries(start, end):
            consider(entry.position, entry.data, set())
        state = await self._write(end, kept, survivors, len(latest))
        await self._swap(state, previous)
        self.last_run_messages_read, self.last_run_bytes_read = read
        self.last_run_seconds = time.monotonic() - started
        log.info(
            "compacted %s up to %s: %d messages read, %d keys in %d entries, %.2f s",
            self._name,
            end,
            read[0],
            len(latest),
            len(kept),
            self.last_run_seconds,
            extra=log_fields(topic=self._name),
        )

    async def _log_entries(self, after: Position, end: Position) -> AsyncIterator[Entry]:
        ledger = self._ledger
        position = ledger.next_position(after)
        if position < ledger.first_position():
            position = ledger.first_position()
        while position <= end:
            entries = await ledger.read_entries(position, READ_CHUNK_ENTRIES)
            if not entries:
                return
            for entry in entries:
                if entry.position > end:
                    return
                yield entry
            position = ledger.next_position(entries[-1].position)

    async def _compacted_entries(self, ledger_id: int) -> AsyncIterator[messaging_pb2.Delivery]:
        manager = self._ledger.manager
        metadata = await manager.read_metadata(ledger_id)
        if metadata is None:
            raise RuntimeError(f"compacted ledger {ledger_id} of {self._name} is missing")
        reader = LedgerReader(manager, metadata)
        next_id = 0
        while next_id <= metadata.last_entry_id:
            last = min(metadata.last_entry_id, next_id + READ_CHUNK_ENTRIES - 1)
            for stored in await reader.read(next_id, last):
                yield messaging_pb2.Delivery.FromString(stored.payload)
                next_id = stored.entry_id + 1

    async def _write(
        self,
        horizon: Position,
        kept: dict[Position, tuple[bytes, int]],
        survivors: dict[Position, set[int]],
        keys: int,
    ) -> CompactedState:
        if not kept:
            return CompactedState(-1, horizon, 0, 0)
        manager = self._ledger.manager
        ensemble, write_quorum, ack_quorum = self.persistence
        handle = await manager.create_ledger(
            ensemble, write_quorum, ack_quorum, custom={"compacted-topic": str(self._name)}
        )
        pending: list[asyncio.Future[int]] = []
        for position in sorted(kept):
            data, count = kept[position]
            dropped = [i for i in range(count) if i not in survivors[position]]
            delivery = messaging_pb2.Delivery(
                ledger_id=position[0],
                entry_id=position[1],
                entry=data,
                acked_batch_indexes=bitset_words(dropped),
            )
            pending.append(handle.add_entry(delivery.SerializeToString()))
            if len(pending) >= MAX_PENDING_WRITES:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
        await handle.close()
        return CompactedState(handle.ledger_id, horizon, len(kept), keys)

    async def _swap(self, state: CompactedState, previous: CompactedState | None) -> None:
        body = json.dumps(
            {
                "ledger_id": state.ledger_id,
                "horizon": list(state.horizon),
                "entries": state.entries,
                "keys": state.keys,
            }
        ).encode()
        try:
            record = await self._store.put(
                state_key(self._name), body, expected_version=self._version
            )
        except BadVersionError:
            # Another broker compacted meanwhile (this one lost the topic): keep theirs.
            await self._delete_quietly(state.ledger_id)
            raise RuntimeError(
                "the compaction state changed meanwhile; this run is dropped"
            ) from None
        self._version = record.version
        self.state = state
        self._view = None
        if previous is not None and previous.ledger_id >= 0:
            await self._delete_quietly(previous.ledger_id)

    async def _delete_quietly(self, ledger_id: int) -> None:
        if ledger_id < 0:
            return
        try:
            await self._ledger.manager.delete_ledger(ledger_id)
        except Exception as exc:
            log.warning("deleting compacted ledger %d failed: %s", ledger_id, exc)

    async def delete(self) -> None:
        """The topic is deleted: its compacted ledger and state go too."""
        await self.close()
        state = await self.load()
        if state is not None:
            await self._delete_quietly(state.ledger_id)
        await self._store.delete(state_key(self._name))

    # ---- reading ---------------------------------------------------------------------------

    async def view(self) -> CompactedView | None:
        """The compacted view of the current state (None: never compacted)."""
        state = await self.load()
        if state is None:
            return None
        if self._view is None or self._view.state is not state:
            self._view = await CompactedView.open(self._ledger.manager, state)
        return self._view


class CompactedView:
    """The compacted ledger of one state, for read_compacted subscriptions: its entries'
    original positions in memory (one per surviving entry), their data read on demand."""

    def __init__(
        self,
        state: CompactedState,
        reader: LedgerReader | None,
        positions: list[Position],
    ) -> None:
        self.state = state
        self._reader = reader
        self._positions = positions

    @classmethod
    async def open(cls, manager: LedgerManager, state: CompactedState) -> CompactedView:
        if state.ledger_id < 0:
            return cls(state, None, [])
        metadata = await manager.read_metadata(state.ledger_id)
        if metadata is None:
            raise RuntimeError(f"compacted ledger {state.ledger_id} is missing")
        reader = LedgerReader(manager, metadata)
        positions: list[Position] = []
        next_id = 0
        while next_id <= metadata.last_entry_id:
            last = min(metadata.last_entry_id, next_id + READ_CHUNK_ENTRIES - 1)
            for stored in await reader.read(next_id, last):
                delivery = messaging_pb2.Delivery.FromString(stored.payload)
                positions.append((delivery.ledger_id, delivery.entry_id))
                next_id = stored.entry_id + 1
        return cls(state, reader, positions)

    async def entry_at(self, position: Position) -> Entry | None:
        """The compacted entry at exactly ``position`` (None: compacted away)."""
        index = bisect.bisect_left(self._positions, position)
        if index >= len(self._positions) or self._positions[index] != position:
            return None
        entries = await self.read(position, 1)
        return entries[0] if entries else None

    async def read(self, start: Position, max_entries: int) -> list[Entry] | None:
        """Entries from ``start`` up to the horizon (``dropped`` set), or None once ``start``
        is past the horizon (read the topic itself from there)."""
        if start > self.state.horizon:
            return None
        index = bisect.bisect_left(self._positions, start)
        if index >= len(self._positions) or self._reader is None:
            return []
        last = min(len(self._positions), index + max_entries) - 1
        entries = []
        for stored in await self._reader.read(index, last):
            delivery = messaging_pb2.Delivery.FromString(stored.payload)
            dropped = 0
            for word_index, word in enumerate(delivery.acked_batch_indexes):
                dropped |= word << (64 * word_index)
            header = messaging_pb2.StoredEntry.FromString(delivery.entry)
            entries.append(
                Entry(
                    delivery.ledger_id,
                    delivery.entry_id,
                    delivery.entry,
                    header.num_messages,
                    0,
                    dropped,
                )
            )
        return entries
