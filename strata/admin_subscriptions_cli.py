"""``strata admin topics`` verbs about a topic's subscriptions and stored messages
(pulsar-admin's names): ``subscriptions``, ``create-subscription``, ``unsubscribe``,
``reset-cursor``, ``skip``, ``clear-backlog``, ``expire-messages``, ``peek-messages``,
``get-message-by-id``, ``examine-message``."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from strata.client import InvalidArgument
from strata.client._batch import decode_entry
from strata.naming import TopicName
from strata.options import add_option
from strata.v1 import admin_pb2

if TYPE_CHECKING:
    from strata.admin_cli import _Admin

Verb = Callable[..., argparse.ArgumentParser]


def _topic(args: argparse.Namespace) -> str:
    return str(TopicName.parse(args.topic))


def _subscriptions(admin: _Admin, args: argparse.Namespace) -> None:
    response = admin.stub.ListSubscriptions(
        admin_pb2.ListSubscriptionsRequest(topic=_topic(args)), timeout=admin.timeout_s
    )
    for name in response.subscriptions:
        print(name)


def _create(admin: _Admin, args: argparse.Namespace) -> None:
    admin.stub.CreateSubscription(
        admin_pb2.CreateSubscriptionRequest(
            topic=_topic(args), subscription=args.subscription, message_id=args.message_id
        ),
        timeout=admin.timeout_s,
    )


def _unsubscribe(admin: _Admin, args: argparse.Namespace) -> None:
    admin.stub.DeleteSubscription(
        admin_pb2.DeleteSubscriptionRequest(
            topic=_topic(args), subscription=args.subscription, force=args.force
        ),
        timeout=admin.timeout_s,
    )


def _reset_cursor(admin: _Admin, args: argparse.Namespace) -> None:
    from strata.admin_cli import parse_duration_ms

    request = admin_pb2.ResetCursorRequest(topic=_topic(args), subscription=args.subscription)
    if (args.time is None) == (args.message_id is None):
        raise InvalidArgument("reset-cursor needs one of --time and --message-id")
    if args.time is not None:
        request.publish_time_ms = int(time.time() * 1000) - parse_duration_ms(args.time)
    else:
        request.message_id = args.message_id
    admin.stub.ResetCursor(request, timeout=admin.timeout_s)


def _skip(admin: _Admin, args: argparse.Namespace, count: int) -> None:
    response = admin.stub.SkipMessages(
        admin_pb2.SkipMessagesRequest(
            topic=_topic(args), subscription=args.subscription, count=count
        ),
        timeout=admin.timeout_s,
    )
    print(f"skipped {response.skipped_messages} messages")


def _peek(admin: _Admin, args: argparse.Namespace) -> None:
    response = admin.stub.PeekMessages(
        admin_pb2.PeekMessagesRequest(
            topic=_topic(args), subscription=args.subscription, count=args.count
        ),
        timeout=admin.timeout_s,
    )
    for entry in response.entries:
        _print_entry(entry)


def _print_entry(entry: admin_pb2.PeekedEntry) -> None:
    """Each message of a stored entry as one JSON line."""
    decoded = decode_entry(entry.entry)
    for index, payload in enumerate(decoded.payloads):
        metadata = decoded.metadata[index] if decoded.metadata else None
        document: dict[str, Any] = {
            "message_id": f"{entry.ledger_id}:{entry.entry_id}"
            + (f":{index}" if len(decoded.payloads) > 1 else ""),
            "publish_time_ms": decoded.publish_time_ms,
            "producer_name": decoded.producer_name,
            "data": payload.decode("utf-8", errors="replace"),
        }
        if metadata is not None:
            if metadata.properties:
                document["properties"] = dict(metadata.properties)
            if metadata.HasField("partition_key"):
                document["key"] = metadata.partition_key
        print(json.dumps(document, sort_keys=True))


def _expire(admin: _Admin, args: argparse.Namespace) -> None:
    response = admin.stub.ExpireMessages(
        admin_pb2.ExpireMessagesRequest(
            topic=_topic(args),
            subscription=args.subscription,
            expire_time_seconds=args.expire_time_seconds,
        ),
        timeout=admin.timeout_s,
    )
    print(f"expired {response.skipped_messages} messages")


def _get_by_id(admin: _Admin, args: argparse.Namespace) -> None:
    request = admin_pb2.GetMessageRequest(
        topic=_topic(args), message_id=f"{args.ledger_id}:{args.entry_id}"
    )
    _print_entry(admin.stub.GetMessage(request, timeout=admin.timeout_s))


def _examine(admin: _Admin, args: argparse.Namespace) -> None:
    request = admin_pb2.GetMessageRequest(topic=_topic(args))
    if args.initial_position == "earliest":
        request.from_earliest = args.message_position
    else:
        request.from_latest = args.message_position
    _print_entry(admin.stub.GetMessage(request, timeout=admin.timeout_s))


def add_subscription_verbs(
    topics: argparse._SubParsersAction[argparse.ArgumentParser],
    verb: Verb,
    environ: Mapping[str, str] | None,
) -> None:
    """Register the subscription verbs under ``strata admin topics``."""

    def with_subscription(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        add_option(
            parser, "-s", "--subscription", required=True, help="subscription name", environ=environ
        )
        return parser

    verb(
        topics,
        "subscriptions",
        _subscriptions,
        "list the topic's subscriptions",
        ("topic", "TOPIC"),
    )
    create = with_subscription(
        verb(topics, "create-subscription", _create, "create a subscription", ("topic", "TOPIC"))
    )
    add_option(
        create,
        "-m",
        "--message-id",
        default="latest",
        help="where it starts: earliest, latest or LEDGER:ENTRY",
        environ=environ,
    )
    with_subscription(
        verb(
            topics,
            "unsubscribe",
            _unsubscribe,
            "delete a subscription (refused while consumers are connected, unless --force)",
            ("topic", "TOPIC"),
            force=True,
        )
    )
    reset = with_subscription(
        verb(
            topics,
            "reset-cursor",
            _reset_cursor,
            "move a subscription back or forth (its consumers reconnect)",
            ("topic", "TOPIC"),
        )
    )
    add_option(reset, "-t", "--time", help="to this long ago, e.g. 10m, 2h", environ=environ)
    add_option(reset, "-m", "--message-id", help="to this message: LEDGER:ENTRY", environ=environ)
    skip = with_subscription(
        verb(
            topics,
            "skip",
            lambda admin, args: _skip(admin, args, args.count),
            "acknowledge the next N messages without delivering them",
            ("topic", "TOPIC"),
        )
    )
    add_option(skip, "-n", "--count", type=int, required=True, help="messages", environ=environ)
    with_subscription(
        verb(
            topics,
            "clear-backlog",
            lambda admin, args: _skip(admin, args, 0),
            "acknowledge every message of the subscription",
            ("topic", "TOPIC"),
        )
    )
    peek = with_subscription(
        verb(
            topics,
            "peek-messages",
            _peek,
            "print the next messages as JSON lines (the cursor does not move)",
            ("topic", "TOPIC"),
        )
    )
    add_option(peek, "-n", "--count", type=int, default=1, help="entries (1..100)", environ=environ)
    expire = with_subscription(
        verb(
            topics,
            "expire-messages",
            _expire,
            "acknowledge the messages published more than N seconds ago",
            ("topic", "TOPIC"),
        )
    )
    add_option(expire, "--expire-time-seconds", type=int, required=True, help="N", environ=environ)
    by_id = verb(
        topics, "get-message-by-id", _get_by_id, "print one entry's messages", ("topic", "TOPIC")
    )
    add_option(by_id, "-l", "--ledger-id", type=int, required=True, help="ledger", environ=environ)
    add_option(by_id, "-e", "--entry-id", type=int, required=True, help="entry", environ=environ)
    examine = verb(
        topics,
        "examine-message",
        _examine,
        "print the entry at a place from the earliest or the latest (1 = the first or last)",
        ("topic", "TOPIC"),
    )
    add_option(
        examine,
        "-i",
        "--initial-position",
        choices=["earliest", "latest"],
        default="latest",
        help="count from here",
        environ=environ,
    )
    add_option(examine, "-m", "--message-position", type=int, default=1, help="N", environ=environ)
