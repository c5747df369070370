"""The console's HTTP layer without a cluster: routes, refusals and the JSON form of admin
messages (the pages themselves are tested in a browser, tests/console)."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Iterator
from typing import Any

import pytest

from broker.console.admin_calls import AdminCalls
from broker.console.app import SECURITY_HEADERS, Console, plain
from strata.v1 import admin_pb2


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def make_console(loop: asyncio.AbstractEventLoop, *, actions: bool) -> Console:
    # Nothing here reaches the broker or the admin port: 127.0.0.1:9 is never dialled.
    broker: Any = object()
    return Console(
        broker,
        loop,
        AdminCalls("127.0.0.1:9", None, timeout_s=1),
        auth_required=False,
        actions_enabled=actions,
    )


def request(
    console: Console,
    path: str,
    *,
    method: str = "GET",
    body: bytes = b"",
    headers: dict[str, str] | None = None,
) -> tuple[str, dict[str, str], bytes]:
    environ: dict[str, Any] = {
        "PATH_INFO": path.partition("?")[0],
        "QUERY_STRING": path.partition("?")[2],
        "REQUEST_METHOD": method,
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body),
    }
    for name, value in (headers or {}).items():
        key = name.upper().replace("-", "_")
        environ[key if key == "CONTENT_TYPE" else f"HTTP_{key}"] = value
    answer: dict[str, Any] = {}

    def start_response(status: str, response_headers: list[tuple[str, str]]) -> None:
        answer["status"], answer["headers"] = status, dict(response_headers)

    data = b"".join(console(environ, start_response))
    return answer["status"], answer["headers"], data


def error_code(data: bytes) -> str:
    return str(json.loads(data)["error"]["code"])


def test_the_page_and_its_files(loop: asyncio.AbstractEventLoop) -> None:
    console = make_console(loop, actions=False)
    status, headers, data = request(console, "/")
    assert status == "200 OK" and b"/static/console.js" in data
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert all(headers[name] == value for name, value in SECURITY_HEADERS)
    for name, kind in (
        ("console.js", "text/javascript"),
        ("uplot.iife.min.js", "text/javascript"),
        ("console.css", "text/css"),
        ("LICENSE-uPlot.txt", "text/plain"),
    ):
        status, headers, _ = request(console, f"/static/{name}")
        assert status == "200 OK" and headers["Content-Type"].startswith(kind), name
    for path in ("/static/../app.py", "/static/app.py", "/static/", "/favicon.ico", "/x/y"):
        status, _, data = request(console, path)
        assert status == "404 Not Found" and error_code(data) == "NOT_FOUND", path
    assert request(console, "/", method="POST")[0] == "405 Method Not Allowed"


def test_session_and_api_refusals(loop: asyncio.AbstractEventLoop) -> None:
    console = make_console(loop, actions=False)
    status, _, data = request(console, "/api/session")
    assert status == "200 OK"
    assert json.loads(data) == {
        "auth_required": False,
        "actions_enabled": False,
        "broker": "127.0.0.1:9",
        "refresh_seconds": 2.0,
    }
    assert error_code(request(console, "/api/nothing")[2]) == "NOT_FOUND"
    assert request(console, "/api/session", method="DELETE")[0] == "405 Method Not Allowed"
    status, _, data = request(console, "/api/session", headers={"Authorization": "Basic eA=="})
    assert status == "401 Unauthorized" and error_code(data) == "UNAUTHENTICATED"
    status, _, data = request(console, "/api/topic?name=a/b/c/d")
    assert status == "400 Bad Request" and error_code(data) == "INVALID_ARGUMENT"
    status, _, data = request(console, "/api/topics?namespace=no-slash")
    assert status == "400 Bad Request"


def test_actions_are_off_unless_enabled_and_take_json(loop: asyncio.AbstractEventLoop) -> None:
    body = json.dumps({"topic": "t", "subscription": "s", "count": 1}).encode()
    json_type = {"Content-Type": "application/json"}
    off = make_console(loop, actions=False)
    status, _, data = request(off, "/api/actions/peek", method="POST", body=body, headers=json_type)
    assert status == "403 Forbidden" and error_code(data) == "ACTIONS_DISABLED"
    on = make_console(loop, actions=True)
    assert request(on, "/api/actions/peek")[0] == "405 Method Not Allowed"
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    assert request(on, "/api/actions/peek", method="POST", body=body, headers=form)[0] == (
        "415 Unsupported Media Type"
    )
    for bad in (b"[1]", b"{", b"", b"x" * 20_000):
        status, _, _ = request(on, "/api/actions/peek", method="POST", body=bad, headers=json_type)
        assert status == "400 Bad Request", bad[:10]
    for count in (0, 101, "5", True, None):
        wrong = json.dumps({"topic": "t", "subscription": "s", "count": count}).encode()
        status, _, data = request(
            on, "/api/actions/peek", method="POST", body=wrong, headers=json_type
        )
        assert status == "400 Bad Request" and b"count must be" in data, count
    status, _, data = request(
        on, "/api/actions/format-disk", method="POST", body=body, headers=json_type
    )
    assert status == "404 Not Found"


def test_plain_keeps_every_field_and_64_bit_numbers() -> None:
    stats = admin_pb2.TopicStats(name="t", msg_in_counter=2**40, storage_size=7)
    stats.subscriptions["s"].consumers.add(consumer_name="c", available_permits=-1)
    document = plain(stats)
    assert document["msg_in_counter"] == 2**40  # a number, not json_format's string
    assert document["producers_count"] == 0  # defaults present
    (consumer,) = document["subscriptions"]["s"]["consumers"]
    assert consumer == {
        "consumer_name": "c",
        "available_permits": -1,
        "unacked_messages": 0,
        "msg_out_counter": 0,
        "bytes_out_counter": 0,
        "priority_level": 0,
        "blocked_on_unacked_messages": False,
    }
    entry = plain(admin_pb2.PeekedEntry(ledger_id=1, entry_id=2, entry=b"\x00"))
    assert entry == {"ledger_id": 1, "entry_id": 2}  # bytes are not shown
