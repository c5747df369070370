"""``strata initialize-cluster``: prepare a new cluster's metadata store explicitly.

Creates tenant ``public`` and namespace ``public/default`` when they are missing. A broker
does the same on its first start, so running this is optional; it is idempotent.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from broker.namespaces import initialize_cluster
from strata.metadata import MetadataError, open_metadata_store
from strata.options import add_option


async def initialize(metadata_url: str) -> None:
    store = await open_metadata_store(metadata_url)
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
    args = parser.parse_args(argv)
    if not args.metadata_url:
        parser.error("--metadata-url is required")
    try:
        asyncio.run(initialize(args.metadata_url))
    except (OSError, ValueError, MetadataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"cluster initialized: tenant public, namespace public/default at {args.metadata_url}")
    return 0
