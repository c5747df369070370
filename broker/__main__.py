"""``strata broker``: one stateless broker of a cluster.

It keeps no data of its own: topics, cursors and ledger metadata live in the metadata store
(``--metadata-url``, etcd), entries on the bookies registered there. Start-up: open the store,
create tenant ``public`` and namespace ``public/default`` if the cluster is new (what
``strata initialize-cluster`` does explicitly), follow the live bookies, serve. SIGTERM or
SIGINT closes topics (their ledgers are closed cleanly) and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Mapping

from prometheus_client import start_http_server

from bookie.ledger import LedgerManager
from bookie.registry import BookieClientPool, BookieRegistry, now_ms
from broker.config import BrokerConfig
from broker.ownership import (
    BROKERS_AVAILABLE_PREFIX,
    BundleOwnership,
    OwnershipConfig,
    forward_to_owner,
)
from broker.server import start_broker_server
from broker.service import BrokerService
from strata.config_binding import ConfigBinding
from strata.metadata import open_metadata_store
from strata.metadata.registration import EphemeralRegistration
from strata.process import run_server
from tiered import Offloader, create_offloader

log = logging.getLogger("strata.broker")

SHUTDOWN_GRACE_SECONDS = 5.0
# Room for the framing around the largest entry in a bookie request.
BOOKIE_REQUEST_MARGIN_BYTES = 64 * 1024


async def run_broker(config: BrokerConfig, stop: asyncio.Event) -> None:
    store = await open_metadata_store(config.metadata_url)
    registry = BookieRegistry(store)
    pool = BookieClientPool(
        max_entry_size_bytes=config.max_message_size_bytes + BOOKIE_REQUEST_MARGIN_BYTES
    )
    broker: BrokerService | None = None
    registration: EphemeralRegistration | None = None
    ownership: BundleOwnership | None = None
    offloader: Offloader | None = None
    server = None
    try:
        await registry.start()
        ledgers = LedgerManager(store, registry.available, pool.get, config.ledger_client)
        offload_config = config.offload_config()
        if offload_config is not None:
            offloader = create_offloader(offload_config)
        broker = BrokerService(config, store, ledgers, offloader=offloader)
        broker.joining = True  # until ownership is set up below
        await broker.initialize_defaults()
        await broker.start()
        server, port, _health = await start_broker_server(broker, config.host, config.port)
        broker.advertised_address = config.advertised(port)
        metrics_port = config.metrics_port
        if metrics_port >= 0:
            metrics_server, _thread = start_http_server(metrics_port, addr=config.host)
            metrics_port = metrics_server.server_port
        broker_id = broker.advertised_address
        registration = EphemeralRegistration(
            store,
            BROKERS_AVAILABLE_PREFIX + broker_id,
            json.dumps({"broker_id": broker_id, "started_ms": now_ms()}).encode(),
            # A key left by an earlier process at this address is stale: this process bound
            # the address's port, so that process is gone (its lease has not expired yet).
            is_ours=lambda _value: True,
        )
        await registration.start()
        ownership_config = OwnershipConfig(
            load_report_interval_ms=config.load_report_interval_ms,
            load_shedding_interval_ms=config.load_shedding_interval_ms,
            load_shedding_threshold_percent=config.load_shedding_threshold_percent,
            max_topics_per_bundle=config.max_topics_per_bundle,
        )
        ownership = BundleOwnership(
            broker,
            store,
            broker.advertised_address,
            ownership_config,
            lambda owner, key, operation: forward_to_owner(
                owner, key, operation, ownership_config.forward_timeout_ms / 1000
            ),
        )
        await ownership.start()
        broker.ownership = ownership
        broker.joining = False
        # Harnesses and scripts read this line to learn the ports picked for port 0.
        print(
            f"strata broker ready id={broker_id} port={port} metrics_port={metrics_port}",
            flush=True,
        )
        await stop.wait()
    finally:
        if ownership is not None:
            await ownership.close()  # unloads every bundle: clients move to other brokers
        if registration is not None:
            await registration.close()
        if server is not None:
            await server.stop(SHUTDOWN_GRACE_SECONDS)
        if broker is not None:
            await broker.close()
        if offloader is not None:
            await offloader.close()
        await registry.close()
        await pool.close()
        await store.close()


# A cluster broker keeps no data of its own and names itself by its address.
BROKER_SKIPPED_OPTIONS = ("data_dir", "journal_fsync", "broker_name")


def build_parser(
    environ: Mapping[str, str] | None = None,
) -> tuple[argparse.ArgumentParser, ConfigBinding[BrokerConfig]]:
    binding = ConfigBinding(BrokerConfig, skip=BROKER_SKIPPED_OPTIONS)
    parser = binding.role_parser(
        "strata broker",
        "Run one broker of a cluster (metadata in etcd, entries on bookies).",
        environ,
    )
    return parser, binding


def main(argv: list[str]) -> int:
    parser, binding = build_parser()
    config = binding.build(parser, parser.parse_args(argv))
    if not config.metadata_url:
        parser.error("--metadata-url is required (etcd://HOST:PORT)")
    try:
        config.offload_config()  # validate the offload options now
    except ValueError as exc:
        parser.error(str(exc))
    return run_server(lambda stop: run_broker(config, stop))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
