"""``strata standalone``: broker, bookie and embedded metadata store in one process.

Data lives under ``--data-dir``: ``metadata/`` (the embedded store) and ``bookie/`` (the
journal and index). The broker talks to its bookie through the same ``BookieClient``
interface a cluster broker uses over gRPC, here in-process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from collections.abc import Mapping

from bookie.ledger import LedgerManager
from bookie.local import LocalBookieClient
from bookie.metrics import bookie_collectors
from bookie.registry import BookieInfo, available_key, now_ms
from bookie.storage import Bookie, BookieStorageConfig
from broker.config import BrokerConfig
from broker.console import start_console
from broker.server import (
    bind_broker_server,
    serve_broker,
    serve_console_port,
    start_metrics_server,
    web_port_of,
)
from broker.service import BrokerService
from strata.auth.server import check_auth_keys, server_interceptors
from strata.config_binding import ConfigBinding
from strata.metadata import open_metadata_store
from strata.metrics import freeze_startup_heap
from strata.process import ShutdownDeadline, run_server
from tiered import create_offloader

log = logging.getLogger("strata.standalone")

# A standalone has its own embedded store and its one bookie: every ledger is written once.
STANDALONE_FIXED_OPTIONS = {
    "metadata_url": "",
    "managed_ledger_default_ensemble_size": 1,
    "managed_ledger_default_write_quorum": 1,
    "managed_ledger_default_ack_quorum": 1,
}
# Its store is embedded: there is nothing to wait for at start.
STANDALONE_SKIPPED_OPTIONS = ("metadata_store_connect_timeout_seconds",)


async def run_standalone(config: BrokerConfig, stop: asyncio.Event) -> None:
    """Serve until ``stop``; everything opened is closed in reverse order (``resources``)."""
    data_dir = config.data_dir.resolve()
    (data_dir / "metadata").mkdir(parents=True, exist_ok=True)
    async with contextlib.AsyncExitStack() as resources:
        store = await open_metadata_store(f"embedded://{data_dir / 'metadata'}")
        resources.push_async_callback(store.close)
        bookie = await Bookie.open(
            BookieStorageConfig(data_dir=data_dir / "bookie", fsync=config.journal_fsync)
        )
        resources.push_async_callback(bookie.close)
        local = LocalBookieClient(bookie)
        resources.push_async_callback(local.close)
        ledgers = LedgerManager(
            store, lambda: [local.address], lambda _address: local, config.ledger_client
        )
        # Tiered storage: the filesystem driver defaults to <data-dir>/offload.
        offload_config = config.offload_config(default_directory=data_dir / "offload")
        offloader = create_offloader(offload_config) if offload_config is not None else None
        if offloader is not None:
            resources.push_async_callback(offloader.close)
        # Bound before the broker is built: the port gives the broker its advertised address.
        server, port = bind_broker_server(
            config.host,
            config.port,
            config.max_message_size_bytes,
            server_interceptors(config.auth, listen_host=config.host, role="standalone"),
            config.tls.server_credentials(),
        )
        broker = BrokerService(
            config, store, ledgers, offloader=offloader, advertised_address=config.advertised(port)
        )
        resources.push_async_callback(broker.close)
        deadline = ShutdownDeadline(config.graceful_shutdown_timeout_seconds)
        resources.push_async_callback(lambda: server.stop(deadline.server_grace_s()))
        await broker.initialize_defaults()
        # Listed by `strata admin bookies list` like a cluster's bookies.
        await store.put(
            available_key(local.address),
            BookieInfo(local.address, "standalone", -1, now_ms()).to_json(),
            ephemeral=True,
        )
        await broker.start()
        await serve_broker(server, broker)
        console = start_console(broker)
        if console is not None:
            resources.push_async_callback(console.close)
        metrics = start_metrics_server(
            broker, config.host, config.metrics_port, *bookie_collectors(bookie), console=console
        )
        resources.push_async_callback(metrics.close)
        metrics_port = metrics.port
        console_endpoint = serve_console_port(broker, console)
        if console_endpoint is not None:
            resources.push_async_callback(asyncio.to_thread, console_endpoint.close)
        web_port = web_port_of(console, console_endpoint, metrics)
        freeze_startup_heap()  # issue 15: later collections skip what start-up made
        # Tests and scripts read this line to learn the ports picked for port 0.
        print(
            f"strata standalone ready port={port} metrics_port={metrics_port} "
            f"web_port={web_port} data_dir={data_dir}",
            flush=True,
        )
        await stop.wait()
        deadline.start()


def build_parser(
    environ: Mapping[str, str] | None = None,
) -> tuple[argparse.ArgumentParser, ConfigBinding[BrokerConfig]]:
    binding = ConfigBinding(
        BrokerConfig, fixed=STANDALONE_FIXED_OPTIONS, skip=STANDALONE_SKIPPED_OPTIONS
    )
    parser = binding.role_parser(
        "strata standalone",
        "Run broker + bookie + embedded metadata store in one process.",
        environ,
    )
    return parser, binding


def main(argv: list[str]) -> int:
    parser, binding = build_parser()
    config = binding.build(parser, parser.parse_args(argv))
    check_auth_keys(parser, config.auth)
    try:
        config.offload_config(default_directory=config.data_dir / "offload")  # validate
    except ValueError as exc:
        parser.error(str(exc))
    return run_server(lambda stop: run_standalone(config, stop), log_format=config.log_format)
