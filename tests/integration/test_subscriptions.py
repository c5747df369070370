"""Subscriptions on a real standalone (issue 12). Failover (item 2): one active consumer chosen by
priority level and then name, standbys told so, the active one's unacknowledged messages
handed to the next one in order, partitions spread over the consumers. Acknowledgements
(item 4): cumulative acks (inside a batch too), the ack timeout."""

from __future__ import annotations

import asyncio
import datetime
import random
import subprocess
import sys
import time
import typing
from pathlib import Path

import grpc
import pytest

import strata
from tests.harness import Standalone
from tests.integration.test_metrics import topic_stats
from tests.integration.test_partitioned_topics import create_partitioned

pytestmark = pytest.mark.integration

RECEIVE_TIMEOUT_MS = 10_000


class Events:
    """A ConsumerEventListener that records (consumer name, partition, active)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int, bool]] = []
        self.changed = asyncio.Event()

    def became_active(self, consumer: strata.AsyncConsumer, partition_id: int) -> None:
        self.seen.append((consumer.consumer_name(), partition_id, True))
        self.changed.set()

    def became_inactive(self, consumer: strata.AsyncConsumer, partition_id: int) -> None:
        self.seen.append((consumer.consumer_name(), partition_id, False))
        self.changed.set()

    def state(self) -> dict[tuple[str, int], bool]:
        """The last state told to each (consumer, partition)."""
        return {(name, partition): active for name, partition, active in self.seen}

    async def wait_for(self, expected: dict[tuple[str, int], bool]) -> None:
        async with asyncio.timeout(10):
            while any(self.state().get(key) != value for key, value in expected.items()):
                self.changed.clear()
                await self.changed.wait()


async def subscribe(
    client: strata.AsyncClient, topic: str, name: str, events: Events, priority: int = 0
) -> strata.AsyncConsumer:
    return await client.subscribe(
        topic,
        "failover-sub",
        consumer_type=strata.ConsumerType.Failover,
        consumer_name=name,
        initial_position=strata.InitialPosition.Earliest,
        priority_level=priority,
        consumer_event_listener=events,
    )


async def send_numbered(client: strata.AsyncClient, topic: str, first: int, count: int) -> None:
    producer = await client.create_producer(topic, batching_max_messages=10)
    for i in range(first, first + count):
        producer.send_nowait(str(i).encode())
    await producer.flush()
    await producer.close()


async def receive_values(consumer: strata.AsyncConsumer, count: int) -> list[strata.Message]:
    return [await consumer.receive(timeout_millis=RECEIVE_TIMEOUT_MS) for _ in range(count)]


async def test_the_active_consumer_leaves_and_the_standby_continues_in_order(
    standalone: Standalone,
) -> None:
    topic = "failover-handover"
    events = Events()
    async with strata.AsyncClient(standalone.address) as client:
        standby = await subscribe(client, topic, "consumer-b", events)
        active = await subscribe(client, topic, "consumer-a", events)  # sorts first: takes over
        await events.wait_for({("consumer-a", -1): True, ("consumer-b", -1): False})
        await send_numbered(client, topic, 0, 100)
        first = await receive_values(active, 50)
        assert [m.data() for m in first] == [str(i).encode() for i in range(50)]
        for message in first[:40]:
            active.acknowledge_nowait(message)
        await active.flush_acknowledgements()
        with pytest.raises(strata.Timeout):
            await standby.receive(timeout_millis=300)  # a standby receives nothing
        await active.close()
        await events.wait_for({("consumer-b", -1): True})
        # From the first unacknowledged message, in order, nothing lost.
        rest = await receive_values(standby, 60)
        assert [m.data() for m in rest] == [str(i).encode() for i in range(40, 100)]
        assert all(m.redelivery_count() >= 1 for m in rest[:10])
        await standby.close()


async def test_priority_level_comes_before_the_name(standalone: Standalone) -> None:
    topic = "failover-priority"
    events = Events()
    async with strata.AsyncClient(standalone.address) as client:
        low = await subscribe(client, topic, "a-low", events, priority=1)
        high = await subscribe(client, topic, "z-high", events, priority=0)
        await events.wait_for({("z-high", -1): True, ("a-low", -1): False})
        await send_numbered(client, topic, 0, 20)
        assert [m.data() for m in await receive_values(high, 20)] == [
            str(i).encode() for i in range(20)
        ]
        with pytest.raises(strata.Timeout):
            await low.receive(timeout_millis=300)
        with pytest.raises(strata.InvalidArgument):
            await subscribe(client, topic, "bad", events, priority=-1)


async def test_partitions_spread_over_the_consumers(standalone: Standalone) -> None:
    topic = "persistent://public/default/failover-parts"
    create_partitioned(standalone, topic, 4)
    events = Events()
    async with strata.AsyncClient(standalone.address) as client:
        first = await subscribe(client, topic, "consumer-1", events)
        second = await subscribe(client, topic, "consumer-2", events)
        # Partition N goes to the (N mod 2)-th consumer by name.
        expected = {
            (name, partition): (partition % 2 == index)
            for index, name in enumerate(("consumer-1", "consumer-2"))
            for partition in range(4)
        }
        await events.wait_for(expected)
        producer = await client.create_producer(topic)
        for i in range(40):
            producer.send_nowait(str(i).encode(), partition_key=f"k{i}")
        await producer.flush()
        partitions: dict[str, set[int]] = {"consumer-1": set(), "consumer-2": set()}
        got = 0
        for consumer in (first, second):
            while True:
                try:
                    message = await consumer.receive(timeout_millis=1000)
                except strata.Timeout:
                    break
                partitions[consumer.consumer_name()].add(message.message_id().partition())
                got += 1
        assert got == 40
        assert partitions == {"consumer-1": {0, 2}, "consumer-2": {1, 3}}


def consumer_process(address: str, topic: str, name: str) -> subprocess.Popen[str]:
    command = [
        sys.executable,
        "-m",
        "strata",
        "consume",
        topic,
        "-s",
        "failover-sub",
        "--type",
        "failover",
        "--consumer-name",
        name,
        "--initial-position",
        "earliest",
        "-n",
        "0",
        "--timeout-seconds",
        "10",  # the standby waits while the active one consumes
        "--service-url",
        address,
    ]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def wait_for_consumers(address: str, topic: str, count: int) -> None:
    for _ in range(200):  # at most 20 s
        try:
            stats = topic_stats(address, topic)
        except grpc.RpcError:
            stats = None
        if stats is not None and stats.subscriptions["failover-sub"].consumers_count == count:
            return
        time.sleep(0.1)
    raise AssertionError(f"{count} consumers never attached to {topic}")


def test_kill_9_of_the_active_consumer_process(standalone: Standalone) -> None:
    """Issue 12's must-show: the active consumer's process is killed mid-stream; the standby
    continues from the first unacknowledged message, in order, and nothing is lost."""
    topic = "persistent://public/default/failover-kill"
    total = 3000
    active = consumer_process(standalone.address, topic, "a-active")
    wait_for_consumers(standalone.address, topic, 1)
    standby = consumer_process(standalone.address, topic, "b-standby")
    wait_for_consumers(standalone.address, topic, 2)
    try:
        produce = subprocess.Popen(
            [sys.executable, "-m", "strata", "produce", topic, "--service-url", standalone.address],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert produce.stdin is not None
        produce.stdin.write("".join(f"{i}\n" for i in range(total // 2)))
        produce.stdin.flush()
        assert active.stdout is not None
        printed_by_active = [int(active.stdout.readline()) for _ in range(100)]
        active.kill()  # SIGKILL, mid-stream: its last acks may never reach the broker
        active.wait(timeout=10)
        produce.stdin.write("".join(f"{i}\n" for i in range(total // 2, total)))
        produce.stdin.close()
        assert produce.wait(timeout=60) == 0
        out, _ = standby.communicate(timeout=120)
    finally:
        for process in (active, standby):
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
            if process.stdout is not None:
                process.stdout.close()
    taken_over = [int(line) for line in out.split()]
    assert printed_by_active == list(range(100))
    # The standby starts at or before the first message the killed one had not acknowledged
    # (its last acks may be lost: at least once), then every message, in order.
    first = taken_over[0]
    assert first <= 100
    assert taken_over == list(range(first, total))


@pytest.mark.parametrize(
    "consumer_type", [strata.ConsumerType.Exclusive, strata.ConsumerType.Failover]
)
async def test_a_cumulative_ack_inside_a_batch_keeps_the_rest_of_it(
    standalone: Standalone, consumer_type: strata.ConsumerType
) -> None:
    topic = f"cumulative-{consumer_type.name}"
    async with strata.AsyncClient(standalone.address) as client:

        async def open_consumer() -> strata.AsyncConsumer:
            return await client.subscribe(
                topic,
                "cumulative-sub",
                consumer_type=consumer_type,
                initial_position=strata.InitialPosition.Earliest,
            )

        consumer = await open_consumer()
        await send_numbered(client, topic, 0, 100)  # batches of 10
        received = await receive_values(consumer, 35)
        assert received[34].message_id().batch_index() == 4
        await consumer.acknowledge_cumulative(received[34])
        await consumer.flush_acknowledgements()
        await consumer.close()
        consumer = await open_consumer()
        rest = await receive_values(consumer, 65)
        assert [m.data() for m in rest] == [str(i).encode() for i in range(35, 100)]
        await consumer.acknowledge_cumulative(rest[-1])
        await consumer.close()
        consumer = await open_consumer()
        with pytest.raises(strata.Timeout):
            await consumer.receive(timeout_millis=300)
        await consumer.close()


async def test_a_cumulative_ack_is_refused_on_a_shared_subscription(
    standalone: Standalone,
) -> None:
    async with strata.AsyncClient(standalone.address) as client:
        consumer = await client.subscribe(
            "cumulative-shared", "s", consumer_type=strata.ConsumerType.Shared
        )
        with pytest.raises(strata.InvalidArgument, match="not allowed on a Shared subscription"):
            await consumer.acknowledge_cumulative(strata.MessageId(1, 0))


async def test_messages_not_acknowledged_within_the_ack_timeout_come_again(
    standalone: Standalone,
) -> None:
    topic = "ack-timeout"
    async with strata.AsyncClient(standalone.address) as client:
        consumer = await client.subscribe(
            topic,
            "timeout-sub",
            consumer_type=strata.ConsumerType.Shared,
            initial_position=strata.InitialPosition.Earliest,
            unacked_messages_timeout_ms=1000,
        )
        await send_numbered(client, topic, 0, 10)  # one batch
        first = await receive_values(consumer, 10)
        for message in first[:5]:
            consumer.acknowledge_nowait(message)
        # Within about a second the five unacknowledged ones come back (the acknowledged
        # ones do not), marked as redelivered; acknowledged, they do not come again.
        again = await receive_values(consumer, 5)
        assert [m.data() for m in again] == [str(i).encode() for i in range(5, 10)]
        assert all(m.redelivery_count() == 1 for m in again)
        for message in again:
            consumer.acknowledge_nowait(message)
        with pytest.raises(strata.Timeout):
            await consumer.receive(timeout_millis=2000)
        with pytest.raises(strata.InvalidArgument, match="at least 1000"):
            await client.subscribe(topic, "bad", unacked_messages_timeout_ms=10)


async def test_a_message_nacked_past_the_limit_moves_to_the_dead_letter_topic(
    standalone: Standalone,
) -> None:
    """Issue 12's must-show: a consumer that nacks every message with max_redeliver_count=3
    sees each message exactly 4 times; then it is in the dead-letter topic exactly once."""
    topic = "persistent://public/default/dlq-source"
    count = 20
    async with strata.AsyncClient(standalone.address) as client:
        consumer = await client.subscribe(
            topic,
            "work",
            consumer_type=strata.ConsumerType.Shared,
            initial_position=strata.InitialPosition.Earliest,
            negative_ack_redelivery_delay_ms=50,
            dead_letter_policy=strata.ConsumerDeadLetterPolicy(
                max_redeliver_count=3, initial_subscription_name="dlq-sub"
            ),
        )
        producer = await client.create_producer(topic)
        for i in range(count):
            producer.send_nowait(str(i).encode(), properties={"n": str(i)}, partition_key=f"k{i}")
        await producer.flush()
        deliveries: dict[bytes, list[int]] = {}
        while sum(len(d) for d in deliveries.values()) < 4 * count:
            message = await consumer.receive(timeout_millis=RECEIVE_TIMEOUT_MS)
            deliveries.setdefault(message.data(), []).append(message.redelivery_count())
            consumer.negative_acknowledge(message)
        assert deliveries == {str(i).encode(): [0, 1, 2, 3] for i in range(count)}
        with pytest.raises(strata.Timeout):
            await consumer.receive(timeout_millis=1000)
        await consumer.close()  # finishes the moves, acknowledges them on the source
        dead = await client.subscribe(
            f"{topic}-work-DLQ", "dlq-sub", initial_position=strata.InitialPosition.Earliest
        )
        moved = []
        for _ in range(count):
            message = await dead.receive(timeout_millis=RECEIVE_TIMEOUT_MS)
            moved.append(message)
            dead.acknowledge_nowait(message)
        with pytest.raises(strata.Timeout):
            await dead.receive(timeout_millis=500)
        assert sorted(int(m.data()) for m in moved) == list(range(count))
        for message in moved:
            properties = message.properties()
            assert properties["n"] == message.data().decode()
            assert properties["REAL_TOPIC"] == topic
            assert properties["ORIGIN_MESSAGE_ID"]
            assert message.partition_key() == f"k{message.data().decode()}"
        again = await client.subscribe(topic, "work", consumer_type=strata.ConsumerType.Shared)
        with pytest.raises(strata.Timeout):
            await again.receive(timeout_millis=500)  # acknowledged on the source


async def test_delayed_messages_come_on_time_on_shared_and_at_once_on_exclusive(
    standalone: Standalone,
) -> None:
    topic = "delayed"
    async with strata.AsyncClient(standalone.address) as client:
        shared = await client.subscribe(
            topic, "shared-sub", consumer_type=strata.ConsumerType.Shared
        )
        exclusive = await client.subscribe(topic, "exclusive-sub")
        producer = await client.create_producer(topic)
        sent_ms = time.time() * 1000
        await producer.send(b"late", deliver_after=datetime.timedelta(seconds=2))
        await producer.send(b"now")
        # Exclusive: both at once, in order (Pulsar ignores the delay there).
        assert [m.data() for m in await receive_values(exclusive, 2)] == [b"late", b"now"]
        # Shared: the undelayed one first; the delayed one not before its time.
        first = await shared.receive(timeout_millis=RECEIVE_TIMEOUT_MS)
        assert first.data() == b"now"
        stats = topic_stats(standalone.address, f"persistent://public/default/{topic}")
        assert stats.subscriptions["shared-sub"].msg_delayed == 1
        second = await shared.receive(timeout_millis=RECEIVE_TIMEOUT_MS)
        assert second.data() == b"late"
        assert time.time() * 1000 >= sent_ms + 2000
        shared.acknowledge_nowait(first)
        shared.acknowledge_nowait(second)
        with pytest.raises(strata.InvalidArgument, match="not both"):
            await producer.send(
                b"x",
                deliver_after=datetime.timedelta(seconds=1),
                deliver_at=datetime.datetime.now(),
            )


async def test_delayed_messages_survive_a_kill_9_and_are_never_early(tmp_path: Path) -> None:
    server = Standalone(tmp_path / "data").start()
    topic = "delayed-restart"
    try:
        async with strata.AsyncClient(server.address) as client:
            shared = await client.subscribe(topic, "s", consumer_type=strata.ConsumerType.Shared)
            producer = await client.create_producer(topic)
            due_ms = int(time.time() * 1000) + 4000
            when = datetime.datetime.fromtimestamp(due_ms / 1000)
            for i in range(20):
                await producer.send(str(i).encode(), deliver_at=when)
            await shared.close()
        server.restart()  # kill -9, then the same port and data: the tracker is rebuilt
        async with strata.AsyncClient(server.address) as client:
            shared = await client.subscribe(topic, "s", consumer_type=strata.ConsumerType.Shared)
            got = []
            for _ in range(20):
                message = await shared.receive(timeout_millis=RECEIVE_TIMEOUT_MS)
                assert time.time() * 1000 >= due_ms  # never early
                got.append(int(message.data()))
                shared.acknowledge_nowait(message)
            assert sorted(got) == list(range(20))
    finally:
        server.stop()


async def test_ten_thousand_random_delays_none_early(standalone: Standalone) -> None:
    """Issue 12's must-show: 10,000 messages with random delays of 0-5 s on a Shared
    subscription: none early; the lateness percentiles are printed for the notes."""
    topic = "delayed-random"
    count = 10_000
    rng = random.Random(12)
    async with strata.AsyncClient(standalone.address) as client:
        shared = await client.subscribe(
            topic,
            "s",
            consumer_type=strata.ConsumerType.Shared,
            receiver_queue_size=1000,
        )
        producer = await client.create_producer(topic, max_pending_messages=count)
        due: dict[bytes, float] = {}
        futures = []
        for i in range(count):
            delay = datetime.timedelta(milliseconds=rng.randint(0, 5000))
            key = str(i).encode()
            due[key] = time.time() * 1000 + delay.total_seconds() * 1000
            futures.append(await producer.send_async(key, deliver_after=delay))
        await asyncio.gather(*futures)
        stored_ms = time.time() * 1000  # every message is stored from here on
        lateness = []
        after_stored = []
        for _ in range(count):
            message = await shared.receive(timeout_millis=RECEIVE_TIMEOUT_MS)
            late_ms = time.time() * 1000 - due[message.data()]
            assert late_ms >= -2, f"message {message.data()!r} {-late_ms:.0f} ms early"
            lateness.append(late_ms)
            if due[message.data()] >= stored_ms:
                after_stored.append(late_ms)
            shared.acknowledge_nowait(message)
        for name, values in (("all", lateness), ("due after all were stored", after_stored)):
            values.sort()
            n = len(values)
            print(
                f"delayed delivery, {name} ({n}): lateness p50 {values[n // 2]:.0f} ms, "
                f"p99 {values[int(n * 0.99)]:.0f} ms, max {values[-1]:.0f} ms"
            )


async def test_reconsume_later_retries_then_dead_letters(standalone: Standalone) -> None:
    """Retry topics: each reconsume_later comes back after its delay with its retry count;
    past max_redeliver_count the message lands in the dead-letter topic, once."""
    topic = "persistent://public/default/retry-source"
    async with strata.AsyncClient(standalone.address) as client:
        consumer = typing.cast(
            strata.MultiTopicsConsumer,
            await client.subscribe(
                topic,
                "work",
                consumer_type=strata.ConsumerType.Shared,
                initial_position=strata.InitialPosition.Earliest,
                retry_enable=True,
                dead_letter_policy=strata.ConsumerDeadLetterPolicy(
                    max_redeliver_count=2, initial_subscription_name="dlq-sub"
                ),
            ),
        )
        assert consumer.topics() == [topic, f"{topic}-work-RETRY"]
        producer = await client.create_producer(topic)
        await producer.send(b"job", properties={"id": "7"})
        seen = []
        for _ in range(3):
            message = await consumer.receive(RECEIVE_TIMEOUT_MS)
            seen.append((message.topic_name(), message.properties().get("RECONSUMETIMES")))
            started = time.monotonic()
            await consumer.reconsume_later(message, datetime.timedelta(milliseconds=300))
        assert seen == [(topic, None), (f"{topic}-work-RETRY", "1"), (f"{topic}-work-RETRY", "2")]
        assert time.monotonic() - started < 5
        with pytest.raises(strata.Timeout):
            await consumer.receive(1000)  # the third retry went to the dead-letter topic
        await consumer.close()
        dead = await client.subscribe(
            f"{topic}-work-DLQ", "dlq-sub", initial_position=strata.InitialPosition.Earliest
        )
        message = await dead.receive(RECEIVE_TIMEOUT_MS)
        assert message.data() == b"job"
        assert message.properties()["id"] == "7"
        assert message.properties()["REAL_TOPIC"] == topic
        with pytest.raises(strata.Timeout):
            await dead.receive(500)


async def test_dead_letter_moves_survive_a_broker_kill_9(standalone: Standalone) -> None:
    """Issue 12's must-show: a broker kill -9 during the moves to the dead-letter topic
    leaves no message missing from both topics (a duplicate in the DLQ is allowed)."""
    topic = "persistent://public/default/dlq-kill"
    count = 200
    async with strata.AsyncClient(standalone.address) as client:
        producer = await client.create_producer(topic)
        for i in range(count):
            producer.send_nowait(str(i).encode())
        await producer.flush()
        await producer.close()

    async def nack_everything(until_killed: bool) -> None:
        async with strata.AsyncClient(standalone.address) as client:
            consumer = await client.subscribe(
                topic,
                "work",
                consumer_type=strata.ConsumerType.Shared,
                initial_position=strata.InitialPosition.Earliest,
                negative_ack_redelivery_delay_ms=10,
                dead_letter_policy=strata.ConsumerDeadLetterPolicy(
                    max_redeliver_count=1, initial_subscription_name="dlq-sub"
                ),
            )
            nacked = 0
            while True:
                try:
                    message = await consumer.receive(timeout_millis=2000)
                except strata.Timeout:
                    break
                except strata.StrataException:
                    break  # the broker died under us
                consumer.negative_acknowledge(message)
                nacked += 1
                if until_killed and nacked == count + count // 2:
                    standalone.restart()  # kill -9 in the middle of the moves
                    return
            await consumer.close()

    await nack_everything(until_killed=True)
    await nack_everything(until_killed=False)
    async with strata.AsyncClient(standalone.address) as client:
        dead = await client.subscribe(
            f"{topic}-work-DLQ", "dlq-sub", initial_position=strata.InitialPosition.Earliest
        )
        moved: set[int] = set()
        while True:
            try:
                message = await dead.receive(timeout_millis=2000)
            except strata.Timeout:
                break
            moved.add(int(message.data()))
            dead.acknowledge_nowait(message)
        left = await client.subscribe(topic, "work", consumer_type=strata.ConsumerType.Shared)
        remaining: set[int] = set()
        while True:
            try:
                message = await left.receive(timeout_millis=1000)
            except strata.Timeout:
                break
            remaining.add(int(message.data()))
        assert moved | remaining == set(range(count))
