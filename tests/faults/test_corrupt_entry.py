"""A stored entry whose checksum fails (issue 11): its consumer is told DATA_LOSS at once,
instead of waiting while the broker reads the entry again every 200 ms for nobody."""

from __future__ import annotations

from pathlib import Path

import pytest

import strata
from tests.harness import Standalone

pytestmark = [pytest.mark.integration, pytest.mark.fault]

MARKER = b"CORRUPT-ME-" * 20


def flip_a_byte_of(data_dir: Path, marker: bytes) -> None:
    """Damage the journal record that holds ``marker`` (a byte of its payload)."""
    for segment in sorted(data_dir.rglob("*.seg")):
        content = bytearray(segment.read_bytes())
        at = content.find(marker)
        if at >= 0:
            content[at + 5] ^= 0xFF
            segment.write_bytes(bytes(content))
            return
    raise AssertionError("the marker is in no journal segment")


async def test_a_damaged_entry_is_data_loss_for_its_consumer(tmp_path: Path) -> None:
    server = Standalone(tmp_path / "data").start()
    try:
        async with strata.AsyncClient(server.address) as client:
            producer = await client.create_producer("damaged", batching_enabled=False)
            await producer.send(b"before")
            await producer.send(MARKER)
        server.stop()
        flip_a_byte_of(tmp_path / "data", MARKER)
        server.start()
        async with strata.AsyncClient(server.address) as client:
            consumer = await client.subscribe(
                "damaged", "s", initial_position=strata.InitialPosition.Earliest
            )
            # The damaged entry fails the read it is in: the consumer may or may not get the
            # entry before it first, then DATA_LOSS, within seconds rather than never.
            with pytest.raises(strata.DataLoss, match="checksum"):
                for _ in range(2):
                    message = await consumer.receive(timeout_millis=10_000)
                    assert message.data() == b"before"
    finally:
        server.stop()
