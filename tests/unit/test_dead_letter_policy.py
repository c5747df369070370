"""``ConsumerDeadLetterPolicy``: pulsar-client's names and defaults."""

from __future__ import annotations

import pytest

import strata


def test_the_default_topic_is_topic_subscription_dlq() -> None:
    policy = strata.ConsumerDeadLetterPolicy(max_redeliver_count=3)
    assert policy.topic_for("orders", "work") == "persistent://public/default/orders-work-DLQ"
    # The partitions of a partitioned topic share its one dead-letter topic.
    assert (
        policy.topic_for("persistent://t/ns/orders-partition-2", "work")
        == "persistent://t/ns/orders-work-DLQ"
    )


def test_a_named_topic_is_used_as_given() -> None:
    policy = strata.ConsumerDeadLetterPolicy(3, dead_letter_topic="persistent://t/ns/dead")
    assert policy.topic_for("orders", "work") == "persistent://t/ns/dead"


@pytest.mark.parametrize("count", [0, -1])
def test_the_redeliver_count_must_be_positive(count: int) -> None:
    with pytest.raises(strata.InvalidArgument, match="max_redeliver_count"):
        strata.ConsumerDeadLetterPolicy(count)


def test_a_bad_topic_name_is_refused() -> None:
    with pytest.raises(strata.InvalidTopicName):
        strata.ConsumerDeadLetterPolicy(3, dead_letter_topic="persistent://only/two")
