"""``strata perf stages`` arithmetic: buckets from the exposition format, the delta between
two scrapes, and quantiles as Prometheus' ``histogram_quantile`` reads them."""

from __future__ import annotations

import gc
import math

from strata import stage_report
from strata.metrics import GC_PAUSE_SECONDS, time_gc_pauses

EXPOSITION = """\
# HELP strata_write_stage_seconds time one entry spends in a stage of the write path
# TYPE strata_write_stage_seconds histogram
strata_write_stage_seconds_bucket{le="0.001",stage="journal_sync"} {a}
strata_write_stage_seconds_bucket{le="0.002",stage="journal_sync"} {b}
strata_write_stage_seconds_bucket{le="+Inf",stage="journal_sync"} {c}
strata_write_stage_seconds_count{stage="journal_sync"} {c}
strata_write_stage_seconds_sum{stage="journal_sync"} 1.0
# HELP strata_event_loop_lag_seconds lag
# TYPE strata_event_loop_lag_seconds histogram
strata_event_loop_lag_seconds_bucket{le="0.001"} 5.0
strata_event_loop_lag_seconds_bucket{le="+Inf"} 5.0
strata_event_loop_lag_seconds_count 5.0
strata_event_loop_lag_seconds_sum 0.001
# HELP other_seconds not ours
# TYPE other_seconds histogram
other_seconds_bucket{le="+Inf"} 1.0
"""


def exposition(a: int, b: int, c: int) -> str:
    return EXPOSITION.replace("{a}", str(a)).replace("{b}", str(b)).replace("{c}", str(c))


def test_buckets_are_read_per_stage_and_the_loop_lag() -> None:
    found = stage_report.parse_buckets(exposition(10, 20, 30))
    assert found["journal_sync"] == [(0.001, 10.0), (0.002, 20.0), (math.inf, 30.0)]
    assert found["event_loop_lag"] == [(0.001, 5.0), (math.inf, 5.0)]
    assert set(found) == {"journal_sync", "event_loop_lag"}


def test_the_delta_keeps_what_happened_between_two_scrapes() -> None:
    before = stage_report.parse_buckets(exposition(10, 20, 30))
    after = stage_report.parse_buckets(exposition(110, 120, 130))
    observed = stage_report.delta(before, after)
    assert observed["journal_sync"] == [(0.001, 100.0), (0.002, 100.0), (math.inf, 100.0)]
    assert observed["event_loop_lag"] == [(0.001, 0.0), (math.inf, 0.0)]
    rows = stage_report.summarize("x", observed)
    assert [(r.stage, r.count) for r in rows] == [("journal_sync", 100)]  # no lag observed


def test_quantiles_interpolate_within_a_bucket() -> None:
    buckets = [(0.001, 50.0), (0.002, 100.0), (math.inf, 100.0)]
    assert stage_report.quantile(buckets, 0.5) == 0.001
    assert math.isclose(stage_report.quantile(buckets, 0.75), 0.0015)
    assert math.isclose(stage_report.quantile(buckets, 0.25), 0.0005)
    # Ranks in +Inf report the highest finite bound; no observations: NaN.
    assert stage_report.quantile([(0.001, 1.0), (math.inf, 2.0)], 0.99) == 0.001
    assert math.isnan(stage_report.quantile([(0.001, 0.0), (math.inf, 0.0)], 0.5))


def test_gc_pauses_are_observed_per_generation() -> None:
    def sample(suffix: str, generation: int) -> float:
        for metric in GC_PAUSE_SECONDS.collect():
            for found in metric.samples:
                if found.name.endswith(suffix) and found.labels == {"generation": str(generation)}:
                    return float(found.value)
        return 0.0

    time_gc_pauses()
    time_gc_pauses()  # idempotent: one callback
    count, total = sample("_count", 2), sample("_sum", 2)
    gc.collect()
    assert sample("_count", 2) == count + 1
    assert sample("_sum", 2) > total
