"""The operator console's HTTP side: the page, its static files and its JSON API.

``Console`` is a WSGI application served on the broker's metrics port (or ``--web-port``) by
``strata.http_endpoint``. The page (``static/index.html`` + ``console.js``) is one document
that reads the JSON API every ``REFRESH_SECONDS``; the API reads the cluster through
``AdminCalls`` — the admin RPC with the token the page sends in ``Authorization: Bearer``,
so every number and every action passes the same authorization as the CLI. The console
never stores a token: the page keeps it in the browser tab's ``sessionStorage``.

Routes (GET unless said):

* ``/`` — the page; ``/static/NAME`` — its files (a fixed list, read once at start-up).
* ``/api/session`` — whether a token is needed and actions are on (no token needed).
* ``/api/overview`` — brokers, bookies, under-replicated ledgers, the metadata store's health
  as this broker sees it, the cluster's rates over 15 minutes, the 10 largest backlogs.
* ``/api/namespaces`` — tenants and their namespaces.
* ``/api/topics?namespace=TENANT/NS`` — every topic (of a namespace, or all) with its summary
  from the broker that serves it (topics not loaded anywhere have none).
* ``/api/topic?name=T`` — stats, ledgers (bookies, offload state), partitions.
* ``/api/subscription?topic=T&name=S`` — one subscription with its consumers.
* ``/api/bookie?id=HOST:PORT`` — one bookie.
* ``POST /api/actions/VERB`` (JSON body) — peek, skip, clear-backlog, reset-cursor, unload,
  offload; 403 unless ``--web-admin-actions``. A JSON body is required (a cross-site form
  cannot send one), and the token travels in a header, never in a cookie.

Every answer carries a Content-Security-Policy that allows only this origin's scripts, styles
and connections (no inline script, no third-party request), ``nosniff`` and no framing.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from google.protobuf.message import Message

from broker import admin_cluster
from broker.console.admin_calls import AdminCalls, ConsoleError
from broker.console.history import RateHistory
from broker.console.peek import peeked_messages
from broker.service import BrokerService
from strata.naming import InvalidNameError, TopicName
from strata.v1 import admin_pb2, messaging_pb2

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).with_name("static")
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
    ".svg": "image/svg+xml",
}
SECURITY_HEADERS = [
    (
        "Content-Security-Policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
]
REFRESH_SECONDS = 2.0
# Bounds of what one API answer gathers.
MAX_LISTED_TOPICS = 10_000
MAX_LISTED_NAMESPACES = 1_000
TOP_BACKLOG_TOPICS = 10
MAX_PEEK_ENTRIES = 100
MAX_ACTION_BODY_BYTES = 16 * 1024
# The metadata store's health probe: one read, answered within this or reported slow.
STORE_PROBE_TIMEOUT_SECONDS = 2.0
STORE_PROBE_KEY = "/console/probe"

Json = dict[str, Any]
StartResponse = Callable[..., Any]


def plain(message: Message) -> Json:
    """A message as JSON-ready values: every field (defaults too), 64-bit numbers as numbers
    (``json_format`` writes them as strings), bytes left out (the page shows no raw bytes)."""
    result: Json = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if field.type == field.TYPE_BYTES:
            continue
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            result[field.name] = {
                key: plain(item) if value_field.message_type is not None else item
                for key, item in value.items()
            }
        elif field.is_repeated:
            result[field.name] = [
                plain(item) if field.message_type is not None else item for item in value
            ]
        elif field.message_type is not None:
            result[field.name] = plain(value)
        else:
            result[field.name] = value
    return result


def _namespace_path(namespace: str) -> str:
    """``tenant/ns`` → ``tenants/tenant/namespaces/ns`` (as the admin API names it)."""
    tenant, _, local = namespace.partition("/")
    if not tenant or not local or "/" in local:
        raise ConsoleError(400, "INVALID_ARGUMENT", "namespace must be TENANT/NAMESPACE")
    return f"tenants/{tenant}/namespaces/{local}"


class Console:
    """The console of one broker. Lifecycle: built and ``start()``-ed on the broker's loop;
    served from the HTTP threads; ``close()`` stops the history task and the channels."""

    def __init__(
        self,
        broker: BrokerService,
        loop: asyncio.AbstractEventLoop,
        calls: AdminCalls,
        *,
        auth_required: bool,
        actions_enabled: bool,
    ) -> None:
        self._broker = broker
        self._loop = loop
        self._calls = calls
        self._auth_required = auth_required
        self._actions_enabled = actions_enabled
        self._history = RateHistory(self._sample_rates)
        self._static = {
            path.name: path.read_bytes()
            for path in STATIC_DIR.iterdir()
            if path.is_file() and path.suffix in CONTENT_TYPES
        }

    def start(self) -> Console:
        self._history.start()
        return self

    async def close(self) -> None:
        await self._history.close()
        await asyncio.to_thread(self._calls.close)

    async def _sample_rates(self) -> tuple[float, float]:
        brokers = await admin_cluster.list_brokers(self._broker)
        return (
            sum(b.msg_rate_in for b in brokers.brokers),
            sum(b.msg_rate_out for b in brokers.brokers),
        )

    # ---- WSGI ------------------------------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        method = environ.get("REQUEST_METHOD", "GET")
        try:
            if path.startswith("/api/"):
                return self._api(environ, method, path[len("/api/") :], start_response)
            if method not in ("GET", "HEAD"):
                raise ConsoleError(405, "METHOD_NOT_ALLOWED", "the page is read with GET")
            if path == "/":
                return self._file("index.html", start_response)
            if path.startswith("/static/"):
                return self._file(path[len("/static/") :], start_response)
            raise ConsoleError(404, "NOT_FOUND", "no such page")
        except ConsoleError as error:
            return _error(start_response, error)
        except Exception:
            log.exception("console: %s %s failed", method, path)
            return _error(start_response, ConsoleError(500, "INTERNAL", "internal error"))

    def _file(self, name: str, start_response: StartResponse) -> Iterable[bytes]:
        body = self._static.get(name)
        if body is None:
            raise ConsoleError(404, "NOT_FOUND", "no such file")
        start_response(
            "200 OK",
            [
                ("Content-Type", CONTENT_TYPES[Path(name).suffix]),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "no-cache"),
                *SECURITY_HEADERS,
            ],
        )
        return [body]

    def _api(
        self, environ: dict[str, Any], method: str, route: str, start_response: StartResponse
    ) -> Iterable[bytes]:
        token = _bearer_token(environ)
        query = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
        if route.startswith("actions/"):
            if method != "POST":
                raise ConsoleError(405, "METHOD_NOT_ALLOWED", "actions are POST requests")
            body = self._action(route[len("actions/") :], _json_body(environ), token)
        else:
            if method != "GET":
                raise ConsoleError(405, "METHOD_NOT_ALLOWED", "the API is read with GET")
            handler = self._READS.get(route)
            if handler is None:
                raise ConsoleError(404, "NOT_FOUND", f"no API {route!r}")
            body = handler(self, query, token)
        data = json.dumps(body, separators=(",", ":")).encode()
        start_response(
            "200 OK",
            [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(data))),
                ("Cache-Control", "no-store"),
                *SECURITY_HEADERS,
            ],
        )
        return [data]

    # ---- reads -----------------------------------------------------------------------------

    def _session(self, query: dict[str, str], token: str) -> Json:
        return {
            "auth_required": self._auth_required,
            "actions_enabled": self._actions_enabled,
            "broker": self._calls.home_address,
            "refresh_seconds": REFRESH_SECONDS,
        }

    def _overview(self, query: dict[str, str], token: str) -> Json:
        brokers = self._calls.call("ListBrokers", admin_pb2.ListBrokersRequest(), token)
        bookies = self._calls.call("ListBookies", admin_pb2.ListBookiesRequest(), token)
        summaries = self._summaries(brokers, token)
        largest = sorted(summaries, key=lambda s: (-s.msg_backlog, s.name))[:TOP_BACKLOG_TOPICS]
        return {
            "brokers": [plain(b) for b in brokers.brokers],
            "bookies": plain(bookies),
            "metadata_store": self._probe_store(),
            "rates": [list(point) for point in self._history.points()],
            "rate_in": sum(b.msg_rate_in for b in brokers.brokers),
            "rate_out": sum(b.msg_rate_out for b in brokers.brokers),
            "topics_served": len(summaries),
            "top_backlog": [plain(s) for s in largest],
            "time": time.time(),
        }

    def _summaries(
        self, brokers: admin_pb2.ListBrokersResponse, token: str
    ) -> list[admin_pb2.TopicSummary]:
        """Every served topic's summary, from each live broker (paged, bounded)."""
        summaries: list[admin_pb2.TopicSummary] = []
        for broker in brokers.brokers:
            summaries += self._paged(
                "ListTopicSummaries",
                admin_pb2.ListTopicSummariesRequest,
                "topics",
                token,
                MAX_LISTED_TOPICS - len(summaries),
                address=broker.address,
            )
        return summaries[:MAX_LISTED_TOPICS]

    def _paged(
        self,
        method: str,
        request: Callable[..., Message],
        field: str,
        token: str,
        limit: int,
        *,
        address: str | None = None,
    ) -> list[Any]:
        """The items (``field``) of a paged list call, page after page until the last or
        until ``limit`` are in (the page that reaches it is kept whole)."""
        items: list[Any] = []
        page_token = ""
        while len(items) < limit:
            page = self._calls.call(method, request(page_token=page_token), token, address=address)
            items.extend(getattr(page, field))
            page_token = page.next_page_token
            if not page_token:
                break
        return items

    def _probe_store(self) -> Json:
        async def read() -> None:
            await self._broker.store.get(STORE_PROBE_KEY)

        started = time.monotonic()
        future = asyncio.run_coroutine_threadsafe(read(), self._loop)
        try:
            future.result(timeout=STORE_PROBE_TIMEOUT_SECONDS)
        except FutureTimeout:
            future.cancel()
            return {"ok": False, "latency_ms": None, "error": "no answer within 2 s"}
        except Exception as exc:
            return {"ok": False, "latency_ms": None, "error": str(exc) or type(exc).__name__}
        return {"ok": True, "latency_ms": (time.monotonic() - started) * 1000, "error": ""}

    def _namespaces(self, query: dict[str, str], token: str) -> Json:
        tenants = self._paged_names("ListTenants", admin_pb2.ListTenantsRequest, "tenants", token)
        result = []
        for tenant in tenants:
            namespaces = self._paged_names(
                "ListNamespaces",
                functools.partial(admin_pb2.ListNamespacesRequest, parent=tenant),
                "namespaces",
                token,
            )
            result.append(
                {
                    "tenant": tenant.removeprefix("tenants/"),
                    "namespaces": [n.removeprefix(f"{tenant}/namespaces/") for n in namespaces],
                }
            )
        return {"tenants": result}

    def _paged_names(
        self, method: str, request: Callable[..., Message], field: str, token: str
    ) -> list[str]:
        items = self._paged(method, request, field, token, MAX_LISTED_NAMESPACES)
        return [item.name for item in items[:MAX_LISTED_NAMESPACES]]

    def _topics(self, query: dict[str, str], token: str) -> Json:
        if query.get("namespace"):
            namespaces = [_namespace_path(query["namespace"])]
        else:
            namespaces = [
                f"tenants/{t['tenant']}/namespaces/{n}"
                for t in self._namespaces({}, token)["tenants"]
                for n in t["namespaces"]
            ]
        names: list[str] = []
        for namespace in namespaces:
            topics = self._paged(
                "ListTopics",
                functools.partial(admin_pb2.ListTopicsRequest, parent=namespace),
                "topics",
                token,
                MAX_LISTED_TOPICS + 1 - len(names),  # one more says "truncated"
            )
            names.extend(t.name for t in topics)
        brokers = self._calls.call("ListBrokers", admin_pb2.ListBrokersRequest(), token)
        served = {s.name: s for s in self._summaries(brokers, token)}
        rows = []
        for name in names[:MAX_LISTED_TOPICS]:
            summary = served.get(name)
            row: Json = plain(summary) if summary is not None else {"name": name}
            row["loaded"] = summary is not None
            rows.append(row)
        return {"topics": rows, "truncated": len(names) > MAX_LISTED_TOPICS}

    def _topic(self, query: dict[str, str], token: str) -> Json:
        name = _topic_name(query.get("name", ""))
        partitions = self._partitions(name, token)
        if partitions:
            return {"name": name, "partitions": partitions, "stats": None, "ledgers": None}
        stats = self._calls.call(
            "GetTopicStats", admin_pb2.GetTopicStatsRequest(name=name), token, follow_owner=True
        )
        internal = self._calls.call(
            "GetTopicInternalStats",
            admin_pb2.GetTopicInternalStatsRequest(name=name),
            token,
            follow_owner=True,
        )
        return {
            "name": name,
            "partitions": [],
            "stats": plain(stats),
            "ledgers": plain(internal),
            "time": time.time(),
        }

    def _partitions(self, name: str, token: str) -> list[str]:
        """The partitions of a partitioned topic (none for a plain topic), through the
        messaging service's metadata call (any broker answers it)."""
        answer = self._calls.messaging_call(
            "GetPartitionedTopicMetadata",
            messaging_pb2.PartitionedTopicMetadataRequest(topic=name),
            token,
        )
        return [f"{name}-partition-{i}" for i in range(answer.partitions)]

    def _subscription(self, query: dict[str, str], token: str) -> Json:
        topic = _topic_name(query.get("topic", ""))
        name = query.get("name", "")
        stats = self._calls.call(
            "GetTopicStats", admin_pb2.GetTopicStatsRequest(name=topic), token, follow_owner=True
        )
        if name not in stats.subscriptions:
            raise ConsoleError(404, "NOT_FOUND", f"topic {topic} has no subscription {name!r}")
        return {
            "topic": topic,
            "name": name,
            "stats": plain(stats.subscriptions[name]),
            "time": time.time(),
        }

    def _bookie(self, query: dict[str, str], token: str) -> Json:
        bookie_id = query.get("id", "")
        bookies = self._calls.call("ListBookies", admin_pb2.ListBookiesRequest(), token)
        for bookie in bookies.bookies:
            if bookie.id == bookie_id:
                return {
                    "bookie": plain(bookie),
                    "auditor": bookies.auditor == bookie_id,
                    "under_replicated_ledger_count": bookies.under_replicated_ledger_count,
                }
        raise ConsoleError(404, "NOT_FOUND", f"no bookie {bookie_id!r}")

    _READS: dict[str, Callable[[Console, dict[str, str], str], Json]] = {
        "session": _session,
        "overview": _overview,
        "namespaces": _namespaces,
        "topics": _topics,
        "topic": _topic,
        "subscription": _subscription,
        "bookie": _bookie,
    }

    # ---- actions ---------------------------------------------------------------------------

    def _action(self, verb: str, body: Json, token: str) -> Json:
        if not self._actions_enabled:
            raise ConsoleError(
                403, "ACTIONS_DISABLED", "actions are off on this broker (--web-admin-actions)"
            )
        topic = _topic_name(str(body.get("topic", "")))
        subscription = str(body.get("subscription", ""))
        call = self._calls.call
        if verb == "peek":
            count = _int(body, "count", 1, MAX_PEEK_ENTRIES)
            answer = call(
                "PeekMessages",
                admin_pb2.PeekMessagesRequest(topic=topic, subscription=subscription, count=count),
                token,
                follow_owner=True,
            )
            return {"messages": peeked_messages(answer.entries)}
        if verb in ("skip", "clear-backlog"):
            count = 0 if verb == "clear-backlog" else _int(body, "count", 1, 1_000_000_000)
            answer = call(
                "SkipMessages",
                admin_pb2.SkipMessagesRequest(topic=topic, subscription=subscription, count=count),
                token,
                follow_owner=True,
            )
            return {"skipped_messages": answer.skipped_messages}
        if verb == "reset-cursor":
            request = admin_pb2.ResetCursorRequest(topic=topic, subscription=subscription)
            if "message_id" in body:
                request.message_id = str(body["message_id"])
            else:
                request.publish_time_ms = _int(body, "publish_time_ms", 0, 2**62)
            call("ResetCursor", request, token, follow_owner=True)
            return {}
        if verb == "unload":
            call("UnloadTopic", admin_pb2.UnloadTopicRequest(name=topic), token, follow_owner=True)
            return {}
        if verb == "offload":
            status = call(
                "OffloadTopic", admin_pb2.OffloadTopicRequest(name=topic), token, follow_owner=True
            )
            return {"status": plain(status)}
        raise ConsoleError(404, "NOT_FOUND", f"no action {verb!r}")


def _topic_name(text: str) -> str:
    try:
        return str(TopicName.parse(text))
    except InvalidNameError as exc:
        raise ConsoleError(400, "INVALID_ARGUMENT", str(exc)) from None


def _int(body: Json, key: str, low: int, high: int) -> int:
    value = body.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ConsoleError(400, "INVALID_ARGUMENT", f"{key} must be a whole number {low}..{high}")
    return value


def _bearer_token(environ: dict[str, Any]) -> str:
    header = str(environ.get("HTTP_AUTHORIZATION", ""))
    if not header:
        return ""
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ConsoleError(401, "UNAUTHENTICATED", "send the token as 'Authorization: Bearer …'")
    return token.strip()


def _json_body(environ: dict[str, Any]) -> Json:
    if not str(environ.get("CONTENT_TYPE", "")).startswith("application/json"):
        raise ConsoleError(415, "UNSUPPORTED_MEDIA_TYPE", "actions take a JSON body")
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise ConsoleError(400, "INVALID_ARGUMENT", "bad Content-Length") from None
    if not 0 < length <= MAX_ACTION_BODY_BYTES:
        raise ConsoleError(
            400, "INVALID_ARGUMENT", f"an action's body is 1..{MAX_ACTION_BODY_BYTES} bytes"
        )
    try:
        body = json.loads(environ["wsgi.input"].read(length))
    except (ValueError, UnicodeDecodeError):
        raise ConsoleError(400, "INVALID_ARGUMENT", "the body is not JSON") from None
    if not isinstance(body, dict):
        raise ConsoleError(400, "INVALID_ARGUMENT", "the body is a JSON object")
    return body


def _error(start_response: StartResponse, error: ConsoleError) -> Iterable[bytes]:
    data = json.dumps({"error": {"code": error.code, "message": error.message}}).encode()
    start_response(
        f"{error.status} {_REASONS.get(error.status, 'Error')}",
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(data))),
            ("Cache-Control", "no-store"),
            *SECURITY_HEADERS,
        ],
    )
    return [data]


_REASONS = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    415: "Unsupported Media Type",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
