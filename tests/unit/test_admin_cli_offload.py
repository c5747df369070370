"""``strata admin`` offload verbs: sizes and durations as users type them, and the flags."""

from __future__ import annotations

import argparse
import json

import pytest

from strata import cli
from strata.admin_cli import _offload_status_json, parse_duration_ms, parse_size_bytes
from strata.v1 import admin_pb2


def parse(argv: list[str], environ: dict[str, str] | None = None) -> argparse.Namespace:
    return cli.build_parser(environ or {}).parse_args(argv)


def test_sizes_and_durations() -> None:
    assert parse_size_bytes("1048576") == 1048576
    assert parse_size_bytes("512K") == 512 * 1024
    assert parse_size_bytes("10M") == 10 * 1024**2
    assert parse_size_bytes("10mb") == 10 * 1024**2
    assert parse_size_bytes("1G") == 1024**3
    assert parse_size_bytes("-1") == -1
    assert parse_size_bytes("0") == 0
    for bad in ("", "M", "1.5G", "-2", "ten", "1X"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_size_bytes(bad)
    assert parse_duration_ms("250") == 250
    assert parse_duration_ms("250ms") == 250
    assert parse_duration_ms("30s") == 30_000
    assert parse_duration_ms("10m") == 600_000
    assert parse_duration_ms("4h") == 4 * 3_600_000
    assert parse_duration_ms("1d") == 86_400_000
    for bad in ("", "-1s", "1.5h", "h", "4 hours"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_duration_ms(bad)


def test_offload_verbs_parse() -> None:
    args = parse(["admin", "namespaces", "set-offload-threshold", "acme/orders", "--size", "10M"])
    assert args.size == 10 * 1024**2
    args = parse(["admin", "namespaces", "set-offload-deletion-lag", "acme/orders", "-l", "4h"])
    assert args.lag == 4 * 3_600_000
    args = parse(["admin", "topics", "offload", "t"])
    assert args.size_threshold is None
    args = parse(["admin", "topics", "offload", "t", "--size-threshold", "1G"])
    assert args.size_threshold == 1024**3
    args = parse(["admin", "topics", "offload-status", "t"])
    assert (args.wait, args.wait_timeout_seconds) == (False, 300.0)
    args = parse(
        ["admin", "topics", "offload-status", "t", "-w"], {"STRATA_WAIT_TIMEOUT_SECONDS": "5"}
    )
    assert (args.wait, args.wait_timeout_seconds) == (True, 5.0)
    with pytest.raises(SystemExit):
        parse(["admin", "namespaces", "set-offload-threshold", "acme/orders"])  # --size needed


def test_offload_status_prints_one_object_with_the_plain_status() -> None:
    for value, name in (
        (admin_pb2.OFFLOAD_RUN_STATUS_NOT_RUN, "NOT_RUN"),
        (admin_pb2.OFFLOAD_RUN_STATUS_RUNNING, "RUNNING"),
        (admin_pb2.OFFLOAD_RUN_STATUS_SUCCESS, "SUCCESS"),
        (admin_pb2.OFFLOAD_RUN_STATUS_ERROR, "ERROR"),
    ):
        document = json.loads(
            _offload_status_json(
                admin_pb2.OffloadStatus(name="persistent://a/b/c", status=value, error="boom")
            )
        )
        assert document["status"] == name
        assert document["error"] == "boom" and document["topic"] == "persistent://a/b/c"
        assert document["offloaded_ledgers"] == 0
