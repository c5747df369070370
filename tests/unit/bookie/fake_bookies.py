"""In-process fake bookies with fault controls, and a metadata store whose puts can stall.

``FakeBookie`` is the tests' one fake ``bookie.api.BookieClient``: the ledger-protocol tests
run a ``FakeCluster`` of them, the broker tests one ``FakeBookie()`` (address ``memory``)
behind a ``LedgerManager``. It keeps entries in dictionaries, with the storage server's
semantics that the ledger protocol relies on: the first add or fence records the master key
and later ones must match it, a fence is remembered even for a ledger never written (a late
add of the old writer is refused), ``recovery_add`` passes a fence, ``read_entries`` stops at
the first missing entry (or after ``max_bytes``) and raises NoSuchEntry when the first one is
missing, NoSuchLedger when the bookie never heard of the ledger.

Fault controls (each matches one kind of call - ``add``, ``read``, ``fence``, ``lac``,
``delete`` - optionally one entry id, for ``times`` calls or until cleared):

* ``fail(kind)``          raise an error (default BookieUnavailableError) without effect
* ``drop(kind)``          lose the request: no effect, no answer (the caller times out)
* ``hold(kind)``          park the call until ``gate.release()``, then run it; with
                          ``apply_if_cancelled`` a parked add is still applied at release even
                          when the caller gave up (it reached the bookie; the answer was lost)
* ``delay(kind, s)``      run the call after ``s`` seconds
* ``corrupt(l, e)``       reads of that entry raise CorruptEntryError
* ``wipe()``              lose every entry and fence (a disk replaced under the same identity)
* ``down()`` / ``up()``   every call raises BookieUnavailableError while down

``FakeCluster`` holds N bookies ``b0``..``b{N-1}``, the list of live ones, and a resolver.
``StallingStore`` delegates to a real ``MetadataStore`` and can park puts under a prefix.
``ledger_env`` puts them together with two ledger clients (a writer and an "other" owner).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

from bookie.api import BookieInfo, LedgerEntry, LedgerState
from bookie.errors import (
    BadRequestError,
    BookieError,
    BookieUnavailableError,
    CorruptEntryError,
    LedgerFencedError,
    NoSuchEntryError,
    NoSuchLedgerError,
)
from bookie.ledger import (
    LedgerClientConfig,
    LedgerHandle,
    LedgerManager,
    LedgerMetadata,
    LedgerReader,
)
from strata.metadata import InMemoryMetadataStore, MetadataStore, Record, Watch
from strata.metadata.base import DEFAULT_MAX_PENDING_EVENTS

KINDS = ("add", "read", "fence", "lac", "delete")


class Gate:
    """Parks calls until released; callbacks run at release (deferred effects)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self._on_release: list[Callable[[], None]] = []
        self.waiting = 0

    @property
    def released(self) -> bool:
        return self._event.is_set()

    def release(self) -> None:
        if self._event.is_set():
            return
        self._event.set()
        callbacks, self._on_release = self._on_release, []
        for callback in callbacks:
            callback()

    def on_release(self, callback: Callable[[], None]) -> None:
        if self._event.is_set():
            callback()
        else:
            self._on_release.append(callback)

    async def wait(self) -> None:
        self.waiting += 1
        try:
            await self._event.wait()
        finally:
            self.waiting -= 1


@dataclass
class Rule:
    kind: str
    action: str  # fail | drop | hold | delay
    entry_id: int | None = None
    ledger_id: int | None = None
    times: int | None = 1  # None: until cleared
    error: BookieError | None = None
    delay_s: float = 0.0
    gate: Gate | None = None
    apply_if_cancelled: bool = False
    hits: int = 0

    def matches(self, kind: str, ledger_id: int, entry_id: int | None) -> bool:
        if self.kind != kind or (self.times is not None and self.times <= 0):
            return False
        if self.ledger_id is not None and self.ledger_id != ledger_id:
            return False
        return self.entry_id is None or self.entry_id == entry_id


@dataclass
class FakeLedger:
    entries: dict[int, tuple[int, bytes]] = field(default_factory=dict)
    fenced: bool = False
    master_key: bytes | None = None


class FakeBookie:
    """One in-memory bookie implementing ``BookieClient``; see the module docstring."""

    def __init__(self, address: str = "memory") -> None:
        self._address = address
        self.ledgers: dict[int, FakeLedger] = {}
        self.rules: list[Rule] = []
        self.corrupted: set[tuple[int, int]] = set()
        self.is_down = False
        self.calls: list[tuple[str, int, int | None]] = []

    @property
    def address(self) -> str:
        return self._address

    def __repr__(self) -> str:
        return f"FakeBookie({self._address})"

    # ---- fault controls ----------------------------------------------------------------

    def _rule(self, rule: Rule) -> Rule:
        assert rule.kind in KINDS, rule.kind
        self.rules.append(rule)
        return rule

    def fail(
        self,
        kind: str,
        *,
        times: int | None = 1,
        entry_id: int | None = None,
        error: BookieError | None = None,
    ) -> Rule:
        return self._rule(Rule(kind, "fail", entry_id, times=times, error=error))

    def drop(self, kind: str, *, times: int | None = 1, entry_id: int | None = None) -> Rule:
        return self._rule(Rule(kind, "drop", entry_id, times=times))

    def hold(
        self,
        kind: str,
        *,
        times: int | None = None,
        entry_id: int | None = None,
        apply_if_cancelled: bool = False,
    ) -> Gate:
        gate = Gate()
        self._rule(
            Rule(
                kind,
                "hold",
                entry_id,
                times=times,
                gate=gate,
                apply_if_cancelled=apply_if_cancelled,
            )
        )
        return gate

    def delay(self, kind: str, seconds: float, *, times: int | None = None) -> Rule:
        return self._rule(Rule(kind, "delay", times=times, delay_s=seconds))

    def corrupt(self, ledger_id: int, entry_id: int) -> None:
        self.corrupted.add((ledger_id, entry_id))

    def wipe(self) -> None:
        self.ledgers.clear()
        self.corrupted.clear()

    def down(self) -> None:
        self.is_down = True

    def up(self) -> None:
        self.is_down = False

    def clear_faults(self) -> None:
        """Remove every rule and release every parked call (their effects then happen)."""
        rules, self.rules = self.rules, []
        for rule in rules:
            if rule.gate is not None:
                rule.gate.release()
        self.corrupted.clear()
        self.is_down = False

    # ---- inspection --------------------------------------------------------------------

    def has_entry(self, ledger_id: int, entry_id: int) -> bool:
        ledger = self.ledgers.get(ledger_id)
        return ledger is not None and entry_id in ledger.entries

    def entry_ids(self, ledger_id: int) -> list[int]:
        ledger = self.ledgers.get(ledger_id)
        return sorted(ledger.entries) if ledger else []

    def is_fenced(self, ledger_id: int) -> bool:
        ledger = self.ledgers.get(ledger_id)
        return ledger is not None and ledger.fenced

    @property
    def entries(self) -> dict[int, dict[int, tuple[int, bytes]]]:
        """Ledger id → entry id → (LAC, payload): what the broker tests look into."""
        return {ledger_id: ledger.entries for ledger_id, ledger in self.ledgers.items()}

    def count_calls(self, kind: str) -> int:
        return sum(1 for call in self.calls if call[0] == kind)

    # ---- the interception point --------------------------------------------------------

    async def _intercept(
        self, kind: str, ledger_id: int, entry_id: int | None, late_effect: Callable[[], None]
    ) -> None:
        """Apply the first matching rule; returns when the call should take effect now."""
        self.calls.append((kind, ledger_id, entry_id))
        await asyncio.sleep(0)  # every RPC yields, as a real one would
        if self.is_down:
            raise BookieUnavailableError(f"{self._address} is down")
        for rule in self.rules:
            if not rule.matches(kind, ledger_id, entry_id):
                continue
            if rule.times is not None:
                rule.times -= 1
            rule.hits += 1
            if rule.action == "fail":
                raise rule.error or BookieUnavailableError(f"{self._address}: injected {kind}")
            if rule.action == "drop":
                await asyncio.Event().wait()  # never answered; the caller's timeout ends it
            if rule.action == "delay":
                await asyncio.sleep(rule.delay_s)
            if rule.action == "hold":
                assert rule.gate is not None
                try:
                    await rule.gate.wait()
                except asyncio.CancelledError:
                    if rule.apply_if_cancelled:
                        rule.gate.on_release(late_effect)
                    raise
            break
        if self.is_down:
            raise BookieUnavailableError(f"{self._address} is down")

    # ---- BookieClient ------------------------------------------------------------------

    def _apply_add(
        self,
        ledger_id: int,
        entry_id: int,
        last_add_confirmed: int,
        payload: bytes,
        master_key: bytes,
        recovery_add: bool,
    ) -> None:
        ledger = self.ledgers.setdefault(ledger_id, FakeLedger())
        if ledger.master_key is None:
            ledger.master_key = master_key
        elif ledger.master_key != master_key:
            raise BadRequestError(f"wrong master key for ledger {ledger_id}")
        if ledger.fenced and not recovery_add:
            raise LedgerFencedError(f"ledger {ledger_id} is fenced on {self._address}")
        ledger.entries[entry_id] = (last_add_confirmed, bytes(payload))

    def send_add(
        self,
        ledger_id: int,
        entry_id: int,
        last_add_confirmed: int,
        payload: bytes,
        master_key: bytes,
        *,
        recovery_add: bool = False,
    ) -> asyncio.Future[None]:
        return asyncio.ensure_future(
            self.add_entry(
                ledger_id,
                entry_id,
                last_add_confirmed,
                payload,
                master_key,
                recovery_add=recovery_add,
            )
        )

    async def add_entry(
        self,
        ledger_id: int,
        entry_id: int,
        last_add_confirmed: int,
        payload: bytes,
        master_key: bytes,
        *,
        recovery_add: bool = False,
    ) -> None:
        def late_effect() -> None:
            # The request had reached the bookie; it is applied even though nobody waits.
            try:
                self._apply_add(
                    ledger_id, entry_id, last_add_confirmed, payload, master_key, recovery_add
                )
            except BookieError:
                pass

        await self._intercept("add", ledger_id, entry_id, late_effect)
        self._apply_add(ledger_id, entry_id, last_add_confirmed, payload, master_key, recovery_add)

    async def read_entries(
        self, ledger_id: int, first_entry_id: int, last_entry_id: int, max_bytes: int = 0
    ) -> list[LedgerEntry]:
        await self._intercept("read", ledger_id, first_entry_id, lambda: None)
        ledger = self.ledgers.get(ledger_id)
        if ledger is None:
            raise NoSuchLedgerError(f"ledger {ledger_id} is not on {self._address}")
        if first_entry_id not in ledger.entries:
            raise NoSuchEntryError(
                f"ledger {ledger_id} entry {first_entry_id} not on {self._address}"
            )
        result: list[LedgerEntry] = []
        total = 0
        for entry_id in range(first_entry_id, last_entry_id + 1):
            if entry_id not in ledger.entries:
                break
            if (ledger_id, entry_id) in self.corrupted:
                if not result:
                    raise CorruptEntryError(
                        f"ledger {ledger_id} entry {entry_id} on {self._address} is corrupt"
                    )
                break
            lac, payload = ledger.entries[entry_id]
            if result and max_bytes and total + len(payload) > max_bytes:
                break
            result.append(LedgerEntry(entry_id, lac, payload))
            total += len(payload)
        return result

    def _state(self, ledger_id: int) -> LedgerState:
        ledger = self.ledgers.get(ledger_id, FakeLedger())
        last = max(ledger.entries, default=-1)
        lac = max((v[0] for v in ledger.entries.values()), default=-1)
        return LedgerState(lac, last, ledger.fenced)

    async def read_last_add_confirmed(
        self, ledger_id: int, previous_last_add_confirmed: int = -1, timeout_ms: int = 0
    ) -> LedgerState:
        await self._intercept("lac", ledger_id, None, lambda: None)
        if ledger_id not in self.ledgers:
            raise NoSuchLedgerError(f"ledger {ledger_id} is not on {self._address}")
        return self._state(ledger_id)

    async def fence_ledger(self, ledger_id: int, master_key: bytes) -> LedgerState:
        await self._intercept("fence", ledger_id, None, lambda: None)
        ledger = self.ledgers.setdefault(ledger_id, FakeLedger())
        if ledger.master_key is None:
            ledger.master_key = master_key
        elif ledger.master_key != master_key:
            raise BadRequestError(f"wrong master key for ledger {ledger_id}")
        ledger.fenced = True
        return self._state(ledger_id)

    async def delete_ledger(self, ledger_id: int) -> None:
        await self._intercept("delete", ledger_id, None, lambda: None)
        self.ledgers.pop(ledger_id, None)

    async def get_bookie_info(self) -> BookieInfo:
        return BookieInfo(0, 0, 0, len(self.ledgers))

    async def close(self) -> None:
        return None


class FakeCluster:
    """N fake bookies; ``live`` is what ``bookies()`` returns (drop one to deregister it)."""

    def __init__(self, count: int) -> None:
        self.bookies = [FakeBookie(f"b{i}") for i in range(count)]
        self.by_address = {b.address: b for b in self.bookies}
        self.live: list[str] = [b.address for b in self.bookies]

    def __getitem__(self, index: int) -> FakeBookie:
        return self.bookies[index]

    def bookie(self, address: str) -> FakeBookie:
        return self.by_address[address]

    def available(self) -> Sequence[str]:
        return list(self.live)

    def resolve(self, address: str) -> FakeBookie:
        return self.by_address[address]

    def holders(self, ledger_id: int, entry_id: int) -> list[str]:
        return [b.address for b in self.bookies if b.has_entry(ledger_id, entry_id)]

    def release_all(self) -> None:
        for bookie in self.bookies:
            bookie.clear_faults()


class StallingStore(MetadataStore):
    """A metadata store that delegates to ``inner`` and can park puts under a prefix.

    ``stall_puts()`` returns a gate: puts of matching keys wait for ``gate.release()`` and
    then run. ``puts`` counts the puts that reached the inner store.
    """

    def __init__(self, inner: MetadataStore) -> None:
        self.inner = inner
        self._gate: Gate | None = None
        self._prefix = ""
        self.puts = 0
        self.stalled = 0

    def stall_puts(self, prefix: str = "/ledgers/") -> Gate:
        self._gate = Gate()
        self._prefix = prefix
        return self._gate

    async def get(self, key: str) -> Record | None:
        return await self.inner.get(key)

    async def put(
        self,
        key: str,
        value: bytes,
        *,
        expected_version: int | None = None,
        ephemeral: bool = False,
    ) -> Record:
        gate = self._gate
        if gate is not None and not gate.released and key.startswith(self._prefix):
            self.stalled += 1
            await gate.wait()
        self.puts += 1
        return await self.inner.put(
            key, value, expected_version=expected_version, ephemeral=ephemeral
        )

    async def delete(self, key: str, *, expected_version: int | None = None) -> bool:
        return await self.inner.delete(key, expected_version=expected_version)

    async def list(self, prefix: str) -> builtins.list[Record]:
        return await self.inner.list(prefix)

    def watch(self, prefix: str, *, max_pending_events: int = DEFAULT_MAX_PENDING_EVENTS) -> Watch:
        return self.inner.watch(prefix, max_pending_events=max_pending_events)

    async def open_session(self) -> MetadataStore:
        return await self.inner.open_session()

    async def close(self) -> None:
        return None  # the inner store belongs to the test


# ---- a ledger-client test environment ----------------------------------------------------

# Short bounds so that timeouts fire within a test's budget.
FAST_CONFIG = LedgerClientConfig(
    add_entry_timeout_ms=200,
    read_timeout_ms=200,
    fence_timeout_ms=200,
    delete_timeout_ms=200,
    metadata_timeout_ms=5_000,
    metadata_retry_backoff_ms=1,
)


@dataclass
class LedgerEnv:
    """Fake bookies, one metadata store, and two ledger clients on them: ``writer`` (through
    the stallable store) and ``other`` (a new owner or an autorecovery worker, direct)."""

    cluster: FakeCluster
    store: MetadataStore
    stalling: StallingStore
    writer: LedgerManager
    other: LedgerManager
    handles: builtins.list[LedgerHandle] = field(default_factory=builtins.list)

    async def create(self, ensemble: int, write: int, ack: int) -> LedgerHandle:
        handle = await self.writer.create_ledger(ensemble, write, ack)
        self.handles.append(handle)
        return handle

    def bookies_of(self, handle: LedgerHandle) -> builtins.list[FakeBookie]:
        return [self.cluster.bookie(a) for a in handle.ensemble]

    def spares(self, handle: LedgerHandle) -> builtins.list[FakeBookie]:
        used = handle.metadata.all_bookies()
        return [b for b in self.cluster.bookies if b.address not in used]


@contextlib.asynccontextmanager
async def ledger_env(
    count: int,
    *,
    writer_config: LedgerClientConfig = FAST_CONFIG,
    other_config: LedgerClientConfig = FAST_CONFIG,
) -> AsyncIterator[LedgerEnv]:
    store = await InMemoryMetadataStore.open()
    cluster = FakeCluster(count)
    stalling = StallingStore(store)
    env = LedgerEnv(
        cluster,
        store,
        stalling,
        LedgerManager(stalling, cluster.available, cluster.resolve, writer_config),
        LedgerManager(store, cluster.available, cluster.resolve, other_config),
    )
    try:
        yield env
    finally:
        for handle in env.handles:
            await handle.abort()
        cluster.release_all()
        await store.close()


def payload(entry_id: int, tag: str = "") -> bytes:
    return f"entry-{tag}{entry_id}".encode()


async def read_all(manager: LedgerManager, metadata: LedgerMetadata) -> builtins.list[LedgerEntry]:
    """Every entry 0..last_entry_id (a closed ledger) through ``LedgerReader``."""
    reader = LedgerReader(manager, metadata)
    result: builtins.list[LedgerEntry] = []
    next_id = 0
    while next_id <= metadata.last_entry_id:
        entries = await reader.read(next_id, metadata.last_entry_id)
        assert entries and entries[0].entry_id == next_id, "a read must never leave a gap"
        result.extend(entries)
        next_id = entries[-1].entry_id + 1
    return result


def copies_in_write_set(
    cluster: FakeCluster, metadata: LedgerMetadata, entry_id: int, data: bytes
) -> int:
    """Bookies of the entry's write set (per the metadata) holding exactly ``data``."""
    count = 0
    for address in metadata.write_set(entry_id):
        ledger = cluster.bookie(address).ledgers.get(metadata.ledger_id)
        if ledger is not None and ledger.entries.get(entry_id, (0, b""))[1] == data:
            count += 1
    return count


async def wait_until(predicate: Callable[[], bool], timeout_s: float = 2.0) -> None:
    """Poll ``predicate`` (state spread over fakes and a client has no single event)."""
    async with asyncio.timeout(timeout_s):
        for _ in range(int(timeout_s / 0.002) + 1):
            if predicate():
                return
            await asyncio.sleep(0.002)
    raise AssertionError("condition not reached")
