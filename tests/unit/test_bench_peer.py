"""``make bench``'s Redis peer: the RESP encoding its producer pipelines, and the ratio rows
(each deployment's end-to-end p99 over Redis's, per case measured with the peer)."""

from __future__ import annotations

from typing import Any

from tests.bench.redis_peer import command
from tests.bench.run_bench import REDIS, peer_ratios


def test_command_is_resp_bulk_strings() -> None:
    assert command(b"XADD", b"s", b"*", b"d", b"\x00\r\n") == (
        b"*5\r\n$4\r\nXADD\r\n$1\r\ns\r\n$1\r\n*\r\n$1\r\nd\r\n$3\r\n\x00\r\n\r\n"
    )


def _row(deployment: str, size: int, e2e_p99_ms: float, rate: Any = 5000) -> dict[str, Any]:
    return {
        "deployment": deployment,
        "size_bytes": size,
        "rate": rate,
        "after_burst": False,
        "e2e_p99_ms": e2e_p99_ms,
    }


def test_ratios_pair_each_deployment_with_the_peer_of_the_same_case() -> None:
    rows = [
        _row("standalone", 100, 3.0),
        _row("cluster", 100, 9.0),
        _row(REDIS, 100, 4.0),
        _row("standalone", 1024, 2.0),
        _row(REDIS, 1024, 2.5),
        _row("standalone", 100, 250.0, rate="max"),  # no peer run: no ratio
    ]
    ratios = {(r["comparison"], r["size_bytes"]): r["ratio"] for r in peer_ratios(rows)}
    assert ratios == {
        (f"standalone e2e p99 / {REDIS} e2e p99", 100): 0.75,
        (f"cluster e2e p99 / {REDIS} e2e p99", 100): 2.25,
        (f"standalone e2e p99 / {REDIS} e2e p99", 1024): 0.8,
    }
