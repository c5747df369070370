"""The console is safe by default (issue 16 item 4), against real standalones in a browser.

* Hostile names and contents — subscriptions named as HTML, keys, properties and payloads
  holding script, a route naming a topic ``<img onerror>`` — show as text: no script of
  theirs runs (``window.__xss`` stays unset) and no element of theirs is made.
* Every answer carries the Content-Security-Policy; the page makes no request off its origin
  and logs no violation.
* Read-only unless ``--web-admin-actions``: no action buttons, and the API refuses actions
  with 403; without ``--web-enabled`` the port serves metrics only, as before.
* With authentication on, the page asks for a token, keeps it in the tab only (no cookie is
  ever set) and sends it with each call: a bad token is refused (the form comes back with the
  reason), a role without the rights sees the refusal, a superuser sees the cluster.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import grpc
import jwt
import pytest
from selenium import webdriver

import strata
from strata.v1 import admin_pb2, admin_pb2_grpc
from tests.console.browser import Page
from tests.harness import Standalone

pytestmark = pytest.mark.integration

TOPIC = "persistent://public/default/odd:name=1.a-b_c"
HOSTILE_SUBSCRIPTIONS = [
    '<img src=x onerror="window.__xss=1">',
    '"><svg onload=window.__xss=2>',
    "'-window.__xss=3-'",
]
HOSTILE_PAYLOAD = "<script>window.__xss=4</script><img src=x onerror=window.__xss=5>"
HOSTILE_KEY = "<b onmouseover=window.__xss=6>key</b>"
HOSTILE_PROPERTY = ("<i>name</i>", "<svg onload=window.__xss=7>")
CSP = "default-src 'none'; script-src 'self'"
OFFLOADED = "persistent://public/default/offloaded"


def http(
    url: str, *, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


@pytest.fixture(scope="module")
def open_console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Standalone]:
    """A standalone with the console and its actions on, holding hostile names."""
    standalone = Standalone(
        tmp_path_factory.mktemp("console-open") / "data",
        "--metrics-port",
        "0",
        "--web-enabled",
        "true",
        "--web-admin-actions",
        "true",
        "--offload-driver",
        "filesystem",
        "--managed-ledger-max-entries-per-ledger",
        "10",
    ).start()
    try:
        with strata.Client(standalone.address, operation_timeout_seconds=30) as client:
            for name in ("keep", "anchor"):  # "anchor" never moves: nothing is trimmed
                client.subscribe(OFFLOADED, name, consumer_type=strata.ConsumerType.Shared).close()
            producer = client.create_producer(OFFLOADED, batching_enabled=False)
            for index in range(35):
                producer.send(b"o%d" % index)
            producer.close()
            for name in HOSTILE_SUBSCRIPTIONS:
                client.subscribe(TOPIC, name, consumer_type=strata.ConsumerType.Shared).close()
            producer = client.create_producer(TOPIC, batching_enabled=False)
            producer.send(
                HOSTILE_PAYLOAD.encode(),
                partition_key=HOSTILE_KEY,
                properties=dict([HOSTILE_PROPERTY]),
            )
            producer.close()
        with grpc.insecure_channel(standalone.address) as channel:
            admin_pb2_grpc.AdminServiceStub(channel).CreatePartitionedTopic(
                admin_pb2.CreatePartitionedTopicRequest(
                    name="persistent://public/default/parted", partitions=3
                ),
                timeout=30,
            )
        yield standalone
    finally:
        standalone.stop()


def _page(browser: webdriver.Chrome, server: Standalone) -> Page:
    return Page(browser, f"http://127.0.0.1:{server.web_port()}")


def _no_script_ran(page: Page) -> None:
    assert page.script("return window.__xss === undefined") is True
    assert page.script("return document.querySelectorAll('img[src=x], svg, b, i').length") == 0
    # The page's own two scripts and nothing else.
    assert page.attributes("script", "src") == ["/static/uplot.iife.min.js", "/static/console.js"]


def test_hostile_names_and_contents_show_as_text(
    browser: webdriver.Chrome, open_console: Standalone
) -> None:
    page = _page(browser, open_console)
    page.open("topic/" + quote(TOPIC, safe=""))
    page.wait(lambda d: len(page.texts("#subscriptions tbody tr")) == 3, "3 subscriptions")
    assert sorted(page.texts("#subscriptions td.name a")) == sorted(HOSTILE_SUBSCRIPTIONS)
    _no_script_ran(page)
    page.screenshot("xss-topic")
    # Follow the hostile subscription's own link: the route encodes it, the page shows it.
    page.script(
        "[...document.querySelectorAll('#subscriptions td.name a')]"
        ".find((a) => a.textContent === arguments[0]).click()",
        HOSTILE_SUBSCRIPTIONS[0],
    )
    page.wait(lambda d: page.text("h1") == HOSTILE_SUBSCRIPTIONS[0], "the subscription's page")
    page.element("#peek").click()
    page.wait(lambda d: page.texts("#peeked pre.payload") == [HOSTILE_PAYLOAD], "the payload")
    row = page.texts("#peeked tbody tr td")
    assert HOSTILE_KEY in row
    assert f"{HOSTILE_PROPERTY[0]}={HOSTILE_PROPERTY[1]}" in row
    _no_script_ran(page)
    page.screenshot("xss-peek")
    # A route naming a topic no broker accepts: the refusal quotes it, as text.
    page.open("topic/" + quote('<img src=x onerror="window.__xss=8">', safe=""))
    page.wait(lambda d: "may hold only" in page.text("#page-error"), "the refusal")
    assert "<img src=x" in page.text("#page-error")
    _no_script_ran(page)
    # The refused call itself (400) is the only error the browser logged: no CSP violation.
    assert [e for e in page.console_errors() if "status of 400" not in e] == []


def test_partitioned_topic_lists_its_partitions(
    browser: webdriver.Chrome, open_console: Standalone
) -> None:
    page = _page(browser, open_console)
    page.open("topic/" + quote("persistent://public/default/parted", safe=""))
    page.wait(lambda d: len(page.texts("#partitions li")) == 3, "3 partitions")
    assert page.texts("#partitions li") == [
        f"persistent://public/default/parted-partition-{i}" for i in range(3)
    ]


def test_offload_and_reset_cursor_from_the_page(
    browser: webdriver.Chrome, open_console: Standalone
) -> None:
    page = _page(browser, open_console)
    page.open("topic/" + quote(OFFLOADED, safe=""))
    page.wait(lambda d: len(page.texts("#ledgers tbody tr")) == 4, "4 ledgers of 10 entries")
    page.element("#offload").click()
    page.wait(lambda d: "offload done" in page.text("#action-result"), "offload started")
    page.wait(
        lambda d: page.texts("#ledgers tbody tr td:nth-child(5)") == ["COMPLETE"] * 3 + ["—"],
        "the 3 closed ledgers offloaded, the open one not",
    )
    page.screenshot("offloaded")
    page.open(f"subscription/{quote(OFFLOADED, safe='')}/keep")
    page.wait(lambda d: page.text("#subscription-backlog .value") == "35", "backlog 35")
    skip = page.element("#skip-count")
    skip.clear()
    skip.send_keys("20")
    page.element("#skip").click()
    page.wait(lambda d: page.text("#subscription-backlog .value") == "15", "backlog 15")
    # To a message id (the last one acknowledged): that message comes next again.
    page.element("#reset-to").send_keys(page.text(".stat:last-child .value"))
    page.element("#reset-cursor").click()
    page.wait(lambda d: "reset-cursor done" in page.text("#action-result"), "reset")
    # The page re-reads the subscription after the action: wait for it, do not race it.
    page.wait(lambda d: page.text("#subscription-backlog .value") == "16", "backlog 16")
    # Back to the start of time (an empty field): every message again, read from the
    # offloaded ledgers where they are.
    page.element("#reset-to").clear()
    page.element("#reset-cursor").click()
    page.wait(lambda d: page.text("#subscription-backlog .value") == "35", "backlog 35 again")
    page.element("#peek").click()
    page.wait(lambda d: page.texts("#peeked pre.payload")[:2] == ["o0", "o1"], "from the start")
    assert page.console_errors() == []


def test_every_answer_carries_the_security_headers(open_console: Standalone) -> None:
    base = f"http://127.0.0.1:{open_console.web_port()}"
    for path in ("/", "/static/console.js", "/api/session", "/api/overview", "/api/nope"):
        status, headers, _ = http(base + path)
        assert status in (200, 404), path
        assert headers["Content-Security-Policy"].startswith(CSP), path
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["X-Frame-Options"] == "DENY"
        assert "Set-Cookie" not in headers
    # Files outside the fixed list are not served, however the path is spelled.
    for path in ("/static/../app.py", "/static/%2e%2e/app.py", "/static/app.py", "/etc/passwd"):
        assert http(base + path)[0] == 404, path
    # Actions take a JSON body (a cross-site form cannot send one) and a POST.
    peek = base + "/api/actions/peek"
    assert http(peek, body=b"topic=x", headers={"Content-Type": "text/plain"})[0] == 415
    assert http(peek, body=b"{", headers={"Content-Type": "application/json"})[0] == 400
    assert http(peek)[0] == 405
    assert http(base + "/api/overview", body=b"{}")[0] == 405
    status, _, body = http(
        peek,
        body=json.dumps({"topic": TOPIC, "subscription": "nope", "count": 1}).encode(),
        headers={"Content-Type": "application/json"},
    )
    assert status == 404 and json.loads(body)["error"]["code"] == "NOT_FOUND"
    # The metrics still answer on the same port.
    status, _, body = http(base + "/metrics")
    assert status == 200 and b"strata_" in body


def test_read_only_by_default_and_off_unless_enabled(
    tmp_path: Path, browser: webdriver.Chrome
) -> None:
    read_only = Standalone(tmp_path / "ro", "--metrics-port", "0", "--web-enabled", "true")
    read_only.start()
    try:
        with strata.Client(read_only.address, operation_timeout_seconds=30) as client:
            client.subscribe(TOPIC, "s").close()
        page = _page(browser, read_only)
        page.open("topic/" + quote(TOPIC, safe=""))
        page.wait(lambda d: page.texts('#subscriptions tr[data-subscription="s"]'), "the topic")
        assert page.texts("#unload") == [] and page.texts("#offload") == []
        page.open(f"subscription/{quote(TOPIC, safe='')}/s")
        page.wait(lambda d: page.texts("#subscription-backlog"), "the subscription")
        assert page.texts("#peek") == [] and page.texts("#clear-backlog") == []
        base = f"http://127.0.0.1:{read_only.web_port()}"
        status, _, body = http(
            base + "/api/actions/clear-backlog",
            body=json.dumps({"topic": TOPIC, "subscription": "s"}).encode(),
            headers={"Content-Type": "application/json"},
        )
        assert status == 403 and json.loads(body)["error"]["code"] == "ACTIONS_DISABLED"
    finally:
        read_only.stop()
    plain = Standalone(tmp_path / "plain", "--metrics-port", "0").start()
    try:
        assert plain.web_port() == -1
        status, _, body = http(f"http://127.0.0.1:{plain.metrics_port()}/")
        assert status == 200 and b"strata_" in body  # metrics, as before the console
        status, _, body = http(f"http://127.0.0.1:{plain.metrics_port()}/api/session")
        assert b"auth_required" not in body
    finally:
        plain.stop()


def test_a_console_port_of_its_own(tmp_path: Path) -> None:
    server = Standalone(
        tmp_path / "data", "--metrics-port", "0", "--web-enabled", "true", "--web-port", "0"
    ).start()
    try:
        web, metrics = server.web_port(), server.metrics_port()
        assert web != metrics
        assert http(f"http://127.0.0.1:{web}/api/session")[0] == 200
        assert b"auth_required" not in http(f"http://127.0.0.1:{metrics}/api/session")[2]
    finally:
        server.stop()


@pytest.fixture
def auth_console(tmp_path: Path) -> Iterator[tuple[Standalone, bytes]]:
    secret = tmp_path / "secret.key"
    secret.write_bytes(b"k" * 32)
    secret.chmod(0o600)
    server = Standalone(
        tmp_path / "data",
        "--metrics-port",
        "0",
        "--web-enabled",
        "true",
        "--web-admin-actions",
        "true",
        "--authentication-enabled",
        "true",
        "--authorization-enabled",
        "true",
        "--superuser-roles",
        "admin",
        "--auth-token-secret-key",
        f"file:{secret}",
    ).start()
    try:
        yield server, secret.read_bytes()
    finally:
        server.stop()


def test_a_token_is_asked_for_kept_in_the_tab_and_checked(
    browser: webdriver.Chrome, auth_console: tuple[Standalone, bytes]
) -> None:
    server, secret = auth_console
    admin = jwt.encode({"sub": "admin"}, secret, algorithm="HS256")
    viewer = jwt.encode({"sub": "viewer"}, secret, algorithm="HS256")
    page = _page(browser, server)
    page.open()
    page.script("sessionStorage.clear()")
    page.open()
    page.element("#token").send_keys("not-a-token")
    page.element("form.signin button").click()
    page.wait(lambda d: page.texts("form.signin .error"), "the refusal, with the form again")
    assert page.script("return sessionStorage.length") == 0
    page.element("#token").send_keys(viewer)
    page.element("form.signin button").click()
    page.wait(lambda d: "viewer" in page.text("#page-error"), "PERMISSION_DENIED for viewer")
    page.element("#sign-out").click()
    page.element("#token").send_keys(admin)
    page.element("form.signin button").click()
    page.wait(lambda d: len(page.texts("#bookies tr[data-bookie]")) == 1, "the overview")
    assert page.texts("#page-error") == []
    assert page.script("return document.cookie") == ""
    page.screenshot("signed-in")
    assert server.log_text().count(admin) == 0, "the token never reaches the log"
    page.script("sessionStorage.clear()")
    # Without a token the API refuses (the page's form is a convenience, not the guard).
    status, _, body = http(f"http://127.0.0.1:{server.web_port()}/api/overview")
    assert status == 401 and json.loads(body)["error"]["code"] == "UNAUTHENTICATED"
    status, _, body = http(
        f"http://127.0.0.1:{server.web_port()}/api/session",
        headers={"Authorization": "Basic abc"},
    )
    assert status == 401
    # The browser logged the refused calls (401, 403): nothing else.
    errors = [
        e for e in page.console_errors() if "status of 401" not in e and "status of 403" not in e
    ]
    assert errors == []
