"""Enforcing a namespace's limits (issue 11 item 5, Pulsar's policies): producers,
consumers and subscriptions per topic, topics per namespace refuse the one too many with
RESOURCE_EXHAUSTED naming the limit; the unacked limits stop dispatch instead (as Pulsar).
The limits in effect are read when a producer or consumer attaches (``Namespaces.limits_for``).
"""

from __future__ import annotations

from broker.errors import ResourceLimitError
from broker.namespaces import Limits
from broker.topic import Topic


def _refuse(what: str, count: int, limit_name: str, limit: int) -> None:
    raise ResourceLimitError(f"{what} has {count}; {limit_name} is {limit}")


def check_producer_room(topic: Topic, limits: Limits) -> None:
    limit = limits.max_producers_per_topic
    if limit and len(topic.connected_producers) >= limit:
        _refuse(
            f"topic {topic.name}", len(topic.connected_producers), "max_producers_per_topic", limit
        )


def check_consumer_room(topic: Topic, subscription: str, limits: Limits) -> None:
    consumers = sum(len(s.consumers) for s in topic.subscriptions.values())
    if limits.max_consumers_per_topic and consumers >= limits.max_consumers_per_topic:
        _refuse(
            f"topic {topic.name}",
            consumers,
            "max_consumers_per_topic",
            limits.max_consumers_per_topic,
        )
    subscriptions = len(topic.subscriptions)
    if (
        limits.max_subscriptions_per_topic
        and subscription not in topic.subscriptions
        and subscriptions >= limits.max_subscriptions_per_topic
    ):
        _refuse(
            f"topic {topic.name}",
            subscriptions,
            "max_subscriptions_per_topic",
            limits.max_subscriptions_per_topic,
        )


def check_topic_room(namespace: str, topics: int, limits: Limits) -> None:
    limit = limits.max_topics_per_namespace
    if limit and topics >= limit:
        _refuse(f"namespace {namespace}", topics, "max_topics_per_namespace", limit)
