"""``ProducerOptions``: every producer setting, its default and its check, written once.

``create_producer`` of both clients takes them as keyword arguments (typed by
``ProducerKeywords``, pulsar-client's names), builds one ``ProducerOptions`` and hands it down
to the topic and partitioned producers, so a new option is added here and nowhere else.
Defaults are pulsar-client's (``batching_max_publish_delay_ms`` 10). The delay bounds how long
an open batch waits behind one in flight for its receipt; nothing waits for it when nothing is
in flight (``_producer``'s module text).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TypedDict

from strata.client._enums import BatchingType, CompressionType, KeySharedMode
from strata.client._errors import InvalidArgument

# pulsar-client's batching_max_publish_delay_ms.
DEFAULT_BATCH_DELAY_MS = 10.0


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
    batching_max_publish_delay_ms: float = DEFAULT_BATCH_DELAY_MS
    batching_type: BatchingType = BatchingType.Default
    # A message over the broker's max message size goes as chunks (Pulsar's PIP-37), each a
    # batch of its own; without it such a message fails with MessageTooBig.
    chunking_enabled: bool = False

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
    batching_type: BatchingType
    chunking_enabled: bool


def producer_options(keywords: ProducerKeywords) -> ProducerOptions:
    """``ProducerOptions`` from ``create_producer``'s keywords; an unknown one is a TypeError
    naming it (as a misspelt keyword argument of a plain function would be)."""
    known = {item.name for item in fields(ProducerOptions)}
    unknown = sorted(set(keywords) - known)
    if unknown:
        raise TypeError(f"create_producer() got unexpected keyword arguments: {unknown}")
    return ProducerOptions(**keywords)


@dataclass(frozen=True, slots=True)
class ConsumerKeySharedPolicy:
    """pulsar-client's ``ConsumerKeySharedPolicy``: a Key_Shared consumer's mode and, for
    ``KeySharedMode.Sticky``, the hash ranges it owns (inclusive pairs within 0..65535)."""

    key_shared_mode: KeySharedMode = KeySharedMode.AutoSplit
    sticky_ranges: tuple[tuple[int, int], ...] = ()

    def __post_init__(self) -> None:
        mode = KeySharedMode(self.key_shared_mode)
        if mode == KeySharedMode.Sticky and not self.sticky_ranges:
            raise InvalidArgument("a Sticky Key_Shared consumer names its sticky_ranges")
        if mode == KeySharedMode.AutoSplit and self.sticky_ranges:
            raise InvalidArgument("sticky_ranges are for KeySharedMode.Sticky")
        for start, end in self.sticky_ranges:
            if not 0 <= start <= end <= 65_535:
                raise InvalidArgument(f"hash range {start}..{end} is not within 0..65535")
