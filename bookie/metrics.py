"""The bookie's and the ledger client's Prometheus metrics (BookKeeper's
``BookKeeperServerStats`` concepts, named ``strata_bookie_*`` and ``strata_ml_*``).

* Bookie storage, observed per request or per fdatasync, never per message:
  ``strata_bookie_journal_sync_latency_seconds`` (one group-commit fdatasync, timed in the
  sync thread), ``strata_bookie_add_entry_latency_seconds`` (add admitted → durable and
  indexed) and ``strata_bookie_read_entry_latency_seconds`` (one read request).
  ``BookieCollector`` reads the rest at scrape time from a ``Bookie``: writable or not
  (``strata_bookie_server_status``, BookKeeper's ``SERVER_STATUS``), journal queue size,
  ledgers, bytes on disk, corrupt records detected, journal fdatasyncs.
* The ledger client (``bookie.ledger.writer``), in every process that writes ledgers (the
  broker, and a bookie's autorecovery worker): ``strata_storage_write_latency_seconds`` (an
  add → confirmed by Qa bookies, Pulsar's ``pulsar_storage_write_latency``),
  ``strata_ml_adds_total``, ``strata_ml_add_failures_total`` and
  ``strata_ml_ensemble_changes_total``.

Nothing here is registered at import (``registry=None``): a role registers what it serves in
its own registry (``strata.metrics``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from strata.metrics import LATENCY_BUCKETS_SECONDS, STAGE_BUCKETS_SECONDS

if TYPE_CHECKING:
    from bookie.autorecovery import Autorecovery
    from bookie.storage import Bookie

log = logging.getLogger(__name__)

JOURNAL_SYNC_LATENCY_SECONDS = Histogram(
    "strata_bookie_journal_sync_latency_seconds",
    "duration of one journal group-commit fdatasync",
    buckets=LATENCY_BUCKETS_SECONDS,
    registry=None,
)
ADD_ENTRY_LATENCY_SECONDS = Histogram(
    "strata_bookie_add_entry_latency_seconds",
    "add admitted by the bookie → durable in the journal and indexed",
    buckets=STAGE_BUCKETS_SECONDS,
    registry=None,
)
READ_ENTRY_LATENCY_SECONDS = Histogram(
    "strata_bookie_read_entry_latency_seconds",
    "duration of one read request (a range of entries) on the bookie",
    buckets=LATENCY_BUCKETS_SECONDS,
    registry=None,
)

STORAGE_WRITE_LATENCY_SECONDS = Histogram(
    "strata_storage_write_latency_seconds",
    "ledger add → confirmed by its ack quorum of bookies (the broker's write to storage)",
    buckets=STAGE_BUCKETS_SECONDS,
    registry=None,
)
ML_ADDS = Counter("strata_ml_adds", "ledger entries confirmed by their ack quorum", registry=None)
ML_ADD_FAILURES = Counter(
    "strata_ml_add_failures", "ledger adds failed (the handle failed or closed)", registry=None
)
ML_ENSEMBLE_CHANGES = Counter(
    "strata_ml_ensemble_changes",
    "ensemble changes recorded by ledger writers (a bookie replaced in an open ledger)",
    registry=None,
)

LEDGER_CLIENT_METRICS: tuple[Collector, ...] = (
    STORAGE_WRITE_LATENCY_SECONDS,
    ML_ADDS,
    ML_ADD_FAILURES,
    ML_ENSEMBLE_CHANGES,
)


class BookieCollector(Collector):
    """The gauges and counters of one ``Bookie``, read at scrape time in the scraping thread.

    Only atomic reads of ints and lengths (and a scan of the data directory), so it needs no
    trip to the bookie's event loop.
    """

    def __init__(self, bookie: Bookie) -> None:
        self._bookie = bookie

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        bookie = self._bookie
        # BookKeeper's bookie_SERVER_STATUS: 1 writable, 0 not (closing, or its journal failed
        # for good, when it also reports NOT_SERVING).
        yield _gauge(
            "strata_bookie_server_status",
            "1 while the bookie takes adds, 0 once it is closing or its journal failed",
            int(bookie.is_writable),
        )
        yield _gauge(
            "strata_bookie_journal_queue_size",
            "journal records queued or written and not yet durable",
            bookie.journal_queue_size,
        )
        yield _gauge("strata_bookie_ledgers_count", "ledgers in the index", bookie.ledgers_count)
        try:
            size = bookie.bytes_on_disk()
        except OSError as exc:  # a segment removed during the scan: skip this scrape's value
            log.debug("bookie storage size not read: %s", exc)
        else:
            yield _gauge("strata_bookie_storage_size_bytes", "journal and index bytes", size)
        stats = bookie.stats
        corrupt = CounterMetricFamily(
            "strata_bookie_corrupt_entries",
            "records that failed their checksum or identity checks (reads, compaction, replay)",
        )
        corrupt.add_metric([], stats.corrupt_reads + stats.corrupt_records_at_open)
        yield corrupt
        fsyncs = CounterMetricFamily("strata_bookie_journal_syncs", "journal fdatasyncs")
        fsyncs.add_metric([], bookie.journal_fsyncs)
        yield fsyncs


class AutorecoveryCollector(Collector):
    """The autorecovery auditor candidate and worker of a bookie process, read in the
    scraping thread (ints and a flag)."""

    def __init__(self, recovery: Autorecovery) -> None:
        self._recovery = recovery

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        recovery = self._recovery
        yield _gauge(
            "strata_autorecovery_is_auditor",
            "1 while this process is the auditor",
            recovery.is_auditor,
        )
        yield _gauge(
            "strata_autorecovery_under_replicated_ledgers",
            "ledgers marked under-replicated by this process's last audit (the auditor's)",
            recovery.under_replicated_ledgers,
        )
        for name, documentation, value in (
            ("strata_autorecovery_audits", "audits run", recovery.audits_run),
            (
                "strata_autorecovery_fragments_replicated",
                "ledger fragments copied to a replacement bookie",
                recovery.fragments_replicated,
            ),
        ):
            counter = CounterMetricFamily(name, documentation)
            counter.add_metric([], value)
            yield counter


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def bookie_collectors(bookie: Bookie) -> list[Collector]:
    """What a role holding ``bookie`` serves about it (the ledger client's families are
    ``LEDGER_CLIENT_METRICS``)."""
    return [
        BookieCollector(bookie),
        JOURNAL_SYNC_LATENCY_SECONDS,
        ADD_ENTRY_LATENCY_SECONDS,
        READ_ENTRY_LATENCY_SECONDS,
    ]
