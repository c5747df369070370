"""Message deduplication (issue 13 item 1; Pulsar's PIP-6 ``MessageDeduplication``).

With deduplication on, a topic keeps, per producer name, two sequence ids: the highest
*pushed* (handed to the managed ledger) and the highest *persisted* (its entry durable). A
batch carries consecutive ids ``first..last``; ``check`` decides:

* ``first`` above the pushed id: new — it is stored and the pushed id becomes ``last``;
* ``last`` at or below the persisted id: a duplicate — not stored again; its receipt names
  position (-1, -1) (Pulsar's), which the SDK turns into ``MessageId(-1, -1)``;
* otherwise the first copy is still in flight (a resend on a new stream while the old one's
  write is pending): the producer's stream waits for that producer's latest pending write,
  then decides again. A write that fails resets every pushed id to the persisted one (as
  Pulsar's ``resetHighestSequenceIdPushed``), so the client's resend is stored.

The persisted ids survive a broker ``kill -9``, a failover and a bundle move: every
``--broker-deduplication-entries-interval`` persisted entries (and when the topic closes) a
snapshot ``{position, producers}`` is written to the metadata store under
``/dedup/<tenant>/<namespace>/<topic>`` by compare-and-set, and at load the topic replays
the entries after the snapshot's position (their ``StoredEntry`` headers only) before it
accepts a producer. Ledgers after the snapshot position are kept until the next snapshot
(``hold_position`` joins the slowest cursor in trimming). Persisted ids complete in entry
order (the writer confirms in order), so the snapshot's map covers every entry up to its
position.

Bounded memory: a producer not connected for
``--broker-deduplication-producer-inactivity-timeout-minutes`` is forgotten by housekeeping,
and at most ``--broker-deduplication-max-number-of-producers`` names are kept (the longest
inactive go first). Turning deduplication off forgets the state and deletes the snapshot;
turning it on starts with an empty state at the current end of the log (Pulsar's dedup cursor
starts at the latest position too).
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import quote

from broker.managed_ledger import ManagedLedger, Position
from strata.logging_setup import log_fields
from strata.metadata import BadVersionError, MetadataStore
from strata.naming import TopicName
from strata.v1 import messaging_pb2

log = logging.getLogger(__name__)

DEDUP_PREFIX = "/dedup/"
# The receipt position of a duplicate (Pulsar's -1:-1), as it travels in uint64 fields.
DUPLICATE_POSITION: Position = ((1 << 64) - 1, (1 << 64) - 1)
# Entries read per step while replaying the tail at load.
REPLAY_CHUNK_ENTRIES = 100
# A stream waits at most this many times for in-flight writes before it refuses a batch.
MAX_INFLIGHT_WAITS = 3
# Loading reads the snapshot again when the previous owner wrote it meanwhile, this often.
MAX_LOAD_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class DeduplicationConfig:
    entries_interval: int
    max_producers: int
    inactivity_timeout_s: float


class Decision(enum.Enum):
    NEW = "new"
    DUPLICATE = "duplicate"
    IN_FLIGHT = "in flight"


def snapshot_key(name: TopicName) -> str:
    return f"{DEDUP_PREFIX}{name.tenant}/{name.namespace}/{quote(name.local_name, safe='')}"


class MessageDeduplication:
    """The deduplication state of one topic (see the module docstring). Owned by ``Topic``;
    its one background task (a snapshot write) is awaited by ``close()``."""

    def __init__(
        self,
        name: TopicName,
        ledger: ManagedLedger,
        store: MetadataStore,
        config: DeduplicationConfig,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._name = name
        self._ledger = ledger
        self._store = store
        self._config = config
        self._clock = clock
        self._key = snapshot_key(name)
        self.enabled = False
        self._pushed: dict[str, int] = {}
        self._persisted: dict[str, int] = {}
        # producer name → monotonic time it was last active (connected, or sent)
        self._last_active: dict[str, float] = {}
        self._inflight: dict[str, asyncio.Future[Position]] = {}
        self._last_persisted_position: Position = (-1, -1)
        self._snapshot_position: Position | None = None
        self._snapshot_version = 0
        self._entries_since_snapshot = 0
        self._snapshot_task: asyncio.Task[None] | None = None
        self._fenced = False  # another owner wrote the snapshot: stop writing it

    # ---- state -----------------------------------------------------------------------------

    def last_sequence_id(self, producer: str) -> int:
        """The highest persisted sequence id of ``producer``, or -1."""
        return self._persisted.get(producer, -1)

    @property
    def producers(self) -> int:
        return len(self._persisted)

    def hold_position(self) -> Position | None:
        """The position trimming must keep entries after (None: nothing held)."""
        return self._snapshot_position if self.enabled else None

    # ---- enabling, loading ------------------------------------------------------------------

    async def set_enabled(self, enabled: bool) -> None:
        """Apply the topic's policy: load the snapshot and replay the tail when turned on at
        load, start empty when turned on later, forget everything when turned off."""
        if enabled == self.enabled:
            return
        if not enabled:
            self.enabled = False
            await self._await_snapshot()
            self._forget_all()
            await self._store.delete(self._key)
            self._snapshot_version = 0
            log.info("deduplication off for %s", self._name, extra=log_fields(topic=self._name))
            return
        for attempt in range(MAX_LOAD_ATTEMPTS):
            await self._load()
            self.enabled = True
            try:
                await self._put_snapshot()
                break
            except BadVersionError:
                # The previous owner wrote a snapshot after we read it: read it again.
                self.enabled = False
                if attempt == MAX_LOAD_ATTEMPTS - 1:
                    raise
        log.info(
            "deduplication on for %s: %d producers, snapshot at %s",
            self._name,
            len(self._persisted),
            self._snapshot_position,
            extra=log_fields(topic=self._name),
        )

    def _forget_all(self) -> None:
        self._pushed.clear()
        self._persisted.clear()
        self._last_active.clear()
        self._inflight.clear()
        self._snapshot_position = None
        self._entries_since_snapshot = 0

    async def _load(self) -> None:
        self._forget_all()
        record = await self._store.get(self._key)
        end = self._ledger.last_confirmed
        start: Position | None = None
        if record is not None:
            self._snapshot_version = record.version
            body = json.loads(record.value)
            now = self._clock()
            for producer, sequence_id in body.get("producers", {}).items():
                self._persisted[producer] = int(sequence_id)
                self._last_active[producer] = now
            start = tuple(body["position"])  # type: ignore[assignment]
        if start is not None and start < end:
            await self._replay(start, end)
        self._pushed = dict(self._persisted)
        self._last_persisted_position = end

    async def _replay(self, after: Position, end: Position) -> None:
        """Rebuild the persisted ids from the entries after ``after`` up to ``end``."""
        ledger = self._ledger
        position = ledger.next_position(after)
        if not ledger.contains(position) and position <= end:
            position = ledger.first_position()  # trimmed past (should not happen): from the start
        replayed = 0
        started = time.monotonic()
        now = self._clock()
        while position <= end:
            entries = await ledger.read_entries(position, REPLAY_CHUNK_ENTRIES)
            if not entries:
                break
            for entry in entries:
                if entry.position > end:
                    break
                header = messaging_pb2.StoredEntry.FromString(entry.data)
                last = header.sequence_id + max(header.num_messages, 1) - 1
                if last > self._persisted.get(header.producer_name, -1):
                    self._persisted[header.producer_name] = last
                self._last_active[header.producer_name] = now
                replayed += 1
            position = ledger.next_position(entries[-1].position)
        log.info(
            "deduplication of %s replayed %d entries in %.3f s",
            self._name,
            replayed,
            time.monotonic() - started,
            extra=log_fields(topic=self._name),
        )

    # ---- the publish path --------------------------------------------------------------------

    def check(self, producer: str, first: int, last: int) -> Decision:
        if first > self._pushed.get(producer, -1):
            return Decision.NEW
        if last <= self._persisted.get(producer, -1):
            return Decision.DUPLICATE
        return Decision.IN_FLIGHT

    async def wait_in_flight(self, producer: str) -> None:
        """Wait for the producer's latest pending write (its outcome does not matter here)."""
        future = self._inflight.get(producer)
        if future is not None and not future.done():
            await asyncio.wait([future])

    def pushed(self, producer: str, last: int, future: asyncio.Future[Position]) -> None:
        """A new batch of ``producer`` ending at ``last`` went to the managed ledger."""
        self._pushed[producer] = last
        self._last_active[producer] = self._clock()
        self._inflight[producer] = future
        future.add_done_callback(lambda done: self._on_written(producer, last, done))

    def _on_written(self, producer: str, last: int, future: asyncio.Future[Position]) -> None:
        if self._inflight.get(producer) is future:
            del self._inflight[producer]
        if not self.enabled:
            return
        if future.cancelled():
            # Its outcome is unknown (nothing cancels these futures): a resend stays "in
            # flight" and is refused rather than risk storing it twice; a reload replays.
            log.warning(
                "deduplication of %s: a write of %s was cancelled",
                self._name,
                producer,
                extra=log_fields(topic=self._name),
            )
            return
        if future.exception() is not None:
            # The write failed: what was pushed and not persisted may come again, and must
            # then be stored (Pulsar's resetHighestSequenceIdPushed).
            self._pushed = dict(self._persisted)
            return
        if last > self._persisted.get(producer, -1):
            self._persisted[producer] = last
        position = future.result()
        if position > self._last_persisted_position:
            self._last_persisted_position = position
        self._entries_since_snapshot += 1
        if self._entries_since_snapshot >= self._config.entries_interval:
            self._start_snapshot()

    def touch(self, producers: Iterable[str]) -> None:
        """Connected producers stay active."""
        now = self._clock()
        for producer in producers:
            if producer in self._persisted:
                self._last_active[producer] = now

    # ---- snapshots -----------------------------------------------------------------------------

    def _start_snapshot(self) -> None:
        if self._snapshot_task is not None and not self._snapshot_task.done():
            return
        self._snapshot_task = asyncio.get_running_loop().create_task(self._snapshot_quietly())

    async def _snapshot_quietly(self) -> None:
        try:
            await self._write_snapshot()
        except Exception as exc:
            log.warning(
                "deduplication snapshot of %s failed (retried at the next interval): %s",
                self._name,
                exc,
                extra=log_fields(topic=self._name),
            )

    async def _put_snapshot(self) -> None:
        """Write the snapshot by compare-and-set on the version last read or written."""
        position = self._last_persisted_position
        body = json.dumps({"position": list(position), "producers": dict(self._persisted)})
        self._entries_since_snapshot = 0
        record = await self._store.put(
            self._key, body.encode(), expected_version=self._snapshot_version
        )
        self._snapshot_version = record.version
        self._snapshot_position = position

    async def _write_snapshot(self) -> None:
        if self._fenced or not self.enabled:
            return
        try:
            await self._put_snapshot()
        except BadVersionError:
            # Another broker loaded the topic after us and owns it now: its snapshot wins.
            self._fenced = True
            log.warning(
                "deduplication snapshot of %s was written by another owner; not writing it",
                self._name,
                extra=log_fields(topic=self._name),
            )
            return

    async def _await_snapshot(self) -> None:
        task = self._snapshot_task
        if task is not None and not task.done():
            await asyncio.wait([task])

    # ---- housekeeping and shutdown ---------------------------------------------------------------

    def expire_inactive(self, connected: set[str]) -> int:
        """Forget producers inactive past the timeout, and the longest inactive beyond the
        maximum count; returns how many were forgotten."""
        if not self.enabled:
            return 0
        now = self._clock()
        self.touch(connected)
        timeout = self._config.inactivity_timeout_s
        stale = [
            p
            for p, active in self._last_active.items()
            if p not in connected and now - active > timeout
        ]
        excess = len(self._persisted) - len(stale) - self._config.max_producers
        if excess > 0:
            rest = sorted(
                (active, p)
                for p, active in self._last_active.items()
                if p not in connected and p not in stale
            )
            stale.extend(p for _, p in rest[:excess])
        for producer in stale:
            self._persisted.pop(producer, None)
            self._pushed.pop(producer, None)
            self._last_active.pop(producer, None)
        return len(stale)

    async def close(self) -> None:
        """Await the snapshot in progress, then write a last one so that the next load
        replays nothing (skipped when the topic was fenced: its ledger is another's)."""
        await self._await_snapshot()
        if self.enabled and not self._ledger.is_fenced and self._entries_since_snapshot:
            try:
                await self._write_snapshot()
            except Exception as exc:
                log.warning(
                    "last deduplication snapshot of %s failed: %s",
                    self._name,
                    exc,
                    extra=log_fields(topic=self._name),
                )
