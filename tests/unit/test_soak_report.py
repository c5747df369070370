"""The soak's verdict (``tests/bench/run_soak.summarize``), from made-up recordings: each
target is checked where the issue puts it."""

from __future__ import annotations

import argparse
import time

from tests.bench.run_soak import (
    WINDOW_SECONDS,
    Recorder,
    compare_deliveries,
    new_histogram,
    summarize,
)

MS = 1000  # the histograms hold microseconds


def recording(kill_minute_ms: float, slow_windows: int) -> Recorder:
    recorder = Recorder(time.monotonic(), 3000)
    for minute, value_ms in enumerate((5, kill_minute_ms, 6)):
        histogram = recorder.minutes.setdefault(minute, new_histogram())
        for _ in range(1000):
            histogram.record_value(int(value_ms * MS))
    for window in range(18):  # 3 minutes of 10-second windows; the kill at 60 s
        slow = 6 <= window < 6 + slow_windows
        histogram = recorder.windows.setdefault(window, new_histogram())
        for _ in range(100):
            histogram.record_value(int((400 if slow else 5) * MS))
    recorder.receipted[:] = b"\x01" * 3000
    return recorder


def verdict(recorder: Recorder, lost: list[int], rss_end: float = 101) -> dict[str, bool]:
    args = argparse.Namespace(
        minutes=3, rate=1, size=8, kill_at_minute=1, restart_at_minute=2, bookie_index=0
    )
    faults = [{"verb": "kill", "second": 60.0}, {"verb": "restart", "second": 120.0}]
    # Peaks per minute; the first minute against the last (a 3-minute run).
    rss: dict[int, dict[str, float | None]] = {
        0: {"broker0": 100.0, "bookie0": 50.0},
        1: {"broker0": 300.0},  # a swing inside the run does not count
        2: {"broker0": rss_end, "bookie0": 200.0},  # the restarted bookie is not compared
    }
    result = summarize(args, recorder, rss, faults, lost, 0, 3000, 0.0)
    checks: dict[str, bool] = result["checks"]
    return checks


def test_a_good_run_passes_every_check() -> None:
    checks = verdict(recording(kill_minute_ms=400, slow_windows=2), [])
    assert all(checks.values()), checks


def test_each_target_fails_on_its_own() -> None:
    slow_fault = verdict(recording(kill_minute_ms=1500, slow_windows=2), [])
    assert not slow_fault["p99 <= 1 s in the minute of the kill"]
    slow_recovery = verdict(
        recording(kill_minute_ms=400, slow_windows=30 // WINDOW_SECONDS + 1), []
    )
    assert not slow_recovery["back under 50 ms within 30 s of the kill"]
    lost = verdict(recording(kill_minute_ms=400, slow_windows=2), [17])
    assert not lost["zero lost messages"]
    grown = verdict(recording(kill_minute_ms=400, slow_windows=2), [], rss_end=111)
    assert not grown["RSS growth < 10 % from minute 1 to the end"]
    assert sum(not ok for ok in grown.values()) == 1


def test_deliveries_are_compared_index_by_index() -> None:
    receipted = bytes([1, 1, 0, 1, 1])  # index 2 never receipted (its send failed)
    seen = bytes([1, 0, 0, 3, 1])  # index 1 lost, index 3 delivered three times
    assert compare_deliveries(receipted, seen) == ([1], 2)
    assert compare_deliveries(receipted, bytes([1, 1, 1, 1, 1])) == ([], 0)
