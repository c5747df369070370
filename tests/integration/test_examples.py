"""The pattern examples (issue 14 item 5), each run as a program against a real standalone:
exit 0 means its own check held (every task done or dead-lettered, every subscription got
every event, per-key order, the replayed state, every request answered)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import Standalone

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
RUN_TIMEOUT_S = 120


@pytest.mark.parametrize(
    ("example", "expected"),
    [
        ("work_queue.py", "dead-lettered after 3 tries: [0, 7, 14]"),
        ("fan_out.py", "search-index: 20 events, all in order: True"),
        ("key_ordered.py", "alice: 15 messages, in order: True"),
        ("event_sourcing.py", "compacted state topic: {"),
        ("request_reply.py", "10 requests answered"),
    ],
)
def test_example(standalone: Standalone, example: str, expected: str) -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / example), "--service-url", standalone.address],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert expected in done.stdout, done.stdout
