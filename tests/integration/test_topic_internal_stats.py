"""The admin calls the console reads (issue 16), against a real standalone: ``topics
stats-internal`` (ledgers with their bookies), ``ListTopicSummaries`` (the topics a broker
serves), the consumers of a subscription with their permits, and bookie disk use."""

from __future__ import annotations

import json

import grpc
import pytest

import strata
from strata.v1 import admin_pb2, admin_pb2_grpc
from tests.harness import Standalone
from tests.integration.test_standalone_cli import cli

pytestmark = pytest.mark.integration

TOPIC = "persistent://public/default/internal-stats"


def test_internal_stats_summaries_consumers_and_disk(standalone: Standalone) -> None:
    with strata.Client(standalone.address, operation_timeout_seconds=30) as client:
        consumer = client.subscribe(TOPIC, "watch", consumer_name="c1", receiver_queue_size=50)
        producer = client.create_producer(TOPIC, batching_enabled=False)
        for index in range(30):
            producer.send(b"m%d" % index)
        for _ in range(10):
            consumer.acknowledge(consumer.receive(timeout_millis=10_000))

        result = cli(standalone, "admin", "topics", "stats-internal", TOPIC)
        assert result.returncode == 0, result.stderr
        internal = json.loads(result.stdout)
        ledger = internal["ledgers"][-1]
        assert ledger["open"] is True
        assert ledger["bookies"] == ["local"]
        assert int(ledger["entries"]) == 30
        assert (ledger["ensemble_size"], ledger["write_quorum"], ledger["ack_quorum"]) == (1, 1, 1)
        assert internal["last_confirmed_entry"] == f"{ledger['ledger_id']}:29"

        with grpc.insecure_channel(standalone.address) as channel:
            admin = admin_pb2_grpc.AdminServiceStub(channel)
            summaries = admin.ListTopicSummaries(admin_pb2.ListTopicSummariesRequest(), timeout=30)
            assert summaries.broker == standalone.address
            mine = [s for s in summaries.topics if s.name == TOPIC]
            assert len(mine) == 1
            assert (mine[0].producers_count, mine[0].consumers_count) == (1, 1)
            assert mine[0].msg_backlog == 20  # 30 written, 10 acknowledged
            first = admin.ListTopicSummaries(
                admin_pb2.ListTopicSummariesRequest(page_size=1), timeout=30
            )
            assert len(first.topics) == 1
            assert first.next_page_token == first.topics[0].name or len(summaries.topics) == 1

            stats = admin.GetTopicStats(admin_pb2.GetTopicStatsRequest(name=TOPIC), timeout=30)
            (watcher,) = stats.subscriptions["watch"].consumers
            assert watcher.consumer_name == "c1"
            assert watcher.msg_out_counter == 30
            assert watcher.unacked_messages == 20
            # Permits: the queue's 50 granted, 30 delivered, refills at half the queue.
            assert 0 < watcher.available_permits <= 50

            bookies = admin.ListBookies(admin_pb2.ListBookiesRequest(), timeout=30)
            (local,) = bookies.bookies
            assert local.disk_used_bytes > 0
            assert 0 < local.disk_free_bytes < local.disk_total_bytes
        producer.close()
        consumer.close()

    missing = cli(standalone, "admin", "topics", "stats-internal", "nope-never")
    assert missing.returncode != 0
    assert "does not exist" in missing.stderr
