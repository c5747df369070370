"""``strata bookie``'s configuration: one frozen, validated dataclass, loaded once.

Every field is an option made by ``strata.config_binding``: a flag ``--kebab-name``, a
variable ``STRATA_UPPER_SNAKE`` and the help text written beside the field. Three sections:

* ``storage`` (``BookieStorageConfig``, no prefix): the bookie's own storage, every knob of
  it (``--data-dir``, ``--journal-fsync``, ``--journal-segment-size-bytes``, ``--gc-interval-ms``
  ...), as BookKeeper's ``bk_server.conf`` exposes them all;
* ``recovery`` (``AutorecoveryConfig``, ``--autorecovery-*``): the auditor and the worker;
* ``ledger_client`` (``LedgerClientConfig``, ``--ledger-client-*``): the ledger client the
  autorecovery worker copies fragments with.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

from bookie.autorecovery import AutorecoveryConfig
from bookie.ledger import LedgerClientConfig
from bookie.storage import BookieStorageConfig
from strata.auth.config import AuthConfig
from strata.config_binding import HELP, PREFIX, section, setting
from strata.logging_setup import LOG_FORMATS
from strata.process import log_format_setting, metadata_store_connect_timeout_setting
from strata.tls import TlsConfig


@dataclass(frozen=True, slots=True)
class BookieConfig:
    metadata_url: str = field(
        metadata={HELP: "metadata store of the cluster: etcd://HOST:PORT[,HOST:PORT...]"}
    )
    storage: BookieStorageConfig = field(
        metadata={HELP: "the bookie's storage: journal, index, caches", PREFIX: ""}
    )
    host: str = setting("0.0.0.0", "address to listen on")
    port: int = setting(3181, "gRPC port (0 = a free one)")
    metrics_port: int = setting(8000, "Prometheus metrics HTTP port (0 = a free one, -1 = off)")
    advertised_address: str = setting(
        "", "host name clients dial; the bookie id is ADDRESS:PORT (default: this host's name)"
    )
    autorecovery: bool = setting(
        True, "run the autorecovery auditor election and a replication worker in this process"
    )
    metadata_store_connect_timeout_seconds: float = metadata_store_connect_timeout_setting()
    graceful_shutdown_timeout_seconds: float = setting(
        30.0,
        "on SIGTERM, how long the bookie may take to finish the adds in flight (it takes no "
        "new ones) before it exits",
    )
    log_format: str = log_format_setting()
    recovery: AutorecoveryConfig = section(
        AutorecoveryConfig, "the autorecovery auditor and worker", prefix="autorecovery_"
    )
    ledger_client: LedgerClientConfig = section(
        LedgerClientConfig, "timeouts and limits of autorecovery's ledger client"
    )
    auth: AuthConfig = section(AuthConfig, "authentication and authorization", prefix="")
    tls: TlsConfig = section(TlsConfig, "TLS of the server and of its calls", prefix="")

    def __post_init__(self) -> None:
        if not self.metadata_url:
            raise ValueError("metadata_url is required (etcd://HOST:PORT)")
        if not 0 <= self.port <= 65535:
            raise ValueError("port must be within 0..65535")
        if not -1 <= self.metrics_port <= 65535:
            raise ValueError("metrics_port must be within 0..65535 (-1 = off)")
        if not self.metadata_store_connect_timeout_seconds > 0:
            raise ValueError("metadata_store_connect_timeout_seconds must be positive")
        if self.graceful_shutdown_timeout_seconds < 0:
            raise ValueError("graceful_shutdown_timeout_seconds must not be negative")
        if self.log_format not in LOG_FORMATS:
            raise ValueError(f"log_format must be one of {', '.join(LOG_FORMATS)}")

    def bookie_id(self, port: int) -> str:
        """``ADDRESS:PORT``: the advertised address (else this host's name) and the port."""
        return f"{self.advertised_address or socket.getfqdn()}:{port}"
