"""The one error edge of the broker's gRPC services (messaging and admin).

Every domain error becomes a status through ``broker.errors.to_status`` (with rich details
from ``status_metadata``); anything unexpected is logged once, with its stack, and answered
INTERNAL without one. Aborts and cancellations pass through untouched.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import grpc

from broker.errors import status_metadata, to_status

log = logging.getLogger(__name__)

R = TypeVar("R")
INTERNAL_MESSAGE = "internal error; see the broker log"

Handler = Callable[[Any, Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[R]]


async def abort_for(
    context: grpc.aio.ServicerContext[Any, Any], exc: BaseException, where: str
) -> NoReturn:
    """End the call with the status ``exc`` stands for; ``where`` names the call in the log."""
    status = to_status(exc)
    if status is None:
        log.error("unexpected error in %s: %r", where, exc, exc_info=exc)
        await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)
    else:
        await context.abort(status[0], status[1], status_metadata(exc))
    raise AssertionError("unreachable: context.abort raises")


def edge(method: Handler[R]) -> Handler[R]:
    """Decorate a servicer method (unary or stream) so errors leave it through ``abort_for``."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> R:
        try:
            return await method(self, request, context)
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception as exc:
            await abort_for(context, exc, method.__name__)

    return wrapper
