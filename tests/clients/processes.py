"""Running the other languages' programs from pytest, bounded in time."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

OUTPUT_TAIL_CHARS = 20_000


def run_bounded(
    command: list[str], timeout_s: float, *, cwd: Path | None = None, merge_stderr: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run ``command`` in its own process group; on a timeout kill the group (by its id) and
    fail the test with the output so far."""
    process = subprocess.Popen(
        command,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        output = stdout + (stderr or "")
        pytest.fail(f"{' '.join(command)} took over {timeout_s} s:\n{output[-OUTPUT_TAIL_CHARS:]}")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr or "")
