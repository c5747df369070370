"""What every server role's ``main`` shares: logging, signals, and errors as exit codes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Awaitable, Callable

from strata.metadata import MetadataError

EXIT_FAILURE = 1
EXIT_CONFIG_ERROR = 2


def run_server(serve: Callable[[asyncio.Event], Awaitable[int | None]]) -> int:
    """Run ``serve(stop)`` until it returns; SIGTERM and SIGINT set ``stop``. Returns the
    process exit code: what ``serve`` returned (None: 0), 2 for a configuration error
    (ValueError), 1 for an OS or metadata-store error, each printed on one line."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    async def run() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        return (await serve(stop)) or 0

    try:
        with contextlib.suppress(KeyboardInterrupt):
            return asyncio.run(run())
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    except (OSError, MetadataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return 0
