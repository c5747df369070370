"""How a server process logs: ``--log-format text`` (lines for people) or ``json`` (one object
per line, for the log collectors of Kubernetes).

A JSON line has ``time`` (UTC, ISO 8601 with milliseconds), ``level``, ``logger`` and
``message``; ``topic`` and ``ledger`` when the call knew them, passed as
``extra=log_fields(topic=..., ledger=...)``; ``exception`` with the traceback when there is
one. The text format shows the same fields after the message (``topic=... ledger=...``), so
both formats say the same.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from typing import Any

LOG_FORMAT_TEXT = "text"
LOG_FORMAT_JSON = "json"
LOG_FORMATS = (LOG_FORMAT_TEXT, LOG_FORMAT_JSON)
# Fields a call may add through ``extra=``, in the order they are shown.
CONTEXT_FIELDS = ("topic", "ledger", "role", "operation", "target", "outcome")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def log_fields(*, topic: object = None, ledger: int | None = None) -> dict[str, Any]:
    """The ``extra=`` of a log call about a topic or a ledger (None fields are left out)."""
    fields = {"topic": str(topic) if topic is not None else None, "ledger": ledger}
    return {name: value for name, value in fields.items() if value is not None}


def _context_of(record: logging.LogRecord) -> dict[str, Any]:
    return {
        name: getattr(record, name)
        for name in CONTEXT_FIELDS
        if getattr(record, name, None) is not None
    }


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines inside strings are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        moment = datetime.datetime.fromtimestamp(record.created, tz=datetime.UTC)
        line: dict[str, Any] = {
            "time": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **_context_of(record),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    """The usual text line, with the topic and ledger fields appended when present."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        text = super().formatMessage(record)
        context = _context_of(record)
        if not context:
            return text
        return text + " " + " ".join(f"{name}={value}" for name, value in context.items())


def formatter_for(log_format: str) -> logging.Formatter:
    if log_format == LOG_FORMAT_JSON:
        return JsonFormatter()
    if log_format == LOG_FORMAT_TEXT:
        return TextFormatter()
    raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, not {log_format!r}")


def configure_logging(log_format: str = LOG_FORMAT_TEXT, level: int = logging.INFO) -> None:
    """Send the root logger's records to stderr in ``log_format`` (replacing its handlers)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter_for(log_format))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
