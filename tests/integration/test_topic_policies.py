"""Topic-level policies (issue 13 item 8): a topic's own deduplication, TTL and other
policies override its namespace's, reach the loaded topic without a reload, show in
``topics get-policies`` and go back to the namespace's with ``remove-*``."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest

import strata
from tests.harness import Standalone
from tests.integration.test_standalone_cli import cli

pytestmark = pytest.mark.integration

POLL_INTERVAL_S = 0.2


def admin(server: Standalone, *args: str) -> str:
    done = cli(server, "admin", *args)
    assert done.returncode == 0, done.stderr
    return done.stdout


def stats(server: Standalone, topic: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(admin(server, "topics", "stats", topic))
    return found


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout_s} s: {what}"
        time.sleep(POLL_INTERVAL_S)


def test_topic_policies_override_the_namespace(tmp_path: Any) -> None:
    server = Standalone(
        tmp_path / "data",
        "--housekeeping-interval-ms",
        "300",
        "--message-expiry-check-interval-seconds",
        "1",
    ).start()
    try:
        topic, other = "persistent://public/default/own", "persistent://public/default/other"
        with strata.Client(server.address) as client:
            keep = [client.create_producer(t) for t in (topic, other)]  # both loaded
            admin(server, "topics", "set-deduplication", topic, "--enable")
            admin(server, "topics", "set-message-ttl", topic, "--ttl", "1s")
            admin(server, "topics", "set-publish-rate", topic, "--msg-rate", "100000")
            policies = json.loads(admin(server, "topics", "get-policies", topic))
            assert policies["deduplication_enabled"] is True
            assert policies["message_ttl_seconds"] == 1
            assert policies["publish_rate"]["msg_rate"] == "100000"
            wait_until(
                lambda: stats(server, topic).get("deduplication_status") == "Enabled",
                10,
                "the topic's own deduplication applied",
            )
            assert stats(server, other)["deduplication_status"] == "Disabled"  # namespace's
            # The topic's TTL expires its idle subscription's backlog; the other keeps its own.
            for name in (topic, other):
                client.subscribe(name, "idle").close()
            for producer in keep:
                producer.send(b"x")

            def backlog(name: str) -> int:
                sub = stats(server, name)["subscriptions"]["idle"]
                return int(sub.get("msg_backlog", 0))

            wait_until(lambda: backlog(topic) == 0, 15, "expired by the topic's TTL")
            assert backlog(other) == 1
            admin(server, "topics", "remove-deduplication", topic)
            wait_until(
                lambda: stats(server, topic).get("deduplication_status") == "Disabled",
                10,
                "back to the namespace's",
            )
            remaining = json.loads(admin(server, "topics", "get-policies", topic))
            assert "deduplication_enabled" not in remaining
            assert remaining["message_ttl_seconds"] == 1
    finally:
        server.stop()


def test_unknown_policy_removal_is_refused(standalone: Standalone) -> None:
    import grpc

    from strata.v1 import admin_pb2, admin_pb2_grpc

    with grpc.insecure_channel(standalone.address) as channel:
        with pytest.raises(grpc.RpcError) as refused:
            admin_pb2_grpc.AdminServiceStub(channel).SetTopicPolicies(
                admin_pb2.SetTopicPoliciesRequest(name="t", remove=["compaction"]), timeout=10
            )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert "cannot remove 'compaction'" in refused.value.details()  # type: ignore[attr-defined,operator]


def test_stats_show_every_policy_in_effect(standalone: Standalone) -> None:
    """The topic's own policies, else its namespace's, else the broker's defaults (item 8)."""
    topic = "persistent://public/default/stats-policies"
    admin(
        standalone, "namespaces", "set-retention", "public/default", "--time", "1h", "--size", "10M"
    )
    admin(standalone, "namespaces", "set-dispatch-rate", "public/default", "--msg-rate", "500")
    admin(standalone, "namespaces", "set-compaction-threshold", "public/default", "-t", "100M")
    with strata.Client(standalone.address) as client:
        client.create_producer(topic).close()
    admin(standalone, "topics", "set-message-ttl", topic, "--ttl", "120")
    admin(standalone, "topics", "set-publish-rate", topic, "--msg-rate", "1000")
    found = stats(standalone, topic)
    policies = found["policies"]
    assert policies["retention"] == {
        "retention_time_in_minutes": 60,
        "retention_size_in_mb": "10",
    }  # namespace
    assert policies["dispatch_rate"] == {"msg_rate": "500", "byte_rate": "-1"}  # namespace
    assert policies["message_ttl_seconds"] == 120  # topic
    assert policies["publish_rate"] == {"msg_rate": "1000", "byte_rate": "-1"}  # topic
    assert policies["deduplication_enabled"] is False  # the broker's default
    assert policies["backlog_quota"] == {
        "limit_size": "-1",
        "limit_time": -1,
        "policy": "producer_request_hold",
    }  # the broker's default
    assert found["compaction_threshold_bytes"] == str(100 * 1024 * 1024)
    admin(standalone, "topics", "remove-message-ttl", topic)
    assert stats(standalone, topic)["policies"].get("message_ttl_seconds", 0) == 0
