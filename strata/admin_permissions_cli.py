"""``strata admin`` verbs of authorization (pulsar-admin's names):
``tenants update --admin-roles``; ``namespaces grant-permission``, ``revoke-permission``,
``permissions``, ``grant-subscription-permission``, ``revoke-subscription-permission``,
``subscription-permissions``; ``topics grant-permission``, ``revoke-permission``,
``permissions``. Permissions print as JSON, ``{role: [action, ...]}`` as pulsar-admin does."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, TypeAlias

from strata.naming import NamespaceName, TopicName, parse_tenant
from strata.options import add_option
from strata.v1 import admin_pb2

if TYPE_CHECKING:
    from strata.admin_cli import _Admin

Verb = Callable[..., argparse.ArgumentParser]
SubParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def _comma_list(text: str | None) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def _target(args: argparse.Namespace) -> str:
    if getattr(args, "namespace", None) is not None:
        return NamespaceName.parse(args.namespace).resource_name
    return str(TopicName.parse(args.topic))


def _print_roles(permissions: admin_pb2.Permissions) -> None:
    roles = {role: list(held.actions) for role, held in permissions.roles.items()}
    print(json.dumps(roles, indent=2, sort_keys=True))


def _tenants_update(admin: _Admin, args: argparse.Namespace) -> None:
    tenant = admin_pb2.Tenant(
        name=f"tenants/{parse_tenant(args.name)}",
        admin_roles=_comma_list(args.admin_roles),
        allowed_clusters=_comma_list(args.allowed_clusters),
    )
    admin.stub.UpdateTenant(admin_pb2.UpdateTenantRequest(tenant=tenant), timeout=admin.timeout_s)


def _grant(admin: _Admin, args: argparse.Namespace) -> None:
    admin.stub.GrantPermission(
        admin_pb2.GrantPermissionRequest(
            name=_target(args), role=args.role, actions=_comma_list(args.actions)
        ),
        timeout=admin.timeout_s,
    )


def _revoke(admin: _Admin, args: argparse.Namespace) -> None:
    admin.stub.RevokePermission(
        admin_pb2.RevokePermissionRequest(name=_target(args), role=args.role),
        timeout=admin.timeout_s,
    )


def _permissions(admin: _Admin, args: argparse.Namespace) -> None:
    _print_roles(
        admin.stub.GetPermissions(
            admin_pb2.GetPermissionsRequest(name=_target(args)), timeout=admin.timeout_s
        )
    )


def _grant_subscription(admin: _Admin, args: argparse.Namespace) -> None:
    admin.stub.GrantSubscriptionPermission(
        admin_pb2.GrantSubscriptionPermissionRequest(
            name=_target(args), subscription=args.subscription, roles=_comma_list(args.roles)
        ),
        timeout=admin.timeout_s,
    )


def _revoke_subscription(admin: _Admin, args: argparse.Namespace) -> None:
    admin.stub.RevokeSubscriptionPermission(
        admin_pb2.RevokeSubscriptionPermissionRequest(
            name=_target(args), subscription=args.subscription, role=args.role
        ),
        timeout=admin.timeout_s,
    )


def _subscription_permissions(admin: _Admin, args: argparse.Namespace) -> None:
    permissions = admin.stub.GetPermissions(
        admin_pb2.GetPermissionsRequest(name=_target(args)), timeout=admin.timeout_s
    )
    restricted = {name: list(held.roles) for name, held in permissions.subscriptions.items()}
    print(json.dumps(restricted, indent=2, sort_keys=True))


def add_permission_verbs(
    tenants: SubParsers,
    namespaces: SubParsers,
    topics: SubParsers,
    verb: Verb,
    environ: Mapping[str, str] | None,
) -> None:
    """Register the authorization verbs under ``strata admin tenants|namespaces|topics``."""

    def option(parser: argparse.ArgumentParser, flag: str, text: str) -> argparse.ArgumentParser:
        add_option(parser, flag, required=True, help=text, environ=environ)
        return parser

    update = verb(
        tenants,
        "update",
        _tenants_update,
        "replace a tenant's admin roles and allowed clusters",
        ("name", "TENANT"),
    )
    add_option(update, "-r", "--admin-roles", help="comma-separated admin roles", environ=environ)
    add_option(update, "-c", "--allowed-clusters", help="comma-separated clusters", environ=environ)

    for group, positional in (
        (namespaces, ("namespace", "TENANT/NAMESPACE")),
        (topics, ("topic", "TOPIC")),
    ):
        grant = verb(
            group,
            "grant-permission",
            _grant,
            "grant a role actions (produce, consume); they replace what it held here",
            positional,
        )
        option(grant, "--role", "the role granted")
        option(grant, "--actions", "comma-separated actions: produce, consume")
        option(
            verb(group, "revoke-permission", _revoke, "remove a role's grant here", positional),
            "--role",
            "the role whose grant is removed",
        )
        verb(group, "permissions", _permissions, "show the grants in effect as JSON", positional)

    namespace = ("namespace", "TENANT/NAMESPACE")
    grant_subscription = verb(
        namespaces,
        "grant-subscription-permission",
        _grant_subscription,
        "restrict a subscription name to roles (added to its roles)",
        namespace,
    )
    option(grant_subscription, "--subscription", "the subscription name")
    option(grant_subscription, "--roles", "comma-separated roles")
    revoke_subscription = verb(
        namespaces,
        "revoke-subscription-permission",
        _revoke_subscription,
        "remove a role from a subscription's roles",
        namespace,
    )
    option(revoke_subscription, "--subscription", "the subscription name")
    option(revoke_subscription, "--role", "the role removed")
    verb(
        namespaces,
        "subscription-permissions",
        _subscription_permissions,
        "show the restricted subscriptions and their roles as JSON",
        namespace,
    )
