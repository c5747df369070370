"""What every process role's Prometheus endpoint shares: its registry, its HTTP server and
the event-loop lag monitor.

Registries. Each role's metric objects are defined once, at import, in a ``metrics.py`` of
its package (``broker.metrics``, ``bookie.metrics``) and registered nowhere
(``registry=None``). A role builds ONE ``CollectorRegistry`` at start-up
(``process_registry``) holding the process, platform and GC collectors, the module-level
metrics it uses and its collectors over live objects (the broker's topics, the bookie's
storage), and serves that registry. So nothing is ever registered twice, however many
brokers or bookies a test process creates, however often a module is imported: a role's
registry lives and dies with the role. The module-level histograms and counters are
process-wide (two brokers in one test process add to the same ones), which is what a
process-level metric means.

Hot path: histograms and counters are observed per batch (an entry, a journal fsync, a
read request), never per message. Everything per topic is read at scrape time by a
collector, so publishing pays nothing for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    make_wsgi_app,
)
from prometheus_client.registry import Collector

from strata.http_endpoint import HttpEndpoint, WsgiApp, serve_wsgi

log = logging.getLogger(__name__)

# Latencies from 100 µs (an in-memory add) to 10 s (a stalled store or disk).
LATENCY_BUCKETS_SECONDS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

# The write path's stages (issue 15): finer, from 50 µs to 10 s, so that quantiles read from
# the buckets resolve the sub-millisecond stages (journal write, fdatasync, hand-offs).
STAGE_BUCKETS_SECONDS = (
    0.00005,
    0.0001,
    0.0002,
    0.0003,
    0.0005,
    0.00075,
    0.001,
    0.0015,
    0.002,
    0.003,
    0.004,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

# One entry's way from a producer's request to its receipt, stage by stage (ARCHITECTURE.md,
# "Performance"), observed per entry or per journal batch, never per message. Three stages
# have histograms of their own, with these buckets:
#   broker_publish      strata_publish_latency_seconds (request read → receipt ready)
#   ledger_quorum       strata_storage_write_latency_seconds (add → its ack quorum confirmed)
#   bookie_add          strata_bookie_add_entry_latency_seconds (admitted → durable, indexed)
# and the others are this family's:
#   bookie_round_trip   ledger client: one bookie's add sent → its result read
#   journal_wait        bookie: the oldest record of a batch queued → its write starts in a
#                       commit slot's thread (buffering, the slot and the hand-off to it)
#   journal_write       bookie: writev of one group commit (in the slot thread)
#   journal_sync        bookie: a written batch → durable and completed on the event loop
#                       (fdatasync + the hand-off back)
#   bookie_reply        bookie: first add of a response durable → the response handed to gRPC
# ``strata perf stages`` prints them all from the metrics endpoints.
WRITE_STAGE_SECONDS = Histogram(
    "strata_write_stage_seconds",
    "time one entry (or one journal batch) spends in a stage of the write path",
    ["stage"],
    buckets=STAGE_BUCKETS_SECONDS,
    registry=None,
)
STAGE_BOOKIE_ROUND_TRIP = WRITE_STAGE_SECONDS.labels(stage="bookie_round_trip")
STAGE_JOURNAL_WAIT = WRITE_STAGE_SECONDS.labels(stage="journal_wait")
STAGE_JOURNAL_WRITE = WRITE_STAGE_SECONDS.labels(stage="journal_write")
STAGE_JOURNAL_SYNC = WRITE_STAGE_SECONDS.labels(stage="journal_sync")
STAGE_BOOKIE_REPLY = WRITE_STAGE_SECONDS.labels(stage="bookie_reply")

# Garbage-collection pauses (issue 15 item 3): every collection, timed by ``gc.callbacks``.
GC_PAUSE_SECONDS = Histogram(
    "strata_gc_pause_seconds",
    "one garbage collection of the process (the event loop stands still meanwhile)",
    ["generation"],
    buckets=STAGE_BUCKETS_SECONDS,
    registry=None,
)
_GC_PAUSES = tuple(GC_PAUSE_SECONDS.labels(generation=str(g)) for g in range(3))
_gc_started = [0.0]


def _time_gc(phase: str, info: dict[str, int]) -> None:
    if phase == "start":
        _gc_started[0] = time.perf_counter()
    elif _gc_started[0]:
        _GC_PAUSES[min(info.get("generation", 2), 2)].observe(time.perf_counter() - _gc_started[0])
        _gc_started[0] = 0.0


def time_gc_pauses() -> None:
    """Observe every collection into ``strata_gc_pause_seconds`` (once per process)."""
    if _time_gc not in gc.callbacks:
        gc.callbacks.append(_time_gc)


def freeze_startup_heap() -> None:
    """``gc.freeze()``: what start-up allocated (modules, descriptors, configuration) moves
    to the permanent generation, so later full collections no longer walk it."""
    gc.collect()
    gc.freeze()


EVENT_LOOP_LAG_SECONDS = Histogram(
    "strata_event_loop_lag_seconds",
    "how late the event loop ran a timer (sleep overshoot of the lag monitor)",
    buckets=LATENCY_BUCKETS_SECONDS,
    registry=None,
)

# The etcd driver's requests (``strata.metadata.etcd``): Pulsar's metadata store op latency.
METADATA_STORE_OP_LATENCY_SECONDS = Histogram(
    "strata_metadata_store_op_latency_seconds",
    "one metadata-store request to etcd (retries included): reads and writes",
    ["operation"],
    buckets=LATENCY_BUCKETS_SECONDS,
    registry=None,
)
METADATA_STORE_READ_LATENCY_SECONDS = METADATA_STORE_OP_LATENCY_SECONDS.labels(operation="read")
METADATA_STORE_WRITE_LATENCY_SECONDS = METADATA_STORE_OP_LATENCY_SECONDS.labels(operation="write")
METADATA_STORE_SESSION_EXPIRATIONS = Counter(
    "strata_metadata_store_session_expirations",
    "metadata-store sessions ended because their lease expired or could not be refreshed",
    registry=None,
)

# How often the lag monitor wakes: often enough to see a 10 ms stall within a scrape
# interval, rare enough to cost nothing (10 wake-ups a second).
EVENT_LOOP_LAG_INTERVAL_SECONDS = 0.1


def process_registry(collectors: Iterable[Collector]) -> CollectorRegistry:
    """One role's registry: ``process_*``, ``python_*`` (as before), the event-loop lag
    histogram and the role's own ``collectors``. Built once per role at start-up."""
    # No ``*_created`` series (as Pulsar's and BookKeeper's exporters): they would double the
    # series count of every counter and histogram for a value no dashboard reads.
    disable_created_metrics()  # type: ignore[no-untyped-call]
    registry = CollectorRegistry()
    for collector in (
        PROCESS_COLLECTOR,
        PLATFORM_COLLECTOR,
        GC_COLLECTOR,
        EVENT_LOOP_LAG_SECONDS,
        WRITE_STAGE_SECONDS,
        GC_PAUSE_SECONDS,
        METADATA_STORE_OP_LATENCY_SECONDS,
        METADATA_STORE_SESSION_EXPIRATIONS,
        *collectors,
    ):
        registry.register(collector)
    return registry


def start_metrics_endpoint(
    host: str, port: int, registry: CollectorRegistry, console: WsgiApp | None = None
) -> HttpEndpoint | None:
    """Serve ``registry`` on ``host:port`` (0: a free port; < 0: not at all): on every path,
    or, with a ``console`` (a broker's operator console), on ``/metrics`` and the console on
    every other path."""
    if port < 0:
        return None
    metrics = make_wsgi_app(registry)
    if console is None:
        return serve_wsgi(host, port, metrics, "metrics-http")

    def route(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        app = metrics if environ.get("PATH_INFO") == "/metrics" else console
        return app(environ, start_response)

    return serve_wsgi(host, port, route, "metrics-http")


class EventLoopLagMonitor:
    """Observes how late the event loop wakes a sleeping task, into
    ``strata_event_loop_lag_seconds``: a blocked loop (a slow callback, a long scrape
    snapshot, a GC pause) shows as the overshoot of the next wake-up.

    Lifecycle: ``start()`` on the loop it watches; ``close()`` cancels and awaits the task.
    """

    def __init__(
        self,
        interval_seconds: float = EVENT_LOOP_LAG_INTERVAL_SECONDS,
        histogram: Histogram = EVENT_LOOP_LAG_SECONDS,
    ) -> None:
        self._interval_seconds = interval_seconds
        self._histogram = histogram
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        assert self._task is None, "started twice"
        self._task = asyncio.get_running_loop().create_task(self._run(), name="event-loop-lag")

    async def _run(self) -> None:
        interval = self._interval_seconds
        while True:
            started = time.monotonic()
            await asyncio.sleep(interval)
            self._histogram.observe(max(0.0, time.monotonic() - started - interval))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


class RoleMetrics:
    """A role's metrics, from start-up to exit: its registry (``process_registry``), its
    ``/metrics`` endpoint and its event-loop lag monitor. ``port`` is the bound port (-1:
    metrics off, and nothing runs). Lifecycle: ``start()`` on the role's loop, ``close()``
    stops the monitor and the HTTP server."""

    def __init__(
        self,
        host: str,
        port: int,
        collectors: Iterable[Collector],
        console: WsgiApp | None = None,
    ) -> None:
        self.registry = process_registry(collectors)
        self._host = host
        self._requested_port = port
        self._console = console
        self._endpoint: HttpEndpoint | None = None
        self._lag = EventLoopLagMonitor()

    @property
    def port(self) -> int:
        return self._endpoint.port if self._endpoint is not None else -1

    def start(self) -> RoleMetrics:
        self._endpoint = start_metrics_endpoint(
            self._host, self._requested_port, self.registry, self._console
        )
        if self._endpoint is not None:
            self._lag.start()
            time_gc_pauses()
        return self

    async def close(self) -> None:
        await self._lag.close()
        if self._endpoint is not None:
            # The HTTP thread may wait for a snapshot on this loop: shut it down off the loop.
            await asyncio.to_thread(self._endpoint.close)
            self._endpoint = None
