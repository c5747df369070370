"""The behaviour every metadata-store driver must share, as a reusable test class.

A driver's test module subclasses :class:`MetadataStoreConformance` under a ``Test...`` name
and overrides the ``store`` fixture::

    class TestEtcdConformance(MetadataStoreConformance):
        @pytest.fixture
        async def store(self, etcd_url: str) -> AsyncIterator[MetadataStore]:
            store = await open_metadata_store(etcd_url)  # fresh and empty
            yield store
            await store.close()

The fixture must yield a fresh, empty store (a driver backed by a shared server can give
each test its own key root) and close it afterwards. Session tests call
:meth:`MetadataStoreConformance.open_second_session`, which uses
:meth:`MetadataStore.open_session`; a driver whose second sessions need more (another client
process, say) overrides that method. The class itself holds no ``Test`` prefix, so pytest
collects it only through its subclasses.

Every wait for an event goes through :func:`next_event`, which has a timeout: a missing event
fails the test instead of hanging it. No test sleeps.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from strata.metadata import (
    MAX_KEY_LENGTH,
    MAX_VALUE_BYTES,
    BadVersionError,
    EventType,
    InvalidKeyError,
    MetadataStore,
    MetadataStoreClosedError,
    Record,
    ValueTooLargeError,
    Watch,
    WatchEvent,
    WatchOverflowError,
)

EVENT_TIMEOUT_S = 10.0

BAD_KEYS = [
    "",
    "a",
    "a/b",
    "/",
    "/a/",
    "//a",
    "/a//b",
    "/a\x00b",
    "/a\nb",
    "/" + "x" * MAX_KEY_LENGTH,
]
BAD_PREFIXES = ["", "a", "//", "/a//", "/a\x00", "/" + "x" * MAX_KEY_LENGTH]


async def next_event(watch: Watch, timeout_s: float = EVENT_TIMEOUT_S) -> WatchEvent:
    """The watch's next event, failing the test if none comes within ``timeout_s``."""
    return await asyncio.wait_for(anext(watch), timeout_s)


async def assert_watch_ends(watch: Watch, timeout_s: float = EVENT_TIMEOUT_S) -> None:
    """Assert that the watch's iterator stops (rather than yielding or hanging)."""
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(anext(watch), timeout_s)


class MetadataStoreConformance:
    """Conformance tests for a :class:`MetadataStore` driver; subclass and override ``store``."""

    @pytest.fixture
    async def store(self) -> AsyncIterator[MetadataStore]:
        """A fresh, empty store, closed after the test. Every driver overrides this."""
        raise NotImplementedError("a driver's test class must override the store fixture")
        yield  # pragma: no cover - makes this an async generator like the overrides

    async def open_second_session(self, store: MetadataStore) -> MetadataStore:
        """Another session on the same store, as a second broker would hold."""
        return await store.open_session()

    # --- get / put --------------------------------------------------------------------------

    async def test_get_missing_key_is_none(self, store: MetadataStore) -> None:
        assert await store.get("/missing") is None

    async def test_put_then_get(self, store: MetadataStore) -> None:
        record = await store.put("/tenants/acme", b"policy")
        assert record.key == "/tenants/acme"
        assert record.value == b"policy"
        assert record.version == 1
        assert record.mod_revision > 0
        assert await store.get("/tenants/acme") == record

    async def test_values_round_trip_byte_for_byte(self, store: MetadataStore) -> None:
        for key, value in [
            ("/v/empty", b""),
            ("/v/binary", bytes(range(256)) * 4),
            ("/v/largest", b"\xab" * MAX_VALUE_BYTES),
        ]:
            await store.put(key, value)
            record = await store.get(key)
            assert record is not None
            assert record.value == value
            assert type(record.value) is bytes

    async def test_each_put_increments_the_version(self, store: MetadataStore) -> None:
        records = [await store.put("/counter", str(i).encode()) for i in range(3)]
        assert [r.version for r in records] == [1, 2, 3]
        assert records[0].mod_revision < records[1].mod_revision < records[2].mod_revision
        assert await store.get("/counter") == records[-1]

    async def test_mod_revision_increases_across_keys_and_deletes(
        self, store: MetadataStore
    ) -> None:
        first = await store.put("/r/a", b"1")
        second = await store.put("/r/b", b"2")
        async with store.watch("/r/") as watch:
            assert await store.delete("/r/a")
            deleted = await next_event(watch)
        third = await store.put("/r/c", b"3")
        again = await store.put("/r/a", b"4")
        assert (
            first.mod_revision
            < second.mod_revision
            < deleted.revision
            < third.mod_revision
            < again.mod_revision
        )

    # --- compare-and-set --------------------------------------------------------------------

    async def test_put_with_the_current_version_succeeds(self, store: MetadataStore) -> None:
        first = await store.put("/cas", b"a")
        second = await store.put("/cas", b"b", expected_version=first.version)
        assert second.version == 2
        assert second.value == b"b"

    async def test_put_with_a_stale_version_fails_and_changes_nothing(
        self, store: MetadataStore
    ) -> None:
        await store.put("/cas", b"a")
        current = await store.put("/cas", b"b")
        with pytest.raises(BadVersionError) as caught:
            await store.put("/cas", b"c", expected_version=1)
        assert caught.value.key == "/cas"
        assert caught.value.expected_version == 1
        assert caught.value.actual_version == 2
        message = str(caught.value)
        assert "/cas" in message and "1" in message and "2" in message
        assert not caught.value.retriable
        assert await store.get("/cas") == current

    async def test_create_if_absent(self, store: MetadataStore) -> None:
        created = await store.put("/owner", b"broker-1", expected_version=0)
        assert created.version == 1
        with pytest.raises(BadVersionError) as caught:
            await store.put("/owner", b"broker-2", expected_version=0)
        assert caught.value.actual_version == 1
        assert await store.get("/owner") == created

    async def test_put_expecting_a_version_of_an_absent_key_fails(
        self, store: MetadataStore
    ) -> None:
        with pytest.raises(BadVersionError) as caught:
            await store.put("/nothing", b"x", expected_version=3)
        assert caught.value.actual_version == 0
        assert await store.get("/nothing") is None

    async def test_concurrent_creates_have_exactly_one_winner(self, store: MetadataStore) -> None:
        second = await self.open_second_session(store)
        try:
            results = await asyncio.gather(
                *(
                    session.put("/bundle/owner", name.encode(), expected_version=0)
                    for session, name in [(store, "one"), (second, "two")] * 3
                ),
                return_exceptions=True,
            )
        finally:
            await second.close()
        winners = [r for r in results if isinstance(r, Record)]
        losers = [r for r in results if isinstance(r, BadVersionError)]
        assert len(winners) == 1
        assert len(losers) == len(results) - 1
        assert await store.get("/bundle/owner") == winners[0]

    async def test_negative_expected_version_is_refused(self, store: MetadataStore) -> None:
        with pytest.raises(ValueError):
            await store.put("/k", b"x", expected_version=-1)
        with pytest.raises(ValueError):
            await store.delete("/k", expected_version=-1)

    # --- delete -----------------------------------------------------------------------------

    async def test_unconditional_delete(self, store: MetadataStore) -> None:
        await store.put("/d", b"x")
        assert await store.delete("/d") is True
        assert await store.get("/d") is None
        assert await store.delete("/d") is False

    async def test_conditional_delete(self, store: MetadataStore) -> None:
        await store.put("/d", b"x")
        current = await store.put("/d", b"y")
        with pytest.raises(BadVersionError) as caught:
            await store.delete("/d", expected_version=1)
        assert caught.value.actual_version == 2
        assert await store.get("/d") == current
        assert await store.delete("/d", expected_version=2) is True
        assert await store.get("/d") is None

    async def test_conditional_delete_of_an_absent_key(self, store: MetadataStore) -> None:
        with pytest.raises(BadVersionError):
            await store.delete("/absent", expected_version=1)
        # Version 0 means "absent": the condition holds and there is nothing to delete.
        assert await store.delete("/absent", expected_version=0) is False
        await store.put("/absent", b"now present")
        with pytest.raises(BadVersionError):
            await store.delete("/absent", expected_version=0)

    async def test_recreated_key_starts_again_at_version_one(self, store: MetadataStore) -> None:
        await store.put("/again", b"a")
        old = await store.put("/again", b"b")
        await store.delete("/again")
        new = await store.put("/again", b"c", expected_version=0)
        assert new.version == 1
        assert new.mod_revision > old.mod_revision

    # --- list -------------------------------------------------------------------------------

    async def test_list_by_prefix_is_sorted_and_excludes_siblings(
        self, store: MetadataStore
    ) -> None:
        for key in ["/a/b/z", "/a/bc", "/a/b", "/a/b/c/d", "/a/b/a", "/b/x", "/a/b/m"]:
            await store.put(key, key.encode())
        expected = ["/a/b/a", "/a/b/c/d", "/a/b/m", "/a/b/z"]
        records = await store.list("/a/b/")
        assert [r.key for r in records] == expected
        assert [r.value for r in records] == [k.encode() for k in expected]
        assert await store.list_keys("/a/b/") == expected
        # Matching is by string prefix: without the slash, the sibling and the parent match.
        assert await store.list_keys("/a/b") == ["/a/b", *expected, "/a/bc"]

    async def test_list_records_carry_their_versions(self, store: MetadataStore) -> None:
        await store.put("/l/one", b"1")
        latest = await store.put("/l/one", b"2")
        other = await store.put("/l/two", b"x")
        assert await store.list("/l/") == [latest, other]

    async def test_list_of_everything_and_of_nothing(self, store: MetadataStore) -> None:
        assert await store.list("/") == []
        assert await store.list_keys("/") == []
        keys = ["/z", "/a/b", "/m", "/a/\u00e9", "/a/Z", "/a/a-", "/a/\U0001f600"]
        for key in keys:
            await store.put(key, b"")
        # Code-point order, which is also the order of the keys' UTF-8 bytes.
        assert await store.list_keys("/") == sorted(keys)
        assert await store.list("/nothing/") == []

    # --- watch ------------------------------------------------------------------------------

    async def test_watch_sees_put_put_delete_in_order(self, store: MetadataStore) -> None:
        async with store.watch("/w/") as watch:
            first = await store.put("/w/k", b"1")
            second = await store.put("/w/k", b"2")
            assert await store.delete("/w/k")
            events = [await next_event(watch) for _ in range(3)]
        assert [e.type for e in events] == [EventType.PUT, EventType.PUT, EventType.DELETE]
        assert [e.key for e in events] == ["/w/k"] * 3
        assert events[0].record == first
        assert events[1].record == second
        assert events[2].record is None
        assert events[0].revision == first.mod_revision
        assert events[1].revision == second.mod_revision
        assert events[0].revision < events[1].revision < events[2].revision

    async def test_watch_sees_only_keys_under_its_prefix(self, store: MetadataStore) -> None:
        async with store.watch("/w/a/") as watch:
            await store.put("/w/ab", b"sibling")
            await store.put("/w/a", b"parent")
            await store.put("/elsewhere", b"x")
            await store.delete("/w/ab")
            await store.put("/w/a/deep/key", b"mine")
            await store.put("/w/a/end", b"marker")
            # The changes outside the prefix came first; had they leaked, they would be first.
            assert (await next_event(watch)).key == "/w/a/deep/key"
            assert (await next_event(watch)).key == "/w/a/end"

    async def test_watch_does_not_see_changes_before_it_started(self, store: MetadataStore) -> None:
        await store.put("/late/before", b"x")
        async with store.watch("/late/") as watch:
            marker = await store.put("/late/after", b"y")
            event = await next_event(watch)
        assert event.key == "/late/after"
        assert event.record == marker

    async def test_overlapping_watches_each_see_every_event(self, store: MetadataStore) -> None:
        async with store.watch("/o/") as outer, store.watch("/o/inner/") as inner:
            await store.put("/o/x", b"1")
            await store.put("/o/inner/y", b"2")
            assert (await next_event(outer)).key == "/o/x"
            assert (await next_event(outer)).key == "/o/inner/y"
            assert (await next_event(inner)).key == "/o/inner/y"

    async def test_watch_ends_when_its_block_exits(self, store: MetadataStore) -> None:
        async with store.watch("/w/") as watch:
            await store.put("/w/k", b"1")
        await assert_watch_ends(watch)

    async def test_watch_overflow_is_never_silent(self, store: MetadataStore) -> None:
        keys = [f"/flood/{i:03d}" for i in range(64)]
        async with store.watch("/flood/", max_pending_events=4) as watch:
            for key in keys:
                await store.put(key, b"x")
            seen: list[str] = []
            overflowed = False
            try:
                while len(seen) < len(keys):
                    seen.append((await next_event(watch)).key)
            except WatchOverflowError:
                overflowed = True
        # Whatever came through is gap-free, and anything missing is announced by the error.
        assert seen == keys[: len(seen)]
        assert overflowed or seen == keys

    # --- sessions and ephemeral keys ----------------------------------------------------------

    async def test_ephemeral_key_vanishes_when_its_session_closes(
        self, store: MetadataStore
    ) -> None:
        second = await self.open_second_session(store)
        async with store.watch("/brokers/") as watch:
            ephemeral = await second.put("/brokers/b1", b"up", ephemeral=True)
            durable = await second.put("/brokers/config", b"stays")
            assert (await next_event(watch)).record == ephemeral
            assert (await next_event(watch)).record == durable
            assert await store.get("/brokers/b1") == ephemeral
            await second.close()
            event = await next_event(watch)
        assert event.type is EventType.DELETE
        assert event.key == "/brokers/b1"
        assert event.record is None
        assert event.revision > durable.mod_revision
        assert await store.get("/brokers/b1") is None
        assert await store.get("/brokers/config") == durable

    async def test_putting_an_existing_key_ephemerally_binds_it_to_the_session(
        self, store: MetadataStore
    ) -> None:
        await store.put("/owned", b"persistent")
        second = await self.open_second_session(store)
        try:
            record = await second.put("/owned", b"ephemeral now", ephemeral=True)
            assert record.version == 2
        finally:
            await second.close()
        assert await store.get("/owned") is None

    async def test_putting_an_ephemeral_key_persistently_unbinds_it(
        self, store: MetadataStore
    ) -> None:
        second = await self.open_second_session(store)
        try:
            await second.put("/k", b"ephemeral", ephemeral=True)
            persistent = await second.put("/k", b"persistent")
        finally:
            await second.close()
        assert await store.get("/k") == persistent

    async def test_closing_a_session_leaves_other_sessions_keys(self, store: MetadataStore) -> None:
        second = await self.open_second_session(store)
        mine = await store.put("/live/first", b"1", ephemeral=True)
        await second.put("/live/second", b"2", ephemeral=True)
        await second.close()
        assert await store.list("/live/") == [mine]

    async def test_closed_session_refuses_calls_and_ends_its_watches(
        self, store: MetadataStore
    ) -> None:
        second = await self.open_second_session(store)
        watch = second.watch("/w/")
        await second.close()
        await second.close()  # idempotent
        await assert_watch_ends(watch)
        with pytest.raises(MetadataStoreClosedError):
            await second.get("/k")
        with pytest.raises(MetadataStoreClosedError):
            await second.put("/k", b"x")
        with pytest.raises(MetadataStoreClosedError):
            await second.delete("/k")
        with pytest.raises(MetadataStoreClosedError):
            await second.list("/")
        with pytest.raises(MetadataStoreClosedError):
            second.watch("/")
        # The store itself is unaffected.
        await store.put("/k", b"still open")

    # --- limits -----------------------------------------------------------------------------

    @pytest.mark.parametrize("key", BAD_KEYS)
    async def test_invalid_keys_are_refused(self, store: MetadataStore, key: str) -> None:
        with pytest.raises(InvalidKeyError):
            await store.put(key, b"x")
        with pytest.raises(InvalidKeyError):
            await store.get(key)
        with pytest.raises(InvalidKeyError):
            await store.delete(key)
        assert await store.list("/") == []

    @pytest.mark.parametrize("prefix", BAD_PREFIXES)
    async def test_invalid_prefixes_are_refused(self, store: MetadataStore, prefix: str) -> None:
        with pytest.raises(InvalidKeyError):
            await store.list(prefix)
        with pytest.raises(InvalidKeyError):
            await store.list_keys(prefix)
        with pytest.raises(InvalidKeyError):
            store.watch(prefix)

    async def test_longest_key_is_accepted(self, store: MetadataStore) -> None:
        key = "/" + "k" * (MAX_KEY_LENGTH - 1)
        record = await store.put(key, b"x")
        assert await store.get(key) == record

    async def test_oversize_value_is_refused(self, store: MetadataStore) -> None:
        with pytest.raises(ValueTooLargeError):
            await store.put("/big", b"x" * (MAX_VALUE_BYTES + 1))
        assert await store.get("/big") is None
