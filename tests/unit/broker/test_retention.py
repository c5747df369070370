"""Retention (issue 13 item 2): which consumed ledgers the policy lets go, Pulsar's rules."""

from __future__ import annotations

import argparse

import pytest

from broker.managed_ledger import LedgerInfo, Retention
from broker.managed_ledger.trim import MIB, retained_from
from strata.admin_policies_cli import parse_duration_s, parse_size_mb

NOW_MS = 10_000_000_000


def ledgers(*ages_minutes_and_mib: tuple[int, int]) -> list[LedgerInfo]:
    """Ledgers oldest first, each closed ``age`` minutes ago and ``mib`` big; plus the open
    one (empty)."""
    found = [
        LedgerInfo(i + 1, entries=10, size_bytes=mib * MIB, timestamp_ms=NOW_MS - age * 60_000)
        for i, (age, mib) in enumerate(ages_minutes_and_mib)
    ]
    return [*found, LedgerInfo(len(found) + 1)]


@pytest.mark.parametrize(
    ("retention", "expected"),
    [
        (Retention(0, 0), 3),  # the default: every consumed ledger goes
        (Retention(-1, -1), 0),  # infinite
        (Retention(45, -1), 2),  # by time: the 60- and 50-minute-old ones
        (Retention(-1, 15), 2),  # by size: 30 MiB, keep 15: drop the oldest two (10 + 10)
        (Retention(-1, 20), 1),  # 30 MiB without the oldest is 20: not over 20, so stop
        (Retention(120, 25), 1),  # either limit trims: the size one here
        (Retention(55, 100), 1),  # ... and the time one here
    ],
)
def test_retained_from(retention: Retention, expected: int) -> None:
    infos = ledgers((60, 10), (50, 10), (40, 10))
    assert retained_from(infos, 3, retention, NOW_MS) == expected


def test_only_consumed_ledgers_are_candidates() -> None:
    infos = ledgers((60, 10), (50, 10), (40, 10))
    assert retained_from(infos, 1, Retention(0, 0), NOW_MS) == 1


def test_a_ledger_without_a_close_time_is_kept_by_time() -> None:
    infos = ledgers((60, 10))
    infos[0].timestamp_ms = 0
    assert retained_from(infos, 1, Retention(10, -1), NOW_MS) == 0


@pytest.mark.parametrize(
    ("text", "plain", "seconds"),
    [("90s", 1, 90), ("10m", 1, 600), ("1h", 1, 3600), ("7d", 60, 604_800), ("2w", 1, 1_209_600),
     ("30", 60, 1800), ("45", 1, 45), ("-1", 60, -1)],
)  # fmt: skip
def test_durations(text: str, plain: int, seconds: int) -> None:
    assert parse_duration_s(text, plain) == seconds


@pytest.mark.parametrize(
    ("text", "mib"),
    [("10G", 10240), ("500M", 500), ("1T", 1048576), ("4096K", 4), ("12", 12), ("-1", -1),
     ("0", 0)],
)  # fmt: skip
def test_sizes(text: str, mib: int) -> None:
    assert parse_size_mb(text) == mib


@pytest.mark.parametrize("text", ["", "1x", "h", "1.5h", "-2", "ten"])
def test_bad_durations_and_sizes_are_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_duration_s(text, 1)
    with pytest.raises(argparse.ArgumentTypeError):
        parse_size_mb(text)
