"""``strata broker``: one stateless broker of a cluster.

It keeps no data of its own: topics, cursors and ledger metadata live in the metadata store
(``--metadata-url``, etcd), entries on the bookies registered there. Start-up: open the store
(an unreachable one is retried with backoff for ``--metadata-store-connect-timeout-seconds``,
so the roles of a cluster start in any order; the broker's port answers only once it is
open), create tenant ``public`` and namespace ``public/default`` if the cluster is new (what
``strata initialize-cluster`` does explicitly), follow the live bookies, serve.

SIGTERM or SIGINT stops it gracefully, within ``--graceful-shutdown-timeout-seconds``: the
broker leaves the lookup candidates, then hands its bundles over one at a time (their topics
close, their ledgers are closed cleanly, their clients look them up again and resend what was
not receipted on the next owner), then stops serving and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
import time
from collections.abc import Mapping

from grpc_health.v1 import health as grpc_health

from bookie.ledger import LedgerManager
from bookie.registry import BookieClientPool, BookieRegistry, now_ms
from broker.config import BrokerConfig
from broker.console import start_console
from broker.load_manager import BROKERS_AVAILABLE_PREFIX
from broker.ownership import OwnershipConfig
from broker.server import (
    bind_broker_server,
    report_ready,
    serve_broker,
    serve_console_port,
    start_metrics_server,
    web_port_of,
)
from broker.service import BrokerService
from strata.auth.credentials import server_client_token_source
from strata.auth.server import check_auth_keys, server_interceptors
from strata.config_binding import ConfigBinding
from strata.metadata import MetadataStore, open_metadata_store
from strata.metadata.registration import EphemeralRegistration
from strata.metrics import freeze_startup_heap
from strata.process import ShutdownDeadline, run_server
from tiered import create_offloader

log = logging.getLogger("strata.broker")

# Room for the framing around the largest entry in a bookie request.
BOOKIE_REQUEST_MARGIN_BYTES = 64 * 1024


def ownership_config(config: BrokerConfig) -> OwnershipConfig:
    return OwnershipConfig(
        load_report_interval_ms=config.load_report_interval_ms,
        load_shedding_interval_ms=config.load_shedding_interval_ms,
        load_shedding_threshold_percent=config.load_shedding_threshold_percent,
        max_topics_per_bundle=config.max_topics_per_bundle,
        forward_token=server_client_token_source(config.auth),
        forward_credentials=config.tls.client_credentials(),
    )


def broker_registration(store: MetadataStore, broker_id: str) -> EphemeralRegistration:
    """This broker's ephemeral key under ``/brokers/available/``: a lookup candidate."""
    return EphemeralRegistration(
        store,
        BROKERS_AVAILABLE_PREFIX + broker_id,
        json.dumps({"broker_id": broker_id, "started_ms": now_ms()}).encode(),
        # A key left by an earlier process at this address is stale: this process bound
        # the address's port, so that process is gone (its lease has not expired yet).
        is_ours=lambda _value: True,
    )


async def leave_gracefully(
    broker: BrokerService,
    registration: EphemeralRegistration,
    health: grpc_health.aio.HealthServicer,
    deadline: ShutdownDeadline,
) -> None:
    """The first steps of a graceful stop, within ``deadline``: report NOT_SERVING (a
    Kubernetes Service stops sending clients here), stop being a lookup candidate (so no
    lookup sends a client back here), then unload every bundle. Whatever is left when the
    time is up is closed by the rest of the shutdown."""
    deadline.start()
    await health.enter_graceful_shutdown()
    timeout_s = deadline.remaining_s()
    started = time.monotonic()
    owned = len(broker.ownership.owned) if broker.ownership is not None else 0
    log.info("leaving the cluster: handing %d bundles to other brokers", owned)
    try:
        async with asyncio.timeout(timeout_s):
            await registration.close()
            await broker.leave_cluster()
    except TimeoutError:
        log.warning("bundles not all handed over within %.1f s; closing the rest", timeout_s)
        return
    log.info("left the cluster in %.2f s", time.monotonic() - started)


async def run_broker(config: BrokerConfig, stop: asyncio.Event) -> None:
    """Serve until ``stop``. Everything opened is closed in reverse order (``resources``):
    the broker leaves bundle ownership first, so its clients move to other brokers."""
    async with contextlib.AsyncExitStack() as resources:
        store = await open_metadata_store(
            config.metadata_url,
            connect_timeout_seconds=config.metadata_store_connect_timeout_seconds,
        )
        resources.push_async_callback(store.close)
        pool = BookieClientPool(
            max_entry_size_bytes=config.max_message_size_bytes + BOOKIE_REQUEST_MARGIN_BYTES,
            token=server_client_token_source(config.auth),
            credentials=config.tls.client_credentials(),
        )
        resources.push_async_callback(pool.close)
        registry = BookieRegistry(store)
        resources.push_async_callback(registry.close)
        await registry.start()
        offload_config = config.offload_config()
        offloader = create_offloader(offload_config) if offload_config is not None else None
        if offloader is not None:
            resources.push_async_callback(offloader.close)
        # Bound before the broker is built: the port gives the broker its advertised address.
        server, port = bind_broker_server(
            config.host,
            config.port,
            config.max_message_size_bytes,
            server_interceptors(config.auth, listen_host=config.host, role="broker"),
            config.tls.server_credentials(),
        )
        broker_id = config.advertised(port)
        broker = BrokerService(
            config,
            store,
            LedgerManager(store, registry.available, pool.get, config.ledger_client),
            offloader=offloader,
            advertised_address=broker_id,
            ownership=ownership_config(config),
        )
        resources.push_async_callback(broker.close)
        deadline = ShutdownDeadline(config.graceful_shutdown_timeout_seconds)
        resources.push_async_callback(lambda: server.stop(deadline.server_grace_s()))
        await broker.initialize_defaults()
        await broker.start()
        # NOT_SERVING until joined: a readiness probe keeps the Service from sending clients
        # to a broker that cannot own a topic yet (its topic calls answer UNAVAILABLE).
        health = await serve_broker(server, broker, ready=False)
        console = start_console(broker)
        if console is not None:
            resources.push_async_callback(console.close)
        metrics = start_metrics_server(broker, config.host, config.metrics_port, console=console)
        resources.push_async_callback(metrics.close)
        metrics_port = metrics.port
        console_endpoint = serve_console_port(broker, console)
        if console_endpoint is not None:
            resources.push_async_callback(asyncio.to_thread, console_endpoint.close)
        web_port = web_port_of(console, console_endpoint, metrics)
        registration = broker_registration(store, broker_id)
        resources.push_async_callback(registration.close)
        await registration.start()
        resources.push_async_callback(leave_gracefully, broker, registration, health, deadline)
        await broker.join_cluster()
        await report_ready(health)
        # Harnesses and scripts read this line to learn the ports picked for port 0.
        freeze_startup_heap()  # issue 15: later collections skip what start-up made
        print(
            f"strata broker ready id={broker_id} port={port} metrics_port={metrics_port} "
            f"web_port={web_port}",
            flush=True,
        )
        await stop.wait()
        deadline.start()


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
    check_auth_keys(parser, config.auth)
    if not config.metadata_url:
        parser.error("--metadata-url is required (etcd://HOST:PORT)")
    try:
        config.offload_config()  # validate the offload options now
    except ValueError as exc:
        parser.error(str(exc))
    return run_server(lambda stop: run_broker(config, stop), log_format=config.log_format)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
