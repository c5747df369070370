"""Wall-clock time in the units the metadata store records: milliseconds since the epoch.

One definition for every role (bookie registration, broker start, offload timestamps); tests
pass their own clock where time matters.
"""

from __future__ import annotations

import time


def now_ms() -> int:
    """Milliseconds since the Unix epoch, from the wall clock (not monotonic: the value is
    stored and compared across processes)."""
    return int(time.time() * 1000)
