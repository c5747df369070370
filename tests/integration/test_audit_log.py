"""The audit log (issue 11 item 7): a JSON line per admin mutation with role, operation,
target and outcome; reads are not audited."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from strata.auth.tokens import create_token
from tests.harness import Standalone
from tests.integration.test_standalone_cli import cli

pytestmark = pytest.mark.integration


def audit_lines(server: Standalone) -> list[dict[str, str]]:
    lines = []
    for line in server.log_text().splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("logger") == "strata.audit":
                lines.append(record)
    return lines


def test_each_admin_mutation_is_one_audit_line(tmp_path: Path) -> None:
    server = Standalone(tmp_path / "data", "--log-format", "json").start()
    try:
        assert cli(server, "admin", "tenants", "create", "acme").returncode == 0
        assert cli(server, "admin", "tenants", "create", "acme").returncode == 1  # exists
        assert cli(server, "admin", "tenants", "list").returncode == 0  # a read
        assert cli(server, "admin", "namespaces", "create", "acme/orders").returncode == 0
        records = audit_lines(server)
        assert [(r["role"], r["operation"], r["target"], r["outcome"]) for r in records] == [
            ("anonymous", "CreateTenant", "tenants/acme", "OK"),
            ("anonymous", "CreateTenant", "tenants/acme", "ALREADY_EXISTS"),
            ("anonymous", "CreateNamespace", "tenants/acme/namespaces/orders", "OK"),
        ]
    finally:
        server.stop()


def test_the_audit_line_names_the_authenticated_role(tmp_path: Path) -> None:
    secret = tmp_path / "secret.key"
    secret.write_bytes(os.urandom(32))
    token = create_token(secret.read_bytes(), "HS256", "ops-team")
    server = Standalone(
        tmp_path / "data",
        "--log-format",
        "json",
        "--authentication-enabled",
        "true",
        "--auth-token-secret-key",
        f"file:{secret}",
    ).start()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "strata", "admin", "tenants", "create", "audited"],
            capture_output=True,
            text=True,
            timeout=60,
            env={
                **os.environ,
                "STRATA_SERVICE_URL": server.address,
                "STRATA_AUTH_TOKEN": token,
            },
        )
        assert done.returncode == 0, done.stderr
        (record,) = audit_lines(server)
        assert (record["role"], record["operation"], record["outcome"]) == (
            "ops-team",
            "CreateTenant",
            "OK",
        )
        assert token not in server.log_text()
    finally:
        server.stop()
