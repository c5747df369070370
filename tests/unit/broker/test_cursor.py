"""A cursor's persistence: ``flush()`` reports a failed store write instead of waiting on, and
a cursor another broker wrote fences the topic instead of failing every later flush."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest

from broker.cursor import CURSORS_PREFIX, ManagedCursor
from broker.errors import ServiceUnavailableError, TopicFencedError
from broker.managed_ledger import ManagedLedger, Position
from strata.metadata import MetadataError, MetadataStore, Record, open_metadata_store
from tests.unit.bookie.fake_bookies import StallingStore

KEY = CURSORS_PREFIX + "public/default/t/sub"
# After a failed write the cursor backs off one persist interval before it writes again.
# This one is twice the flush's bound: a flush must learn of the failure, not wait for the retry.
SLOW_RETRY_INTERVAL_MS = 2_000
FAST_RETRY_INTERVAL_MS = 50
FLUSH_BOUND_S = 1.0


class FailingPutStore(StallingStore):
    """Delegates to ``inner``; the next put under ``fail_next_put(prefix)`` fails once."""

    def __init__(self, inner: MetadataStore) -> None:
        super().__init__(inner)
        self._failing_prefix: str | None = None

    def fail_next_put(self, prefix: str) -> None:
        self._failing_prefix = prefix

    async def put(self, key: str, value: bytes, **options: Any) -> Record:
        prefix = self._failing_prefix
        if prefix is not None and key.startswith(prefix):
            self._failing_prefix = None
            raise MetadataError("injected put failure")
        return await super().put(key, value, **options)


class OneLedgerLog:
    """The part of a managed ledger a cursor reads: one ledger (id 1) of ``entries``."""

    def __init__(self, entries: int) -> None:
        self.last_confirmed: Position = (1, entries - 1)

    def first_position(self) -> Position:
        return (1, 0)

    def next_position(self, position: Position) -> Position:
        return (position[0], position[1] + 1)

    def entries_between(self, start_exclusive: Position, end_inclusive: Position) -> int:
        return max(0, end_inclusive[1] - start_exclusive[1])

    def fence(self, exc: BaseException) -> BaseException:
        self.fenced.append(exc)
        return exc

    fenced: list[BaseException]


@pytest.fixture
async def store() -> AsyncIterator[FailingPutStore]:
    inner = await open_metadata_store("memory://")
    try:
        yield FailingPutStore(inner)
    finally:
        await inner.close()


async def open_cursor(
    store: MetadataStore, persist_interval_ms: int, log: OneLedgerLog | None = None
) -> ManagedCursor:
    if log is None:
        log = OneLedgerLog(entries=10)
    log.fenced = []
    ledger = cast(ManagedLedger, log)
    cursor = ManagedCursor("sub", KEY, ledger, store, persist_interval_ms, max_persisted_ranges=100)
    await cursor.load_or_create(start_at_earliest=True)
    return cursor


async def test_flush_raises_when_its_persist_fails(store: FailingPutStore) -> None:
    cursor = await open_cursor(store, SLOW_RETRY_INTERVAL_MS)
    try:
        assert cursor.ack_entry((1, 0))
        store.fail_next_put(CURSORS_PREFIX)
        with pytest.raises(MetadataError, match="injected"):
            await asyncio.wait_for(cursor.flush(), FLUSH_BOUND_S)
    finally:
        await cursor.close()  # the retry after the back-off persists the acknowledgement
    record = await store.get(KEY)
    assert record is not None and b'"mark_delete": [1, 0]' in record.value


async def test_flush_after_a_failed_persist_writes_again(store: FailingPutStore) -> None:
    cursor = await open_cursor(store, FAST_RETRY_INTERVAL_MS)
    try:
        cursor.ack_entry((1, 0))
        store.fail_next_put(CURSORS_PREFIX)
        with pytest.raises(MetadataError):
            await asyncio.wait_for(cursor.flush(), FLUSH_BOUND_S)
        cursor.ack_entry((1, 1))
        await asyncio.wait_for(cursor.flush(), FLUSH_BOUND_S)
        record = await store.get(KEY)
        assert record is not None and b'"mark_delete": [1, 1]' in record.value
    finally:
        await cursor.close()


async def test_a_cursor_written_by_another_broker_fences_the_topic(
    store: FailingPutStore,
) -> None:
    """A paused owner wrote the cursor once more after the new owner loaded it: the new owner's
    compare-and-set fails. Its flushes must fail at once as UNAVAILABLE (the client reconnects)
    and the managed ledger be fenced (the topic reloads the stored cursor), not fail forever."""
    log = OneLedgerLog(entries=10)
    cursor = await open_cursor(store, FAST_RETRY_INTERVAL_MS, log)
    try:
        cursor.ack_entry((1, 0))
        await asyncio.wait_for(cursor.flush(), FLUSH_BOUND_S)
        record = await store.get(KEY)
        assert record is not None
        stale = b'{"mark_delete": [1, 3], "acked_ranges": [], "partial": {}}'
        await store.put(KEY, stale, expected_version=record.version)  # the other writer
        cursor.ack_entry((1, 1))
        with pytest.raises(ServiceUnavailableError, match="written by another broker"):
            await asyncio.wait_for(cursor.flush(), FLUSH_BOUND_S)
        assert len(log.fenced) == 1 and isinstance(log.fenced[0], TopicFencedError)
        # Later acks do not write over the other broker's record; their flush fails at once.
        cursor.ack_entry((1, 2))
        with pytest.raises(ServiceUnavailableError):
            await asyncio.wait_for(cursor.flush(), FLUSH_BOUND_S)
    finally:
        await asyncio.wait_for(cursor.close(), FLUSH_BOUND_S)
    record = await store.get(KEY)
    assert record is not None and record.value == stale
    # The reload reads what the other broker stored, and writes on from its version.
    reloaded = await open_cursor(store, FAST_RETRY_INTERVAL_MS)
    try:
        assert reloaded.mark_delete == (1, 3)
        reloaded.ack_entry((1, 4))
        await asyncio.wait_for(reloaded.flush(), FLUSH_BOUND_S)
        assert reloaded.mark_delete == (1, 4)
    finally:
        await reloaded.close()
