"""``strata perf stages``: the write path's latency, stage by stage, from the metrics endpoints.

Every role observes ``strata_write_stage_seconds{stage}`` and the stages with histograms of
their own (``strata.metrics``: broker, ledger client, bookie, journal), the event-loop lag and
the GC pauses (as ``gc_pause_gen0..2``). This command scrapes the ``/metrics`` URLs given in
``--metrics-urls`` twice, ``--seconds`` apart (while a load runs, e.g. ``strata perf produce
--rate 5000``), and prints, per stage and per endpoint, the count and the p50/p99/p99.9 of
what was observed in between: quantiles read from the histogram buckets (linear within a
bucket, as Prometheus' ``histogram_quantile``), so exact to a bucket's width.

The last line on stdout is one JSON object: {"stages": [{"endpoint", "stage", "count",
"p50_ms", "p99_ms", "p999_ms"}...]}.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from strata.options import add_option

STAGE_FAMILY = "strata_write_stage_seconds"
LAG_FAMILY = "strata_event_loop_lag_seconds"
LAG_STAGE = "event_loop_lag"
GC_FAMILY = "strata_gc_pause_seconds"
# Stages measured by histograms of their own (``strata.metrics``, the stage list).
STAGE_HISTOGRAMS = {
    "strata_publish_latency_seconds": "broker_publish",
    "strata_storage_write_latency_seconds": "ledger_quorum",
    "strata_bookie_add_entry_latency_seconds": "bookie_add",
}
SCRAPE_TIMEOUT_S = 10.0
MAX_SECONDS = 3600.0
QUANTILES = (0.5, 0.99, 0.999)

# (stage) -> sorted [(upper bound, cumulative count)]
Buckets = dict[str, list[tuple[float, float]]]


@dataclass(frozen=True)
class StageQuantiles:
    endpoint: str
    stage: str
    count: int
    p50_ms: float
    p99_ms: float
    p999_ms: float


def parse_buckets(text: str) -> Buckets:
    """The stage histograms (and the loop lag) of one scrape, as cumulative buckets."""
    found: Buckets = {}
    for family in text_string_to_metric_families(text):
        if family.name not in (STAGE_FAMILY, LAG_FAMILY, GC_FAMILY, *STAGE_HISTOGRAMS):
            continue
        for sample in family.samples:
            if not sample.name.endswith("_bucket"):
                continue
            if family.name == GC_FAMILY:
                stage = f"gc_pause_gen{sample.labels['generation']}"
            elif family.name in STAGE_HISTOGRAMS:
                stage = STAGE_HISTOGRAMS[family.name]
            else:
                stage = sample.labels.get("stage", LAG_STAGE)
            bound = float(sample.labels["le"])
            found.setdefault(stage, []).append((bound, float(sample.value)))
    for buckets in found.values():
        buckets.sort()
    return found


def scrape(url: str) -> Buckets:
    with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT_S) as response:
        return parse_buckets(response.read().decode())


def delta(before: Buckets, after: Buckets) -> Buckets:
    """What was observed between two scrapes of one endpoint."""
    out: Buckets = {}
    for stage, buckets in after.items():
        earlier = dict(before.get(stage, []))
        out[stage] = [(bound, count - earlier.get(bound, 0.0)) for bound, count in buckets]
    return out


def quantile(buckets: Sequence[tuple[float, float]], q: float) -> float:
    """``histogram_quantile``: linear interpolation inside the bucket holding rank q·n; NaN
    without observations; the highest finite bound when the rank falls in +Inf."""
    if not buckets or buckets[-1][1] <= 0:
        return math.nan
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                count - lower_count
            )
        lower_bound, lower_count = bound, count
    return lower_bound


def summarize(
    endpoint: str, observed: Mapping[str, Sequence[tuple[float, float]]]
) -> list[StageQuantiles]:
    rows = []
    for stage, buckets in observed.items():
        count = int(buckets[-1][1]) if buckets else 0
        if count == 0:
            continue
        p50, p99, p999 = (quantile(buckets, q) * 1000 for q in QUANTILES)
        rows.append(StageQuantiles(endpoint, stage, count, p50, p99, p999))
    return rows


def stage_report(urls: Sequence[str], seconds: float) -> list[StageQuantiles]:
    """Scrape ``urls``, wait ``seconds``, scrape again: the quantiles of what happened."""
    before = {url: scrape(url) for url in urls}
    time.sleep(seconds)
    rows: list[StageQuantiles] = []
    for url in urls:
        rows += summarize(url, delta(before[url], scrape(url)))
    return rows


def format_table(rows: Sequence[StageQuantiles]) -> str:
    lines = [
        f"{'endpoint':<32} {'stage':<18} {'count':>9} {'p50 ms':>8} {'p99 ms':>8} {'p99.9':>8}"
    ]
    for row in rows:
        lines.append(
            f"{row.endpoint[-32:]:<32} {row.stage:<18} {row.count:>9} "
            f"{row.p50_ms:>8.3f} {row.p99_ms:>8.3f} {row.p999_ms:>8.3f}"
        )
    return "\n".join(lines)


def run_stages(args: argparse.Namespace) -> int:
    if not 0 < args.seconds <= MAX_SECONDS:
        print(f"error: --seconds must be in (0, {MAX_SECONDS:g}]", file=sys.stderr)
        return 2
    try:
        urls = [url for url in args.metrics_urls.split(",") if url]
        rows = stage_report(urls, args.seconds)
    except OSError as exc:
        print(f"error: scraping the metrics endpoints failed: {exc}", file=sys.stderr)
        return 1
    print(format_table(rows), file=sys.stderr)
    print(json.dumps({"stages": [row.__dict__ for row in rows]}), flush=True)
    return 0


def add_stages_parser(
    kinds: argparse._SubParsersAction[argparse.ArgumentParser],
    environ: Mapping[str, str] | None,
) -> None:
    stages = kinds.add_parser(
        "stages",
        help="the write path's latency per stage, from the metrics endpoints",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_option(
        stages,
        "--metrics-urls",
        required=True,
        help="comma-separated metrics URLs of the brokers and bookies, e.g. "
        "http://127.0.0.1:8080/metrics,http://127.0.0.1:8000/metrics",
        environ=environ,
    )
    add_option(
        stages,
        "--seconds",
        type=float,
        default=10.0,
        help="how long to observe",
        environ=environ,
    )
    stages.set_defaults(handler=run_stages)
