"""Configuration of an offloader: one frozen, validated dataclass.

The broker builds it from its own flags (``--offload-driver``, ``--offload-bucket`` ...); the
rest are tuned defaults with their limits in their names. Credentials left empty come from
boto3's standard chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, the
shared credentials file, instance roles); an empty region or endpoint likewise
(``AWS_DEFAULT_REGION``/``AWS_REGION``, ``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tiered.format import check_prefix

MIB = 1024 * 1024
DRIVER_S3 = "s3"
DRIVER_FILESYSTEM = "filesystem"
DRIVERS = (DRIVER_S3, DRIVER_FILESYSTEM)
# S3 refuses multipart parts below 5 MiB (except the last one) and more than 10,000 parts.
S3_MIN_PART_SIZE_BYTES = 5 * MIB
S3_MAX_PARTS = 10_000


@dataclass(frozen=True, slots=True)
class OffloadConfig:
    driver: str
    prefix: str = ""
    # S3
    bucket: str = ""
    region: str = ""
    endpoint_url: str = ""
    access_key_id: str = field(default="", repr=False)
    secret_access_key: str = field(default="", repr=False)
    # File system
    directory: str = ""
    # Format and I/O sizes
    block_size_bytes: int = 1 * MIB
    part_size_bytes: int = 8 * MIB
    read_window_bytes: int = 4 * MIB
    block_cache_size_bytes: int = 64 * MIB
    source_read_max_bytes: int = 4 * MIB
    # Concurrency
    max_threads: int = 4
    max_concurrent_offloads: int = 2
    max_parts_in_flight: int = 2
    # Every object-store call: its timeouts, and retries with backoff bounded by count and time
    connect_timeout_ms: int = 5_000
    request_timeout_ms: int = 10_000
    retry_max_attempts: int = 8
    retry_timeout_ms: int = 30_000
    retry_initial_backoff_ms: int = 100
    retry_max_backoff_ms: int = 3_000
    # Read the whole data object back (every block's checksum) before an offload is complete
    verify_data: bool = True
    max_listed_objects: int = 100_000

    def __post_init__(self) -> None:
        if self.driver not in DRIVERS:
            raise ValueError(f"offload driver must be one of {', '.join(DRIVERS)}")
        check_prefix(self.prefix)
        if self.driver == DRIVER_S3 and not self.bucket:
            raise ValueError("the s3 offload driver needs a bucket (--offload-bucket)")
        if self.driver == DRIVER_FILESYSTEM and not self.directory:
            raise ValueError("the filesystem offload driver needs a directory")
        if self.part_size_bytes < S3_MIN_PART_SIZE_BYTES and self.driver == DRIVER_S3:
            raise ValueError(f"S3 multipart parts are at least {S3_MIN_PART_SIZE_BYTES} bytes")
        for name in (
            "block_size_bytes",
            "part_size_bytes",
            "read_window_bytes",
            "source_read_max_bytes",
            "max_threads",
            "max_concurrent_offloads",
            "max_parts_in_flight",
            "connect_timeout_ms",
            "request_timeout_ms",
            "retry_max_attempts",
            "retry_timeout_ms",
            "max_listed_objects",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"offload {name} must be positive")
        if self.block_cache_size_bytes < 0:
            raise ValueError("offload block cache size must not be negative")
