"""The broker's configuration: one frozen, validated dataclass, loaded once per process.

Every field has a default, a flag ``--kebab-name``, an environment variable
``STRATA_UPPER_SNAKE`` and its help text, all made by ``strata.config_binding`` from the
field itself (``setting(default, help)``). The ledger client's bounds are the nested section
``ledger_client`` (``--ledger-client-*``). Names follow Pulsar's ``broker.conf``
(``managedLedgerMaxEntriesPerLedger`` → ``--managed-ledger-max-entries-per-ledger``) with
the unit last: ``_ms``, ``_seconds``, ``_bytes``.

A standalone's bookie keeps the storage defaults of ``BookieStorageConfig`` except
``--journal-fsync``: a standalone is for development and tests, and ``strata bookie`` is where
the storage is tuned (it binds every storage field).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

from bookie.ledger import LedgerClientConfig
from broker.backlog_quota import POLICIES
from strata.auth.config import AuthConfig
from strata.config_binding import section, setting
from strata.logging_setup import LOG_FORMATS
from strata.process import log_format_setting, metadata_store_connect_timeout_setting
from strata.tls import TlsConfig
from tiered.config import DRIVER_FILESYSTEM, DRIVERS, OffloadConfig
from tiered.format import check_prefix

MIB = 1024 * 1024
# The namespace limits: broker defaults here, overrides in each namespace's policies.
LIMIT_NAMES = (
    "max_topics_per_namespace",
    "max_producers_per_topic",
    "max_consumers_per_topic",
    "max_subscriptions_per_topic",
    "max_unacked_messages_per_consumer",
    "max_unacked_messages_per_subscription",
)
MINUTE_MS = 60_000


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    host: str = setting("127.0.0.1", "address to listen on")
    port: int = setting(6650, "gRPC port of the broker (0 = pick a free port)")
    metrics_port: int = setting(8080, "Prometheus metrics HTTP port (0 = a free one, -1 = off)")
    # The operator console (broker/console): off unless asked for; read-only unless actions are.
    web_enabled: bool = setting(False, "serve the operator console (HTTP, path /)")
    web_port: int = setting(-1, "HTTP port of the console (-1 = the metrics port; 0 = a free one)")
    web_admin_actions: bool = setting(
        False,
        "let the console peek, skip, clear backlogs, reset cursors, unload and offload (each "
        "call still needs a token with the rights)",
    )
    # Pulsar's exposeTopicLevelMetricsInPrometheus: off, the families are summed per namespace.
    expose_topic_level_metrics: bool = setting(
        True, "label metrics per topic and subscription (false: per namespace only)"
    )
    advertised_address: str = setting("", "host name clients dial (default: this host's name)")
    metadata_url: str = setting(
        "", "metadata store of the cluster: etcd://HOST:PORT[,HOST:PORT...]"
    )
    data_dir: Path = setting(
        Path("./data/standalone"),
        "directory of the bookie journal and the embedded metadata store",
    )
    broker_name: str = setting("standalone", "name of this broker in generated producer names")
    max_message_size_bytes: int = setting(5 * MIB, "largest batch a producer may send")
    managed_ledger_max_entries_per_ledger: int = setting(
        50_000, "roll the ledger after this many entries"
    )
    managed_ledger_max_size_per_ledger_bytes: int = setting(
        2048 * MIB, "roll the ledger after this many bytes"
    )
    managed_ledger_max_ledger_rollover_time_ms: int = setting(
        240 * MINUTE_MS, "roll the ledger after this age"
    )
    # Pulsar's defaults; a standalone, with its one bookie, sets 1/1/1.
    managed_ledger_default_ensemble_size: int = setting(2, "bookies per ledger (E)")
    managed_ledger_default_write_quorum: int = setting(2, "copies of each entry (Qw)")
    managed_ledger_default_ack_quorum: int = setting(2, "copies confirmed before a receipt (Qa)")
    managed_ledger_cache_size_bytes: int = setting(
        256 * MIB, "cache of recently written entries, for tailing readers"
    )
    # Pulsar's managedLedgerDefaultMarkDeleteRateLimit (1/s): each persist is a metadata-store
    # write (an fsync in standalone, a raft round in etcd); ack receipts force one at once.
    cursor_persist_interval_ms: int = setting(
        1000, "how often acknowledgements are persisted (an ack receipt persists at once)"
    )
    cursor_max_persisted_ranges: int = setting(
        10_000, "acknowledged ranges past the mark-delete position a cursor persists"
    )
    max_pending_publish_batches_per_producer: int = setting(
        1000, "batches of one producer in flight before its stream stops reading"
    )
    # Deduplication (Pulsar's brokerDeduplication* options; ``broker.deduplication``).
    broker_deduplication_enabled: bool = setting(
        False, "drop re-sent batches by producer name and sequence id (namespaces may override)"
    )
    broker_deduplication_entries_interval: int = setting(
        1000, "snapshot the deduplication state every this many entries (bounds the replay)"
    )
    broker_deduplication_max_number_of_producers: int = setting(
        10_000, "producer names a topic remembers; the longest inactive is forgotten first"
    )
    broker_deduplication_producer_inactivity_timeout_minutes: int = setting(
        360, "forget a disconnected producer's sequence id after this long"
    )
    # Retention and message TTL defaults (Pulsar's defaultRetention*, ttlDurationDefault*).
    default_retention_time_in_minutes: int = setting(
        0, "keep consumed data this long (-1 = no time limit; namespaces may override)"
    )
    default_retention_size_in_mb: int = setting(
        0, "keep consumed data up to this size per topic (-1 = no size limit)"
    )
    ttl_duration_default_in_seconds: int = setting(
        0, "acknowledge messages left unacknowledged this long (0 = never)"
    )
    # Backlog quota defaults (Pulsar's backlogQuotaDefault*); -1: no quota.
    backlog_quota_default_limit_bytes: int = setting(
        -1, "largest backlog of a topic in bytes (-1 = none; namespaces may override)"
    )
    backlog_quota_default_limit_second: int = setting(
        -1, "oldest unacknowledged message a topic's backlog may hold, in s (-1 = none)"
    )
    backlog_quota_default_retention_policy: str = setting(
        "producer_request_hold",
        "over quota: producer_request_hold, producer_exception or consumer_backlog_eviction",
    )
    backlog_quota_hold_timeout_seconds: float = setting(
        30.0, "how long a held producer's batch waits for the backlog to fit its quota"
    )
    broker_compaction_threshold_bytes: int = setting(
        0, "compact a topic once this many bytes follow its compaction horizon (0 = never)"
    )
    message_expiry_check_interval_seconds: int = setting(
        300, "how often subscriptions are checked for messages past their TTL"
    )
    housekeeping_interval_ms: int = setting(
        5000, "how often idle topics are unloaded and offload thresholds checked"
    )
    topic_idle_unload_seconds: float = setting(
        300.0, "unload a topic without clients after this idle time"
    )
    load_report_interval_ms: int = setting(5_000, "how often this broker publishes its load")
    load_shedding_interval_ms: int = setting(60_000, "how often the leading broker sheds load")
    load_shedding_threshold_percent: int = setting(
        10, "shed from brokers this much above average msg/s"
    )
    max_topics_per_bundle: int = setting(1_000, "split a bundle with more loaded topics than this")
    journal_fsync: bool = setting(
        True, "fsync the journal before acknowledging (turn off only for tests)"
    )
    # Tiered storage (``tiered``, ``broker.offload``): off unless a driver is set.
    offload_driver: str = setting(
        "", "offload closed ledgers to object storage: s3 or filesystem (empty: off)"
    )
    offload_bucket: str = setting("", "S3 bucket of offloaded ledgers")
    offload_region: str = setting("", "S3 region (default: AWS_DEFAULT_REGION / AWS_REGION)")
    offload_endpoint_url: str = setting(
        "",
        "S3 endpoint of an S3-compatible service "
        "(default: AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, else AWS)",
    )
    offload_prefix: str = setting(
        "", "key prefix of offloaded ledgers: part/part (letters, digits, - _ = : .)"
    )
    offload_directory: str = setting("", "directory of the filesystem offload driver")
    offload_access_key_id: str = setting(
        "", "S3 access key (default: AWS_ACCESS_KEY_ID and boto3's chain)", secret=True
    )
    offload_secret_access_key: str = setting(
        "", "S3 secret key; prefer the environment variable", secret=True
    )
    offload_deletion_lag_ms: int = setting(
        4 * 60 * MINUTE_MS,
        "delete a ledger's bookie copy this long after its offload "
        "(a namespace policy overrides it)",
    )
    offload_max_threads: int = setting(4, "threads for object-store calls")
    offload_retry_timeout_ms: int = setting(
        30_000, "give up retrying one object-store call after this long"
    )
    offload_request_timeout_ms: int = setting(
        10_000, "an object-store request with no answer for this long fails (and is retried)"
    )
    offload_block_cache_size_bytes: int = setting(
        64 * MIB, "cache of blocks read from offloaded ledgers"
    )
    metadata_store_connect_timeout_seconds: float = metadata_store_connect_timeout_setting()
    graceful_shutdown_timeout_seconds: float = setting(
        30.0,
        "on SIGTERM, how long the broker may take to hand its bundles to other brokers and "
        "finish in-flight requests before it exits",
    )
    log_format: str = log_format_setting()
    # Pulsar's broker-level limits, each a namespace may override (0 = unlimited).
    max_topics_per_namespace: int = setting(0, "topics a namespace may hold (0 = unlimited)")
    max_producers_per_topic: int = setting(0, "producers on one topic (0 = unlimited)")
    max_consumers_per_topic: int = setting(0, "consumers on one topic (0 = unlimited)")
    max_subscriptions_per_topic: int = setting(0, "subscriptions of one topic (0 = unlimited)")
    max_unacked_messages_per_consumer: int = setting(
        50_000, "a consumer this far behind on acks gets nothing more until it acks (0 = no limit)"
    )
    max_unacked_messages_per_subscription: int = setting(
        200_000, "a subscription this far behind on acks dispatches nothing (0 = no limit)"
    )
    ledger_client: LedgerClientConfig = section(
        LedgerClientConfig, "timeouts and limits of the ledger client (writes to bookies)"
    )
    auth: AuthConfig = section(AuthConfig, "authentication and authorization", prefix="")
    tls: TlsConfig = section(TlsConfig, "TLS of the server and of its calls", prefix="")

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError("port must be within 0..65535")
        if not -1 <= self.metrics_port <= 65535:
            raise ValueError("metrics_port must be within 0..65535 (-1 = off)")
        if not -1 <= self.web_port <= 65535:
            raise ValueError("web_port must be within 0..65535 (-1 = the metrics port)")
        if self.web_enabled and self.web_port == -1 and self.metrics_port == -1:
            raise ValueError(
                "web_enabled serves the console on the metrics port, which is off "
                "(metrics_port -1): give a web_port"
            )
        if self.web_admin_actions and not self.web_enabled:
            raise ValueError("web_admin_actions needs web_enabled")
        positive = (
            "max_message_size_bytes",
            "managed_ledger_max_entries_per_ledger",
            "managed_ledger_max_size_per_ledger_bytes",
            "managed_ledger_max_ledger_rollover_time_ms",
            "offload_max_threads",
            "offload_retry_timeout_ms",
            "offload_request_timeout_ms",
            "metadata_store_connect_timeout_seconds",
            "broker_deduplication_entries_interval",
            "broker_deduplication_max_number_of_producers",
            "broker_deduplication_producer_inactivity_timeout_minutes",
            "message_expiry_check_interval_seconds",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        e = self.managed_ledger_default_ensemble_size
        qw = self.managed_ledger_default_write_quorum
        qa = self.managed_ledger_default_ack_quorum
        if not 1 <= qa <= qw <= e:
            raise ValueError(
                "need 1 <= managed_ledger_default_ack_quorum <= "
                "managed_ledger_default_write_quorum <= managed_ledger_default_ensemble_size"
            )
        if self.offload_driver and self.offload_driver not in DRIVERS:
            raise ValueError(f"offload_driver must be one of {', '.join(DRIVERS)} (or empty)")
        check_prefix(self.offload_prefix)
        if self.log_format not in LOG_FORMATS:
            raise ValueError(f"log_format must be one of {', '.join(LOG_FORMATS)}")
        not_negative = (
            *LIMIT_NAMES,
            "offload_deletion_lag_ms",
            "offload_block_cache_size_bytes",
            "graceful_shutdown_timeout_seconds",
            "broker_compaction_threshold_bytes",
        )
        for name in not_negative:
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        for name in ("default_retention_time_in_minutes", "default_retention_size_in_mb"):
            if getattr(self, name) < -1:
                raise ValueError(f"{name} must be -1 (no limit) or more")
        if self.backlog_quota_default_retention_policy not in POLICIES:
            raise ValueError(
                "backlog_quota_default_retention_policy must be one of " + ", ".join(POLICIES)
            )
        for name in ("backlog_quota_default_limit_bytes", "backlog_quota_default_limit_second"):
            if getattr(self, name) < -1:
                raise ValueError(f"{name} must be -1 (none) or more")
        if not self.backlog_quota_hold_timeout_seconds > 0:
            raise ValueError("backlog_quota_hold_timeout_seconds must be positive")
        if self.ttl_duration_default_in_seconds < 0:
            raise ValueError("ttl_duration_default_in_seconds must not be negative")

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
            block_cache_size_bytes=self.offload_block_cache_size_bytes,
        )

    def advertised(self, port: int) -> str:
        """``host:port`` clients dial: the advertised address, else the listen address (this
        host's name when listening on every interface)."""
        host = self.advertised_address
        if not host:
            host = socket.getfqdn() if self.host in ("0.0.0.0", "::", "") else self.host
        return f"{host}:{port}"
