"""``strata admin namespaces`` verbs of the data-lifecycle policies (issue 13), pulsar-admin's
triples: ``set-deduplication NS --enable|--disable``, ``get-deduplication NS`` and
``remove-deduplication NS`` (back to the broker's ``--broker-deduplication-enabled``)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, TypeAlias

from strata.naming import NamespaceName
from strata.options import add_option
from strata.v1 import admin_pb2

if TYPE_CHECKING:
    from strata.admin_cli import _Admin

Verb = Callable[..., argparse.ArgumentParser]
SubParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
NAMESPACE = ("namespace", "TENANT/NAMESPACE")


def _name(args: argparse.Namespace) -> str:
    return NamespaceName.parse(args.namespace).resource_name


def _set_deduplication(admin: _Admin, args: argparse.Namespace) -> None:
    admin.stub.SetDeduplication(
        admin_pb2.SetDeduplicationRequest(name=_name(args), enabled=args.enable),
        timeout=admin.timeout_s,
    )


def _remove_deduplication(admin: _Admin, args: argparse.Namespace) -> None:
    admin.stub.SetDeduplication(
        admin_pb2.SetDeduplicationRequest(name=_name(args)), timeout=admin.timeout_s
    )


def _get_deduplication(admin: _Admin, args: argparse.Namespace) -> None:
    namespace = admin.stub.GetNamespace(
        admin_pb2.GetNamespaceRequest(name=_name(args)), timeout=admin.timeout_s
    )
    policy = namespace.deduplication
    own = policy.enabled if policy.HasField("enabled") else None
    print(json.dumps({"enabled": own, "effective": policy.effective}, sort_keys=True))


def add_policy_verbs(namespaces: SubParsers, verb: Verb, environ: Mapping[str, str] | None) -> None:
    """Register the lifecycle policy verbs under ``strata admin namespaces``."""
    set_dedup = verb(
        namespaces,
        "set-deduplication",
        _set_deduplication,
        "turn message deduplication on or off for the namespace's topics",
        NAMESPACE,
    )
    switch = set_dedup.add_mutually_exclusive_group(required=True)
    add_option(
        switch, "--enable", "-e", dest="enable", action="store_true", help="turn it on",
        environ=environ,
    )  # fmt: skip
    add_option(
        switch, "--disable", "-d", dest="enable", action="store_false", help="turn it off",
        environ=environ,
    )  # fmt: skip
    verb(
        namespaces,
        "get-deduplication",
        _get_deduplication,
        "show the namespace's deduplication setting (null: the broker default) as JSON",
        NAMESPACE,
    )
    verb(
        namespaces,
        "remove-deduplication",
        _remove_deduplication,
        "drop the namespace's deduplication setting (the broker default applies)",
        NAMESPACE,
    )
