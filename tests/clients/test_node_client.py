"""The Node.js client's own suite (``clients/node``: ``npm test``) as part of ``make test``.

``npm ci`` installs the exact versions of ``clients/node/package-lock.json`` when
``node_modules`` is missing or older than the lock file; ``npm test`` then starts the servers
it needs from this repository's venv (a standalone, a two-broker cluster) and runs
``node --test``. Both are bounded; on a timeout the whole process group this test started is
killed by its id. A missing ``npm`` fails the test (nothing is skipped silently).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.clients.processes import run_bounded

pytestmark = pytest.mark.integration

NODE_CLIENT_DIR = Path(__file__).resolve().parents[2] / "clients" / "node"
NPM_CI_TIMEOUT_S = 300
NPM_TEST_TIMEOUT_S = 240


def needs_install() -> bool:
    installed = NODE_CLIENT_DIR / "node_modules" / ".package-lock.json"
    lock = NODE_CLIENT_DIR / "package-lock.json"
    return not installed.exists() or installed.stat().st_mtime < lock.stat().st_mtime


def test_node_client_suite_passes() -> None:
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail("npm is not installed: the Node.js client (clients/node) needs node >= 20")
    if needs_install():
        installed = run_bounded(
            [npm, "ci", "--no-audit", "--no-fund"],
            NPM_CI_TIMEOUT_S,
            cwd=NODE_CLIENT_DIR,
            merge_stderr=True,
        )
        assert installed.returncode == 0, f"npm ci failed:\n{installed.stdout[-20_000:]}"
    result = run_bounded([npm, "test"], NPM_TEST_TIMEOUT_S, cwd=NODE_CLIENT_DIR, merge_stderr=True)
    assert result.returncode == 0, f"npm test failed:\n{result.stdout[-20_000:]}"
    assert "# fail 0" in result.stdout, result.stdout[-20_000:]
