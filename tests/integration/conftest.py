from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import Standalone


@pytest.fixture
def standalone(tmp_path: Path) -> Iterator[Standalone]:
    """A fresh standalone Strata on a free port, with fsync on, stopped after the test."""
    server = Standalone(tmp_path / "data").start()
    try:
        yield server
    finally:
        server.stop()
