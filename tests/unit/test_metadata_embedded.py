"""The embedded metadata-store driver: the conformance suite, durability and process death.

The in-memory driver shares the embedded driver's engine logic and runs the conformance
suite here too, so that both in-process drivers are held to the same contract.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from strata.metadata import (
    EmbeddedMetadataStore,
    EventType,
    InMemoryMetadataStore,
    MetadataError,
    MetadataStore,
    MetadataStoreClosedError,
    WatchOverflowError,
    open_metadata_store,
)

# The TID251 ban on importing `tests` is aimed at production code; a test importing the
# shared conformance suite is what that suite is for.
from tests.metadata_conformance import (
    MetadataStoreConformance,
    assert_watch_ends,
    next_event,
)

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]
CHILD_TIMEOUT_S = 30.0


class TestEmbeddedConformance(MetadataStoreConformance):
    @pytest.fixture
    async def store(self, tmp_path: Path) -> AsyncIterator[MetadataStore]:
        store = await EmbeddedMetadataStore.open(tmp_path / "metadata")
        yield store
        await store.close()


class TestInMemoryConformance(MetadataStoreConformance):
    @pytest.fixture
    async def store(self) -> AsyncIterator[MetadataStore]:
        store = await InMemoryMetadataStore.open()
        yield store
        await store.close()


# --- Durability -------------------------------------------------------------------------------


async def test_data_survives_close_and_reopen(tmp_path: Path) -> None:
    async with await EmbeddedMetadataStore.open(tmp_path) as store:
        kept = await store.put("/kept", b"value")
        await store.put("/kept", b"value 2")
        kept = await store.put("/kept", b"value 3")
        gone = await store.put("/gone", b"x")
        assert await store.delete("/gone")
        delete_revision = gone.mod_revision + 1
    async with await EmbeddedMetadataStore.open(tmp_path) as store:
        assert await store.get("/kept") == kept
        assert await store.get("/gone") is None
        # Versions and the store-wide revision carry on where they stopped.
        updated = await store.put("/kept", b"value 4", expected_version=3)
        assert updated.version == 4
        assert updated.mod_revision == delete_revision + 1


async def test_ephemeral_keys_end_with_the_store(tmp_path: Path) -> None:
    async with await EmbeddedMetadataStore.open(tmp_path) as store:
        await store.put("/live/self", b"x", ephemeral=True)
        second = await store.open_session()
        await second.put("/live/child", b"y", ephemeral=True)
        await store.put("/durable", b"z")
    async with await EmbeddedMetadataStore.open(tmp_path) as store:
        assert await store.list_keys("/") == ["/durable"]


async def test_closing_the_store_closes_its_sessions_and_its_thread(tmp_path: Path) -> None:
    threads_before = set(threading.enumerate())
    store = await EmbeddedMetadataStore.open(tmp_path)
    assert len(set(threading.enumerate()) - threads_before) == 1  # the worker
    second = await store.open_session()
    watch = second.watch("/")
    await store.close()
    await assert_watch_ends(watch)
    with pytest.raises(MetadataStoreClosedError):
        await second.get("/k")
    with pytest.raises(MetadataStoreClosedError):
        await store.get("/k")
    await second.close()
    await store.close()
    assert set(threading.enumerate()) - threads_before == set()


async def test_a_second_open_of_the_same_directory_is_refused(tmp_path: Path) -> None:
    async with await EmbeddedMetadataStore.open(tmp_path):
        threads_before = set(threading.enumerate())
        with pytest.raises(MetadataError, match="is in use by another process"):
            await EmbeddedMetadataStore.open(tmp_path)
        # The refused open stopped the worker thread it had started.
        assert set(threading.enumerate()) - threads_before == set()
    # Released on close.
    async with await EmbeddedMetadataStore.open(tmp_path) as store:
        assert await store.get("/k") is None


# A child process that opens the store, puts a durable and an ephemeral key, says so once both
# puts have returned, and then blocks until it is killed (or its stdin closes).
_CHILD = """
import asyncio, sys
from strata.metadata import EmbeddedMetadataStore

async def main() -> None:
    store = await EmbeddedMetadataStore.open(sys.argv[1])
    await store.put("/durable/key", b"kept")
    await store.put("/live/child", b"owned by the child", ephemeral=True)
    print("ready", flush=True)
    sys.stdin.readline()

asyncio.run(main())
"""


async def test_a_put_survives_sigkill_and_its_ephemeral_keys_do_not(tmp_path: Path) -> None:
    async with await EmbeddedMetadataStore.open(tmp_path) as store:
        before = await store.put("/durable/before", b"x")
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _CHILD,
        str(tmp_path),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=REPOSITORY_ROOT,
    )
    assert child.stdin is not None and child.stdout is not None and child.stderr is not None
    try:
        line = await asyncio.wait_for(child.stdout.readline(), CHILD_TIMEOUT_S)
        if line != b"ready\n":
            errors = await asyncio.wait_for(child.stderr.read(), CHILD_TIMEOUT_S)
            pytest.fail(f"child did not get ready: {line!r} {errors.decode()}")
        # While the child holds the store, this process is turned away.
        with pytest.raises(MetadataError, match="is in use by another process"):
            await EmbeddedMetadataStore.open(tmp_path)
        child.kill()
        assert await asyncio.wait_for(child.wait(), CHILD_TIMEOUT_S) == -signal.SIGKILL
    finally:
        if child.returncode is None:
            child.kill()
            await asyncio.wait_for(child.wait(), CHILD_TIMEOUT_S)
        child.stdin.close()
        await asyncio.wait_for(child.stderr.read(), CHILD_TIMEOUT_S)

    # The kernel released the child's lock; the next open sweeps its ephemeral key.
    async with await EmbeddedMetadataStore.open(tmp_path) as store:
        async with store.watch("/") as watch:
            kept = await store.get("/durable/key")
            assert kept is not None
            assert kept.value == b"kept"
            assert kept.mod_revision > before.mod_revision
            assert await store.get("/live/child") is None
            assert await store.list_keys("/") == ["/durable/before", "/durable/key"]
            # The child's ephemeral put took the next revision and the sweep's delete the one
            # after; the next change follows both.
            after = await store.put("/after", b"y")
            assert after.mod_revision == kept.mod_revision + 3
            assert (await next_event(watch)).record == after


# --- Watches ------------------------------------------------------------------------------------


@pytest.mark.parametrize("driver", ["embedded", "memory"])
async def test_a_watch_that_falls_behind_is_cancelled_with_an_error(
    tmp_path: Path, driver: str
) -> None:
    url = f"embedded://{tmp_path}" if driver == "embedded" else "memory://"
    async with await open_metadata_store(url) as store:
        watch = store.watch("/flood/", max_pending_events=3)
        for i in range(3):
            await store.put(f"/flood/{i}", b"x")
        fourth = await store.put("/flood/3", b"x")
        # In-process stores deliver before put() returns, so the overflow already happened.
        with pytest.raises(WatchOverflowError, match=str(fourth.mod_revision)):
            await next_event(watch)
        with pytest.raises(WatchOverflowError):
            await next_event(watch)
        # A new watch works, and the store was never affected.
        async with store.watch("/flood/") as again:
            marker = await store.put("/flood/4", b"y")
            event = await next_event(again)
            assert event.type is EventType.PUT
            assert event.record == marker


# --- Opening by URL -------------------------------------------------------------------------------


async def test_open_by_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with await open_metadata_store(f"embedded://{tmp_path / 'absolute'}") as store:
        assert isinstance(store, EmbeddedMetadataStore)
        assert store.directory == tmp_path / "absolute"
    monkeypatch.chdir(tmp_path)
    async with await open_metadata_store("embedded:relative/dir") as store:
        assert isinstance(store, EmbeddedMetadataStore)
        assert store.directory == tmp_path / "relative" / "dir"
    assert (tmp_path / "relative" / "dir" / "metadata.sqlite3").exists()
    async with await open_metadata_store("memory://") as store:
        assert isinstance(store, InMemoryMetadataStore)


@pytest.mark.parametrize(
    "url",
    ["embedded://host/dir", "embedded:", "embedded:///x?sync=off", "memory://x", "zk://h:2181", ""],
)
async def test_bad_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match="metadata store URL"):
        await open_metadata_store(url)
