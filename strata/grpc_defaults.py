"""Process-wide gRPC core settings of the ``strata`` command, applied before gRPC is imported.

gRPC core reads ``GRPC_EXPERIMENTS`` once, when ``grpc`` is first imported, so the ``strata``
command (``strata.__main__``: every server role, the CLI and ``strata perf``) calls
``set_default_experiments`` before anything imports it. This module must not import grpc.

The default turns gRPC's EventEngine off for client and server endpoints and completion
queues, so that this grpcio (1.85) polls with its long-standing iomgr (epoll1) engine instead.
Measured on the project's 2-core machine (ARCHITECTURE.md, "Performance"): a stream of 500
messages/s between two processes costs 15-25 % less CPU on each side (client 400-430 →
325-380 µs per message, server 330-350 → 250-290) with a lower round trip (0.46-0.49 →
0.34-0.39 ms at the median); the cluster's CPU per ledger entry falls 5-8 % and its publish
latency at 5,000 msg/s by a third. The EventEngine threads were the extra cost: every message
crossed one more thread before the completion queue.

An operator's own ``GRPC_EXPERIMENTS`` wins, even empty (``GRPC_EXPERIMENTS=`` restores
gRPC's defaults). The SDK never sets it: an application's process is its own.
``tests/unit/test_grpc_defaults.py`` fails when a grpcio upgrade no longer knows these
experiments.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping

GRPC_EXPERIMENTS_ENV = "GRPC_EXPERIMENTS"
DEFAULT_EXPERIMENTS = (
    "-event_engine_client,-event_engine_listener,"
    "-event_engine_callback_cq,-use_call_event_engine_in_completion_queue"
)


def set_default_experiments(environ: MutableMapping[str, str] = os.environ) -> bool:
    """Set ``GRPC_EXPERIMENTS`` unless it is set; False when gRPC was already imported (too
    late to matter) or the operator chose their own."""
    if "grpc" in sys.modules or GRPC_EXPERIMENTS_ENV in environ:
        return False
    environ[GRPC_EXPERIMENTS_ENV] = DEFAULT_EXPERIMENTS
    return True
