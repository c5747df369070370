"""What every example shares: its command line (``--service-url``, ``--topic-prefix``)."""

from __future__ import annotations

import argparse
import os
import uuid
from collections.abc import Sequence


def parse(description: str, argv: Sequence[str] | None, count: int = 20) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--service-url",
        default=os.environ.get("STRATA_SERVICE_URL", "localhost:6650"),
        help="a broker or standalone (default: $STRATA_SERVICE_URL or localhost:6650)",
    )
    parser.add_argument(
        "--topic-prefix",
        default=f"example-{uuid.uuid4().hex[:8]}",
        help="names of the topics this run uses start with this (default: random)",
    )
    parser.add_argument("--count", type=int, default=count, help="messages to send")
    return parser.parse_args(argv)
