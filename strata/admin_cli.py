"""``strata admin``: pulsar-admin's tenants, namespaces and topics verbs over ``AdminService``.

Each verb is one admin call (lists page through ``next_page_token``). Lists print one item
per line (``public``, ``public/default``, ``persistent://public/default/t``); objects print
as JSON with the proto field names; deletes print nothing. A failed call prints
``error: <CODE>: <message>`` on stderr and exits 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message as ProtoMessage

from strata.client._connection import channel_options, parse_service_url
from strata.naming import NamespaceName, TopicName, parse_tenant
from strata.options import add_option
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
        self.channel = grpc.insecure_channel(
            parse_service_url(args.service_url), options=channel_options()
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
            parent=f"tenants/{namespace.tenant}", namespace_id=namespace.namespace
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


def _namespaces_get_persistence(admin: _Admin, args: argparse.Namespace) -> None:
    name = NamespaceName.parse(args.namespace).resource_name
    namespace = admin.stub.GetNamespace(
        admin_pb2.GetNamespaceRequest(name=name), timeout=admin.timeout_s
    )
    _print_json(namespace.persistence)


def _bookies_list(admin: _Admin, args: argparse.Namespace) -> None:
    response = admin.stub.ListBookies(admin_pb2.ListBookiesRequest(), timeout=admin.timeout_s)
    _print_json(response, with_defaults=True)


def _bookies_decommission(admin: _Admin, args: argparse.Namespace) -> None:
    admin.stub.DecommissionBookie(
        admin_pb2.DecommissionBookieRequest(id=args.bookie), timeout=admin.timeout_s
    )


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


def _run_admin(args: argparse.Namespace) -> int:
    handler: _Handler = args.admin_handler
    admin = _Admin(args)
    try:
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
    verb(
        namespaces,
        "create",
        _namespaces_create,
        "create a namespace",
        ("namespace", "TENANT/NAMESPACE"),
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
    verb(
        namespaces,
        "get-persistence",
        _namespaces_get_persistence,
        "show the namespace's E/Qw/Qa as JSON (empty: the broker defaults)",
        ("namespace", "TENANT/NAMESPACE"),
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
    verb(topics, "stats", _topics_stats, "show a topic's statistics as JSON", ("topic", "TOPIC"))
