"""buf on proto/ (issue 14 item 2): ``buf lint`` is clean with the exceptions buf.yaml writes
down, and ``buf breaking`` against proto/released.binpb fails on a removed field — shown
here on a planted change to a copy of proto/ (``make lint`` runs both on the real one)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUF = ROOT / "tools" / "buf" / "node_modules" / ".bin" / "buf"
BUF_TIMEOUT_S = 120


def buf(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    if not BUF.exists():
        pytest.fail(f"{BUF} is missing: `make test` and `make lint` install it (npm ci)")
    return subprocess.run(
        [str(BUF), *args], cwd=cwd, capture_output=True, text=True, timeout=BUF_TIMEOUT_S
    )


def test_buf_lint_is_clean() -> None:
    done = buf("lint", cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_api_has_no_breaking_change_since_the_released_image() -> None:
    done = buf("breaking", "--against", "proto/released.binpb", cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_removed_field_is_a_breaking_change(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "proto", tmp_path / "proto")
    shutil.copy(ROOT / "buf.yaml", tmp_path / "buf.yaml")
    messaging = tmp_path / "proto" / "strata" / "v1" / "messaging.proto"
    text = messaging.read_text()
    planted = "  string sticky_key = 8;\n"
    assert planted in text
    messaging.write_text(text.replace(planted, "", 1))
    done = buf("breaking", "--against", "proto/released.binpb", cwd=tmp_path)
    assert done.returncode != 0
    assert 'Previously present field "8" with name "sticky_key"' in done.stdout, done.stdout
