"""Graceful stops as a pod's lifecycle needs them, as processes: a rolling restart of the
brokers (SIGTERM one at a time, the next once the previous is ready again) while a producer
sends at a fixed rate, and a bookie stopped with SIGTERM under the same load. Neither may fail
a send, and every receipted message must be consumed.

The longest publish stall (send to receipt) is printed: ``pytest -s`` shows it.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import strata
from bookie.ledger import LEDGERS_PREFIX, STATE_OPEN, LedgerMetadata
from broker.bundles import topic_hash
from strata.metadata import MetadataStore
from strata.naming import TopicName
from tests.cluster import Cluster

pytestmark = [pytest.mark.integration, pytest.mark.fault]

RATE_PER_SECOND = 2_000
SEND_TICK_SECONDS = 0.01
MAX_SECONDS = 45.0
MAX_PENDING = 20_000
SEND_TIMEOUT_MS = 30_000
SETTLE_SECONDS = 1.0
RECEIVE_TIMEOUT_MS = 5_000
DEFAULT_BUNDLES = 4


@dataclass
class Sent:
    """What the producer saw: receipts, failures, and the longest send-to-receipt time."""

    receipted: set[int] = field(default_factory=set)
    failures: list[str] = field(default_factory=list)
    longest_stall_s: float = 0.0
    sent: int = 0
    # Set once a second's worth of messages is receipted: the disruption starts then.
    flowing: asyncio.Event = field(default_factory=asyncio.Event)

    def callback(self, index: int) -> Callable[[strata.Result, strata.MessageId | None], None]:
        sent_at = time.monotonic()

        def on_receipt(result: strata.Result, _message_id: strata.MessageId | None) -> None:
            if result == strata.Result.Ok:
                self.receipted.add(index)
                if len(self.receipted) >= RATE_PER_SECOND:
                    self.flowing.set()
                self.longest_stall_s = max(self.longest_stall_s, time.monotonic() - sent_at)
            else:
                self.failures.append(f"message {index}: {result}")

        return on_receipt


def one_topic_per_bundle(prefix: str) -> list[str]:
    """Topic names of the default namespace, one in each of its default bundles, so that
    every broker owns some of them and each restart moves some."""
    by_bundle: dict[int, str] = {}
    for index in itertools.count():
        name = f"persistent://public/default/{prefix}-{index}"
        by_bundle.setdefault(topic_hash(TopicName.parse(name)) * DEFAULT_BUNDLES >> 32, name)
        if len(by_bundle) == DEFAULT_BUNDLES:
            return [by_bundle[bundle] for bundle in sorted(by_bundle)]
    raise AssertionError("unreachable")


async def produce_at_rate(
    producers: list[strata.AsyncProducer], sent: Sent, done: asyncio.Event
) -> None:
    """Send ``RATE_PER_SECOND`` messages a second, round robin over the producers, until
    ``done`` (or ``MAX_SECONDS``)."""
    started = time.monotonic()
    while not done.is_set() and time.monotonic() - started < MAX_SECONDS:
        due = int((time.monotonic() - started) * RATE_PER_SECOND)
        while sent.sent < due:
            producer = producers[sent.sent % len(producers)]
            producer.send_nowait(str(sent.sent).encode(), callback=sent.callback(sent.sent))
            sent.sent += 1
        # Pacing of a fixed-rate producer, not a wait for a condition.
        await asyncio.sleep(SEND_TICK_SECONDS)
    for producer in producers:
        await producer.flush()


async def consume_all(consumer: strata.AsyncConsumer) -> list[int]:
    consumed: list[int] = []
    while True:
        try:
            batch = await consumer.receive_many(5_000, timeout_millis=RECEIVE_TIMEOUT_MS)
        except strata.Timeout:
            return consumed
        consumed.extend(int(message.data()) for message in batch)
        consumer.acknowledge_many(batch)


async def produce_while(
    cluster: Cluster, topics: list[str], disruption: Callable[[], Awaitable[None]]
) -> tuple[Sent, list[int]]:
    """Produce at the fixed rate to ``topics`` while ``disruption`` runs, then consume
    everything; returns what was sent and the indexes consumed."""
    client = strata.AsyncClient(cluster.service_url, operation_timeout_seconds=30)
    sent = Sent()
    try:
        consumers = [await client.subscribe(topic, "all") for topic in topics]
        producers = [
            await client.create_producer(
                topic, send_timeout_millis=SEND_TIMEOUT_MS, max_pending_messages=MAX_PENDING
            )
            for topic in topics
        ]
        done = asyncio.Event()
        sending = asyncio.create_task(produce_at_rate(producers, sent, done))
        try:
            await asyncio.wait_for(sent.flowing.wait(), MAX_SECONDS)
            await disruption()
            await asyncio.sleep(SETTLE_SECONDS)  # some traffic after the last restart
        finally:
            done.set()
            await sending
        consumed = await asyncio.gather(*(consume_all(consumer) for consumer in consumers))
        return sent, [index for part in consumed for index in part]
    finally:
        await client.close()


def check_no_loss(what: str, sent: Sent, consumed: list[int]) -> None:
    print(
        f"\n{what}: {sent.sent} sent at {RATE_PER_SECOND}/s, {len(sent.receipted)} receipted, "
        f"{len(sent.failures)} failed, longest publish stall {sent.longest_stall_s * 1000:.0f} ms"
    )
    assert not sent.failures, sent.failures[:5]
    assert len(sent.receipted) == sent.sent
    missing = sent.receipted - set(consumed)
    assert not missing, f"{len(missing)} receipted messages not consumed: {sorted(missing)[:5]}"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with Cluster(
        tmp_path,
        bookies=3,
        brokers=3,
        bookie_args=["--journal-fsync", "false", "--autorecovery", "false"],
        broker_args=["--load-report-interval-ms", "1000"],
    ) as running:
        yield running


async def test_rolling_restart_of_the_brokers_fails_no_send(cluster: Cluster) -> None:
    exit_codes: list[int | None] = []

    def restart_one_by_one() -> None:
        for index in range(len(cluster.brokers)):
            exit_codes.append(cluster.stop_broker(index))
            cluster.brokers[index].start()  # waits until it serves again

    async def rolling_restart() -> None:
        await asyncio.to_thread(restart_one_by_one)

    sent, consumed = await produce_while(cluster, one_topic_per_bundle("rolling"), rolling_restart)
    assert exit_codes == [0, 0, 0]
    check_no_loss(f"rolling restart of 3 brokers, {DEFAULT_BUNDLES} bundles", sent, consumed)


async def bookie_being_written(cluster: Cluster, store: MetadataStore) -> int:
    """The index of a bookie in the current ensemble of the (one) open ledger."""
    for record in await store.list(LEDGERS_PREFIX):
        metadata = LedgerMetadata.from_json(record.value, record.version)
        if metadata.state == STATE_OPEN:
            address = metadata.ensembles[max(metadata.ensembles)][0]
            return next(i for i in range(len(cluster.bookies)) if cluster.bookie_id(i) == address)
    raise AssertionError("no open ledger")


async def test_bookie_stopped_gracefully_fails_no_send(
    cluster: Cluster, store: MetadataStore
) -> None:
    exit_codes: list[int | None] = []

    async def stop_a_bookie_being_written() -> None:
        index = await bookie_being_written(cluster, store)
        exit_codes.append(await asyncio.to_thread(cluster.stop_bookie, index))
        await asyncio.sleep(SETTLE_SECONDS)  # traffic on the new ensemble

    sent, consumed = await produce_while(
        cluster, ["persistent://public/default/bookie-stop"], stop_a_bookie_being_written
    )
    assert exit_codes == [0]
    check_no_loss("graceful stop of a bookie in the ensemble", sent, consumed)
