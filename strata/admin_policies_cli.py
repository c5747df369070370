"""``strata admin namespaces`` verbs of the data-lifecycle policies (issue 13), pulsar-admin's
triples: ``set-deduplication NS --enable|--disable``, ``get-deduplication NS`` and
``remove-deduplication NS`` (back to the broker's ``--broker-deduplication-enabled``);
``set-retention NS --time 7d --size 10G`` (-1: no limit), ``get-retention``,
``remove-retention``; ``set-message-ttl NS --ttl 1h``, ``get-message-ttl``,
``remove-message-ttl``; ``set-backlog-quota NS --limit 10G [--limit-time 1d] --policy P``,
``get-backlog-quotas``, ``remove-backlog-quota``; ``set-publish-rate`` and
``set-dispatch-rate NS --msg-rate N --byte-rate B`` with their ``get-``/``remove-``. Times
take pulsar-admin's units (s, m,
h, d, w; plain = seconds for a TTL or a quota, minutes for retention), sizes K, M, G, T
(plain = MiB)."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeAlias

from google.protobuf import json_format

from strata.naming import NamespaceName, TopicName
from strata.options import add_option
from strata.v1 import admin_pb2

if TYPE_CHECKING:
    from strata.admin_cli import _Admin

Verb = Callable[..., argparse.ArgumentParser]
_Handler = Callable[["_Admin", argparse.Namespace], None]
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


TIME_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
SIZE_UNITS_MB = {"k": 1 / 1024, "m": 1, "g": 1024, "t": 1024 * 1024}


def parse_duration_s(text: str, plain_unit_s: int) -> int:
    """``30s``, ``10m``, ``1h``, ``7d``, ``2w`` or a plain number of ``plain_unit_s``; -1."""
    text = text.strip().lower()
    if text == "-1":
        return -1
    unit = TIME_UNITS_S.get(text[-1:]) if text[-1:].isalpha() else None
    number = text[:-1] if unit is not None else text
    if not number.isdigit():
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration: a number with s, m, h, d or w, or -1"
        )
    return int(number) * (unit if unit is not None else plain_unit_s)


def parse_size_mb(text: str) -> int:
    """``500M``, ``10G``, ``1T``, ``4096K`` or a plain number of MiB; -1."""
    text = text.strip().lower()
    if text == "-1":
        return -1
    unit = SIZE_UNITS_MB.get(text[-1:]) if text[-1:].isalpha() else None
    number = text[:-1] if unit is not None else text
    if not number.isdigit():
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a size: a number with K, M, G or T, or -1"
        )
    return max(1, round(int(number) * unit)) if unit is not None and int(number) else int(number)


def _set_retention(admin: _Admin, args: argparse.Namespace) -> None:
    minutes = args.time if args.time == -1 else args.time // 60
    retention = admin_pb2.RetentionPolicies(
        retention_time_in_minutes=minutes, retention_size_in_mb=args.size
    )
    admin.stub.SetRetention(
        admin_pb2.SetRetentionRequest(name=_name(args), retention=retention),
        timeout=admin.timeout_s,
    )


def _remove_retention(admin: _Admin, args: argparse.Namespace) -> None:
    admin.stub.SetRetention(
        admin_pb2.SetRetentionRequest(name=_name(args)), timeout=admin.timeout_s
    )


def _get_retention(admin: _Admin, args: argparse.Namespace) -> None:
    namespace = admin.stub.GetNamespace(
        admin_pb2.GetNamespaceRequest(name=_name(args)), timeout=admin.timeout_s
    )
    own = None
    if namespace.HasField("retention"):
        own = {
            "retention_time_in_minutes": namespace.retention.retention_time_in_minutes,
            "retention_size_in_mb": namespace.retention.retention_size_in_mb,
        }
    print(json.dumps(own, sort_keys=True))


def _set_message_ttl(admin: _Admin, args: argparse.Namespace) -> None:
    admin.stub.SetMessageTtl(
        admin_pb2.SetMessageTtlRequest(name=_name(args), ttl_seconds=args.ttl),
        timeout=admin.timeout_s,
    )


def _remove_message_ttl(admin: _Admin, args: argparse.Namespace) -> None:
    admin.stub.SetMessageTtl(
        admin_pb2.SetMessageTtlRequest(name=_name(args)), timeout=admin.timeout_s
    )


def _get_message_ttl(admin: _Admin, args: argparse.Namespace) -> None:
    namespace = admin.stub.GetNamespace(
        admin_pb2.GetNamespaceRequest(name=_name(args)), timeout=admin.timeout_s
    )
    own = namespace.message_ttl_seconds if namespace.HasField("message_ttl_seconds") else None
    print(json.dumps(own))


BACKLOG_QUOTA_POLICIES = (
    "producer_request_hold",
    "producer_exception",
    "consumer_backlog_eviction",
)


def _set_backlog_quota(admin: _Admin, args: argparse.Namespace) -> None:
    limit_bytes = args.limit if args.limit == -1 else args.limit * 1024 * 1024
    quota = admin_pb2.BacklogQuota(
        limit_size=limit_bytes, limit_time=args.limit_time, policy=args.policy
    )
    admin.stub.SetBacklogQuota(
        admin_pb2.SetBacklogQuotaRequest(name=_name(args), quota=quota), timeout=admin.timeout_s
    )


def _remove_backlog_quota(admin: _Admin, args: argparse.Namespace) -> None:
    admin.stub.SetBacklogQuota(
        admin_pb2.SetBacklogQuotaRequest(name=_name(args)), timeout=admin.timeout_s
    )


def _get_backlog_quotas(admin: _Admin, args: argparse.Namespace) -> None:
    namespace = admin.stub.GetNamespace(
        admin_pb2.GetNamespaceRequest(name=_name(args)), timeout=admin.timeout_s
    )
    own = None
    if namespace.HasField("backlog_quota"):
        quota = namespace.backlog_quota
        own = {"limit_size": quota.limit_size, "limit_time": quota.limit_time,
               "policy": quota.policy}  # fmt: skip
    print(json.dumps(own, sort_keys=True))


def _rate_verbs(kind: str) -> tuple[_Handler, _Handler, _Handler]:
    method = "SetPublishRate" if kind == "publish_rate" else "SetDispatchRate"
    request_type = getattr(admin_pb2, f"{method}Request")

    def set_rate(admin: _Admin, args: argparse.Namespace) -> None:
        rate = admin_pb2.RateLimit(msg_rate=args.msg_rate, byte_rate=args.byte_rate)
        getattr(admin.stub, method)(
            request_type(name=_name(args), rate=rate), timeout=admin.timeout_s
        )

    def remove_rate(admin: _Admin, args: argparse.Namespace) -> None:
        getattr(admin.stub, method)(request_type(name=_name(args)), timeout=admin.timeout_s)

    def get_rate(admin: _Admin, args: argparse.Namespace) -> None:
        namespace = admin.stub.GetNamespace(
            admin_pb2.GetNamespaceRequest(name=_name(args)), timeout=admin.timeout_s
        )
        own = None
        if namespace.HasField(kind):  # type: ignore[arg-type]
            rate = getattr(namespace, kind)
            own = {"msg_rate": rate.msg_rate, "byte_rate": rate.byte_rate}
        print(json.dumps(own, sort_keys=True))

    return set_rate, get_rate, remove_rate


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
    retention = verb(
        namespaces,
        "set-retention",
        _set_retention,
        "keep consumed data for a time and up to a size per topic (-1: no limit)",
        NAMESPACE,
    )
    add_option(
        retention,
        "--time",
        "-t",
        type=lambda text: parse_duration_s(text, 60),
        required=True,
        help="how long, e.g. 30m, 12h, 7d (plain: minutes; -1: no limit)",
        environ=environ,
    )
    add_option(
        retention,
        "--size",
        "-s",
        type=parse_size_mb,
        required=True,
        help="how much per topic, e.g. 500M, 10G (plain: MiB; -1: no limit)",
        environ=environ,
    )
    verb(
        namespaces,
        "get-retention",
        _get_retention,
        "show the namespace's retention policy (null: the broker defaults) as JSON",
        NAMESPACE,
    )
    verb(
        namespaces,
        "remove-retention",
        _remove_retention,
        "drop the namespace's retention policy (the broker defaults apply)",
        NAMESPACE,
    )
    ttl = verb(
        namespaces,
        "set-message-ttl",
        _set_message_ttl,
        "expire messages left unacknowledged longer than this",
        NAMESPACE,
    )
    add_option(
        ttl,
        "--ttl",
        type=lambda text: parse_duration_s(text, 1),
        required=True,
        help="e.g. 90s, 10m, 1h (plain: seconds; 0: never)",
        environ=environ,
    )
    verb(
        namespaces,
        "get-message-ttl",
        _get_message_ttl,
        "show the namespace's message TTL in seconds (null: the broker default)",
        NAMESPACE,
    )
    verb(
        namespaces,
        "remove-message-ttl",
        _remove_message_ttl,
        "drop the namespace's message TTL (the broker default applies)",
        NAMESPACE,
    )
    quota = verb(
        namespaces,
        "set-backlog-quota",
        _set_backlog_quota,
        "bound each topic's backlog by size and age, and say what happens over it",
        NAMESPACE,
    )
    add_option(
        quota,
        "--limit",
        "-l",
        type=parse_size_mb,
        default=-1,
        help="backlog size per topic, e.g. 500M, 10G (plain: MiB; -1: none)",
        environ=environ,
    )
    add_option(
        quota,
        "--limit-time",
        type=lambda text: parse_duration_s(text, 1),
        default=-1,
        help="age of the oldest unacknowledged message, e.g. 1h, 1d (plain: s; -1: none)",
        environ=environ,
    )
    add_option(
        quota,
        "--policy",
        "-p",
        choices=BACKLOG_QUOTA_POLICIES,
        required=True,
        help="what happens over quota",
        environ=environ,
    )
    verb(
        namespaces,
        "get-backlog-quotas",
        _get_backlog_quotas,
        "show the namespace's backlog quota (null: the broker defaults) as JSON",
        NAMESPACE,
    )
    verb(
        namespaces,
        "remove-backlog-quota",
        _remove_backlog_quota,
        "drop the namespace's backlog quota (the broker defaults apply)",
        NAMESPACE,
    )
    for kind, verb_name, what in (
        ("publish_rate", "publish-rate", "each topic accepts"),
        ("dispatch_rate", "dispatch-rate", "each subscription delivers"),
    ):
        set_rate, get_rate, remove_rate = _rate_verbs(kind)
        rate = verb(
            namespaces,
            f"set-{verb_name}",
            set_rate,
            f"limit the messages and bytes per second {what} (slowed, never refused)",
            NAMESPACE,
        )
        add_option(
            rate, "--msg-rate", "-m", type=int, default=-1,
            help="messages per second (-1: not limited)", environ=environ,
        )  # fmt: skip
        add_option(
            rate, "--byte-rate", "-b", type=int, default=-1,
            help="bytes per second (-1: not limited)", environ=environ,
        )  # fmt: skip
        verb(
            namespaces,
            f"get-{verb_name}",
            get_rate,
            f"show the namespace's {verb_name.replace('-', ' ')} (null: not limited) as JSON",
            NAMESPACE,
        )
        verb(
            namespaces,
            f"remove-{verb_name}",
            remove_rate,
            f"drop the namespace's {verb_name.replace('-', ' ')}",
            NAMESPACE,
        )


# ---- topic level: the same policies on one topic (SetTopicPolicies) ----------------------

TOPIC = ("topic", "TOPIC")


def _topic(args: argparse.Namespace) -> str:
    return str(TopicName.parse(args.topic))


def _set_topic(admin: _Admin, args: argparse.Namespace, policies: admin_pb2.TopicPolicies) -> None:
    admin.stub.SetTopicPolicies(
        admin_pb2.SetTopicPoliciesRequest(name=_topic(args), policies=policies),
        timeout=admin.timeout_s,
    )


def _topic_setter(policy: str) -> _Handler:
    def handler(admin: _Admin, args: argparse.Namespace) -> None:
        given = admin_pb2.TopicPolicies()
        if policy == "deduplication":
            given.deduplication_enabled = args.enable
        elif policy == "retention":
            minutes = args.time if args.time == -1 else args.time // 60
            given.retention.CopyFrom(
                admin_pb2.RetentionPolicies(
                    retention_time_in_minutes=minutes, retention_size_in_mb=args.size
                )
            )
        elif policy == "message_ttl":
            given.message_ttl_seconds = args.ttl
        elif policy == "backlog_quota":
            limit_bytes = args.limit if args.limit == -1 else args.limit * 1024 * 1024
            given.backlog_quota.CopyFrom(
                admin_pb2.BacklogQuota(
                    limit_size=limit_bytes, limit_time=args.limit_time, policy=args.policy
                )
            )
        else:
            getattr(given, policy).CopyFrom(
                admin_pb2.RateLimit(msg_rate=args.msg_rate, byte_rate=args.byte_rate)
            )
        _set_topic(admin, args, given)

    return handler


def _topic_remover(policy: str) -> _Handler:
    def handler(admin: _Admin, args: argparse.Namespace) -> None:
        admin.stub.SetTopicPolicies(
            admin_pb2.SetTopicPoliciesRequest(name=_topic(args), remove=[policy]),
            timeout=admin.timeout_s,
        )

    return handler


def _topic_get_policies(admin: _Admin, args: argparse.Namespace) -> None:
    policies = admin.stub.GetTopicPolicies(
        admin_pb2.GetTopicPoliciesRequest(name=_topic(args)), timeout=admin.timeout_s
    )
    document = json_format.MessageToDict(policies, preserving_proto_field_name=True)
    print(json.dumps(document, indent=2, sort_keys=True))


def add_topic_policy_verbs(
    topics: SubParsers, verb: Verb, environ: Mapping[str, str] | None
) -> None:
    """``strata admin topics set-*``/``remove-*`` of the lifecycle policies and
    ``get-policies``: the namespace verbs' options, on one topic."""

    def option(
        parser: argparse.ArgumentParser | argparse._ArgumentGroup, *flags: str, **kwargs: Any
    ) -> None:
        add_option(parser, *flags, environ=environ, **kwargs)

    dedup = verb(topics, "set-deduplication", _topic_setter("deduplication"),
                 "turn deduplication on or off for this topic", TOPIC)  # fmt: skip
    switch = dedup.add_mutually_exclusive_group(required=True)
    option(switch, "--enable", "-e", dest="enable", action="store_true", help="turn it on")
    option(switch, "--disable", "-d", dest="enable", action="store_false", help="turn it off")
    retention = verb(topics, "set-retention", _topic_setter("retention"),
                     "keep this topic's consumed data for a time and a size", TOPIC)  # fmt: skip
    option(retention, "--time", "-t", type=lambda t: parse_duration_s(t, 60), required=True,
           help="how long, e.g. 30m, 7d (plain: minutes; -1: no limit)")  # fmt: skip
    option(retention, "--size", "-s", type=parse_size_mb, required=True,
           help="how much, e.g. 500M, 10G (plain: MiB; -1: no limit)")  # fmt: skip
    ttl = verb(topics, "set-message-ttl", _topic_setter("message_ttl"),
               "expire this topic's messages unacknowledged this long", TOPIC)  # fmt: skip
    option(ttl, "--ttl", type=lambda t: parse_duration_s(t, 1), required=True,
           help="e.g. 90s, 1h (plain: seconds; 0: never)")  # fmt: skip
    quota = verb(topics, "set-backlog-quota", _topic_setter("backlog_quota"),
                 "bound this topic's backlog", TOPIC)  # fmt: skip
    option(quota, "--limit", "-l", type=parse_size_mb, default=-1,
           help="backlog size, e.g. 10G (plain: MiB; -1: none)")  # fmt: skip
    option(quota, "--limit-time", type=lambda t: parse_duration_s(t, 1), default=-1,
           help="age of the oldest unacknowledged message (plain: s; -1: none)")  # fmt: skip
    option(quota, "--policy", "-p", choices=BACKLOG_QUOTA_POLICIES, required=True,
           help="what happens over quota")  # fmt: skip
    for kind, name in (("publish_rate", "publish-rate"), ("dispatch_rate", "dispatch-rate")):
        rate = verb(topics, f"set-{name}", _topic_setter(kind),
                    f"limit this topic's {name.replace('-', ' ')}", TOPIC)  # fmt: skip
        option(rate, "--msg-rate", "-m", type=int, default=-1, help="messages per second")
        option(rate, "--byte-rate", "-b", type=int, default=-1, help="bytes per second")
    for policy, name in (
        ("deduplication", "deduplication"),
        ("retention", "retention"),
        ("message_ttl", "message-ttl"),
        ("backlog_quota", "backlog-quota"),
        ("publish_rate", "publish-rate"),
        ("dispatch_rate", "dispatch-rate"),
    ):
        text = f"drop this topic's {name.replace('-', ' ')} (back to its namespace's)"
        verb(topics, f"remove-{name}", _topic_remover(policy), text, TOPIC)
    verb(topics, "get-policies", _topic_get_policies,
         "show the topic's own policies as JSON (absent: its namespace's)", TOPIC)  # fmt: skip


# ---- compaction ----------------------------------------------------------------------------

# Polling of `compaction-status --wait`: bounded by --wait-timeout-seconds.
COMPACTION_WAIT_POLL_SECONDS = 0.5


def _print_compaction(status: admin_pb2.CompactionStatus) -> None:
    document = json_format.MessageToDict(
        status, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    print(json.dumps(document, indent=2, sort_keys=True))


def _compact(admin: _Admin, args: argparse.Namespace) -> None:
    _print_compaction(
        admin.stub.CompactTopic(
            admin_pb2.CompactTopicRequest(name=_topic(args)), timeout=admin.timeout_s
        )
    )


def _compaction_status(admin: _Admin, args: argparse.Namespace) -> None:
    request = admin_pb2.GetCompactionStatusRequest(name=_topic(args))
    status = admin.stub.GetCompactionStatus(request, timeout=admin.timeout_s)
    deadline = time.monotonic() + args.wait_timeout_seconds
    while args.wait and status.status == "RUNNING" and time.monotonic() < deadline:
        time.sleep(COMPACTION_WAIT_POLL_SECONDS)
        status = admin.stub.GetCompactionStatus(request, timeout=admin.timeout_s)
    _print_compaction(status)


def _set_compaction_threshold(admin: _Admin, args: argparse.Namespace) -> None:
    threshold = args.threshold if args.threshold <= 0 else args.threshold * 1024 * 1024
    admin.stub.SetCompactionThreshold(
        admin_pb2.SetCompactionThresholdRequest(name=_name(args), threshold_bytes=threshold),
        timeout=admin.timeout_s,
    )


def _remove_compaction_threshold(admin: _Admin, args: argparse.Namespace) -> None:
    admin.stub.SetCompactionThreshold(
        admin_pb2.SetCompactionThresholdRequest(name=_name(args)), timeout=admin.timeout_s
    )


def _get_compaction_threshold(admin: _Admin, args: argparse.Namespace) -> None:
    namespace = admin.stub.GetNamespace(
        admin_pb2.GetNamespaceRequest(name=_name(args)), timeout=admin.timeout_s
    )
    own = (
        namespace.compaction_threshold_bytes
        if namespace.HasField("compaction_threshold_bytes")
        else None
    )
    print(json.dumps(own))


def add_compaction_verbs(
    namespaces: SubParsers, topics: SubParsers, verb: Verb, environ: Mapping[str, str] | None
) -> None:
    """``topics compact``, ``topics compaction-status [--wait]``, ``namespaces
    set-compaction-threshold``/``get-``/``remove-``."""
    verb(topics, "compact", _compact, "compact the topic (latest message per key)", TOPIC)
    status = verb(
        topics, "compaction-status", _compaction_status, "show the last compaction", TOPIC
    )
    add_option(
        status, "--wait", action="store_true", default=False,
        help="wait while it is RUNNING", environ=environ,
    )  # fmt: skip
    add_option(
        status, "--wait-timeout-seconds", type=float, default=300.0,
        help="at most this long with --wait", environ=environ,
    )  # fmt: skip
    threshold = verb(
        namespaces,
        "set-compaction-threshold",
        _set_compaction_threshold,
        "compact automatically once this much follows the last compaction",
        NAMESPACE,
    )
    add_option(
        threshold, "--threshold", "-t", type=parse_size_mb, required=True,
        help="e.g. 100M, 1G (plain: MiB; 0: never)", environ=environ,
    )  # fmt: skip
    shown = "show the namespace's compaction threshold in bytes (null: the broker's)"
    verb(namespaces, "get-compaction-threshold", _get_compaction_threshold, shown, NAMESPACE)
    dropped = "drop the namespace's compaction threshold (the broker's applies)"
    verb(
        namespaces, "remove-compaction-threshold", _remove_compaction_threshold, dropped, NAMESPACE
    )
