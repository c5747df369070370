"""What every server role's ``main`` shares: logging, signals, and errors as exit codes.

Stopping: the first SIGTERM or SIGINT sets the ``stop`` event the role's ``serve`` waits on;
the role then shuts down gracefully, within its ``--graceful-shutdown-timeout-seconds``
(a broker hands its bundles to other brokers, a bookie finishes the adds in flight). A second
signal during that shutdown ends the process at once, as an operator pressing Ctrl-C twice
expects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable

from strata.config_binding import setting
from strata.logging_setup import LOG_FORMAT_JSON, LOG_FORMAT_TEXT, configure_logging
from strata.metadata import MetadataError

EXIT_FAILURE = 1
EXIT_CONFIG_ERROR = 2
# The exit status of a process ended by a second signal during its graceful shutdown.
EXIT_INTERRUPTED = 130
SERVER_STOP_MIN_GRACE_SECONDS = 0.5
SERVER_STOP_MAX_GRACE_SECONDS = 5.0
# How long a role waits at start for an unreachable metadata store (etcd may start after it).
DEFAULT_METADATA_STORE_CONNECT_TIMEOUT_SECONDS = 120.0

log = logging.getLogger("strata.process")


def metadata_store_connect_timeout_setting() -> float:
    """The ``metadata_store_connect_timeout_seconds`` field of a role's config."""
    return setting(
        DEFAULT_METADATA_STORE_CONNECT_TIMEOUT_SECONDS,
        "at start, how long to wait for an unreachable metadata store (retrying with backoff) "
        "before giving up, so that the roles of a cluster may start in any order",
    )


def log_format_setting() -> str:
    """The ``log_format`` field of a role's config."""
    return setting(LOG_FORMAT_TEXT, "log lines as text, or json: one object per line")


class ShutdownDeadline:
    """The time a graceful stop may take (``--graceful-shutdown-timeout-seconds``), counted
    from the stop signal: each step of the shutdown takes what is left of it."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._deadline: float | None = None

    def start(self) -> None:
        """The stop signal came: the clock runs from now (from the first call)."""
        if self._deadline is None:
            self._deadline = time.monotonic() + self.timeout_s

    def remaining_s(self) -> float:
        if self._deadline is None:
            return self.timeout_s
        return max(0.0, self._deadline - time.monotonic())

    def server_grace_s(self) -> float:
        """The grace of a gRPC server's stop: what is left, within bounds. Streams that do
        not end by themselves (a standalone's producers, long polls) hold it all, so it is
        short; calls still running when the time is up get a moment."""
        return min(
            SERVER_STOP_MAX_GRACE_SECONDS, max(SERVER_STOP_MIN_GRACE_SECONDS, self.remaining_s())
        )


def run_server(
    serve: Callable[[asyncio.Event], Awaitable[int | None]],
    *,
    log_format: str = LOG_FORMAT_TEXT,
) -> int:
    """Run ``serve(stop)`` until it returns; SIGTERM and SIGINT set ``stop`` (a second one
    exits at once). Returns the process exit code: what ``serve`` returned (None: 0), 2 for a
    configuration error (ValueError), 1 for an OS or metadata-store error, each reported on one
    line (a log record in the json log format, ``error: ...`` on stderr otherwise)."""
    configure_logging(log_format)

    async def run() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_signal() -> None:
            if stop.is_set():
                log.warning("second stop signal: exiting without finishing the shutdown")
                logging.shutdown()
                # What a kill -9 would do, which every role survives (nothing is
                # acknowledged before it is durable).
                os._exit(EXIT_INTERRUPTED)
            log.info("stop signal: shutting down")
            stop.set()

        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, on_signal)
        return (await serve(stop)) or 0

    def report(exc: BaseException) -> None:
        if log_format == LOG_FORMAT_JSON:
            log.error("%s", exc)
        else:
            print(f"error: {exc}", file=sys.stderr)

    try:
        with contextlib.suppress(KeyboardInterrupt):
            return asyncio.run(run())
    except ValueError as exc:
        report(exc)
        return EXIT_CONFIG_ERROR
    except (OSError, MetadataError) as exc:
        report(exc)
        return EXIT_FAILURE
    return 0
