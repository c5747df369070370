"""Bookie registration, instance cookies and the live-bookie registry, on the memory store."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bookie.registry import (
    AVAILABLE_PREFIX,
    COOKIE_FILE_NAME,
    BookieInfo,
    BookieRegistry,
    CookieMismatchError,
    DecommissionRefusedError,
    bookie_registration,
    check_cookie,
    cookie_key,
    decommission_bookie,
    describe_bookies,
)
from strata.metadata import InMemoryMetadataStore, MetadataStore
from strata.metadata.registration import RegistrationConflictError

BOOKIE = "127.0.0.1:3181"


@pytest.fixture
async def store() -> AsyncIterator[MetadataStore]:
    opened = await InMemoryMetadataStore.open()
    try:
        yield opened
    finally:
        await opened.close()


async def test_first_start_writes_both_cookies_and_later_starts_match(
    store: MetadataStore, tmp_path: Path
) -> None:
    instance = await check_cookie(store, tmp_path / "b", BOOKIE)
    local = json.loads((tmp_path / "b" / COOKIE_FILE_NAME).read_bytes())
    stored = await store.get(cookie_key(BOOKIE))
    assert stored is not None
    assert local == json.loads(stored.value) == {"bookie_id": BOOKIE, "instance_id": instance}
    (tmp_path / "b" / "journal").mkdir()
    assert await check_cookie(store, tmp_path / "b", BOOKIE) == instance


async def test_a_wiped_disk_is_refused(store: MetadataStore, tmp_path: Path) -> None:
    await check_cookie(store, tmp_path / "b", BOOKIE)
    (tmp_path / "b" / COOKIE_FILE_NAME).unlink()
    with pytest.raises(CookieMismatchError, match="data was lost"):
        await check_cookie(store, tmp_path / "b", BOOKIE)


async def test_another_bookies_directory_is_refused(store: MetadataStore, tmp_path: Path) -> None:
    await check_cookie(store, tmp_path / "a", "127.0.0.1:1")
    await check_cookie(store, tmp_path / "b", BOOKIE)
    with pytest.raises(CookieMismatchError, match="mismatch"):
        await check_cookie(store, tmp_path / "a", BOOKIE)


async def test_data_without_any_cookie_is_refused(store: MetadataStore, tmp_path: Path) -> None:
    (tmp_path / "b" / "journal").mkdir(parents=True)
    with pytest.raises(CookieMismatchError, match="no cookie"):
        await check_cookie(store, tmp_path / "b", BOOKIE)


async def test_registry_follows_registrations_and_a_lost_session_registers_again(
    store: MetadataStore,
) -> None:
    registry = BookieRegistry(store)
    seen: list[list[str]] = []
    changed = asyncio.Event()

    def on_change() -> None:
        seen.append(registry.available())
        changed.set()

    registry.add_listener(on_change)
    await registry.start()

    async def wait_until(bookies: list[str]) -> None:
        async with asyncio.timeout(5):
            while registry.available() != bookies:
                changed.clear()
                await changed.wait()

    try:
        assert registry.available() == []
        registration = bookie_registration(store, BookieInfo(BOOKIE, "i1", -1, 0))
        await registration.start()
        await wait_until([BOOKIE])
        assert registry.info(BOOKIE) == BookieInfo(BOOKIE, "i1", -1, 0)
        # The session ends as when its lease expires: the key goes, then comes back.
        await registration.drop_session()
        await wait_until([])
        await wait_until([BOOKIE])
        await registration.close()
        await wait_until([])
        assert seen == [[BOOKIE], [], [BOOKIE], []]
    finally:
        await registry.close()


async def test_a_second_instance_under_the_same_id_is_refused(store: MetadataStore) -> None:
    first = bookie_registration(store, BookieInfo(BOOKIE, "i1"))
    await first.start()
    try:
        with pytest.raises(RegistrationConflictError, match="another live process"):
            await bookie_registration(store, BookieInfo(BOOKIE, "i2")).start()
    finally:
        await first.close()
    assert await store.get(AVAILABLE_PREFIX + BOOKIE) is None


async def test_describe_and_decommission(store: MetadataStore, tmp_path: Path) -> None:
    instance = await check_cookie(store, tmp_path / "b", BOOKIE)
    registration = bookie_registration(store, BookieInfo(BOOKIE, instance))
    await registration.start()
    cluster = await describe_bookies(store)
    assert [(b.bookie_id, b.available, b.instance_id) for b in cluster.bookies] == [
        (BOOKIE, True, instance)
    ]
    with pytest.raises(DecommissionRefusedError, match="running"):
        await decommission_bookie(store, BOOKIE)
    await registration.close()
    await decommission_bookie(store, BOOKIE)
    assert await store.get(cookie_key(BOOKIE)) is None
    with pytest.raises(KeyError):
        await decommission_bookie(store, BOOKIE)


async def test_a_separate_journal_directory_carries_the_cookie(
    store: MetadataStore, tmp_path: Path
) -> None:
    journal = tmp_path / "journal-volume"
    instance = await check_cookie(store, tmp_path / "b", BOOKIE, journal_dir=journal)
    assert json.loads((journal / COOKIE_FILE_NAME).read_bytes())["instance_id"] == instance
    (journal / "0000000001.seg").write_bytes(b"x")
    assert await check_cookie(store, tmp_path / "b", BOOKIE, journal_dir=journal) == instance


async def test_a_replaced_journal_volume_is_refused(store: MetadataStore, tmp_path: Path) -> None:
    journal = tmp_path / "journal-volume"
    await check_cookie(store, tmp_path / "b", BOOKIE, journal_dir=journal)
    (journal / COOKIE_FILE_NAME).unlink()  # an empty volume in place of the old one
    with pytest.raises(CookieMismatchError, match="journal volume was replaced"):
        await check_cookie(store, tmp_path / "b", BOOKIE, journal_dir=journal)


async def test_another_bookies_journal_volume_is_refused(
    store: MetadataStore, tmp_path: Path
) -> None:
    await check_cookie(store, tmp_path / "a", "127.0.0.1:1", journal_dir=tmp_path / "ja")
    await check_cookie(store, tmp_path / "b", BOOKIE, journal_dir=tmp_path / "jb")
    with pytest.raises(CookieMismatchError, match="belongs to instance"):
        await check_cookie(store, tmp_path / "b", BOOKIE, journal_dir=tmp_path / "ja")


async def test_journal_segments_without_a_cookie_are_refused(
    store: MetadataStore, tmp_path: Path
) -> None:
    journal = tmp_path / "journal-volume"
    journal.mkdir()
    (journal / "0000000001.seg").write_bytes(b"x")
    with pytest.raises(CookieMismatchError, match="holds journal segments but no cookie"):
        await check_cookie(store, tmp_path / "b", BOOKIE, journal_dir=journal)
