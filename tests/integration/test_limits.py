"""Namespace limits (issue 11 item 5): each refuses the one too many with RESOURCE_EXHAUSTED
naming the limit; the unacked limit stops dispatch until acknowledgements come."""

from __future__ import annotations

import json

import pytest

import strata
from tests.harness import Standalone
from tests.integration.test_standalone_cli import cli

pytestmark = pytest.mark.integration

NS = "public/limited"


def admin(standalone: Standalone, *args: str) -> str:
    done = cli(standalone, "admin", "namespaces", *args)
    assert done.returncode == 0, done.stderr
    return done.stdout


async def test_each_limit_refuses_the_one_too_many(standalone: Standalone) -> None:
    admin(standalone, "create", NS)
    for verb, value in (
        ("set-max-topics-per-namespace", "2"),
        ("set-max-producers-per-topic", "1"),
        ("set-max-consumers-per-topic", "2"),
        ("set-max-subscriptions-per-topic", "1"),
        ("set-max-unacked-messages-per-consumer", "5"),
    ):
        admin(standalone, verb, NS, "--" + verb.removeprefix("set-"), value)
    limits = json.loads(admin(standalone, "get-limits", NS))
    assert limits["max_producers_per_topic"] == 1
    assert limits["max_unacked_messages_per_subscription"] == 200_000  # the broker default
    topic = f"persistent://{NS}/t"
    async with strata.AsyncClient(standalone.address) as client:
        producer = await client.create_producer(topic)
        with pytest.raises(strata.ResourceExhausted, match="max_producers_per_topic is 1"):
            await client.create_producer(topic)
        await client.create_producer(f"persistent://{NS}/second")
        with pytest.raises(strata.ResourceExhausted, match="max_topics_per_namespace is 2"):
            await client.create_producer(f"persistent://{NS}/third")
        consumers = [
            await client.subscribe(
                topic,
                "only",
                consumer_type=strata.ConsumerType.Shared,
                initial_position=strata.InitialPosition.Earliest,
            )
            for _ in range(2)
        ]
        with pytest.raises(strata.ResourceExhausted, match="max_consumers_per_topic is 2"):
            await client.subscribe(topic, "only", consumer_type=strata.ConsumerType.Shared)
        await consumers[1].close()
        with pytest.raises(strata.ResourceExhausted, match="max_subscriptions_per_topic is 1"):
            await client.subscribe(topic, "another")
        # Unacked: at 5 the consumer gets nothing more until it acknowledges.
        for i in range(10):
            await producer.send(str(i).encode())
        first = [await consumers[0].receive(timeout_millis=5_000) for _ in range(5)]
        with pytest.raises(strata.Timeout):
            await consumers[0].receive(timeout_millis=700)
        for message in first:
            consumers[0].acknowledge_nowait(message)
        rest = [await consumers[0].receive(timeout_millis=5_000) for _ in range(5)]
        assert [m.data() for m in first + rest] == [str(i).encode() for i in range(10)]
    bad = cli(
        standalone,
        "admin",
        "namespaces",
        "set-max-producers-per-topic",
        NS,
        "--max-producers-per-topic",
        "-1",
    )
    assert bad.returncode == 1 and "INVALID_ARGUMENT" in bad.stderr
