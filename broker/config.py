"""The broker's configuration: one frozen, validated dataclass, loaded once per process.

Every field has a default, a flag ``--kebab-name`` and an environment variable
``STRATA_UPPER_SNAKE`` (see ``strata.options``).
"""

from __future__ import annotations

import argparse
import socket
from dataclasses import dataclass, fields
from pathlib import Path

from strata.options import add_option

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
    cursor_persist_interval_ms: int = 100
    cursor_max_persisted_ranges: int = 10_000
    max_pending_publish_batches_per_producer: int = 1000
    housekeeping_interval_ms: int = 5000
    journal_fsync: bool = True

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

    def advertised(self, port: int) -> str:
        """``host:port`` clients dial: the advertised address, else the listen address (this
        host's name when listening on every interface)."""
        host = self.advertised_address
        if not host:
            host = socket.getfqdn() if self.host in ("0.0.0.0", "::", "") else self.host
        return f"{host}:{port}"


_HELP = {
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
    "cursor_persist_interval_ms": "how often acknowledgements are persisted",
    "journal_fsync": "fsync the journal before acknowledging (turn off only for tests)",
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
        kind = {"int": int, "float": float, "Path": Path}.get(str(f.type), str)
        add_option(parser, flag, default=default, type=kind, help=_HELP.get(f.name, ""))


def config_from_args(args: argparse.Namespace, **overrides: object) -> BrokerConfig:
    values = {f.name: getattr(args, f.name) for f in fields(BrokerConfig) if hasattr(args, f.name)}
    values.update(overrides)
    return BrokerConfig(**values)
