"""moto's S3 server as a real process on a free loopback port, for tests of processes.

``MotoServer`` starts the ``moto_server`` binary of this virtualenv (directly, never through a
shell, so its PID is the server's), waits until ``GET /moto-api/`` answers (never a fixed
sleep), and offers the fault verbs the offload tests use: ``pause()``/``resume()``
(SIGSTOP/SIGCONT: the state survives, requests hang meanwhile) and ``stop()``. A restarted
moto server starts empty: moto keeps everything in memory. The process is ended only by the
PID started here.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import boto3
from botocore.config import Config

from tests.harness import free_port

READY_TIMEOUT_SECONDS = 20.0
STOP_TIMEOUT_SECONDS = 10.0
REGION = "us-east-1"
ACCESS_KEY = "testing"
SECRET_KEY = "testing"


def find_moto_server() -> str:
    candidate = Path(sys.executable).parent / "moto_server"
    if not candidate.exists():
        raise FileNotFoundError(
            f"{candidate} is missing: moto[server] comes with the dev extra (make install)"
        )
    return str(candidate)


class MotoServer:
    def __init__(self, log_path: Path, port: int | None = None) -> None:
        self.port = port if port is not None else free_port()
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """What a child process needs to reach this server with boto3's standard chain."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ENDPOINT_URL_S3": self.url,
        }

    def client(self) -> object:
        return boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            config=Config(retries={"total_max_attempts": 3}, connect_timeout=5, read_timeout=30),
        )

    def start(self) -> Self:
        assert self.process is None or self.process.poll() is not None, "already running"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [find_moto_server(), "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_SECONDS) -> None:
        deadline = time.monotonic() + timeout_s
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"moto_server exited with {self.process.returncode}")
            try:
                with urllib.request.urlopen(f"{self.url}/moto-api/", timeout=1) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError) as exc:
                last_error = exc
            # Poll interval of a readiness probe, not a wait standing in for a condition.
            time.sleep(0.05)
        raise TimeoutError(f"moto_server on {self.url} not ready after {timeout_s} s: {last_error}")

    def create_bucket(self, bucket: str) -> None:
        self.client().create_bucket(Bucket=bucket)  # type: ignore[attr-defined]

    def list_keys(self, bucket: str, prefix: str = "") -> list[str]:
        client = self.client()
        keys: list[str] = []
        paginator = client.get_paginator("list_objects_v2")  # type: ignore[attr-defined]
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            keys.extend(str(item["Key"]) for item in page.get("Contents", []))
        return keys

    def pause(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        process = self.process
        if process is not None and process.poll() is None:
            os.kill(process.pid, signal.SIGCONT)
            os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait(STOP_TIMEOUT_SECONDS)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
