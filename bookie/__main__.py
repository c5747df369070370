"""``strata bookie``: one bookie process of a cluster.

Start-up, in order: the gRPC server starts at once and reports NOT_SERVING (every call is
UNAVAILABLE) while the journal is replayed; the metadata store is opened and the instance
cookie checked (a bookie that lost its disk refuses to start, see ``bookie.registry``); the
bookie opens; health turns SERVING; the bookie registers its ephemeral key under
``/bookies/available/``; autorecovery (auditor election and a replication worker) starts
unless disabled. SIGTERM or SIGINT shuts down in the reverse order.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
import sys
from pathlib import Path

from prometheus_client import start_http_server

from bookie.autorecovery import Autorecovery, AutorecoveryConfig, start_autorecovery
from bookie.registry import (
    BookieInfo,
    CookieMismatchError,
    bookie_registration,
    check_cookie,
    now_ms,
)
from bookie.server import start_bookie_server
from bookie.storage import Bookie, BookieStorageConfig
from strata.metadata import open_metadata_store
from strata.metadata.registration import RegistrationConflictError
from strata.options import add_option, parse_bool
from strata.process import run_server

log = logging.getLogger("strata.bookie")

SHUTDOWN_GRACE_SECONDS = 5.0
EXIT_IDENTITY_ERROR = 3


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="strata bookie", description="Run one bookie: ledger storage served over gRPC."
    )
    add_option(parser, "--metadata-url", help="etcd://HOST:PORT[,HOST:PORT...] (required)")
    add_option(parser, "--data-dir", type=Path, help="journal and index directory (required)")
    add_option(parser, "--port", type=int, default=3181, help="gRPC port (0 = a free one)")
    add_option(parser, "--metrics-port", type=int, default=8000, help="metrics port (-1 = off)")
    add_option(parser, "--host", default="0.0.0.0", help="address to listen on")
    add_option(
        parser,
        "--advertised-address",
        default="",
        help="host name clients dial; the bookie id is ADDRESS:PORT (default: this host's name)",
    )
    add_option(
        parser,
        "--journal-fsync",
        type=parse_bool,
        default=True,
        help="fsync the journal before acknowledging (turn off only for tests)",
    )
    add_option(
        parser,
        "--autorecovery",
        type=parse_bool,
        default=True,
        help="run the autorecovery auditor election and a replication worker in this process",
    )
    add_option(
        parser,
        "--lost-bookie-recovery-delay-ms",
        type=int,
        default=AutorecoveryConfig().lost_bookie_grace_ms,
        help="how long a bookie stays gone before the auditor re-replicates its ledgers",
    )
    add_option(
        parser,
        "--auditor-periodic-check-interval-ms",
        type=int,
        default=AutorecoveryConfig().audit_interval_ms,
        help="how often the auditor checks every ledger",
    )
    return parser


async def run_bookie(args: argparse.Namespace, stop: asyncio.Event) -> int:
    served = await start_bookie_server(None, args.host, args.port)
    advertised = args.advertised_address or socket.getfqdn()
    bookie_id = f"{advertised}:{served.port}"
    store = None
    bookie = None
    registration = None
    recovery: Autorecovery | None = None
    try:
        store = await open_metadata_store(args.metadata_url)
        data_dir: Path = args.data_dir
        try:
            instance_id = await check_cookie(store, data_dir, bookie_id)
        except CookieMismatchError as exc:
            log.error("refusing to start: %s", exc)
            print(f"error: {exc}", file=sys.stderr, flush=True)
            return EXIT_IDENTITY_ERROR
        bookie = await Bookie.open(BookieStorageConfig(data_dir=data_dir, fsync=args.journal_fsync))
        await served.attach(bookie)
        metrics_port = args.metrics_port
        if metrics_port >= 0:
            metrics_server, _thread = start_http_server(metrics_port, addr=args.host)
            metrics_port = metrics_server.server_port
        registration = bookie_registration(
            store, BookieInfo(bookie_id, instance_id, metrics_port, now_ms())
        )
        try:
            await registration.start()
        except RegistrationConflictError as exc:
            print(f"error: bookie {bookie_id}: {exc}", file=sys.stderr, flush=True)
            return EXIT_IDENTITY_ERROR
        if args.autorecovery:
            recovery = await start_autorecovery(
                store,
                bookie_id,
                AutorecoveryConfig(
                    lost_bookie_grace_ms=args.lost_bookie_recovery_delay_ms,
                    audit_interval_ms=args.auditor_periodic_check_interval_ms,
                ),
            )
        # Harnesses and scripts read this line to learn the ports picked for port 0.
        print(
            f"strata bookie ready id={bookie_id} port={served.port} metrics_port={metrics_port} "
            f"instance={instance_id}",
            flush=True,
        )
        await stop.wait()
        return 0
    finally:
        if recovery is not None:
            await recovery.close()
        if registration is not None:
            await registration.close()
        await served.stop(SHUTDOWN_GRACE_SECONDS)
        if bookie is not None:
            await bookie.close()
        if store is not None:
            await store.close()


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("metadata_url", "data_dir"):
        if not getattr(args, name):
            parser.error(f"--{name.replace('_', '-')} is required")
    args.data_dir = Path(args.data_dir).resolve()
    return run_server(lambda stop: run_bookie(args, stop))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
