"""A Strata cluster as real processes: etcd, N bookies and M brokers on loopback.

``Cluster`` is a library class (a pytest fixture wraps it in ``tests/faults``): it starts
everything on free ports, waits for readiness through the gRPC health services and the
bookie registrations (never by sleeping a fixed time), and offers the fault verbs
``kill_bookie(i)``, ``pause_bookie(i)``/``resume_bookie(i)`` (SIGSTOP/SIGCONT),
``restart_bookie(i)``, ``kill_broker(i)`` and ``restart_broker(i)``, and the graceful
``stop_broker(i)`` and ``stop_bookie(i)`` (SIGTERM). Every process is ended by
the PID this harness started.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self, TypeVar

import grpc

from strata.v1 import admin_pb2, admin_pb2_grpc
from tests.etcd_server import EtcdServer
from tests.harness import READY_TIMEOUT_SECONDS, ServerProcess

T = TypeVar("T")

# etcd lease of bookie and broker sessions in tests: a killed or paused process drops out of
# the live set this long after its last keep-alive.
TEST_SESSION_TTL_SECONDS = 4


class Cluster:
    def __init__(
        self,
        directory: Path,
        *,
        bookies: int = 3,
        brokers: int = 1,
        bookie_args: list[str] | None = None,
        broker_args: list[str] | None = None,
        env: dict[str, str] | None = None,
        admin_token: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.directory = directory
        # The harness's own calls (health probes, admin) use TLS with these when the servers
        # serve TLS (each given ``--tls-cert-file`` in its args).
        self.credentials = credentials
        # Presented on the harness's own admin calls when the brokers require a token.
        self.admin_metadata = (
            None if admin_token is None else (("authorization", f"Bearer {admin_token}"),)
        )
        self.etcd = EtcdServer(directory / "etcd")
        self.env = dict(env or {})
        self.bookies: list[ServerProcess] = []
        self.brokers: list[ServerProcess] = []
        self._bookie_args = bookie_args or []
        self._broker_args = broker_args or []
        self._bookie_count = bookies
        self._broker_count = brokers

    @property
    def metadata_url(self) -> str:
        return f"{self.etcd.url}?session_ttl_seconds={TEST_SESSION_TTL_SECONDS}"

    @property
    def service_url(self) -> str:
        return ",".join(broker.address for broker in self.brokers)

    def broker_address(self, index: int = 0) -> str:
        return self.brokers[index].address

    def bookie_id(self, index: int) -> str:
        return self.bookies[index].address

    # ---- lifecycle -----------------------------------------------------------------------------

    def start(self) -> Self:
        self.etcd.start()
        self.launch_servers()
        return self.wait_servers_ready()

    def launch_servers(self) -> None:
        """Start every bookie and broker process without waiting for them (nor for etcd: they
        wait for it themselves, ``--metadata-store-connect-timeout-seconds``)."""
        for index in range(self._bookie_count):
            self.add_bookie(index)
        for index in range(self._broker_count):
            self.add_broker(index)

    def wait_servers_ready(self, timeout_s: float = READY_TIMEOUT_SECONDS) -> Self:
        for process in [*self.bookies, *self.brokers]:
            process.wait_ready(timeout_s)
        self.wait_bookies_available(self._bookie_count, timeout_s)
        return self

    def add_broker(self, index: int) -> ServerProcess:
        broker = ServerProcess(
            "broker",
            [
                "--metadata-url",
                self.metadata_url,
                "--metrics-port",
                "-1",
                "--advertised-address",
                "127.0.0.1",
                *self._broker_args,
            ],
            self.directory / f"broker-{index}.log",
            env=self.env,
        )
        broker.health_credentials = self.credentials
        self.brokers.append(broker)
        broker.start(wait=False)
        return broker

    def add_bookie(self, index: int) -> ServerProcess:
        bookie = ServerProcess(
            "bookie",
            [
                "--metadata-url",
                self.metadata_url,
                "--data-dir",
                str(self.directory / f"bookie-{index}"),
                "--metrics-port",
                "-1",
                "--host",
                "127.0.0.1",
                "--advertised-address",
                "127.0.0.1",
                *self._bookie_args,
            ],
            self.directory / f"bookie-{index}.log",
            env=self.env,
        )
        bookie.health_credentials = self.credentials
        self.bookies.append(bookie)
        bookie.start(wait=False)
        return bookie

    def close(self) -> None:
        for process in [*self.brokers, *self.bookies]:
            process.kill()
        self.etcd.close()

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # ---- fault verbs ---------------------------------------------------------------------------

    def kill_bookie(self, index: int) -> None:
        self.bookies[index].kill()

    def pause_bookie(self, index: int) -> None:
        self.bookies[index].pause()

    def resume_bookie(self, index: int) -> None:
        self.bookies[index].resume()

    def restart_bookie(self, index: int) -> None:
        self.bookies[index].restart()

    def kill_broker(self, index: int = 0) -> None:
        self.brokers[index].kill()

    def restart_broker(self, index: int = 0) -> None:
        self.brokers[index].restart()

    def stop_broker(self, index: int = 0) -> int | None:
        """SIGTERM: a graceful stop (the broker hands its bundles over); its exit status."""
        return self.brokers[index].stop()

    def stop_bookie(self, index: int) -> int | None:
        """SIGTERM: a graceful stop (the bookie finishes its adds in flight); its exit status."""
        return self.bookies[index].stop()

    # ---- observation -------------------------------------------------------------------------

    def list_bookies(self, broker: int = 0) -> admin_pb2.ListBookiesResponse:
        address = self.broker_address(broker)
        with (
            grpc.insecure_channel(address)
            if self.credentials is None
            else grpc.secure_channel(address, self.credentials)
        ) as channel:
            stub = admin_pb2_grpc.AdminServiceStub(channel)
            response: admin_pb2.ListBookiesResponse = stub.ListBookies(
                admin_pb2.ListBookiesRequest(), timeout=10, metadata=self.admin_metadata
            )
            return response

    def wait_bookies_available(
        self, count: int, timeout_s: float = READY_TIMEOUT_SECONDS
    ) -> list[str]:
        """Wait until exactly ``count`` bookies are registered as available."""
        return self.wait_for(
            lambda: [b.id for b in self.list_bookies().bookies if b.available],
            lambda ids: len(ids) == count,
            timeout_s,
            f"{count} available bookies",
        )

    def wait_for(
        self,
        probe: Callable[[], T],
        done: Callable[[T], bool],
        timeout_s: float,
        what: str,
    ) -> T:
        """Poll ``probe`` until ``done`` holds; TimeoutError naming ``what`` otherwise."""
        deadline = time.monotonic() + timeout_s
        value = probe()
        while not done(value):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {what} after {timeout_s} s; last: {value!r}")
            # Poll interval of a probe of cluster state, not a wait standing in for a condition.
            time.sleep(0.2)
            value = probe()
        return value
