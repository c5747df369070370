"""The log formats of the server roles: json is one object per line with the fields log
collectors index (time, level, logger, message, and topic/ledger where known)."""

from __future__ import annotations

import datetime
import io
import json
import logging
import sys
from collections.abc import Iterator

import pytest

from strata.logging_setup import (
    JsonFormatter,
    TextFormatter,
    configure_logging,
    formatter_for,
    log_fields,
)


def record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    made = logging.LogRecord("strata.test", logging.WARNING, __file__, 1, message, args, None)
    made.__dict__.update(extra)
    return made


def test_json_line_has_the_indexed_fields() -> None:
    line = JsonFormatter().format(
        record("closing %s failed", "t1", **log_fields(topic="persistent://a/b/t1", ledger=42))
    )
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["level"] == "WARNING"
    assert parsed["logger"] == "strata.test"
    assert parsed["message"] == "closing t1 failed"
    assert parsed["topic"] == "persistent://a/b/t1"
    assert parsed["ledger"] == 42
    when = datetime.datetime.fromisoformat(parsed["time"].replace("Z", "+00:00"))
    assert when.tzinfo is not None
    assert abs((datetime.datetime.now(datetime.UTC) - when).total_seconds()) < 60


def test_json_leaves_out_unknown_context_and_keeps_newlines_escaped() -> None:
    parsed = json.loads(JsonFormatter().format(record("two\nlines")))
    assert parsed["message"] == "two\nlines"
    assert "topic" not in parsed and "ledger" not in parsed


def test_json_carries_the_traceback() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        made = logging.LogRecord(
            "strata.test", logging.ERROR, __file__, 1, "failed", (), exc_info=sys.exc_info()
        )
    line = JsonFormatter().format(made)
    assert "\n" not in line
    assert "RuntimeError: boom" in json.loads(line)["exception"]


def test_text_line_shows_the_same_context() -> None:
    text = TextFormatter().format(record("loaded", **log_fields(topic="t", ledger=7)))
    assert text.endswith("WARNING strata.test: loaded topic=t ledger=7")
    assert TextFormatter().format(record("plain")).endswith("strata.test: plain")


def test_log_fields_drops_what_is_unknown() -> None:
    assert log_fields() == {}
    assert log_fields(ledger=0) == {"ledger": 0}


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="text, json"):
        formatter_for("xml")


@pytest.fixture
def restored_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def test_configure_logging_replaces_the_root_handlers(
    restored_root: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    configure_logging("json")
    logging.getLogger("strata.x").info("hello", extra=log_fields(ledger=3))
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0])["ledger"] == 3
