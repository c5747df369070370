"""``strata bookie``: one bookie process of a cluster.

Start-up, in order: the gRPC server starts at once and reports NOT_SERVING (every call is
UNAVAILABLE) while the journal is replayed; the metadata store is opened and the instance
cookie checked (a bookie that lost its disk refuses to start, see ``bookie.registry``); the
bookie opens; health turns SERVING; the bookie registers its ephemeral key under
``/bookies/available/``; autorecovery (auditor election and a replication worker) starts
unless disabled. The metadata store may be unreachable at start (the roles of a cluster start
in any order): it is retried with backoff for ``--metadata-store-connect-timeout-seconds``,
NOT_SERVING meanwhile.

SIGTERM or SIGINT shuts down in the reverse order, gracefully, within
``--graceful-shutdown-timeout-seconds``: autorecovery stops, the registration goes (no new
ledger picks this bookie), health turns NOT_SERVING, the bookie takes no more adds (their
streams end UNAVAILABLE, so writers replace it by an ensemble change) and finishes those in
flight; then the server stops and the bookie closes.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from bookie.autorecovery import Autorecovery, start_autorecovery
from bookie.config import BookieConfig
from bookie.metrics import LEDGER_CLIENT_METRICS, AutorecoveryCollector, bookie_collectors
from bookie.registry import (
    BookieInfo,
    CookieMismatchError,
    bookie_registration,
    check_cookie,
    now_ms,
)
from bookie.server import start_bookie_server
from bookie.storage import Bookie
from strata.auth.credentials import server_client_token_source
from strata.auth.server import check_auth_keys, server_interceptors
from strata.config_binding import ConfigBinding
from strata.metadata import open_metadata_store
from strata.metadata.registration import RegistrationConflictError
from strata.metrics import RoleMetrics, freeze_startup_heap
from strata.process import ShutdownDeadline, run_server

log = logging.getLogger("strata.bookie")

EXIT_IDENTITY_ERROR = 3


def build_parser(
    environ: Mapping[str, str] | None = None,
) -> tuple[argparse.ArgumentParser, ConfigBinding[BookieConfig]]:
    binding = ConfigBinding(BookieConfig)
    parser = binding.role_parser(
        "strata bookie", "Run one bookie: ledger storage served over gRPC.", environ
    )
    return parser, binding


async def run_bookie(config: BookieConfig, stop: asyncio.Event) -> int:
    interceptors = server_interceptors(
        config.auth, listen_host=config.host, role="bookie", superusers_only=True
    )
    served = await start_bookie_server(
        None,
        config.host,
        config.port,
        interceptors=interceptors,
        credentials=config.tls.server_credentials(),
    )
    deadline = ShutdownDeadline(config.graceful_shutdown_timeout_seconds)
    bookie_id = config.bookie_id(served.port)
    store = None
    bookie = None
    registration = None
    metrics: RoleMetrics | None = None
    recovery: Autorecovery | None = None
    try:
        store = await open_metadata_store(
            config.metadata_url,
            connect_timeout_seconds=config.metadata_store_connect_timeout_seconds,
        )
        try:
            instance_id = await check_cookie(
                store,
                config.storage.data_dir,
                bookie_id,
                journal_dir=(
                    config.storage.journal_path if config.storage.journal_is_separate else None
                ),
            )
        except CookieMismatchError as exc:
            log.error("refusing to start: %s", exc)
            print(f"error: {exc}", file=sys.stderr, flush=True)
            return EXIT_IDENTITY_ERROR
        bookie = await Bookie.open(config.storage)
        await served.attach(bookie)
        metrics = RoleMetrics(
            config.host, config.metrics_port, [*bookie_collectors(bookie), *LEDGER_CLIENT_METRICS]
        ).start()
        metrics_port = metrics.port
        registration = bookie_registration(
            store, BookieInfo(bookie_id, instance_id, metrics_port, now_ms())
        )
        try:
            await registration.start()
        except RegistrationConflictError as exc:
            print(f"error: bookie {bookie_id}: {exc}", file=sys.stderr, flush=True)
            return EXIT_IDENTITY_ERROR
        if config.autorecovery:
            recovery = await start_autorecovery(
                store,
                bookie_id,
                config.recovery,
                config.ledger_client,
                token=server_client_token_source(config.auth),
                credentials=config.tls.client_credentials(),
            )
            metrics.registry.register(AutorecoveryCollector(recovery))
        # Harnesses and scripts read this line to learn the ports picked for port 0.
        freeze_startup_heap()  # issue 15: later collections skip what start-up made
        print(
            f"strata bookie ready id={bookie_id} port={served.port} metrics_port={metrics_port} "
            f"instance={instance_id}",
            flush=True,
        )
        await stop.wait()
        deadline.start()
        return 0
    finally:
        if recovery is not None:
            await recovery.close()
        if registration is not None:
            await registration.close()
        if metrics is not None:
            await metrics.close()
        if not await served.drain(deadline.remaining_s()):
            log.warning("adds still in flight after the graceful shutdown timeout; stopping")
        await served.stop(deadline.server_grace_s())
        if bookie is not None:
            await bookie.close()
        if store is not None:
            await store.close()


def main(argv: list[str]) -> int:
    parser, binding = build_parser()
    config = binding.build(parser, parser.parse_args(argv))
    check_auth_keys(parser, config.auth)
    storage = replace(
        config.storage,
        data_dir=config.storage.data_dir.resolve(),
        journal_dir=str(Path(config.storage.journal_dir).resolve())
        if config.storage.journal_dir
        else "",
    )
    config = replace(config, storage=storage)
    return run_server(lambda stop: run_bookie(config, stop), log_format=config.log_format)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
