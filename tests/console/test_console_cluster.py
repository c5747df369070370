"""The operator console in a real browser against a real cluster with traffic (issue 16).

etcd + 3 bookies + 2 brokers, every broker with ``--web-enabled --web-admin-actions``; the
browser reads broker 0's console, so topics owned by broker 1 are reached through the
owner redirect and its topic summaries through its own admin port. Three topics get a
backlog of known size on subscription ``ops`` (300, 120, 20 messages); a fourth carries live
traffic (a producer at ~40 msg/s and a consumer) for the whole module. Each test loads a page,
waits (bounded) for the document to show what the cluster holds, and saves a screenshot
under ``data/screenshots/``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import grpc
import pytest
from selenium import webdriver

import strata
from strata.v1 import admin_pb2, admin_pb2_grpc
from tests.cluster import Cluster
from tests.console.browser import Page

pytestmark = pytest.mark.integration

NS = "public/default"
BIG, MID, SMALL = (f"persistent://{NS}/console-{n}" for n in ("big", "mid", "small"))
LIVE = f"persistent://{NS}/console-live"
BACKLOGS = {BIG: 300, MID: 120, SMALL: 20}
SUBSCRIPTION = "ops"
LIVE_RATE_PER_SECOND = 40
LIVE_MAX_SECONDS = 600  # the traffic thread's own bound, whatever the tests do


@dataclass
class Traffic:
    """A producer and a consumer on LIVE, on one thread, until ``stop`` (bounded)."""

    address: str
    stop: threading.Event = field(default_factory=threading.Event)
    sent: int = 0
    received: int = 0
    error: BaseException | None = None

    def run(self) -> None:
        try:
            with strata.Client(self.address, operation_timeout_seconds=30) as client:
                consumer = client.subscribe(
                    LIVE, "live", initial_position=strata.InitialPosition.Earliest
                )
                producer = client.create_producer(LIVE)
                deadline = LIVE_MAX_SECONDS * LIVE_RATE_PER_SECOND
                while not self.stop.wait(1 / LIVE_RATE_PER_SECOND) and self.sent < deadline:
                    producer.send_async(b"live %d" % self.sent, lambda *_: None)
                    self.sent += 1
                    try:
                        messages = consumer.receive_many(max_messages=100, timeout_millis=1)
                    except strata.Timeout:
                        continue
                    for message in messages:
                        consumer.acknowledge(message)
                        self.received += 1
                producer.close()
                consumer.close()
        except BaseException as exc:  # reported by the fixture's teardown
            self.error = exc


@dataclass
class ConsoleCluster:
    cluster: Cluster
    page: Page
    traffic: Traffic

    def admin(self) -> admin_pb2_grpc.AdminServiceStub:
        return admin_pb2_grpc.AdminServiceStub(grpc.insecure_channel(self.cluster.broker_address()))


def _fill_backlogs(address: str) -> None:
    with grpc.insecure_channel(address) as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        for topic in BACKLOGS:
            admin.CreateTopic(admin_pb2.CreateTopicRequest(name=topic), timeout=30)
    with strata.Client(address, operation_timeout_seconds=30) as client:
        for topic, count in BACKLOGS.items():
            # The subscription first (at the earliest entry): every message below is backlog.
            client.subscribe(topic, SUBSCRIPTION, consumer_type=strata.ConsumerType.Shared).close()
            producer = client.create_producer(topic, batching_enabled=False)
            for index in range(count):
                producer.send(b"%s message %d" % (topic.encode(), index))
            producer.close()


@pytest.fixture(scope="module")
def console(
    tmp_path_factory: pytest.TempPathFactory, browser: webdriver.Chrome
) -> Iterator[ConsoleCluster]:
    root: Path = tmp_path_factory.mktemp("console-cluster")
    with Cluster(
        root,
        bookies=3,
        brokers=2,
        bookie_args=["--metrics-port", "0"],
        broker_args=[
            "--metrics-port",
            "0",
            "--web-enabled",
            "true",
            "--web-admin-actions",
            "true",
        ],
    ) as cluster:
        _fill_backlogs(cluster.broker_address())
        traffic = Traffic(cluster.broker_address())
        thread = threading.Thread(target=traffic.run, name="console-traffic", daemon=True)
        thread.start()
        try:
            web = cluster.brokers[0].web_port()
            yield ConsoleCluster(cluster, Page(browser, f"http://127.0.0.1:{web}"), traffic)
        finally:
            traffic.stop.set()
            thread.join(timeout=60)
        assert traffic.error is None, traffic.error
        assert traffic.received > 0


def _route_topic(topic: str) -> str:
    return "topic/" + quote(topic, safe="")


def _number(text: str) -> float:
    return float(text.replace(",", "").split()[0])


def test_overview_shows_brokers_bookies_store_and_backlogs(console: ConsoleCluster) -> None:
    page = console.page
    page.open()
    page.wait(lambda d: len(page.texts("#bookies tr[data-bookie]")) == 3, "3 bookies listed")
    ids = set(page.attributes("#bookies tr[data-bookie]", "data-bookie"))
    assert ids == {console.cluster.bookie_id(i) for i in range(3)}
    assert all("available" in row for row in page.texts("#bookies tr[data-bookie]"))
    # Disk use comes from each bookie (GetBookieInfo): a journal is never empty.
    assert "0 B" not in page.texts("#bookies tr[data-bookie] td:nth-child(4)")
    assert len(page.texts("#brokers tbody tr")) == 2
    assert page.text("#metadata-store .value").startswith("ok")
    assert page.text("#under-replicated .value") == "0"
    # The largest backlog first, with its count.
    page.wait(
        lambda d: page.attributes("#top-backlog tbody tr", "data-topic")[:3] == [BIG, MID, SMALL],
        "the three backlogs, largest first",
    )
    assert "300" in page.texts("#top-backlog tbody tr")[0]
    # The live traffic shows in the cluster's rate (load reports every 5 s) and the plot fills.
    page.wait(lambda d: _number(page.text("#rate-in .value")) > 0, "a cluster rate in")
    page.wait(
        lambda d: int(page.attributes("#cluster-rates-plot", "data-points")[0] or 0) >= 3,
        "the cluster plot has points",
    )
    assert page.texts("#cluster-rates-plot canvas"), "uPlot drew its canvas"
    page.screenshot("overview")
    assert page.console_errors() == []


def test_topics_sorted_and_filtered(console: ConsoleCluster) -> None:
    page = console.page
    page.open("topics/" + quote(NS, safe=""))
    page.wait(lambda d: len(page.texts("#topics-table tbody tr")) >= 4, "the topics listed")
    page.click('th[data-sort="name"]')
    rows = page.attributes("#topics-table tbody tr", "data-topic")
    assert rows == sorted(rows)
    page.click('th[data-sort="msg_backlog"]')  # descending first
    assert page.attributes("#topics-table tbody tr", "data-topic")[:3] == [BIG, MID, SMALL]
    assert "300" in page.texts("#topics-table tbody tr")[0]
    page.click('th[data-sort="msg_backlog"]')  # ascending
    assert page.attributes("#topics-table tbody tr", "data-topic")[-1] == BIG
    page.screenshot("topics")
    page.element("#filter").send_keys("console-mid")
    page.wait(
        lambda d: page.attributes("#topics-table tbody tr", "data-topic") == [MID],
        "the filter keeps one topic",
    )
    # Put the view back for the other tests (it is kept while the page is open).
    page.element("#filter").clear()
    page.script("document.getElementById('filter').dispatchEvent(new Event('input'))")
    assert page.console_errors() == []


def test_topic_page_shows_ledgers_subscriptions_and_live_plots(console: ConsoleCluster) -> None:
    page = console.page
    page.open(_route_topic(LIVE))
    page.wait(lambda d: page.texts("#ledgers tbody tr"), "the ledgers listed")
    assert "open" in page.texts("#ledgers tbody tr")[-1]
    bookies = page.texts("#ledgers tbody tr:last-child a")
    known = {console.cluster.bookie_id(i) for i in range(3)}
    assert len(bookies) == 2 and set(bookies) <= known, bookies  # E=2 by default
    page.wait(lambda d: page.texts('#subscriptions tr[data-subscription="live"]'), "live sub")
    page.wait(
        lambda d: int(page.attributes("#topic-rates-plot", "data-points")[0] or 0) >= 3,
        "the topic's rate plot has points",
    )
    page.wait(lambda d: _number(page.text(".stat .value")) > 0, "a rate in on the topic")
    page.screenshot("topic")
    # A topic with a backlog: the subscription's row counts it.
    page.open(_route_topic(BIG))
    row = f'#subscriptions tr[data-subscription="{SUBSCRIPTION}"]'
    page.wait(lambda d: "300" in page.text(row), "the backlog of 300")
    assert page.text("#topic-backlog .value") == "300"
    assert page.console_errors() == []


def test_subscription_backlog_drops_after_its_consumer_starts(console: ConsoleCluster) -> None:
    page = console.page
    page.open(f"subscription/{quote(MID, safe='')}/{SUBSCRIPTION}")
    page.wait(lambda d: page.text("#subscription-backlog .value") == "120", "backlog 120")
    with strata.Client(console.cluster.broker_address(), operation_timeout_seconds=30) as client:
        consumer = client.subscribe(
            MID,
            SUBSCRIPTION,
            consumer_type=strata.ConsumerType.Shared,
            consumer_name="console-reader",
        )
        received = 0
        while received < BACKLOGS[MID]:
            message = consumer.receive(timeout_millis=30_000)
            consumer.acknowledge(message)
            received += 1
        page.wait(lambda d: page.text("#subscription-backlog .value") == "0", "backlog 0")
        row = '#consumers tr[data-consumer="console-reader"]'
        page.wait(lambda d: "120" in page.text(row), "the consumer's delivered count")
        page.screenshot("subscription")
        consumer.close()
    assert page.console_errors() == []


def test_bookie_page(console: ConsoleCluster) -> None:
    page = console.page
    bookie = console.cluster.bookie_id(1)
    page.open("bookie/" + quote(bookie, safe=""))
    page.wait(lambda d: page.text("#bookie-state .value") == "available", "available")
    assert bookie in page.text("h1")
    page.screenshot("bookie")
    assert page.console_errors() == []


def test_actions_peek_skip_clear_and_unload(console: ConsoleCluster) -> None:
    page = console.page
    page.open(f"subscription/{quote(SMALL, safe='')}/{SUBSCRIPTION}")
    page.wait(lambda d: page.text("#subscription-backlog .value") == "20", "backlog 20")
    count = page.element("#peek-count")
    count.clear()
    count.send_keys("5")
    page.element("#peek").click()
    page.wait(lambda d: len(page.texts("#peeked tbody tr")) == 5, "5 peeked messages")
    payloads = page.texts("#peeked pre.payload")
    assert payloads == [f"{SMALL} message {i}" for i in range(5)]
    page.screenshot("peek")
    skip = page.element("#skip-count")
    skip.clear()
    skip.send_keys("5")
    page.element("#skip").click()
    page.wait(lambda d: page.text("#subscription-backlog .value") == "15", "backlog 15")
    page.element("#clear-backlog").click()
    page.wait(lambda d: d.switch_to.alert, "the confirmation").accept()
    page.wait(lambda d: page.text("#subscription-backlog .value") == "0", "backlog 0")
    # Unload moves the topic off its broker; the page follows it to the new owner.
    page.open(_route_topic(SMALL))
    page.element("#unload").click()
    page.wait(lambda d: "unload done" in page.text("#action-result"), "unloaded")
    page.wait(lambda d: page.texts("#ledgers tbody tr"), "the topic again, reloaded")
    assert page.console_errors() == []
