"""Config of real server processes: strict options, variables, ``brokers get-runtime-config``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.cluster import Cluster
from tests.harness import Standalone

pytestmark = pytest.mark.integration

TIMEOUT_S = 120


def strata(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "strata", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        env={**os.environ, **(env or {})},
    )


def runtime_config(address: str) -> dict[str, Any]:
    shown = strata("admin", "brokers", "get-runtime-config", "--service-url", address)
    assert shown.returncode == 0, shown.stderr
    config: dict[str, Any] = json.loads(shown.stdout)
    return config


def test_a_boolean_typo_is_refused_naming_the_option(tmp_path: Path) -> None:
    refused = strata("standalone", "--data-dir", str(tmp_path), "--journal-fsync", "flase")
    assert refused.returncode == 2
    assert "argument --journal-fsync: invalid boolean value 'flase'" in refused.stderr
    assert not (tmp_path / "bookie").exists()  # refused before anything started
    from_env = strata(
        "standalone", "--data-dir", str(tmp_path), env={"STRATA_JOURNAL_FSYNC": "0ff"}
    )
    assert from_env.returncode == 2
    assert "--journal-fsync" in from_env.stderr and "STRATA_JOURNAL_FSYNC" in from_env.stderr
    bookie = strata(
        "bookie",
        "--metadata-url",
        "etcd://127.0.0.1:1",
        "--data-dir",
        str(tmp_path),
        "--journal-fsync",
        "flase",
    )
    assert bookie.returncode == 2
    assert "argument --journal-fsync" in bookie.stderr


def test_standalone_without_fsync_from_the_environment(tmp_path: Path) -> None:
    env = {"STRATA_JOURNAL_FSYNC": "false", "STRATA_OFFLOAD_SECRET_ACCESS_KEY": "hush-hush"}
    server = Standalone(tmp_path / "data", env=env).start()
    try:
        produced = strata("produce", "t", "-m", "x", "-n", "3", "--service-url", server.address)
        assert produced.returncode == 0, produced.stderr
        config = runtime_config(server.address)
        assert config["journal_fsync"] is False
        assert config["offload_secret_access_key"] == "********"
        assert config["managed_ledger_default_ensemble_size"] == 1
        assert config["ledger_client"]["add_entry_timeout_ms"] == 3_000
        assert "hush-hush" not in json.dumps(config)
    finally:
        server.stop()


def test_cluster_broker_answers_get_runtime_config(tmp_path: Path) -> None:
    with Cluster(
        tmp_path,
        bookies=1,
        brokers=1,
        bookie_args=["--journal-fsync", "false", "--autorecovery", "false"],
        broker_args=[
            "--managed-ledger-default-ensemble-size",
            "1",
            "--managed-ledger-default-write-quorum",
            "1",
            "--managed-ledger-default-ack-quorum",
            "1",
        ],
        env={"STRATA_LEDGER_CLIENT_ADD_ENTRY_TIMEOUT_MS": "4000"},
    ) as cluster:
        config = runtime_config(cluster.broker_address())
        assert config["metadata_url"] == cluster.metadata_url
        assert config["managed_ledger_default_ack_quorum"] == 1
        assert config["ledger_client"]["add_entry_timeout_ms"] == 4_000
