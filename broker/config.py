"""The broker's configuration: one frozen, validated dataclass, loaded once per process.

Every field has a default, a flag ``--kebab-name`` and an environment variable
``STRATA_UPPER_SNAKE`` (see ``strata.options``).
"""

from __future__ import annotations

import argparse
import os
import socket
from dataclasses import dataclass, field, fields
from pathlib import Path

from strata.options import add_option, env_name
from tiered.config import DRIVER_FILESYSTEM, DRIVERS, OffloadConfig
from tiered.format import check_prefix

MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    host: str = "127.0.0.1"
    port: int = 6650
    metrics_port: int = 8080
    advertised_address: str = ""
    metadata_url: str = ""
    data_dir: Path = Path("./data/standalone")
    broker_name: str = "standalone"
    max_message_size_bytes: int = 5 * MIB
    managed_ledger_max_entries_per_ledger: int = 50_000
    managed_ledger_max_size_per_ledger_mb: int = 2048
    managed_ledger_max_ledger_rollover_time_minutes: float = 240.0
    # Pulsar's defaults; a standalone, with its one bookie, sets 1/1/1.
    managed_ledger_default_ensemble_size: int = 2
    managed_ledger_default_write_quorum: int = 2
    managed_ledger_default_ack_quorum: int = 2
    managed_ledger_cache_size_mb: int = 256
    # Pulsar's managedLedgerDefaultMarkDeleteRateLimit (1/s): each persist is a metadata-store
    # write (an fsync in standalone, a raft round in etcd); ack receipts force one at once.
    cursor_persist_interval_ms: int = 1000
    cursor_max_persisted_ranges: int = 10_000
    max_pending_publish_batches_per_producer: int = 1000
    housekeeping_interval_ms: int = 5000
    topic_idle_unload_seconds: float = 300.0
    load_report_interval_ms: int = 5_000
    load_shedding_interval_ms: int = 60_000
    load_shedding_threshold_percent: int = 10
    max_topics_per_bundle: int = 1_000
    journal_fsync: bool = True
    # Tiered storage (``tiered``, ``broker.offload``): off unless a driver is set.
    offload_driver: str = ""
    offload_bucket: str = ""
    offload_region: str = ""
    offload_endpoint_url: str = ""
    offload_prefix: str = ""
    offload_directory: str = ""
    offload_access_key_id: str = field(default="", repr=False)
    offload_secret_access_key: str = field(default="", repr=False)
    offload_deletion_lag_ms: int = 4 * 60 * 60 * 1000
    offload_max_threads: int = 4
    offload_retry_timeout_ms: int = 30_000
    offload_request_timeout_ms: int = 10_000
    offload_block_cache_size_mb: int = 64

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535 or not -1 <= self.metrics_port <= 65535:
            raise ValueError("ports must be within 0..65535 (metrics -1 = off)")
        if self.max_message_size_bytes <= 0:
            raise ValueError("max message size must be positive")
        if self.managed_ledger_max_entries_per_ledger <= 0:
            raise ValueError("managed-ledger-max-entries-per-ledger must be positive")
        if self.managed_ledger_max_size_per_ledger_mb <= 0:
            raise ValueError("managed-ledger-max-size-per-ledger-mb must be positive")
        if self.managed_ledger_max_ledger_rollover_time_minutes <= 0:
            raise ValueError("managed-ledger-max-ledger-rollover-time-minutes must be positive")
        e = self.managed_ledger_default_ensemble_size
        qw = self.managed_ledger_default_write_quorum
        qa = self.managed_ledger_default_ack_quorum
        if not 1 <= qa <= qw <= e:
            raise ValueError("need 1 <= ack quorum <= write quorum <= ensemble size")
        if self.offload_driver and self.offload_driver not in DRIVERS:
            raise ValueError(f"offload-driver must be one of {', '.join(DRIVERS)} (or empty)")
        check_prefix(self.offload_prefix)
        if self.offload_deletion_lag_ms < 0:
            raise ValueError("offload-deletion-lag-ms must not be negative")
        if (
            min(
                self.offload_max_threads,
                self.offload_retry_timeout_ms,
                self.offload_request_timeout_ms,
            )
            <= 0
        ):
            raise ValueError("offload threads and timeouts must be positive")
        if self.offload_block_cache_size_mb < 0:
            raise ValueError("offload-block-cache-size-mb must not be negative")

    def offload_config(self, default_directory: Path | None = None) -> OffloadConfig | None:
        """The offloader's configuration, or None when offloading is off. The filesystem
        driver uses ``--offload-directory``, else ``default_directory``."""
        if not self.offload_driver:
            return None
        directory = self.offload_directory
        if not directory and self.offload_driver == DRIVER_FILESYSTEM:
            if default_directory is None:
                raise ValueError("the filesystem offload driver needs --offload-directory")
            directory = str(default_directory)
        return OffloadConfig(
            driver=self.offload_driver,
            prefix=self.offload_prefix,
            bucket=self.offload_bucket,
            region=self.offload_region,
            endpoint_url=self.offload_endpoint_url,
            access_key_id=self.offload_access_key_id,
            secret_access_key=self.offload_secret_access_key,
            directory=directory,
            max_threads=self.offload_max_threads,
            retry_timeout_ms=self.offload_retry_timeout_ms,
            request_timeout_ms=self.offload_request_timeout_ms,
            block_cache_size_bytes=self.offload_block_cache_size_mb * MIB,
        )

    def advertised(self, port: int) -> str:
        """``host:port`` clients dial: the advertised address, else the listen address (this
        host's name when listening on every interface)."""
        host = self.advertised_address
        if not host:
            host = socket.getfqdn() if self.host in ("0.0.0.0", "::", "") else self.host
        return f"{host}:{port}"


_HELP = {
    "offload_driver": "offload closed ledgers to object storage: s3 or filesystem (empty: off)",
    "offload_bucket": "S3 bucket of offloaded ledgers",
    "offload_region": "S3 region (default: AWS_DEFAULT_REGION / AWS_REGION)",
    "offload_endpoint_url": "S3 endpoint of an S3-compatible service (default: "
    "AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, else AWS)",
    "offload_prefix": "key prefix of offloaded ledgers: part/part (letters, digits, - _ = : .)",
    "offload_directory": "directory of the filesystem offload driver",
    "offload_access_key_id": "S3 access key (default: AWS_ACCESS_KEY_ID and boto3's chain)",
    "offload_secret_access_key": "S3 secret key; prefer the environment variable",
    "offload_deletion_lag_ms": "delete a ledger's bookie copy this long after its offload "
    "(a namespace policy overrides it)",
    "offload_max_threads": "threads for object-store calls",
    "offload_retry_timeout_ms": "give up retrying one object-store call after this long",
    "offload_request_timeout_ms": "an object-store request with no answer for this long fails "
    "(and is retried)",
    "offload_block_cache_size_mb": "cache of blocks read from offloaded ledgers",
    "host": "address to listen on",
    "port": "gRPC port of the broker (0 = pick a free port)",
    "metrics_port": "Prometheus metrics HTTP port (0 = pick a free one, -1 = off)",
    "data_dir": "directory of the bookie journal and the embedded metadata store",
    "metadata_url": "metadata store of the cluster: etcd://HOST:PORT[,HOST:PORT...]",
    "advertised_address": "host name clients dial (default: this host's name)",
    "managed_ledger_default_ensemble_size": "bookies per ledger (E)",
    "managed_ledger_default_write_quorum": "copies of each entry (Qw)",
    "managed_ledger_default_ack_quorum": "copies confirmed before a receipt (Qa)",
    "max_message_size_bytes": "largest batch a producer may send",
    "managed_ledger_max_entries_per_ledger": "roll the ledger after this many entries",
    "managed_ledger_max_size_per_ledger_mb": "roll the ledger after this many MiB",
    "managed_ledger_max_ledger_rollover_time_minutes": "roll the ledger after this age",
    "cursor_persist_interval_ms": "how often acknowledgements are persisted (an ack receipt "
    "persists at once)",
    "journal_fsync": "fsync the journal before acknowledging (turn off only for tests)",
    "topic_idle_unload_seconds": "unload a topic without clients after this idle time",
    "load_report_interval_ms": "how often this broker publishes its load",
    "load_shedding_interval_ms": "how often the leading broker sheds load",
    "load_shedding_threshold_percent": "shed from brokers this much above average msg/s",
    "max_topics_per_bundle": "split a bundle with more loaded topics than this",
}


def add_config_options(parser: argparse.ArgumentParser, skip: set[str] | None = None) -> None:
    for f in fields(BrokerConfig):
        if skip and f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default
        if f.type in ("bool", bool):
            parser.add_argument(
                flag,
                default=default,
                type=lambda s: s.lower() in ("1", "true", "yes", "on"),
                help=_HELP.get(f.name, ""),
            )
            continue
        if not f.repr:
            # A secret: read from its variable like any option, never shown in --help.
            variable = env_name(flag)
            parser.add_argument(
                flag,
                default=os.environ.get(variable, default),
                help=f"{_HELP.get(f.name, '')} [env {variable}]",
            )
            continue
        kind = {"int": int, "float": float, "Path": Path}.get(str(f.type), str)
        add_option(parser, flag, default=default, type=kind, help=_HELP.get(f.name, ""))


def config_from_args(args: argparse.Namespace, **overrides: object) -> BrokerConfig:
    values = {f.name: getattr(args, f.name) for f in fields(BrokerConfig) if hasattr(args, f.name)}
    values.update(overrides)
    return BrokerConfig(**values)
