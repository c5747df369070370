"""Subscription administration through the CLI and the admin RPC (issue 12 item 9)."""

from __future__ import annotations

import asyncio
import json

import pytest

import strata
from tests.harness import Standalone
from tests.integration.test_standalone_cli import cli

pytestmark = pytest.mark.integration

TOPIC = "persistent://public/default/sub-admin"


def ok(standalone: Standalone, *args: str) -> str:
    result = cli(standalone, "admin", "topics", *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


async def receive_all(consumer: strata.AsyncConsumer) -> list[str]:
    values: list[str] = []
    while True:
        try:
            message = await consumer.receive(timeout_millis=500)
        except strata.Timeout:
            return values
        values.append(message.data().decode())
        consumer.acknowledge_nowait(message)


async def test_subscription_verbs(standalone: Standalone) -> None:
    produced = cli(standalone, "produce", TOPIC, stdin="".join(f"m{i}\n" for i in range(10)))
    assert produced.returncode == 0, produced.stderr
    ok(standalone, "create-subscription", TOPIC, "-s", "from-start", "--message-id", "earliest")
    ok(standalone, "create-subscription", TOPIC, "-s", "from-end")
    again = cli(standalone, "admin", "topics", "create-subscription", TOPIC, "-s", "from-end")
    assert again.returncode == 1 and "ALREADY_EXISTS" in again.stderr
    assert ok(standalone, "subscriptions", TOPIC).split() == ["from-end", "from-start"]
    # Peek: the next messages, the cursor unchanged (peek twice, same answer).
    peek = ok(standalone, "peek-messages", TOPIC, "-s", "from-start", "-n", "100")
    peeked = [json.loads(line) for line in peek.splitlines()]
    assert [p["data"] for p in peeked] == [f"m{i}" for i in range(10)]
    assert ok(standalone, "peek-messages", TOPIC, "-s", "from-start", "-n", "100") == peek
    # Skip 3 messages: whole entries, so at least 3 (the batches the producer made).
    skipped = ok(standalone, "skip", TOPIC, "-s", "from-start", "-n", "3")
    count = int(skipped.split()[1])
    assert 3 <= count <= 10
    async with strata.AsyncClient(standalone.address) as client:
        consumer = await client.subscribe(TOPIC, "from-start")
        assert await receive_all(consumer) == [f"m{i}" for i in range(count, 10)]
        await consumer.flush_acknowledgements()
        # Reset to the first message: everything again (the consumer reconnects).
        first_id = peeked[0]["message_id"].split(":")
        ok(
            standalone,
            "reset-cursor",
            TOPIC,
            "-s",
            "from-start",
            "--message-id",
            f"{first_id[0]}:{first_id[1]}",
        )
        await asyncio.sleep(0.5)
        assert await receive_all(consumer) == [f"m{i}" for i in range(10)]
        await consumer.flush_acknowledgements()
        # Unsubscribe refuses a connected consumer unless forced.
        busy = cli(standalone, "admin", "topics", "unsubscribe", TOPIC, "-s", "from-start")
        assert busy.returncode == 1 and "FAILED_PRECONDITION" in busy.stderr
        ok(standalone, "reset-cursor", TOPIC, "-s", "from-start", "--time", "1h")
        await asyncio.sleep(0.5)
        assert len(await receive_all(consumer)) == 10
        await consumer.close()
    assert "skipped 0 messages" in ok(standalone, "clear-backlog", TOPIC, "-s", "from-end")
    ok(standalone, "unsubscribe", TOPIC, "-s", "from-start")
    assert ok(standalone, "subscriptions", TOPIC).split() == ["from-end"]
    missing = cli(standalone, "admin", "topics", "unsubscribe", TOPIC, "-s", "nope")
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr


def test_expire_and_examine(standalone: Standalone) -> None:
    topic = "persistent://public/default/expire"
    produced = cli(standalone, "produce", topic, "-m", "old", "-n", "3", "--disable-batching")
    assert produced.returncode == 0, produced.stderr
    ok(standalone, "create-subscription", topic, "-s", "s", "--message-id", "earliest")
    first = json.loads(ok(standalone, "examine-message", topic, "-i", "earliest", "-m", "1"))
    last = json.loads(ok(standalone, "examine-message", topic, "-i", "latest", "-m", "1"))
    assert first["data"] == last["data"] == "old"
    ledger, entry = first["message_id"].split(":")[:2]
    by_id = json.loads(ok(standalone, "get-message-by-id", topic, "-l", ledger, "-e", entry))
    assert by_id == first
    missing = cli(
        standalone, "admin", "topics", "examine-message", topic, "-i", "earliest", "-m", "99"
    )
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr
    assert "expired 0 messages" in ok(
        standalone, "expire-messages", topic, "-s", "s", "--expire-time-seconds", "3600"
    )
    assert "expired 3 messages" in ok(
        standalone, "expire-messages", topic, "-s", "s", "--expire-time-seconds", "0"
    )
