"""The authenticated role of the call being served.

The server-side authentication layer sets it once per call, before the servicer runs; the
authorization check at the edge reads it. ``None`` means no role: authentication is off, or
the call is one that needs none (the gRPC health service).
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager

_CURRENT_ROLE: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "strata_current_role", default=None
)


def current_role() -> str | None:
    """The role of the call this task serves (None: no authenticated role)."""
    return _CURRENT_ROLE.get()


@contextmanager
def acting_as(role: str | None) -> Iterator[None]:
    """Serve the enclosed code as ``role`` (the authentication layer; tests)."""
    token = _CURRENT_ROLE.set(role)
    try:
        yield
    finally:
        _CURRENT_ROLE.reset(token)
