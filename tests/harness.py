"""Test harness as a library: real ``strata`` processes on free loopback ports.

``Standalone`` starts ``strata standalone`` as a subprocess, waits for readiness through the
gRPC health service (never by sleeping a fixed time), and offers the fault verbs the
integration and fault tests use: ``kill()`` (SIGKILL), ``pause()``/``resume()``
(SIGSTOP/SIGCONT), ``stop()`` (SIGTERM) and ``restart()`` on the same port and data.
Processes are ended only by the PID this harness started.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

READY_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 15.0
FIRST_START_MAX_ATTEMPTS = 3


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_serving(
    address: str,
    timeout_s: float = READY_TIMEOUT_SECONDS,
    process: subprocess.Popen[bytes] | None = None,
    credentials: grpc.ChannelCredentials | None = None,
) -> None:
    """Poll grpc.health.v1 until the server answers SERVING; fail early if it exited. With
    ``credentials``, over TLS."""
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    channel_of = (
        grpc.insecure_channel(address)
        if credentials is None
        else grpc.secure_channel(address, credentials)
    )
    with channel_of as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"process exited with {process.returncode} before serving")
            try:
                response = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                if response.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError as exc:
                last_error = exc
            # Poll interval of a readiness probe, not a wait for a condition in a test.
            time.sleep(0.05)
    raise TimeoutError(f"{address} not serving after {timeout_s} s: {last_error}")


class ServerProcess:
    """One ``strata`` server process (standalone, bookie or broker) on a fixed loopback port.

    The port is chosen once, so a restart comes back at the same address (a bookie's id is its
    address). Output goes to ``log_path``, appended across restarts.
    """

    def __init__(
        self,
        role: str,
        args: list[str],
        log_path: Path,
        *,
        port: int | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.role = role
        self.args = args
        self.port = port if port is not None else free_port()
        self.log_path = log_path
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._served = False  # once it has served, its port is its identity: never changed
        self._log_start = 0  # where this run's output starts in the log
        # A server serving TLS is probed over TLS with these (the test sets them).
        self.health_credentials: grpc.ChannelCredentials | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, *, wait: bool = True) -> ServerProcess:
        assert not self.running, f"{self.role} {self.address} is already running"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        self._log_start = self._log.tell()
        command = [sys.executable, "-m", "strata", self.role, "--port", str(self.port), *self.args]
        environment = dict(os.environ)
        environment.update(self.env or {})
        self.process = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, env=environment
        )
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_SECONDS) -> None:
        """Wait until SERVING. On a first start, a process that exits at once because another
        process took its port in the meantime is started again on a new port (bounded)."""
        for attempt in range(1, FIRST_START_MAX_ATTEMPTS + 1):
            try:
                wait_serving(
                    self.address,
                    timeout_s,
                    process=self.process,
                    credentials=self.health_credentials,
                )
            except RuntimeError:
                self.kill()
                lost_port = "bind" in self.log_text()[-2000:]
                if self._served or not lost_port or attempt == FIRST_START_MAX_ATTEMPTS:
                    raise
                self.port = free_port()
                self.start(wait=False)
                continue
            except BaseException:
                self.kill()
                raise
            self._served = True
            return

    def _reap(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def kill(self) -> None:
        """SIGKILL by PID: the crash every durability test is about."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)  # a paused process dies too
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(STOP_TIMEOUT_SECONDS)
        self._reap()

    def pause(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def stop(self) -> int | None:
        """SIGTERM and wait; SIGKILL if it does not stop in time. Returns the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                self.kill()
        self._reap()
        return self.process.returncode

    def restart(self) -> ServerProcess:
        self.kill()
        return self.start()

    def metrics_port(self, timeout_s: float = READY_TIMEOUT_SECONDS) -> int:
        """The metrics port this run reported on its ready line (``metrics_port=N``; -1: off).
        The line follows readiness by a moment: poll the log for it, bounded."""
        return self.reported_port("metrics_port", timeout_s)

    def web_port(self, timeout_s: float = READY_TIMEOUT_SECONDS) -> int:
        """The console's port this run reported on its ready line (``web_port=N``; -1: off)."""
        return self.reported_port("web_port", timeout_s)

    def reported_port(self, name: str, timeout_s: float = READY_TIMEOUT_SECONDS) -> int:
        deadline = time.monotonic() + timeout_s
        while True:
            found = re.search(rf" ready .* {name}=(-?\d+)", self.log_text()[self._log_start :])
            if found is not None:
                return int(found.group(1))
            if time.monotonic() > deadline or not self.running:
                raise TimeoutError(f"{self.role} {self.address} reported no {name}")
            # Poll interval of a log reader, not a wait standing in for a condition.
            time.sleep(0.05)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class Standalone(ServerProcess):
    """One ``strata standalone`` process with its data directory and log file."""

    def __init__(self, data_dir: Path, *extra_args: str, env: dict[str, str] | None = None):
        self.data_dir = data_dir
        super().__init__(
            "standalone",
            ["--data-dir", str(data_dir), "--metrics-port", "-1", *extra_args],
            data_dir.parent / f"{data_dir.name}-standalone.log",
            env=env,
        )

    def start(self, *, wait: bool = True) -> Standalone:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        super().start(wait=wait)
        return self

    def restart(self) -> Standalone:
        self.kill()
        return self.start()
