"""`strata initialize-cluster` against a real etcd: idempotent, and refuses bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from strata.metadata import open_metadata_store

pytestmark = pytest.mark.integration

TIMEOUT_S = 60


def initialize(url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "strata", "initialize-cluster", "--metadata-url", url],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )


async def test_initialize_cluster_creates_public_default_once(etcd_url: str) -> None:
    first = initialize(etcd_url)
    assert first.returncode == 0, first.stderr
    second = initialize(etcd_url)
    assert second.returncode == 0, second.stderr
    async with await open_metadata_store(etcd_url) as store:
        tenant = await store.get("/admin/tenants/public")
        namespace = await store.get("/admin/namespaces/public/default")
        assert tenant is not None and namespace is not None
        assert tenant.version == 1 and namespace.version == 1  # the second run wrote nothing
        assert json.loads(namespace.value) == {}


def test_initialize_cluster_refuses_a_bad_url() -> None:
    result = initialize("etcd://no-port")
    assert result.returncode != 0
    assert "metadata store URL" in result.stderr
