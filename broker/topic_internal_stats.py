"""``GetTopicInternalStats`` (pulsar-admin ``topics stats-internal``): a topic's ledgers with
their size, their bookies and their offload state, as the operator console's topic page and
``strata admin topics stats-internal`` show them.

The ledger list is the topic's own (its managed ledger, in memory on the owner); the bookies
come from each ledger's metadata in the store (its last ensemble), read concurrently. A ledger
whose metadata is gone (its bookie copy deleted after offload) lists no bookies.
"""

from __future__ import annotations

import asyncio

from bookie.ledger import LedgerManager, LedgerMetadata
from broker.managed_ledger import LedgerInfo
from broker.topic import Topic
from strata.v1 import admin_pb2


async def topic_internal_stats(
    topic: Topic, ledgers: LedgerManager
) -> admin_pb2.TopicInternalStats:
    infos = list(topic.ledger.ledgers)
    metadata = await asyncio.gather(*(ledgers.read_metadata(i.ledger_id) for i in infos))
    last_ledger, last_entry = topic.ledger.last_confirmed
    return admin_pb2.TopicInternalStats(
        name=str(topic.name),
        ledgers=[
            _ledger_stats(info, meta, info is infos[-1])
            for info, meta in zip(infos, metadata, strict=True)
        ],
        entries_count=sum(i.entries for i in infos),
        storage_size=sum(i.size_bytes for i in infos),
        last_confirmed_entry=f"{last_ledger}:{last_entry}",
    )


def _ledger_stats(
    info: LedgerInfo, metadata: LedgerMetadata | None, is_last: bool
) -> admin_pb2.LedgerInternalStats:
    stats = admin_pb2.LedgerInternalStats(
        ledger_id=info.ledger_id,
        entries=info.entries,
        size_bytes=info.size_bytes,
        open=is_last,
        offload_state=info.offload.state if info.offload is not None else "",
        created_ms=info.timestamp_ms,
    )
    if metadata is not None:
        stats.bookies.extend(metadata.ensembles[max(metadata.ensembles)])
        stats.ensemble_size = metadata.ensemble_size
        stats.write_quorum = metadata.write_quorum
        stats.ack_quorum = metadata.ack_quorum
    return stats
