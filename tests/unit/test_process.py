"""What the server roles share: the graceful-shutdown budget and errors as exit codes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import pytest

from strata.metadata import MetadataStoreUnavailableError
from strata.process import (
    EXIT_CONFIG_ERROR,
    EXIT_FAILURE,
    SERVER_STOP_MAX_GRACE_SECONDS,
    SERVER_STOP_MIN_GRACE_SECONDS,
    ShutdownDeadline,
    run_server,
)


@pytest.fixture(autouse=True)
def restored_root_logger() -> Iterator[None]:
    """``run_server`` sets up logging for a process; give the root logger back after."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def test_the_deadline_counts_from_the_first_start() -> None:
    deadline = ShutdownDeadline(30.0)
    assert deadline.remaining_s() == 30.0  # no signal yet: the whole budget
    deadline.start()
    first = deadline.remaining_s()
    assert 29.0 < first <= 30.0
    deadline.start()  # a later step does not restart the clock
    assert deadline.remaining_s() <= first


def test_the_server_grace_stays_within_its_bounds() -> None:
    assert ShutdownDeadline(30.0).server_grace_s() == SERVER_STOP_MAX_GRACE_SECONDS
    spent = ShutdownDeadline(0.0)
    spent.start()  # the budget is spent at once: a moment is still given
    assert spent.server_grace_s() == SERVER_STOP_MIN_GRACE_SECONDS


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (ValueError("bad"), EXIT_CONFIG_ERROR),
        (MetadataStoreUnavailableError("no etcd"), EXIT_FAILURE),
        (OSError("port in use"), EXIT_FAILURE),
    ],
)
def test_errors_become_exit_codes(
    error: Exception, code: int, capsys: pytest.CaptureFixture[str]
) -> None:
    async def serve(_stop: asyncio.Event) -> None:
        raise error

    assert run_server(serve) == code
    assert f"error: {error}" in capsys.readouterr().err


def test_what_serve_returns_is_the_exit_code() -> None:
    async def serve(_stop: asyncio.Event) -> int:
        return 3

    assert run_server(serve) == 3
