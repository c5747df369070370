"""The container image, checked offline (no image can be built here): ``hadolint`` passes, the
Dockerfile has the shape the manifests rely on (multi-stage, pinned base, every .proto compiled
in the builder, a non-root numeric user, ``strata`` as entry point), and ``.dockerignore``
lets in exactly what the build copies.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from tests.k8s.kubectl_tool import REPOSITORY
from tests.k8s.manifests import OVERLAYS, pod_spec, render, strata_containers

DOCKERFILE = REPOSITORY / "Dockerfile"
HADOLINT = Path(sys.executable).parent / "hadolint"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (parts[0].upper(), parts[1] if len(parts) > 1 else "")
        for line in lines
        if line and not line.startswith("#")
        for parts in [line.split(None, 1)]
    ]


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (op, _) in enumerate(steps) if op == "FROM")
    return steps[last_from:]


def test_hadolint_passes() -> None:
    result = subprocess.run(
        [str(HADOLINT), "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_multi_stage_on_a_base_pinned_by_tag() -> None:
    steps = instructions()
    (base,) = [args.split("=", 1)[1] for op, args in steps if op == "ARG" and "IMAGE=" in args]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", base), base
    stages = [args for op, args in steps if op == "FROM"]
    assert stages == ["${PYTHON_IMAGE} AS builder", "${PYTHON_IMAGE} AS runtime"]


def test_builder_compiles_every_strata_proto() -> None:
    """Strata's own; proto/google holds googleapis' files shipped for clients."""
    builder = " ".join(
        args for op, args in instructions()[: len(instructions()) - len(final_stage())]
    )
    assert "grpc_tools.protoc" in builder
    compiled = set(re.findall(r"proto/\S+\.proto", builder))
    on_disk = {
        str(path.relative_to(REPOSITORY))
        for path in (REPOSITORY / "proto" / "strata").rglob("*.proto")
    }
    assert compiled == on_disk


def test_runtime_runs_strata_as_the_manifests_user() -> None:
    runtime = final_stage()
    (user,) = [args for op, args in runtime if op == "USER"]
    uid = int(user.split(":")[0])
    assert uid != 0
    (entrypoint,) = [args for op, args in runtime if op == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["strata"]
    assert not any(op == "RUN" and "pip install" in args for op, args in runtime)
    for overlay in OVERLAYS:
        for workload, _container in strata_containers(render(overlay)):
            assert pod_spec(workload)["securityContext"]["runAsUser"] == uid


def test_dockerignore_lets_in_what_the_build_copies() -> None:
    allowed = {
        line[1:].rstrip("/")
        for line in (REPOSITORY / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    copied = {
        source.rstrip("/")
        for op, args in instructions()
        if op == "COPY" and not args.startswith("--from")
        for source in args.split()[:-1]
    }
    assert copied == allowed
    packages = re.search(r"include = \[([^]]*)\]", (REPOSITORY / "pyproject.toml").read_text())
    assert packages is not None
    for package in re.findall(r'"(\w+)\*"', packages.group(1)):
        assert package in copied, f"the image leaves out package {package}"
