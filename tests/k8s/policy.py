"""Our own checks of the rendered ``k8s/`` overlays: what schema validation cannot see.

``kubernetes_validate`` checks each object against the API's schema; it checks no enum, stops
at the first error of an object and never looks across objects. Each check here takes the
rendered documents and returns its violations, one sentence each naming the object (an
empty list passes), so that a test can plant a violation and see the check name it.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import tomllib
from collections.abc import Callable, Iterator
from pathlib import PurePosixPath
from typing import Any

from strata.cli import SERVER_ROLES
from tests.k8s.kubectl_tool import REPOSITORY
from tests.k8s.manifests import (
    SERVING_KINDS,
    WORKLOAD_KINDS,
    Doc,
    arguments,
    containers,
    environment,
    is_strata,
    name_of,
    of_kind,
    pod_labels,
    pod_spec,
    role_of,
    role_options,
    selects,
    strata_containers,
)

Check = Callable[[list[Doc]], list[str]]

# A bookie replays its journal before it serves: the startup probe allows this long.
MIN_BOOKIE_STARTUP_SECONDS = 600
PROJECT_VERSION: str = tomllib.loads((REPOSITORY / "pyproject.toml").read_text())["project"][
    "version"
]


def _where(workload: Doc, container: Doc) -> str:
    return f"{name_of(workload)} container {container['name']}"


def check_probes(docs: list[Doc]) -> list[str]:
    """Every container of a Deployment or StatefulSet has readiness and liveness probes; a
    Strata container's probes are grpc probes on the port its role serves grpc.health.v1 on
    (``--port``); a bookie's startup probe allows a long journal replay."""
    problems = []
    for workload in of_kind(docs, *SERVING_KINDS):
        for container in containers(workload):
            where = _where(workload, container)
            for probe in ("readinessProbe", "livenessProbe"):
                if probe not in container:
                    problems.append(f"{where} has no {probe}")
            if not is_strata(container):
                continue
            port = int(environment(container, docs).get("STRATA_PORT", "-1"))
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                spec = container.get(probe)
                if spec is None:
                    if probe == "startupProbe":
                        problems.append(f"{where} has no {probe}")
                elif spec.get("grpc", {}).get("port") != port:
                    problems.append(f"{where} {probe} is not a grpc probe on its port {port}")
            budget = _probe_budget_seconds(container.get("startupProbe", {}))
            if role_of(container) == "bookie" and budget < MIN_BOOKIE_STARTUP_SECONDS:
                problems.append(f"{where} startupProbe allows {budget} s < journal replay")
    return problems


def check_resources(docs: list[Doc]) -> list[str]:
    """Every container requests and limits CPU and memory."""
    problems = []
    for workload in of_kind(docs, *WORKLOAD_KINDS):
        for container in containers(workload):
            resources = container.get("resources", {})
            for kind in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    if resource not in resources.get(kind, {}):
                        where = _where(workload, container)
                        problems.append(f"{where} has no {resource} {kind[:-1]}")
    return problems


def check_non_root(docs: list[Doc]) -> list[str]:
    """Pods run as a non-root user, without privilege escalation, every capability dropped."""
    problems = []
    for workload in of_kind(docs, *WORKLOAD_KINDS):
        pod = pod_spec(workload).get("securityContext", {})
        for container in containers(workload):
            where = _where(workload, container)
            context = {**pod, **container.get("securityContext", {})}
            if context.get("runAsNonRoot") is not True or context.get("runAsUser", 0) == 0:
                problems.append(f"{where} may run as root")
            if context.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where} allows privilege escalation")
            if "ALL" not in context.get("capabilities", {}).get("drop", []):
                problems.append(f"{where} does not drop ALL capabilities")
    return problems


def check_read_only_root(docs: list[Doc]) -> list[str]:
    """Root filesystems are read-only; a Strata process writes only to mounted volumes: its
    data directory, a bookie's journal directory and /tmp."""
    problems = []
    for workload in of_kind(docs, *WORKLOAD_KINDS):
        for container in containers(workload):
            where = _where(workload, container)
            if container.get("securityContext", {}).get("readOnlyRootFilesystem") is not True:
                problems.append(f"{where} has a writable root filesystem")
            if not is_strata(container):
                continue
            mounts = [PurePosixPath(m["mountPath"]) for m in container.get("volumeMounts", [])]
            written = ["/tmp"]
            env = environment(container, docs)
            written += [
                env[name] for name in ("STRATA_DATA_DIR", "STRATA_JOURNAL_DIR") if env.get(name)
            ]
            for path in map(PurePosixPath, written):
                if not any(path == mount or mount in path.parents for mount in mounts):
                    problems.append(f"{where} writes {path}, which is on no volume")
    return problems


def check_images_pinned(docs: list[Doc]) -> list[str]:
    """Every image names a tag that is not ``latest``; Strata's is the project's version."""
    problems = []
    for workload in of_kind(docs, *WORKLOAD_KINDS):
        for container in containers(workload):
            image: str = container["image"]
            last_part = image.rsplit("/", 1)[-1]
            tag = last_part.rpartition(":")[2] if ":" in last_part else ""
            where = _where(workload, container)
            if not tag or tag == "latest":
                problems.append(f"{where} image {image} is not pinned to a tag")
            elif is_strata(container) and tag != PROJECT_VERSION:
                problems.append(f"{where} image {image} is not version {PROJECT_VERSION}")
    return problems


def check_selectors(docs: list[Doc]) -> list[str]:
    """Each workload's selector selects its own pod template."""
    return [
        f"{name_of(workload)} selector does not select its pod template"
        for workload in of_kind(docs, "Deployment", "StatefulSet")
        if not selects(workload["spec"]["selector"], pod_labels(workload))
    ]


def _selected(selector: Doc | None, docs: list[Doc]) -> list[Doc]:
    return [w for w in of_kind(docs, *WORKLOAD_KINDS) if selects(selector, pod_labels(w))]


def check_disruption_budgets(docs: list[Doc]) -> list[str]:
    """Each PodDisruptionBudget selects the pods of one workload, and every Deployment and
    StatefulSet has one (allowing one pod down)."""
    problems = []
    budgets = of_kind(docs, "PodDisruptionBudget")
    for budget in budgets:
        if len(_selected(budget["spec"].get("selector"), docs)) != 1:
            problems.append(f"{name_of(budget)} does not select the pods of one workload")
        if budget["spec"].get("maxUnavailable") != 1:
            problems.append(f"{name_of(budget)} does not set maxUnavailable 1")
    for workload in of_kind(docs, "Deployment", "StatefulSet"):
        if not any(selects(b["spec"].get("selector"), pod_labels(workload)) for b in budgets):
            problems.append(f"{name_of(workload)} has no PodDisruptionBudget")
    return problems


def _port_names(workload: Doc) -> set[str | int]:
    ports: set[str | int] = set()
    for container in containers(workload):
        for port in container.get("ports", []):
            ports |= {port.get("name", ""), port["containerPort"]}
    return ports


def check_services(docs: list[Doc]) -> list[str]:
    """Every Service selects the pods of a workload, and its target ports are ports of them."""
    problems = []
    for service in of_kind(docs, "Service"):
        selected = _selected(service["spec"].get("selector"), docs)
        if not selected:
            problems.append(f"{name_of(service)} selects no pods of a workload")
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            for workload in selected:
                if target not in _port_names(workload):
                    problems.append(
                        f"{name_of(service)} port {target} is no port of {name_of(workload)}"
                    )
    return problems


def check_headless_services(docs: list[Doc]) -> list[str]:
    """Each StatefulSet's serviceName is a headless Service that selects its pods (the pods'
    stable DNS names, which bookie ids and etcd member URLs are made of)."""
    problems = []
    services = {s["metadata"]["name"]: s for s in of_kind(docs, "Service")}
    for stateful in of_kind(docs, "StatefulSet"):
        service = services.get(stateful["spec"]["serviceName"])
        if service is None or service["spec"].get("clusterIP") != "None":
            problems.append(f"{name_of(stateful)} serviceName names no headless Service")
        elif not selects(service["spec"].get("selector"), pod_labels(stateful)):
            problems.append(f"{name_of(stateful)} headless Service does not select its pods")
    return problems


def role_config(role: str, environ: dict[str, str], args: list[str]) -> tuple[Any, str | None]:
    """(the role's config, None) when the role accepts this configuration, else (None, its
    refusal); (None, None) for a role without a config dataclass (initialize-cluster)."""
    module = importlib.import_module(SERVER_ROLES[role])
    build_parser = getattr(module, "build_parser", None)
    if build_parser is None:
        return None, None
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            parser, binding = build_parser(environ)
            config = binding.build(parser, parser.parse_args(args))
            if hasattr(config, "offload_config"):
                config.offload_config()
    except SystemExit:
        return None, errors.getvalue().strip().splitlines()[-1]
    except ValueError as exc:
        return None, str(exc)
    return config, None


def check_strata_options(docs: list[Doc]) -> list[str]:
    """Every ``STRATA_*`` variable and every ``--flag`` given to a Strata container is an
    option of the role it runs, and the role accepts the values (its config builds)."""
    problems = []
    for workload, container in strata_containers(docs):
        where = _where(workload, container)
        role = role_of(container)
        if role not in SERVER_ROLES:
            problems.append(f"{where} runs {role!r}, which is no strata server role")
            continue
        options = role_options(role)
        environ = environment(container, docs)
        for variable in sorted(k for k in environ if k.startswith("STRATA_")):
            if variable not in options.variables:
                problems.append(f"{where}: {variable} is no option of strata {role}")
        args = arguments(container, environ)
        for flag in (arg.split("=", 1)[0] for arg in args if arg.startswith("--")):
            if flag not in options.flags:
                problems.append(f"{where}: {flag} is no option of strata {role}")
        _config, refusal = role_config(role, environ, args)
        if refusal is not None:
            problems.append(f"{where}: strata {role} refuses its configuration: {refusal}")
    return problems


def _servers(docs: list[Doc]) -> Iterator[tuple[Doc, Doc, Any]]:
    """(workload, container, config) of every Strata server (broker, bookie) whose role
    accepts its configuration (``check_strata_options`` reports the others)."""
    for workload, container in strata_containers(docs):
        if workload["kind"] not in SERVING_KINDS:
            continue
        environ = environment(container, docs)
        config, _refusal = role_config(role_of(container), environ, arguments(container, environ))
        if config is not None:
            yield workload, container, config


def check_listening(docs: list[Doc]) -> list[str]:
    """A Strata server listens on every interface of its pod, on the ports its container
    declares: ``grpc`` is its ``--port``, ``metrics`` its ``--metrics-port``."""
    problems = []
    for workload, container, config in _servers(docs):
        where = _where(workload, container)
        if config.host not in ("0.0.0.0", "::"):
            problems.append(f"{where} listens on {config.host}, not on every interface")
        declared = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
        for name, port in (("grpc", config.port), ("metrics", config.metrics_port)):
            if declared.get(name) != port:
                problems.append(f"{where} serves {name} on {port}, not its containerPort {name}")
    return problems


def _probe_budget_seconds(probe: Doc) -> int:
    """How long a failing probe takes to fail for good (Kubernetes' defaults: 10 s, 3)."""
    budget: int = probe.get("periodSeconds", 10) * probe.get("failureThreshold", 3)
    return budget + int(probe.get("initialDelaySeconds", 0))


def check_lifecycle(docs: list[Doc]) -> list[str]:
    """A Strata server's pod outlives its graceful stop: terminationGracePeriodSeconds exceeds
    ``--graceful-shutdown-timeout-seconds`` (else the kubelet's SIGKILL cuts the hand-over);
    and its startup probe outlasts ``--metadata-store-connect-timeout-seconds`` (else a pod
    started before etcd is restarted while it rightly waits)."""
    problems = []
    for workload, container, config in _servers(docs):
        where = _where(workload, container)
        grace = pod_spec(workload).get("terminationGracePeriodSeconds", 30)
        if grace <= config.graceful_shutdown_timeout_seconds:
            problems.append(
                f"{where} is killed after {grace} s, within its graceful shutdown timeout "
                f"{config.graceful_shutdown_timeout_seconds:g} s"
            )
        startup = _probe_budget_seconds(container.get("startupProbe", {}))
        if startup < config.metadata_store_connect_timeout_seconds:
            problems.append(
                f"{where} startupProbe gives up after {startup} s, before its metadata store "
                f"connect timeout {config.metadata_store_connect_timeout_seconds:g} s"
            )
    return problems


def check_bookie_identity(docs: list[Doc]) -> list[str]:
    """A bookie advertises its pod's stable DNS name (its id in every ensemble), made of its
    pod name, its StatefulSet's headless Service and its namespace."""
    problems = []
    for workload, container in strata_containers(docs):
        if role_of(container) != "bookie":
            continue
        namespace = workload["metadata"].get("namespace", "default")
        fields = {"metadata.name": "pod-7", "metadata.namespace": namespace}
        advertised = environment(container, docs, fields).get("STRATA_ADVERTISED_ADDRESS")
        service = workload["spec"].get("serviceName", "")
        stable = f"pod-7.{service}.{namespace}.svc.cluster.local"
        if workload["kind"] != "StatefulSet" or advertised != stable:
            where = _where(workload, container)
            problems.append(f"{where} advertises {advertised}, not its stable name {stable}")
    return problems


# Who may reach which named port of which workload; None: any pod (clients, the scraper).
# A port not named here must not be reachable at all.
NETWORK_PEERS: dict[str, dict[str, frozenset[str] | None]] = {
    "strata-bookie": {"grpc": frozenset({"broker", "bookie"}), "metrics": None},
    "strata-etcd": {
        "client": frozenset({"broker", "bookie", "initialize-cluster"}),
        "peer": frozenset({"etcd"}),
        "metrics": None,
    },
    "strata-broker": {"grpc": None, "metrics": None},
}


def check_network_policies(docs: list[Doc]) -> list[str]:
    """NetworkPolicies select the bookies, etcd and the brokers, and let in only the peers
    ``NETWORK_PEERS`` names: only brokers and bookies reach a bookie's gRPC port, only Strata's
    processes etcd's client port, only etcd members its peer port."""
    problems = []
    for workload in of_kind(docs, *WORKLOAD_KINDS):
        rules = NETWORK_PEERS.get(workload["metadata"]["name"])
        if rules is None:
            continue
        labels = pod_labels(workload)
        ports = {
            p["containerPort"]: p.get("name", "")
            for c in containers(workload)
            for p in c.get("ports", [])
        }
        policies = [
            p for p in of_kind(docs, "NetworkPolicy") if selects(p["spec"]["podSelector"], labels)
        ]
        if not policies:
            problems.append(f"{name_of(workload)} has no NetworkPolicy")
        for policy in policies:
            for rule in policy["spec"].get("ingress", []):
                opened = {p.get("port") for p in rule.get("ports", [])} or set(ports)
                for port in opened:
                    name = ports.get(port, str(port)) if isinstance(port, int) else str(port)
                    if name not in rules:
                        problems.append(f"{name_of(policy)} opens port {port}, which is not served")
                        continue
                    allowed = rules[name]
                    peers = rule.get("from")
                    if allowed is None:
                        continue
                    if not peers:
                        problems.append(f"{name_of(policy)} lets any pod reach port {name}")
                        continue
                    for peer in peers:
                        component = (
                            peer.get("podSelector", {})
                            .get("matchLabels", {})
                            .get("app.kubernetes.io/component")
                        )
                        if component not in allowed or set(peer) != {"podSelector"}:
                            problems.append(f"{name_of(policy)} lets {peer} reach port {name}")
    return problems


def check_service_monitors(docs: list[Doc]) -> list[str]:
    """Each ServiceMonitor selects Services, and its endpoints name ports those Services have
    (it has no schema to validate against: it is a prometheus-operator CRD)."""
    problems = []
    for monitor in of_kind(docs, "ServiceMonitor"):
        services = [
            s
            for s in of_kind(docs, "Service")
            if selects(monitor["spec"]["selector"], s["metadata"].get("labels", {}))
        ]
        if not services:
            problems.append(f"{name_of(monitor)} selects no Service")
        for endpoint in monitor["spec"]["endpoints"]:
            for service in services:
                if endpoint["port"] not in {p.get("name") for p in service["spec"]["ports"]}:
                    problems.append(
                        f"{name_of(monitor)} port {endpoint['port']} is not on {name_of(service)}"
                    )
    return problems


CHECKS: dict[str, Check] = {
    "probes": check_probes,
    "resources": check_resources,
    "non_root": check_non_root,
    "read_only_root": check_read_only_root,
    "images_pinned": check_images_pinned,
    "selectors": check_selectors,
    "disruption_budgets": check_disruption_budgets,
    "services": check_services,
    "headless_services": check_headless_services,
    "strata_options": check_strata_options,
    "listening": check_listening,
    "lifecycle": check_lifecycle,
    "bookie_identity": check_bookie_identity,
    "network_policies": check_network_policies,
    "service_monitors": check_service_monitors,
}
