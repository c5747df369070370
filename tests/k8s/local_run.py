"""A rendered overlay run as local processes: what the manifests say is what the code runs.

``LocalDeployment`` takes the rendered documents and starts, for every replica of every
workload that runs the Strata image, the container's command (the image's ``ENTRYPOINT``,
``strata``, as this virtualenv installs it), its arguments and its environment, computed as
Kubernetes would (``envFrom`` ConfigMaps and Secrets, ``env`` with ``$(VAR)`` references and
downward-API fields). Nothing of the manifests is edited; what a cluster provides is stood in
for, and only that:

* **Pod network.** Each pod gets its own loopback address (``127.86.S.N``), so every process
  keeps the ports its manifest names: a pod listening on ``0.0.0.0`` listens on its address.
* **DNS.** A pod's stable name (``strata-bookie-0.strata-bookie.strata.svc.cluster.local`` and
  its shorter forms) and a Service's name are replaced, wherever they appear in a value, by
  the pod's address (a Service's: its first pod's).
* **Volumes.** A mount path that appears in a value becomes a directory of the pod's own.
* **Stand-ins.** A workload given as a stand-in (etcd: one ``tests/etcd_server.py`` member) is
  not started; its pods' names and its declared client port map to the stand-in's endpoint.
* **The cloud's identity.** ``extra_env`` (e.g. moto's ``AWS_*`` variables) is what a pod's
  cloud identity would give; no ``STRATA_*`` variable may be in it.

Every pod starts at once, as when an overlay is applied; a Job is waited for until it exits 0,
every other replica through its own readiness probe (grpc.health.v1 on the probe's port),
never a fixed sleep. Every process is ended by the PID started here.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Self

from tests.harness import READY_TIMEOUT_SECONDS, STOP_TIMEOUT_SECONDS, wait_serving
from tests.k8s.manifests import (
    WORKLOAD_KINDS,
    Doc,
    arguments,
    environment,
    is_strata,
    of_kind,
    pod_labels,
    pod_spec,
    selects,
)

# Pods get 127.86.S.N: S random per deployment (two runs at once do not collide), N per pod.
POD_NETWORK = "127.86."
CLUSTER_DOMAIN = "svc.cluster.local"
JOB_TIMEOUT_SECONDS = 60.0
# What the image's ENTRYPOINT ["strata"] is in this virtualenv.
STRATA_COMMAND = str(Path(sys.executable).parent / "strata")
# The image's own ENV (Dockerfile): part of every Strata container's environment.
IMAGE_ENV = {"PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"}
_HOST = re.compile(r"(?<![\w.-])([A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)(?::(\d+))?(?![\w.-])")


@dataclass(frozen=True)
class StandIn:
    """A workload not started here: its pods' names and ``port`` lead to ``endpoint``."""

    endpoint: str  # host:port
    port: int


@dataclass
class Pod:
    name: str
    workload: Doc
    container: Doc
    address: str
    directory: Path
    command: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    log: IO[bytes] | None = None

    @property
    def kind(self) -> str:
        return str(self.workload["kind"])

    def port(self, name: str) -> int:
        """The container port called ``name`` (``grpc``, ``metrics``)."""
        (number,) = [p["containerPort"] for p in self.container["ports"] if p["name"] == name]
        return int(number)

    def log_text(self) -> str:
        path = self.directory / "log"
        return path.read_text(errors="replace") if path.exists() else ""


def _replica_names(workload: Doc) -> list[str]:
    name = workload["metadata"]["name"]
    if workload["kind"] == "Job":
        return [name]
    return [f"{name}-{index}" for index in range(workload["spec"].get("replicas", 1))]


def _dns_names(pod: str, service: str, namespace: str) -> list[str]:
    """The names a pod or Service answers to, longest first."""
    base = f"{pod}.{service}" if service else pod
    return [
        f"{base}.{namespace}.{CLUSTER_DOMAIN}",
        f"{base}.{namespace}.svc",
        f"{base}.{namespace}",
        base,
    ]


class LocalDeployment:
    def __init__(
        self,
        docs: list[Doc],
        directory: Path,
        *,
        stand_ins: Mapping[str, StandIn],
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        assert not any(k.startswith("STRATA_") for k in extra_env or {}), (
            "options come from manifests"
        )
        self.docs = docs
        self.directory = directory
        self.stand_ins = dict(stand_ins)
        self.extra_env = dict(extra_env or {})
        self.network = f"{POD_NETWORK}{random.randrange(1, 255)}."
        self.pods: list[Pod] = []
        self.names: dict[str, str] = {}  # DNS name -> pod address
        self.stand_in_names: dict[str, StandIn] = {}
        self._plan()

    # ---- the plan: pods, addresses, names ---------------------------------------------------

    def _plan(self) -> None:
        order = [
            *of_kind(self.docs, "Job"),
            *of_kind(self.docs, "StatefulSet"),
            *of_kind(self.docs, "Deployment"),
        ]
        for workload in order:
            self._plan_pods(workload)
        for service in of_kind(self.docs, "Service"):
            if service["spec"].get("clusterIP") != "None":
                self._plan_service(service)
        for pod in self.pods:
            self._prepare(pod)

    def _plan_pods(self, workload: Doc) -> None:
        """A pod per replica and Strata container, with its address and stable names."""
        namespace = workload["metadata"].get("namespace", "default")
        service = workload["spec"].get("serviceName", "")
        stand_in = self.stand_ins.get(workload["metadata"]["name"])
        for pod_name in _replica_names(workload):
            if stand_in is not None:
                for name in _dns_names(pod_name, service, namespace):
                    self.stand_in_names[name] = stand_in
                continue
            for container in pod_spec(workload)["containers"]:
                if not is_strata(container):
                    continue
                address = f"{self.network}{len(self.pods) + 1}"
                pod = Pod(pod_name, workload, container, address, self.directory / pod_name)
                self.pods.append(pod)
                if service:
                    for name in _dns_names(pod_name, service, namespace):
                        self.names[name] = address

    def _plan_service(self, service: Doc) -> None:
        """A Service's names lead to its first pod, or to the stand-in of its workload."""
        selector = service["spec"].get("selector")
        names = _dns_names(
            service["metadata"]["name"], "", service["metadata"].get("namespace", "default")
        )
        selected = [p for p in self.pods if selects(selector, pod_labels(p.workload))]
        stand_ins = [
            self.stand_ins[w["metadata"]["name"]]
            for w in of_kind(self.docs, *WORKLOAD_KINDS)
            if w["metadata"]["name"] in self.stand_ins and selects(selector, pod_labels(w))
        ]
        for name in names:
            if selected:
                self.names[name] = selected[0].address
            elif stand_ins:
                self.stand_in_names[name] = stand_ins[0]

    def translate(self, text: str, pod: Pod) -> str:
        """``text`` with cluster names, the pod's wildcard address and its mount paths
        replaced by their local stand-ins."""

        def host(match: re.Match[str]) -> str:
            name, port = match.group(1), match.group(2)
            stand_in = self.stand_in_names.get(name)
            if stand_in is not None:
                if port is not None and int(port) == stand_in.port:
                    return stand_in.endpoint
                return stand_in.endpoint.rsplit(":", 1)[0] + (f":{port}" if port else "")
            address = pod.address if name == "0.0.0.0" else self.names.get(name)
            if address is None:
                return match.group(0)
            return address + (f":{port}" if port else "")

        for mount in pod.container.get("volumeMounts", []):
            if text == mount["mountPath"] or text.startswith(mount["mountPath"].rstrip("/") + "/"):
                text = str(pod.directory / mount["name"]) + text[len(mount["mountPath"]) :]
        return _HOST.sub(host, text)

    def _prepare(self, pod: Pod) -> None:
        namespace = pod.workload["metadata"].get("namespace", "default")
        fields = {
            "metadata.name": pod.name,
            "metadata.namespace": namespace,
            "status.podIP": pod.address,
        }
        environ = environment(pod.container, self.docs, fields)
        command = pod.container.get("command") or [STRATA_COMMAND]
        args = [str(pod.container["args"][0]), *arguments(pod.container, environ)]
        pod.command = [*command, *(self.translate(arg, pod) for arg in args)]
        pod.env = {name: self.translate(value, pod) for name, value in environ.items()}

    # ---- running ------------------------------------------------------------------------------

    def pods_of(self, workload_name: str) -> list[Pod]:
        return [p for p in self.pods if p.workload["metadata"]["name"] == workload_name]

    def _launch(self, pod: Pod) -> None:
        pod.directory.mkdir(parents=True, exist_ok=True)
        for mount in pod.container.get("volumeMounts", []):
            (pod.directory / mount["name"]).mkdir(exist_ok=True)
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("STRATA_")}
        env = {**inherited, **IMAGE_ENV, **self.extra_env, **pod.env}
        pod.log = open(pod.directory / "log", "ab")
        pod.process = subprocess.Popen(
            pod.command, stdout=pod.log, stderr=subprocess.STDOUT, env=env
        )

    def _wait_ready(self, pod: Pod) -> None:
        probe = pod.container["readinessProbe"]["grpc"]
        try:
            wait_serving(
                f"{pod.address}:{probe['port']}", READY_TIMEOUT_SECONDS, process=pod.process
            )
        except (RuntimeError, TimeoutError) as exc:
            raise AssertionError(
                f"pod {pod.name} not ready: {exc}\n{pod.log_text()[-3000:]}"
            ) from exc

    def _wait_completed(self, pod: Pod) -> None:
        assert pod.process is not None
        code = pod.process.wait(JOB_TIMEOUT_SECONDS)
        assert code == 0, f"job {pod.name} exited {code}\n{pod.log_text()[-3000:]}"

    def start(self) -> Self:
        """Every pod at once, as applying the overlay starts them: no role waits for another
        before it starts (each waits for the metadata store itself)."""
        for pod in self.pods:
            self._launch(pod)
        for pod in self.pods:
            if pod.kind == "Job":
                self._wait_completed(pod)
            else:
                self._wait_ready(pod)
        return self

    def close(self) -> None:
        """SIGTERM every process, as deleting the pods would, then wait for each (SIGKILL
        past its grace)."""
        running = [p.process for p in self.pods if p.process is not None]
        for process in running:
            if process.poll() is None:
                os.kill(process.pid, signal.SIGTERM)
        for process in running:
            try:
                process.wait(STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait(STOP_TIMEOUT_SECONDS)
        for pod in self.pods:
            if pod.log is not None:
                pod.log.close()
                pod.log = None

    @contextlib.contextmanager
    def running(self) -> Iterator[LocalDeployment]:
        """Started, and closed on the way out however it is left."""
        try:
            yield self.start()
        finally:
            self.close()
