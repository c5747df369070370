"""The ``strata`` command's gRPC defaults (``strata.grpc_defaults``): set before grpc is
imported, never over an operator's own, and known to the installed grpcio."""

from __future__ import annotations

import os
import subprocess
import sys

from strata.grpc_defaults import DEFAULT_EXPERIMENTS, GRPC_EXPERIMENTS_ENV, set_default_experiments

PROBE = (
    f"import os, strata.__main__, grpc; print(os.environ.get({GRPC_EXPERIMENTS_ENV!r}, '<unset>'))"
)


def _run_probe(**env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != GRPC_EXPERIMENTS_ENV}
    environ.update(env)
    return subprocess.run(
        [sys.executable, "-c", PROBE], env=environ, capture_output=True, text=True, timeout=60
    )


def test_the_strata_command_sets_them_before_grpc_and_grpcio_knows_them() -> None:
    probe = _run_probe()
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == DEFAULT_EXPERIMENTS
    # grpc core names an experiment it does not know ("Unknown experiment: ...") on stderr:
    # a grpcio upgrade that dropped one must revisit strata.grpc_defaults.
    assert "experiment" not in probe.stderr.lower(), probe.stderr


def test_an_operators_setting_wins_even_empty() -> None:
    assert _run_probe(GRPC_EXPERIMENTS="").stdout.strip() == ""
    environ = {GRPC_EXPERIMENTS_ENV: "-event_engine_client"}
    assert not set_default_experiments(environ)
    assert environ[GRPC_EXPERIMENTS_ENV] == "-event_engine_client"


def test_too_late_once_grpc_is_imported() -> None:
    import grpc  # noqa: F401  (already imported by the test session; made explicit)

    environ: dict[str, str] = {}
    assert not set_default_experiments(environ)
    assert environ == {}
