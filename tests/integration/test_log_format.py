"""``--log-format json``: a standalone's log is one JSON object per line, with the fields a log
collector indexes (time, level, logger, message; topic where the line is about one)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import strata
from tests.harness import Standalone

pytestmark = pytest.mark.integration

TOPIC = "persistent://public/default/json-logged"
READY_LINE = "strata standalone ready "
# gRPC's C core writes its own lines (``I1203 08:38:53.28 ... chttp2_transport.cc ...``).
GRPC_NATIVE_LINE = re.compile(r"^[DIWEF]\d{4} \d\d:\d\d:\d\d")
REQUIRED_FIELDS = {"time", "level", "logger", "message"}


async def test_standalone_writes_json_lines(tmp_path: Path) -> None:
    standalone = Standalone(tmp_path / "data", "--log-format", "json").start()
    try:
        client = strata.AsyncClient(standalone.address)
        try:
            producer = await client.create_producer(TOPIC)
            await producer.send(b"x")
        finally:
            await client.close()
    finally:
        assert standalone.stop() == 0
    records = []
    for line in standalone.log_text().splitlines():
        if line.startswith(READY_LINE) or GRPC_NATIVE_LINE.match(line) or not line.strip():
            continue
        record = json.loads(line)  # fails the test on any line that is not JSON
        assert REQUIRED_FIELDS <= record.keys(), record
        records.append(record)
    messages = [record["message"] for record in records]
    assert any(m.startswith("loaded topic") for m in messages), messages
    assert any(record.get("topic") == TOPIC for record in records), records
    assert any(m.startswith("stop signal") for m in messages), messages
