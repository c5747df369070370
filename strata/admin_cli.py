"""``strata admin``: pulsar-admin's tenants, namespaces and topics verbs over ``AdminService``.

Each verb is one admin call (lists page through ``next_page_token``). Lists print one item
per line (``public``, ``public/default``, ``persistent://public/default/t``); objects print
as JSON with the proto field names; deletes print nothing. A failed call prints
``error: <CODE>: <message>`` on stderr and exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message as ProtoMessage

from strata.admin_permissions_cli import add_permission_verbs
from strata.admin_policies_cli import (
    add_compaction_verbs,
    add_policy_verbs,
    add_topic_policy_verbs,
)
from strata.admin_subscriptions_cli import add_subscription_verbs
from strata.auth.credentials import intercept_sync_channel
from strata.client import AsyncClient
from strata.client._connection import sync_channel_to_any, uses_tls
from strata.naming import NamespaceName, TopicName, parse_tenant
from strata.options import add_option, client_tls
from strata.rpc_status import owner_named_by
from strata.tls import channel_credentials
from strata.tokens_cli import client_authentication
from strata.v1 import admin_pb2, admin_pb2_grpc

# A list of more pages than this is a server bug (a token that never ends), not data.
MAX_LIST_PAGES = 100_000


def _pages(fetch: Callable[[str], Any]) -> Iterator[Any]:
    """Call ``fetch(page_token)`` until the server returns an empty ``next_page_token``."""
    token = ""
    seen: set[str] = set()
    for _ in range(MAX_LIST_PAGES):
        page = fetch(token)
        yield page
        token = page.next_page_token
        if not token:
            return
        if token in seen:
            raise RuntimeError("the server repeated a page token")
        seen.add(token)
    raise RuntimeError(f"more than {MAX_LIST_PAGES} pages")


def _print_json(message: ProtoMessage, *, with_defaults: bool = False) -> None:
    document = json_format.MessageToDict(
        message,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=with_defaults,
    )
    print(json.dumps(document, indent=2, sort_keys=True))


def _comma_list(text: str | None) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


class _Admin:
    """One admin command's channel and stub; every call carries the operation timeout."""

    def __init__(self, args: argparse.Namespace) -> None:
        # Any broker answers admin calls: the first of the service URL that is up.
        authentication = client_authentication(args)
        credentials = None
        if uses_tls(args.service_url):
            tls = client_tls(args)
            credentials = channel_credentials(
                tls["tls_trust_certs_file_path"] or "",
                tls["tls_certificate_file_path"] or "",
                tls["tls_private_key_file_path"] or "",
            )
        self.channel = intercept_sync_channel(
            sync_channel_to_any(args.service_url, args.operation_timeout_seconds, credentials),
            None if authentication is None else authentication.token,
        )
        self.stub = admin_pb2_grpc.AdminServiceStub(self.channel)
        self.timeout_s: float = args.operation_timeout_seconds

    def close(self) -> None:
        self.channel.close()


# Each handler gets the admin connection and the parsed arguments.
_Handler = Callable[[_Admin, argparse.Namespace], None]


def _tenants_list(admin: _Admin, args: argparse.Namespace) -> None:
    def fetch(token: str) -> admin_pb2.ListTenantsResponse:
        return admin.stub.ListTenants(
            admin_pb2.ListTenantsRequest(page_token=token), timeout=admin.timeout_s
        )

    for page in _pages(fetch):
        for tenant in page.tenants:
            print(parse_tenant(tenant.name))


def _tenants_get(admin: _Admin, args: argparse.Namespace) -> None:
    name = f"tenants/{parse_tenant(args.name)}"
    _print_json(
        admin.stub.GetTenant(admin_pb2.GetTenantRequest(name=name), timeout=admin.timeout_s)
    )


def _tenants_create(admin: _Admin, args: argparse.Namespace) -> None:
    tenant_id = parse_tenant(args.name)
    tenant = admin_pb2.Tenant(
        name=f"tenants/{tenant_id}",
        admin_roles=_comma_list(args.admin_roles),
        allowed_clusters=_comma_list(args.allowed_clusters),
    )
    admin.stub.CreateTenant(
        admin_pb2.CreateTenantRequest(tenant_id=tenant_id, tenant=tenant), timeout=admin.timeout_s
    )


def _tenants_delete(admin: _Admin, args: argparse.Namespace) -> None:
    name = f"tenants/{parse_tenant(args.name)}"
    admin.stub.DeleteTenant(
        admin_pb2.DeleteTenantRequest(name=name, force=args.force), timeout=admin.timeout_s
    )


def _namespaces_list(admin: _Admin, args: argparse.Namespace) -> None:
    parent = f"tenants/{parse_tenant(args.tenant)}"

    def fetch(token: str) -> admin_pb2.ListNamespacesResponse:
        return admin.stub.ListNamespaces(
            admin_pb2.ListNamespacesRequest(parent=parent, page_token=token),
            timeout=admin.timeout_s,
        )

    for page in _pages(fetch):
        for namespace in page.namespaces:
            print(NamespaceName.parse(namespace.name))


def _namespaces_get(admin: _Admin, args: argparse.Namespace) -> None:
    name = NamespaceName.parse(args.namespace).resource_name
    _print_json(
        admin.stub.GetNamespace(admin_pb2.GetNamespaceRequest(name=name), timeout=admin.timeout_s)
    )


def _namespaces_create(admin: _Admin, args: argparse.Namespace) -> None:
    namespace = NamespaceName.parse(args.namespace)
    admin.stub.CreateNamespace(
        admin_pb2.CreateNamespaceRequest(
            parent=f"tenants/{namespace.tenant}",
            namespace_id=namespace.namespace,
            bundles=args.bundles,
        ),
        timeout=admin.timeout_s,
    )


def _namespaces_delete(admin: _Admin, args: argparse.Namespace) -> None:
    name = NamespaceName.parse(args.namespace).resource_name
    admin.stub.DeleteNamespace(
        admin_pb2.DeleteNamespaceRequest(name=name, force=args.force), timeout=admin.timeout_s
    )


def _namespaces_set_persistence(admin: _Admin, args: argparse.Namespace) -> None:
    name = NamespaceName.parse(args.namespace).resource_name
    admin.stub.SetPersistence(
        admin_pb2.SetPersistenceRequest(
            name=name,
            persistence=admin_pb2.PersistencePolicies(
                bookkeeper_ensemble=args.bookkeeper_ensemble,
                bookkeeper_write_quorum=args.bookkeeper_write_quorum,
                bookkeeper_ack_quorum=args.bookkeeper_ack_quorum,
            ),
        ),
        timeout=admin.timeout_s,
    )


def _namespaces_set_limit(limit: str) -> _Handler:
    def handler(admin: _Admin, args: argparse.Namespace) -> None:
        name = NamespaceName.parse(args.namespace).resource_name
        limits = admin_pb2.LimitPolicies(**{limit: getattr(args, limit)})
        admin.stub.SetLimits(
            admin_pb2.SetLimitsRequest(name=name, limits=limits), timeout=admin.timeout_s
        )

    return handler


def _namespaces_get_limits(admin: _Admin, args: argparse.Namespace) -> None:
    name = NamespaceName.parse(args.namespace).resource_name
    namespace = admin.stub.GetNamespace(
        admin_pb2.GetNamespaceRequest(name=name), timeout=admin.timeout_s
    )
    _print_json(namespace.limits, with_defaults=True)


def _namespaces_get_persistence(admin: _Admin, args: argparse.Namespace) -> None:
    name = NamespaceName.parse(args.namespace).resource_name
    namespace = admin.stub.GetNamespace(
        admin_pb2.GetNamespaceRequest(name=name), timeout=admin.timeout_s
    )
    _print_json(namespace.persistence)


_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_DURATION_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_size_bytes(text: str) -> int:
    """``10485760``, ``10M``, ``512K``, ``1G`` (powers of 1024), or ``-1``."""
    value = text.strip().upper().removesuffix("B")
    if value == "-1":
        return -1
    unit = value[-1:] if value[-1:] in _SIZE_UNITS else ""
    number = value[: len(value) - len(unit)]
    if not number.isdigit():
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 1048576, 512K, 10M, 1G)")
    return int(number) * _SIZE_UNITS[unit]


def parse_duration_ms(text: str) -> int:
    """``500`` (milliseconds), ``500ms``, ``30s``, ``10m``, ``4h``, ``1d``."""
    value = text.strip().lower()
    for unit in ("ms", "s", "m", "h", "d"):
        if value.endswith(unit) and value[: -len(unit)].isdigit():
            return int(value[: -len(unit)]) * _DURATION_UNITS_MS[unit]
    if value.isdigit():
        return int(value)
    raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 500ms, 30s, 10m, 4h)")


def _offload_policies(admin: _Admin, namespace: str) -> admin_pb2.OffloadPolicies:
    name = NamespaceName.parse(namespace).resource_name
    response = admin.stub.GetNamespace(
        admin_pb2.GetNamespaceRequest(name=name), timeout=admin.timeout_s
    )
    policies: admin_pb2.OffloadPolicies = response.offload
    return policies


def _namespaces_set_offload_threshold(admin: _Admin, args: argparse.Namespace) -> None:
    name = NamespaceName.parse(args.namespace).resource_name
    admin.stub.SetOffloadThreshold(
        admin_pb2.SetOffloadThresholdRequest(name=name, threshold_bytes=args.size),
        timeout=admin.timeout_s,
    )


def _namespaces_get_offload_threshold(admin: _Admin, args: argparse.Namespace) -> None:
    policies = _offload_policies(admin, args.namespace)
    print(json.dumps({"offload_threshold_bytes": policies.threshold_bytes}))


def _namespaces_set_offload_deletion_lag(admin: _Admin, args: argparse.Namespace) -> None:
    name = NamespaceName.parse(args.namespace).resource_name
    admin.stub.SetOffloadDeletionLag(
        admin_pb2.SetOffloadDeletionLagRequest(name=name, deletion_lag_ms=args.lag),
        timeout=admin.timeout_s,
    )


def _namespaces_get_offload_deletion_lag(admin: _Admin, args: argparse.Namespace) -> None:
    policies = _offload_policies(admin, args.namespace)
    print(json.dumps({"offload_deletion_lag_ms": policies.deletion_lag_ms}))


def _offload_status_json(status: admin_pb2.OffloadStatus) -> str:
    """One JSON object; ``status`` is NOT_RUN, RUNNING, SUCCESS or ERROR."""
    state = admin_pb2.OffloadRunStatus.Name(status.status).removeprefix("OFFLOAD_RUN_STATUS_")
    document: dict[str, Any] = {"topic": status.name, "status": state, "error": status.error}
    for field in (
        "trigger",
        "started_ms",
        "finished_ms",
        "run_ledgers_offloaded",
        "run_bytes_offloaded",
        "offloaded_ledgers",
        "bookie_deleted_ledgers",
        "offloaded_bytes",
        "bookie_resident_bytes",
        "closed_ledgers",
    ):
        document[field] = getattr(status, field)
    return json.dumps(document, indent=2)


def _topics_offload(admin: _Admin, args: argparse.Namespace) -> None:
    request = admin_pb2.OffloadTopicRequest(name=str(TopicName.parse(args.topic)))
    if args.size_threshold is not None:
        request.size_threshold_bytes = args.size_threshold
    print(_offload_status_json(admin.stub.OffloadTopic(request, timeout=admin.timeout_s)))


# Polling of `offload-status --wait`: bounded by --wait-timeout-seconds.
OFFLOAD_WAIT_POLL_SECONDS = 0.5


def _topics_offload_status(admin: _Admin, args: argparse.Namespace) -> None:
    request = admin_pb2.GetOffloadStatusRequest(name=str(TopicName.parse(args.topic)))
    status = admin.stub.GetOffloadStatus(request, timeout=admin.timeout_s)
    deadline = time.monotonic() + args.wait_timeout_seconds
    while (
        args.wait
        and status.status == admin_pb2.OFFLOAD_RUN_STATUS_RUNNING
        and time.monotonic() < deadline
    ):
        time.sleep(OFFLOAD_WAIT_POLL_SECONDS)
        status = admin.stub.GetOffloadStatus(request, timeout=admin.timeout_s)
    print(_offload_status_json(status))


def _bookies_list(admin: _Admin, args: argparse.Namespace) -> None:
    response = admin.stub.ListBookies(admin_pb2.ListBookiesRequest(), timeout=admin.timeout_s)
    _print_json(response, with_defaults=True)


def _bookies_decommission(admin: _Admin, args: argparse.Namespace) -> None:
    admin.stub.DecommissionBookie(
        admin_pb2.DecommissionBookieRequest(id=args.bookie), timeout=admin.timeout_s
    )


def _topics_unload(admin: _Admin, args: argparse.Namespace) -> None:
    admin.stub.UnloadTopic(admin_pb2.UnloadTopicRequest(name=args.topic), timeout=admin.timeout_s)


def _namespaces_unload(admin: _Admin, args: argparse.Namespace) -> None:
    admin.stub.UnloadNamespace(
        admin_pb2.UnloadNamespaceRequest(
            name=NamespaceName.parse(args.namespace).resource_name, bundle=args.bundle or ""
        ),
        timeout=admin.timeout_s,
    )


def _namespaces_bundles(admin: _Admin, args: argparse.Namespace) -> None:
    response = admin.stub.ListBundles(
        admin_pb2.ListBundlesRequest(name=NamespaceName.parse(args.namespace).resource_name),
        timeout=admin.timeout_s,
    )
    for bundle in response.bundles:
        print(f"{bundle.name} {bundle.owner or '-'}")


def _namespaces_split_bundle(admin: _Admin, args: argparse.Namespace) -> None:
    response = admin.stub.SplitNamespaceBundle(
        admin_pb2.SplitNamespaceBundleRequest(
            name=NamespaceName.parse(args.namespace).resource_name, bundle=args.bundle
        ),
        timeout=admin.timeout_s,
    )
    for bundle in response.bundles:
        print(f"{bundle.name} {bundle.owner or '-'}")


def _brokers_list(admin: _Admin, args: argparse.Namespace) -> None:
    response = admin.stub.ListBrokers(admin_pb2.ListBrokersRequest(), timeout=admin.timeout_s)
    for broker in response.brokers:
        document = json_format.MessageToDict(
            broker, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
        print(json.dumps(document, sort_keys=True))


def _brokers_get_runtime_config(admin: _Admin, args: argparse.Namespace) -> None:
    response = admin.stub.GetRuntimeConfig(
        admin_pb2.GetRuntimeConfigRequest(), timeout=admin.timeout_s
    )
    print(json.dumps(json.loads(response.config_json), indent=2))


def _topics_create_partitioned(admin: _Admin, args: argparse.Namespace) -> None:
    admin.stub.CreatePartitionedTopic(
        admin_pb2.CreatePartitionedTopicRequest(name=args.topic, partitions=args.partitions),
        timeout=admin.timeout_s,
    )


def _topics_list(admin: _Admin, args: argparse.Namespace) -> None:
    parent = NamespaceName.parse(args.namespace).resource_name

    def fetch(token: str) -> admin_pb2.ListTopicsResponse:
        return admin.stub.ListTopics(
            admin_pb2.ListTopicsRequest(parent=parent, page_token=token), timeout=admin.timeout_s
        )

    for page in _pages(fetch):
        for topic in page.topics:
            print(topic.name)


def _topics_create(admin: _Admin, args: argparse.Namespace) -> None:
    name = str(TopicName.parse(args.topic))
    admin.stub.CreateTopic(admin_pb2.CreateTopicRequest(name=name), timeout=admin.timeout_s)


def _topics_delete(admin: _Admin, args: argparse.Namespace) -> None:
    name = str(TopicName.parse(args.topic))
    admin.stub.DeleteTopic(
        admin_pb2.DeleteTopicRequest(name=name, force=args.force), timeout=admin.timeout_s
    )


def _topics_stats(admin: _Admin, args: argparse.Namespace) -> None:
    name = str(TopicName.parse(args.topic))
    _print_json(
        admin.stub.GetTopicStats(admin_pb2.GetTopicStatsRequest(name=name), timeout=admin.timeout_s)
    )


def _topics_stats_internal(admin: _Admin, args: argparse.Namespace) -> None:
    name = str(TopicName.parse(args.topic))
    _print_json(
        admin.stub.GetTopicInternalStats(
            admin_pb2.GetTopicInternalStatsRequest(name=name), timeout=admin.timeout_s
        )
    )


def _topics_lookup(admin: _Admin, args: argparse.Namespace) -> None:
    # The SDK's lookup (service URL fallback, redirects); its errors print as the CLI's do.
    async def lookup() -> str:
        async with AsyncClient(
            args.service_url,
            args.operation_timeout_seconds,
            authentication=client_authentication(args),
            **client_tls(args),
        ) as client:
            return await client.lookup_topic(args.topic)

    print(asyncio.run(lookup()))


def _topics_partitioned_lookup(admin: _Admin, args: argparse.Namespace) -> None:
    async def lookup() -> list[tuple[str, str]]:
        async with AsyncClient(
            args.service_url,
            args.operation_timeout_seconds,
            authentication=client_authentication(args),
            **client_tls(args),
        ) as client:
            partitions = await client.get_topic_partitions(args.topic)
            owners = await asyncio.gather(*(client.lookup_topic(p) for p in partitions))
            return list(zip(partitions, owners, strict=True))

    for partition, owner in asyncio.run(lookup()):
        print(f"{partition}    {owner}")


def owner_service_url(service_url: str, owner: str) -> str:
    """The service URL to ask ``owner`` (a bare ``host:port`` from TOPIC_NOT_OWNED) with:
    ``grpcs://`` in front when ``service_url`` uses TLS, so the redirect keeps TLS and the
    same certificates; a bare owner would be dialled in plaintext."""
    return f"grpcs://{owner}" if uses_tls(service_url) else owner


def _run_admin(args: argparse.Namespace) -> int:
    handler: _Handler = args.admin_handler
    admin = _Admin(args)
    try:
        try:
            handler(admin, args)
        except grpc.RpcError as exc:
            # A topic operation reached a broker that does not serve the topic: ask its owner
            # (once; pulsar-admin's brokers redirect the same way).
            owner = owner_named_by(exc)
            if owner is None:
                raise
            admin.close()
            owner_url = owner_service_url(args.service_url, owner)
            admin = _Admin(argparse.Namespace(**{**vars(args), "service_url": owner_url}))
            handler(admin, args)
    except grpc.RpcError as exc:
        code = exc.code() if callable(getattr(exc, "code", None)) else grpc.StatusCode.UNKNOWN
        details = exc.details() if callable(getattr(exc, "details", None)) else str(exc)
        print(f"error: {code.name}: {details}", file=sys.stderr)
        return 1
    finally:
        admin.close()
    return 0


def add_admin_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
    environ: Mapping[str, str] | None,
) -> None:
    """Register ``strata admin tenants|namespaces|topics ...`` on the top-level parser."""
    admin = commands.add_parser(
        "admin",
        help="manage tenants, namespaces, topics and bookies (pulsar-admin verbs)",
        description="Manage tenants, namespaces and topics. Lists print one item per line, "
        "objects print as JSON.",
    )
    groups = admin.add_subparsers(dest="admin_group", metavar="GROUP", required=True)

    def verb(
        group: argparse._SubParsersAction[argparse.ArgumentParser],
        name: str,
        handler: _Handler,
        help_text: str,
        positional: tuple[str, str] | None = None,
        force: bool = False,
    ) -> argparse.ArgumentParser:
        parser = group.add_parser(name, parents=[common], help=help_text, description=help_text)
        if positional is not None:
            parser.add_argument(positional[0], metavar=positional[1])
        if force:
            add_option(
                parser,
                "-f",
                "--force",
                action="store_true",
                default=False,
                help="also delete what it contains, disconnecting clients",
                environ=environ,
            )
        parser.set_defaults(handler=_run_admin, admin_handler=handler)
        return parser

    tenants = groups.add_parser("tenants", help="tenants").add_subparsers(
        dest="verb", metavar="VERB", required=True
    )
    verb(tenants, "list", _tenants_list, "list the tenants")
    verb(tenants, "get", _tenants_get, "show a tenant as JSON", ("name", "TENANT"))
    create = verb(tenants, "create", _tenants_create, "create a tenant", ("name", "TENANT"))
    add_option(create, "-r", "--admin-roles", help="comma-separated admin roles", environ=environ)
    add_option(create, "-c", "--allowed-clusters", help="comma-separated clusters", environ=environ)
    verb(tenants, "delete", _tenants_delete, "delete a tenant", ("name", "TENANT"), force=True)

    namespaces = groups.add_parser("namespaces", help="namespaces").add_subparsers(
        dest="verb", metavar="VERB", required=True
    )
    verb(namespaces, "list", _namespaces_list, "list a tenant's namespaces", ("tenant", "TENANT"))
    verb(
        namespaces,
        "get",
        _namespaces_get,
        "show a namespace as JSON",
        ("namespace", "TENANT/NAMESPACE"),
    )
    create_namespace = verb(
        namespaces,
        "create",
        _namespaces_create,
        "create a namespace",
        ("namespace", "TENANT/NAMESPACE"),
    )
    add_option(
        create_namespace,
        "-b",
        "--bundles",
        type=int,
        default=0,
        help="number of bundles (0: the broker default, 4)",
        environ=environ,
    )
    verb(
        namespaces,
        "delete",
        _namespaces_delete,
        "delete a namespace",
        ("namespace", "TENANT/NAMESPACE"),
        force=True,
    )

    persistence = verb(
        namespaces,
        "set-persistence",
        _namespaces_set_persistence,
        "set E/Qw/Qa of the namespace's new ledgers",
        ("namespace", "TENANT/NAMESPACE"),
    )
    for short, flag, text in (
        ("-e", "--bookkeeper-ensemble", "bookies per ledger (E)"),
        ("-w", "--bookkeeper-write-quorum", "copies of each entry (Qw)"),
        ("-a", "--bookkeeper-ack-quorum", "copies confirmed before a receipt (Qa)"),
    ):
        add_option(persistence, short, flag, type=int, required=True, help=text, environ=environ)
    for limit, text in (
        ("max_topics_per_namespace", "topics the namespace may hold"),
        ("max_producers_per_topic", "producers on one topic"),
        ("max_consumers_per_topic", "consumers on one topic"),
        ("max_subscriptions_per_topic", "subscriptions of one topic"),
        ("max_unacked_messages_per_consumer", "unacknowledged messages one consumer holds"),
        ("max_unacked_messages_per_subscription", "unacknowledged messages of a subscription"),
    ):
        flag = "--" + limit.replace("_", "-")
        limit_verb = verb(
            namespaces,
            "set-" + limit.replace("_", "-"),
            _namespaces_set_limit(limit),
            f"limit the {text} (0 = unlimited)",
            ("namespace", "TENANT/NAMESPACE"),
        )
        add_option(limit_verb, flag, type=int, required=True, help="the limit", environ=environ)
    verb(
        namespaces,
        "get-limits",
        _namespaces_get_limits,
        "show the namespace's limits in effect as JSON",
        ("namespace", "TENANT/NAMESPACE"),
    )
    verb(
        namespaces,
        "get-persistence",
        _namespaces_get_persistence,
        "show the namespace's E/Qw/Qa as JSON (empty: the broker defaults)",
        ("namespace", "TENANT/NAMESPACE"),
    )
    threshold = verb(
        namespaces,
        "set-offload-threshold",
        _namespaces_set_offload_threshold,
        "offload a topic's oldest closed ledgers once more than SIZE of it is on bookies",
        ("namespace", "TENANT/NAMESPACE"),
    )
    add_option(
        threshold,
        "-s",
        "--size",
        type=parse_size_bytes,
        required=True,
        help="bytes kept on bookies: 1048576, 512K, 10M, 1G; 0: offload every closed ledger; "
        "-1: never",
        environ=environ,
    )
    verb(
        namespaces,
        "get-offload-threshold",
        _namespaces_get_offload_threshold,
        "show the namespace's offload threshold as JSON (-1: automatic offload off)",
        ("namespace", "TENANT/NAMESPACE"),
    )
    lag = verb(
        namespaces,
        "set-offload-deletion-lag",
        _namespaces_set_offload_deletion_lag,
        "keep a ledger's bookie copy this long after its offload",
        ("namespace", "TENANT/NAMESPACE"),
    )
    add_option(
        lag,
        "-l",
        "--lag",
        type=parse_duration_ms,
        required=True,
        help="500ms, 30s, 10m, 4h, 1d, or milliseconds",
        environ=environ,
    )
    verb(
        namespaces,
        "get-offload-deletion-lag",
        _namespaces_get_offload_deletion_lag,
        "show the offload deletion lag in effect as JSON",
        ("namespace", "TENANT/NAMESPACE"),
    )

    unload = verb(
        namespaces,
        "unload",
        _namespaces_unload,
        "release a namespace's bundles (or one with --bundle); they are reassigned on next use",
        ("namespace", "TENANT/NAMESPACE"),
    )
    add_option(
        unload, "-b", "--bundle", help="one bundle, e.g. 0x00000000_0x40000000", environ=environ
    )
    verb(
        namespaces,
        "bundles",
        _namespaces_bundles,
        "list a namespace's bundles and their owners, one per line",
        ("namespace", "TENANT/NAMESPACE"),
    )
    split = verb(
        namespaces,
        "split-bundle",
        _namespaces_split_bundle,
        "split a bundle's hash range in two; prints the bundles after the split",
        ("namespace", "TENANT/NAMESPACE"),
    )
    add_option(split, "-b", "--bundle", required=True, help="the bundle to split", environ=environ)

    brokers = groups.add_parser("brokers", help="brokers").add_subparsers(
        dest="verb", metavar="VERB", required=True
    )
    verb(brokers, "list", _brokers_list, "list the live brokers with their load, one JSON per line")
    verb(
        brokers,
        "get-runtime-config",
        _brokers_get_runtime_config,
        "print the effective configuration of the broker that answers as JSON (secrets masked)",
    )

    bookies = groups.add_parser("bookies", help="bookies").add_subparsers(
        dest="verb", metavar="VERB", required=True
    )
    verb(
        bookies,
        "list",
        _bookies_list,
        "show the bookies, which are available, and the under-replicated ledger count as JSON",
    )
    verb(
        bookies,
        "decommission",
        _bookies_decommission,
        "forget a stopped bookie's identity once no ledger needs it",
        ("bookie", "HOST:PORT"),
    )

    topics = groups.add_parser("topics", help="topics").add_subparsers(
        dest="verb", metavar="VERB", required=True
    )
    verb(
        topics, "list", _topics_list, "list a namespace's topics", ("namespace", "TENANT/NAMESPACE")
    )
    verb(topics, "create", _topics_create, "create a topic", ("topic", "TOPIC"))
    partitioned = verb(
        topics,
        "create-partitioned-topic",
        _topics_create_partitioned,
        "create a topic of N partitions (TOPIC-partition-0 .. N-1)",
        ("topic", "TOPIC"),
    )
    add_option(
        partitioned,
        "-p",
        "--partitions",
        type=int,
        required=True,
        help="number of partitions",
        environ=environ,
    )
    verb(topics, "delete", _topics_delete, "delete a topic", ("topic", "TOPIC"), force=True)
    verb(
        topics,
        "unload",
        _topics_unload,
        "close the topic on its broker; the next use loads it again",
        ("topic", "TOPIC"),
    )
    verb(topics, "stats", _topics_stats, "show a topic's statistics as JSON", ("topic", "TOPIC"))
    verb(
        topics,
        "stats-internal",
        _topics_stats_internal,
        "show a topic's ledgers (entries, size, bookies, offload state) as JSON",
        ("topic", "TOPIC"),
    )
    offload = verb(
        topics,
        "offload",
        _topics_offload,
        "offload the topic's closed ledgers to object storage, in the background",
        ("topic", "TOPIC"),
    )
    add_option(
        offload,
        "-s",
        "--size-threshold",
        type=parse_size_bytes,
        help="keep this many bytes on bookies and offload older closed ledgers "
        "(default: offload every closed ledger)",
        environ=environ,
    )
    offload_status = verb(
        topics,
        "offload-status",
        _topics_offload_status,
        "show the topic's offload status as one JSON object "
        "(status NOT_RUN, RUNNING, SUCCESS or ERROR)",
        ("topic", "TOPIC"),
    )
    add_option(
        offload_status,
        "-w",
        "--wait",
        action="store_true",
        default=False,
        help="wait while the offload is RUNNING",
        environ=environ,
    )
    add_option(
        offload_status,
        "--wait-timeout-seconds",
        type=float,
        default=300.0,
        help="stop waiting after this long",
        environ=environ,
    )
    verb(
        topics,
        "lookup",
        _topics_lookup,
        "print the host:port of the broker that serves the topic",
        ("topic", "TOPIC"),
    )
    verb(
        topics,
        "partitioned-lookup",
        _topics_partitioned_lookup,
        "print each partition of a partitioned topic and the host:port serving it",
        ("topic", "TOPIC"),
    )
    add_subscription_verbs(topics, verb, environ)
    add_permission_verbs(tenants, namespaces, topics, verb, environ)
    add_policy_verbs(namespaces, verb, environ)
    add_topic_policy_verbs(topics, verb, environ)
    add_compaction_verbs(namespaces, topics, verb, environ)
