"""``strata initialize-cluster``: prepare a new cluster's metadata store explicitly.

Creates tenant ``public`` and namespace ``public/default`` when they are missing. A broker
does the same on its first start, so running this is optional; it is idempotent. Like the
server roles it waits for an unreachable metadata store
(``--metadata-store-connect-timeout-seconds``) and logs as ``--log-format`` says.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from broker.namespaces import initialize_cluster
from strata.logging_setup import LOG_FORMAT_TEXT, LOG_FORMATS, configure_logging
from strata.metadata import MetadataError, open_metadata_store
from strata.options import add_option
from strata.process import DEFAULT_METADATA_STORE_CONNECT_TIMEOUT_SECONDS


async def initialize(metadata_url: str, connect_timeout_seconds: float | None = None) -> None:
    store = await open_metadata_store(metadata_url, connect_timeout_seconds=connect_timeout_seconds)
    try:
        await initialize_cluster(store)
    finally:
        await store.close()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="strata initialize-cluster",
        description="Create tenant public and namespace public/default in a new cluster.",
    )
    add_option(parser, "--metadata-url", help="etcd://HOST:PORT[,HOST:PORT...] (required)")
    add_option(
        parser,
        "--metadata-store-connect-timeout-seconds",
        type=float,
        default=DEFAULT_METADATA_STORE_CONNECT_TIMEOUT_SECONDS,
        metavar="SECONDS",
        help="how long to wait for an unreachable metadata store (a Job may start before etcd)",
    )
    add_option(
        parser, "--log-format", default=LOG_FORMAT_TEXT, choices=LOG_FORMATS, help="text or json"
    )
    args = parser.parse_args(argv)
    if not args.metadata_url:
        parser.error("--metadata-url is required")
    configure_logging(args.log_format)
    try:
        asyncio.run(initialize(args.metadata_url, args.metadata_store_connect_timeout_seconds))
    except (OSError, ValueError, MetadataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"cluster initialized: tenant public, namespace public/default at {args.metadata_url}")
    return 0
