"""Multi-topic and pattern subscriptions on a real standalone (issue 12 item 8)."""

from __future__ import annotations

import re

import pytest

import strata
from tests.harness import Standalone

pytestmark = pytest.mark.integration

RECEIVE_TIMEOUT_MS = 10_000


async def send(client: strata.AsyncClient, topic: str, *values: str) -> None:
    producer = await client.create_producer(topic)
    for value in values:
        await producer.send(value.encode())
    await producer.close()


async def test_a_list_of_topics_is_one_subscription(standalone: Standalone) -> None:
    async with strata.AsyncClient(standalone.address) as client:
        consumer = await client.subscribe(
            ["multi-a", "multi-b"], "s", initial_position=strata.InitialPosition.Earliest
        )
        await send(client, "multi-a", "a1", "a2")
        await send(client, "multi-b", "b1")
        got = {}
        for _ in range(3):
            message = await consumer.receive(RECEIVE_TIMEOUT_MS)
            got[message.data().decode()] = message.topic_name()
            # A received message's id names its topic: acknowledged by id.
            assert message.message_id().topic_name() == message.topic_name()
            await consumer.acknowledge(message.message_id())
        assert got == {
            "a1": "persistent://public/default/multi-a",
            "a2": "persistent://public/default/multi-a",
            "b1": "persistent://public/default/multi-b",
        }
        await consumer.flush_acknowledgements()
        with pytest.raises(strata.InvalidArgument, match="does not name its topic"):
            await consumer.acknowledge(strata.MessageId(1, 1))
        await consumer.close()


async def test_a_pattern_picks_up_a_topic_created_after_it(standalone: Standalone) -> None:
    async with strata.AsyncClient(standalone.address) as client:
        await send(client, "orders-eu", "eu1")
        await send(client, "payments", "p1")  # does not match
        consumer = await client.subscribe(
            topic_pattern=re.compile("persistent://public/default/orders-.*"),
            subscription_name="pattern-sub",
            initial_position=strata.InitialPosition.Earliest,
            pattern_auto_discovery_period_s=0.5,
        )
        assert consumer.topics() == ["persistent://public/default/orders-eu"]
        first = await consumer.receive(RECEIVE_TIMEOUT_MS)
        assert first.data() == b"eu1"
        await send(client, "orders-us", "us1")  # created after the subscription
        second = await consumer.receive(RECEIVE_TIMEOUT_MS)
        assert (second.data(), second.topic_name()) == (
            b"us1",
            "persistent://public/default/orders-us",
        )
        assert consumer.topics() == [
            "persistent://public/default/orders-eu",
            "persistent://public/default/orders-us",
        ]
        with pytest.raises(strata.Timeout):
            await consumer.receive(500)
        await consumer.close()


async def test_the_keyword_spellings(standalone: Standalone) -> None:
    async with strata.AsyncClient(standalone.address) as client:
        await send(client, "kw-a", "a")
        consumer = await client.subscribe(
            topics=["kw-a", "kw-b"],
            subscription_name="s",
            initial_position=strata.InitialPosition.Earliest,
        )
        assert (await consumer.receive(RECEIVE_TIMEOUT_MS)).data() == b"a"
        await consumer.close()
        with pytest.raises(strata.InvalidArgument, match="one of topic, topics and topic_pattern"):
            await client.subscribe("kw-a", "s", topics=["kw-b"])
        with pytest.raises(strata.InvalidArgument, match="needs a topic"):
            await client.subscribe(subscription_name="s")


def test_the_blocking_client_subscribes_to_several_topics(standalone: Standalone) -> None:
    with strata.Client(standalone.address) as client:
        for topic in ("sync-a", "sync-b"):
            client.create_producer(topic).send(topic.encode())
        consumer = client.subscribe(
            topic_pattern="persistent://public/default/sync-.*",
            subscription_name="s",
            initial_position=strata.InitialPosition.Earliest,
        )
        got = sorted(consumer.receive(timeout_millis=RECEIVE_TIMEOUT_MS).data() for _ in range(2))
        assert got == [b"sync-a", b"sync-b"]
        consumer.close()
