"""The etcd metadata-store driver against a real etcd server.

The conformance suite runs on the session's shared etcd, each test under a key root of its
own. The tests below it are etcd's own: leases that expire when their holder dies or hangs,
a lease revoked behind the session's back, etcd restarting or staying down, failover between
endpoints, and the URL. Tests that stop or restart etcd start a private server for it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aetcd
import pytest

from strata.metadata import (
    EtcdMetadataStore,
    EtcdSettings,
    EventType,
    MetadataStore,
    MetadataStoreClosedError,
    MetadataStoreUnavailableError,
    open_metadata_store,
)
from strata.metadata.etcd import DEFAULT_SESSION_TTL_SECONDS, EtcdEndpoint
from tests.etcd_server import EtcdServer, free_ports
from tests.metadata_conformance import MetadataStoreConformance, next_event

pytestmark = pytest.mark.integration

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]
CHILD_TIMEOUT_S = 30.0
SHORT_TTL_S = 2
# A lease of SHORT_TTL_S expires on etcd's next expiry check after its TTL; well within this.
EXPIRY_TIMEOUT_S = 15.0
# Budgets for the tests that keep etcd down, so that giving up takes a second, not 10-30 s.
SHORT_RETRY_S = 1.0


class TestEtcdConformance(MetadataStoreConformance):
    @pytest.fixture
    async def store(self, etcd_url: str) -> AsyncIterator[MetadataStore]:
        store = await open_metadata_store(etcd_url)
        yield store
        await store.close()


@pytest.fixture
def private_etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    """An etcd server of this test's own, for tests that stop, kill or restart it."""
    with EtcdServer(tmp_path / "etcd") as server:
        yield server


async def raw_client(url: str) -> aetcd.Client:
    endpoint = EtcdSettings.from_url(url).endpoints[0]
    client = aetcd.Client(host=endpoint.host, port=endpoint.port, timeout=5)
    await client.connect()
    return client


# --- Leases --------------------------------------------------------------------------------------

# A child process that holds an ephemeral key with a short lease, says "ready" once the put
# returned, then answers each line on stdin by putting the key again and printing the outcome.
_HOLDER = """
import asyncio, sys
from strata.metadata import MetadataError, open_metadata_store

async def main() -> None:
    store = await open_metadata_store(sys.argv[1])
    await store.put("/live/holder", b"held", ephemeral=True)
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    # Bounded by the test, which kills this process or closes its stdin.
    while await loop.run_in_executor(None, sys.stdin.readline):
        try:
            await store.put("/live/holder", b"again", ephemeral=True)
            print("put ok", flush=True)
        except MetadataError as error:
            print(type(error).__name__, flush=True)
    await store.close()

asyncio.run(main())
"""


class Holder:
    """The child process running ``_HOLDER``; ended by its PID in ``stop()``."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(cls, url: str) -> Holder:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _HOLDER,
            url,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=REPOSITORY_ROOT,
        )
        holder = cls(process)
        try:
            line = await holder.read_line()
            if line != "ready":
                assert process.stderr is not None
                errors = await asyncio.wait_for(process.stderr.read(), CHILD_TIMEOUT_S)
                pytest.fail(f"holder did not get ready: {line!r} {errors.decode()}")
        except BaseException:
            await holder.stop()
            raise
        return holder

    async def read_line(self) -> str:
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), CHILD_TIMEOUT_S)
        return line.decode().strip()

    async def ask_to_put(self) -> str:
        assert self.process.stdin is not None
        self.process.stdin.write(b"put\n")
        await self.process.stdin.drain()
        return await self.read_line()

    def signal(self, signal_number: int) -> None:
        self.process.send_signal(signal_number)

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
            await asyncio.wait_for(self.process.wait(), CHILD_TIMEOUT_S)
        assert self.process.stdin is not None and self.process.stderr is not None
        self.process.stdin.close()
        await asyncio.wait_for(self.process.stderr.read(), CHILD_TIMEOUT_S)


async def test_an_ephemeral_key_vanishes_after_its_holder_is_killed(etcd_url: str) -> None:
    url = f"{etcd_url}?session_ttl_seconds={SHORT_TTL_S}"
    async with await open_metadata_store(etcd_url) as observer:
        async with observer.watch("/live/") as watch:
            holder = await Holder.start(url)
            try:
                created = await next_event(watch)
                assert created.type is EventType.PUT
                assert created.key == "/live/holder"
                holder.signal(signal.SIGKILL)
                # Nobody refreshes the lease any more: etcd expires it and deletes the key.
                deleted = await next_event(watch, EXPIRY_TIMEOUT_S)
            finally:
                await holder.stop()
        assert deleted.type is EventType.DELETE
        assert deleted.key == "/live/holder"
        assert await observer.get("/live/holder") is None


async def test_a_holder_paused_past_its_lease_fences_itself(etcd_url: str) -> None:
    url = f"{etcd_url}?session_ttl_seconds={SHORT_TTL_S}"
    async with await open_metadata_store(etcd_url) as observer:
        async with observer.watch("/live/") as watch:
            holder = await Holder.start(url)
            try:
                assert (await next_event(watch)).type is EventType.PUT
                holder.signal(signal.SIGSTOP)
                deleted = await next_event(watch, EXPIRY_TIMEOUT_S)
                assert deleted.type is EventType.DELETE
                holder.signal(signal.SIGCONT)
                # The zombie must not act on the lease it lost while it was stopped.
                assert await holder.ask_to_put() == "MetadataStoreClosedError"
                assert await holder.ask_to_put() == "MetadataStoreClosedError"
            finally:
                await holder.stop()
        assert await observer.get("/live/holder") is None


async def test_a_revoked_lease_ends_the_session(etcd_url: str) -> None:
    url = f"{etcd_url}?session_ttl_seconds={SHORT_TTL_S}"
    store = await open_metadata_store(url)
    client = await raw_client(url)
    try:
        await store.put("/live/me", b"x", ephemeral=True)
        durable = await store.put("/durable", b"y")
        watch = store.watch("/")
        root = EtcdSettings.from_url(url).root
        etcd_record = await client.get(f"{root}/live/me".encode())
        assert etcd_record is not None and etcd_record.lease != 0
        await client.revoke_lease(etcd_record.lease)

        # The revoke's DELETE may arrive first; the keep-alive then reports the lost lease
        # (within TTL/3) by failing the session's watches and every later call.
        with pytest.raises(MetadataStoreClosedError, match="lease"):
            for _ in range(2):
                event = await next_event(watch)
                assert event.type is EventType.DELETE and event.key == "/live/me"
        with pytest.raises(MetadataStoreClosedError, match="lease"):
            await store.get("/durable")
        with pytest.raises(MetadataStoreClosedError):
            await store.put("/live/me", b"again", ephemeral=True)
        with pytest.raises(MetadataStoreClosedError):
            await store.open_session()
    finally:
        await store.close()
        await client.close()
    async with await open_metadata_store(url) as fresh:
        assert await fresh.list_keys("/") == ["/durable"]
        assert await fresh.get("/durable") == durable


async def test_sessions_without_ephemeral_keys_hold_no_lease(etcd_url: str) -> None:
    client = await raw_client(etcd_url)
    try:
        request = aetcd.rpc.LeaseLeasesRequest()
        before = {lease.ID for lease in (await client.leasestub.LeaseLeases(request)).leases}
        async with await open_metadata_store(etcd_url) as store:
            second = await store.open_session()
            await second.put("/k", b"durable")
            await store.put("/e", b"ephemeral", ephemeral=True)
            leases = (await client.leasestub.LeaseLeases(request)).leases
            mine = {lease.ID for lease in leases} - before
            assert len(mine) == 1
            ttl = await client.get_lease_info(mine.pop(), keys=False)
            assert 0 < ttl.TTL <= DEFAULT_SESSION_TTL_SECONDS
    finally:
        await client.close()


# --- Restarts and outages ------------------------------------------------------------------------


async def test_the_store_and_its_watches_carry_on_after_etcd_restarts(
    private_etcd: EtcdServer,
) -> None:
    url = f"{private_etcd.url}/restart"
    async with (
        await open_metadata_store(url) as store,
        await open_metadata_store(url) as writer,
    ):
        durable = await store.put("/durable", b"before")
        ephemeral = await store.put("/live/me", b"held", ephemeral=True)
        async with store.watch("/w/") as watch:
            first = await writer.put("/w/0", b"0")
            assert (await next_event(watch)).record == first

            await asyncio.to_thread(private_etcd.restart, kill=True)

            # Nothing was in flight during the crash, so every write was either sent once or
            # not at all: they succeed after the driver's retries. The watch resumes after
            # the last event it delivered, so it sees each of them exactly once, in order.
            written = [await writer.put(f"/w/{i}", str(i).encode()) for i in range(1, 4)]
            events = [await next_event(watch) for _ in written]
            assert [event.record for event in events] == written

        assert await store.get("/durable") == durable
        # The lease outlived the restart (etcd keeps leases and renews them on restart).
        assert await store.get("/live/me") == ephemeral
        again = await store.put("/durable", b"after", expected_version=durable.version)
        assert again.version == 2


async def test_calls_fail_cleanly_while_etcd_is_down_and_work_once_it_is_back(
    private_etcd: EtcdServer,
) -> None:
    settings = dataclasses.replace(
        EtcdSettings.from_url(f"{private_etcd.url}/down"),
        connect_retry_max_seconds=SHORT_RETRY_S,
        watch_resume_max_seconds=SHORT_RETRY_S,
    )
    store = await EtcdMetadataStore.open(settings)
    try:
        watch = store.watch("/w/")
        marker = await store.put("/w/marker", b"x")
        assert (await next_event(watch)).record == marker

        await asyncio.to_thread(private_etcd.stop)

        with pytest.raises(MetadataStoreUnavailableError) as caught:
            await store.get("/w/marker")
        assert caught.value.retriable
        assert private_etcd.endpoint in str(caught.value)
        with pytest.raises(MetadataStoreUnavailableError):
            await store.put("/w/marker", b"y")
        with pytest.raises(MetadataStoreUnavailableError):
            await store.list("/")
        # The watch could not resume within its budget: it says so instead of going quiet.
        with pytest.raises(MetadataStoreUnavailableError):
            await next_event(watch)

        await asyncio.to_thread(private_etcd.start)
        updated = await store.put("/w/marker", b"z", expected_version=1)
        assert updated.version == 2
        async with store.watch("/w/") as again:
            latest = await store.put("/w/marker", b"w")
            assert (await next_event(again)).record == latest
    finally:
        await store.close()


async def test_calls_to_a_hung_etcd_time_out(private_etcd: EtcdServer) -> None:
    settings = dataclasses.replace(
        EtcdSettings.from_url(f"{private_etcd.url}/hung"), connect_retry_max_seconds=SHORT_RETRY_S
    )
    store = await EtcdMetadataStore.open(settings)
    try:
        await store.put("/k", b"x")
        private_etcd.pause()
        try:
            with pytest.raises(MetadataStoreUnavailableError):
                await store.get("/k")
            # The request reached etcd's socket before etcd stopped answering: whether it was
            # applied is unknown, so it is not retried and the error says so.
            with pytest.raises(MetadataStoreUnavailableError, match="may or may not"):
                await store.put("/k", b"y")
        finally:
            private_etcd.resume()
        # The store works again once etcd answers. "/k" is not written here: the put that may or
        # may not have been applied can still be applied by etcd after it resumes, at any moment.
        current = await store.get("/k")
        assert current is not None and current.value in (b"x", b"y")
        assert (await store.put("/after", b"z", expected_version=0)).version == 1
    finally:
        await store.close()


async def test_open_fails_when_no_endpoint_answers() -> None:
    dead = free_ports(2)
    settings = EtcdSettings(
        tuple(EtcdEndpoint("127.0.0.1", port) for port in dead),
        connect_retry_max_seconds=SHORT_RETRY_S,
    )
    with pytest.raises(MetadataStoreUnavailableError):
        await EtcdMetadataStore.open(settings)


async def test_endpoints_are_tried_in_order(etcd_server: EtcdServer, etcd_url: str) -> None:
    (dead,) = free_ports(1)
    root = EtcdSettings.from_url(etcd_url).root
    url = f"etcd://127.0.0.1:{dead},{etcd_server.endpoint}{root}"
    async with await open_metadata_store(url) as store:
        record = await store.put("/k", b"through the second endpoint", expected_version=0)
        async with await open_metadata_store(etcd_url) as direct:
            assert await direct.get("/k") == record


# --- URLs -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("etcd://127.0.0.1:2379", EtcdSettings((EtcdEndpoint("127.0.0.1", 2379),))),
        (
            "etcd://etcd-0.etcd:2379,etcd-1.etcd:2379/strata/cluster-a?session_ttl_seconds=10",
            EtcdSettings(
                (EtcdEndpoint("etcd-0.etcd", 2379), EtcdEndpoint("etcd-1.etcd", 2379)),
                root="/strata/cluster-a",
                session_ttl_seconds=10,
            ),
        ),
        ("ETCD://[::1]:2379/", EtcdSettings((EtcdEndpoint("::1", 2379),))),
    ],
)
def test_urls_are_parsed(url: str, expected: EtcdSettings) -> None:
    assert EtcdSettings.from_url(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "etcd://",
        "etcd:///root",
        "etcd://localhost",
        "etcd://localhost:",
        "etcd://localhost:0",
        "etcd://localhost:65536",
        "etcd://localhost:http",
        "etcd://h1:2379,",
        "etcd://h1:2379,,h2:2379",
        "etcd://user:secret@h1:2379",
        "etcd://-h1:2379",
        "etcd://h_1:2379",
        "etcd://999.0.0.1:2379",
        "etcd://[::1:2379",
        "etcd://[not-ipv6]:2379",
        "etcd://::1:2379",
        "etcd://h1:2379/a//b",
        "etcd://h1:2379#fragment",
        "etcd://h1:2379?session_ttl_seconds=0",
        "etcd://h1:2379?session_ttl_seconds=two",
        "etcd://h1:2379?colour=blue",
    ],
)
async def test_bad_etcd_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match="metadata store URL"):
        await open_metadata_store(url)


async def test_a_store_opened_by_url_has_the_url_settings(etcd_url: str) -> None:
    async with await open_metadata_store(f"{etcd_url}?session_ttl_seconds=7") as store:
        assert isinstance(store, EtcdMetadataStore)
        assert store.settings.session_ttl_seconds == 7
        assert store.settings.root.startswith("/tests/")
