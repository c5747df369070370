"""A topic's statistics as plain values: what ``strata admin topics stats`` answers and what
the broker's Prometheus collector exports, computed by one function so the two agree.

``topic_stats`` runs on the broker's event loop (it reads live topic state, and reading a
rate moves its window); the result is immutable and may be handed to another thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from strata.naming import TopicName

if TYPE_CHECKING:
    from broker.managed_ledger import Position
    from broker.topic import Topic


@dataclass(frozen=True, slots=True)
class ConsumerStats:
    name: str
    available_permits: int
    unacked_messages: int
    msg_out_counter: int
    bytes_out_counter: int
    priority_level: int
    blocked_on_unacked_messages: bool


@dataclass(frozen=True, slots=True)
class SubscriptionStats:
    name: str
    type_name: str
    msg_backlog: int  # entries between the mark-delete position and the end of the topic
    unacked_messages: int
    consumers_count: int
    msg_rate_redeliver: float
    mark_delete_position: Position
    read_position: Position
    msg_delayed: int = 0  # entries held back by delayed delivery
    msg_rate_expired: float = 0.0  # messages expired per second (TTL, expire-messages)
    total_msg_expired: int = 0
    dispatch_throttled_times: int = 0  # dispatch rounds that waited for the dispatch rate
    msg_rate_out: float = 0.0
    msg_throughput_out: float = 0.0  # bytes per second
    consumers: tuple[ConsumerStats, ...] = ()


@dataclass(frozen=True, slots=True)
class TopicStats:
    name: TopicName
    msg_rate_in: float
    msg_throughput_in: float
    msg_rate_out: float
    msg_throughput_out: float
    msg_in_counter: int
    bytes_in_counter: int
    msg_out_counter: int
    bytes_out_counter: int
    storage_size: int
    offloaded_storage_size: int
    producers_count: int
    ledgers_count: int
    entries_count: int
    msg_backlog: int  # the largest subscription backlog, as Pulsar's topic msgBacklog
    subscriptions: tuple[SubscriptionStats, ...]

    @property
    def consumers_count(self) -> int:
        return sum(s.consumers_count for s in self.subscriptions)


def subscription_stats(topic: Topic) -> tuple[SubscriptionStats, ...]:
    return tuple(
        SubscriptionStats(
            name=name,
            type_name=sub.type_name,
            msg_backlog=sub.cursor.backlog_entries(),
            unacked_messages=sub.unacked_messages(),
            consumers_count=len(sub.consumers),
            msg_delayed=len(sub.delayed),
            msg_rate_redeliver=sub.messages_redelivered.rate(),
            msg_rate_expired=sub.messages_expired.rate(),
            total_msg_expired=sub.messages_expired.total,
            dispatch_throttled_times=(
                sub.dispatch_limiter.throttled_times if sub.dispatch_limiter else 0
            ),
            mark_delete_position=sub.cursor.mark_delete,
            read_position=sub.cursor.read_position,
            msg_rate_out=sub.messages_out_rate.rate(),
            msg_throughput_out=sub.bytes_out_rate.rate(),
            consumers=tuple(
                ConsumerStats(
                    name=c.name,
                    available_permits=c.permits,
                    unacked_messages=c.unacked_messages,
                    msg_out_counter=c.messages_out,
                    bytes_out_counter=c.bytes_out,
                    priority_level=c.priority_level,
                    blocked_on_unacked_messages=bool(
                        c.max_unacked_messages and c.unacked_messages >= c.max_unacked_messages
                    ),
                )
                for c in sub.consumers
            ),
        )
        for name, sub in topic.subscriptions.items()
    )


def topic_stats(topic: Topic) -> TopicStats:
    """The topic's statistics now; see the module docstring."""
    ledger = topic.ledger
    subscriptions = subscription_stats(topic)
    ledgers = ledger.ledgers
    return TopicStats(
        name=topic.name,
        msg_rate_in=topic.messages_in.rate(),
        msg_throughput_in=topic.bytes_in.rate(),
        msg_rate_out=topic.messages_out.rate(),
        msg_throughput_out=topic.bytes_out.rate(),
        msg_in_counter=topic.messages_in.total,
        bytes_in_counter=topic.bytes_in.total,
        msg_out_counter=topic.messages_out.total,
        bytes_out_counter=topic.bytes_out.total,
        storage_size=ledger.total_size_bytes,
        offloaded_storage_size=sum(
            info.size_bytes
            for info in ledgers
            if info.offload is not None and info.offload.complete
        ),
        producers_count=len(topic.connected_producers),
        ledgers_count=len(ledgers),
        entries_count=ledger.total_entries,
        msg_backlog=max((s.msg_backlog for s in subscriptions), default=0),
        subscriptions=subscriptions,
    )
