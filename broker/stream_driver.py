"""The life of one Produce or Consume stream after its handshake: ``run_stream``.

A stream has three owned parts, each a task:

- the reader takes requests off the call (``context.read()``) until the client half-closes;
- the writer sends responses (receipts, deliveries) until it has sent the last one;
- the watch waits for the topic to start closing (unloaded from this broker, or deleted).

The stream ends normally when both the reader and the writer have finished. The first of
the three to fail ends the stream with its error: the others are cancelled and awaited, and
the error goes on to the service's edge (``broker.edge``), which turns it into the call's
status. A closing topic ends the stream with UNAVAILABLE (``ServiceUnavailableError``), and
the client looks the topic up again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from broker.errors import ServiceUnavailableError

if TYPE_CHECKING:
    from broker.topic import Topic


async def run_stream(
    topic: Topic, reader: Coroutine[Any, Any, None], writer: Coroutine[Any, Any, None]
) -> None:
    """Run ``reader`` and ``writer`` of a stream on ``topic``; see the module docstring."""
    read_task = asyncio.ensure_future(reader)
    write_task = asyncio.ensure_future(writer)
    watch_task = asyncio.ensure_future(_watch_closing(topic))
    try:
        pending = {read_task, write_task, watch_task}
        while not (read_task.done() and write_task.done()):
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                error = task.exception()
                if error is not None:
                    raise error
    finally:
        for task in (read_task, write_task, watch_task):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def _watch_closing(topic: Topic) -> None:
    await topic.closing.wait()
    raise ServiceUnavailableError(
        f"topic {topic.name} was unloaded from this broker; look it up again"
    )
