"""``ProducerOptions``: every producer setting, its default and its check, written once.

``create_producer`` of both clients takes them as keyword arguments (typed by
``ProducerKeywords``, pulsar-client's names), builds one ``ProducerOptions`` and hands it down
to the topic and partitioned producers, so a new option is added here and nowhere else.
Defaults are pulsar-client's except ``batching_max_publish_delay_ms`` (1, not 10): a 1 ms window
already fills batches at high rates and keeps latency low at low ones.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TypedDict

from strata.client._enums import CompressionType
from strata.client._errors import InvalidArgument


@dataclass(frozen=True, slots=True)
class ProducerOptions:
    """A producer's settings; invalid values raise ``InvalidArgument`` at construction."""

    # None: the broker names the producer (unique per topic).
    producer_name: str | None = None
    # A message not receipted within this long fails with Timeout (0: no timeout).
    send_timeout_millis: int = 30_000
    compression_type: CompressionType = CompressionType.NONE
    # Messages sent but not yet receipted; beyond it send fails or blocks (below).
    max_pending_messages: int = 1000
    block_if_queue_full: bool = False
    batching_enabled: bool = True
    # A batch is sealed at this many messages, this many bytes, or after the delay.
    batching_max_messages: int = 1000
    batching_max_allowed_size_in_bytes: int = 128 * 1024
    batching_max_publish_delay_ms: float = 1

    def __post_init__(self) -> None:
        if self.max_pending_messages < 1:
            raise InvalidArgument("max_pending_messages must be at least 1")
        if self.batching_max_messages < 1 or self.batching_max_allowed_size_in_bytes < 1:
            raise InvalidArgument("batching limits must be positive")
        if self.send_timeout_millis < 0 or self.batching_max_publish_delay_ms < 0:
            raise InvalidArgument("timeouts and delays must not be negative")


class ProducerKeywords(TypedDict, total=False):
    """The keyword arguments of ``create_producer``: the fields of ``ProducerOptions``."""

    producer_name: str | None
    send_timeout_millis: int
    compression_type: CompressionType
    max_pending_messages: int
    block_if_queue_full: bool
    batching_enabled: bool
    batching_max_messages: int
    batching_max_allowed_size_in_bytes: int
    batching_max_publish_delay_ms: float


def producer_options(keywords: ProducerKeywords) -> ProducerOptions:
    """``ProducerOptions`` from ``create_producer``'s keywords; an unknown one is a TypeError
    naming it (as a misspelt keyword argument of a plain function would be)."""
    known = {item.name for item in fields(ProducerOptions)}
    unknown = sorted(set(keywords) - known)
    if unknown:
        raise TypeError(f"create_producer() got unexpected keyword arguments: {unknown}")
    return ProducerOptions(**keywords)
