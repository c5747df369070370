"""Two brokers on one topic (one store, one bookie): the one taken over acknowledges nothing
more and stops serving the topic at once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bookie.ledger import LedgerManager
from broker.config import BrokerConfig
from broker.entry_format import stored_entry_for
from broker.service import BrokerService
from strata.metadata import open_metadata_store
from strata.naming import TopicName
from strata.v1 import messaging_pb2
from tests.unit.bookie.fake_bookies import FakeBookie


def entry(text: str) -> bytes:
    batch = messaging_pb2.MessageBatch(payloads=[text.encode()]).SerializeToString()
    return stored_entry_for("", messaging_pb2.ProducerBatch(num_messages=1, payload=batch))


async def test_old_owner_is_fenced_and_unloads(tmp_path: Path) -> None:
    store = await open_metadata_store("memory://")
    bookie = FakeBookie()
    config = BrokerConfig(
        port=0,
        data_dir=tmp_path,
        managed_ledger_default_ensemble_size=1,
        managed_ledger_default_write_quorum=1,
        managed_ledger_default_ack_quorum=1,
    )
    brokers = [
        BrokerService(
            config, store, LedgerManager(store, lambda: [bookie.address], lambda _a: bookie)
        )
        for _ in range(2)
    ]
    name = TopicName.parse("t")
    try:
        await brokers[0].initialize_defaults()
        old = await brokers[0].get_topic(name)
        first = await old.publish(entry("before"), 1)
        # The new owner loads the topic: it fences the old ledger and starts a new one.
        new = await brokers[1].get_topic(name)
        with pytest.raises(Exception):  # noqa: B017 - fenced, then refused: any error will do
            await old.publish(entry("stale"), 1)
        await asyncio.wait_for(old.closing.wait(), 5)
        assert str(name) not in brokers[0].topics
        second = await new.publish(entry("after"), 1)
        assert second > first
    finally:
        for broker in brokers:
            await broker.close()
        await store.close()
