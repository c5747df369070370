"""The metadata store: one interface, several drivers, chosen by URL.

``await open_metadata_store(url)`` opens a store; the URL picks the driver:

* ``embedded:///abs/dir`` or ``embedded:relative/dir``: the embedded driver, durable on
  local disk, for a single process (``strata standalone``);
* ``memory://``: a fresh in-memory store, for unit tests;
* ``etcd://host:port[,host:port...][/root][?session_ttl_seconds=N]``: the etcd driver, shared by
  every process of a cluster. The endpoints are tried in order; the optional root is a key
  prefix under which this store lives (so that several clusters can share one etcd);
  ``session_ttl_seconds`` is the lease TTL of every session (30 s by default).

See :mod:`strata.metadata.base` for the interface and the error tree.
"""

from __future__ import annotations

import urllib.parse

from strata.metadata.base import (
    DEFAULT_MAX_PENDING_EVENTS,
    MAX_KEY_LENGTH,
    MAX_VALUE_BYTES,
    BadVersionError,
    EventType,
    InvalidKeyError,
    MetadataError,
    MetadataStore,
    MetadataStoreClosedError,
    MetadataStoreUnavailableError,
    Record,
    ValueTooLargeError,
    Watch,
    WatchEvent,
    WatchOverflowError,
    check_key,
    check_prefix,
)
from strata.metadata.embedded import EmbeddedMetadataStore
from strata.metadata.etcd import EtcdMetadataStore, EtcdSettings
from strata.metadata.memory import InMemoryMetadataStore

__all__ = [
    "DEFAULT_MAX_PENDING_EVENTS",
    "MAX_KEY_LENGTH",
    "MAX_VALUE_BYTES",
    "BadVersionError",
    "EmbeddedMetadataStore",
    "EtcdMetadataStore",
    "EtcdSettings",
    "EventType",
    "InMemoryMetadataStore",
    "InvalidKeyError",
    "MetadataError",
    "MetadataStore",
    "MetadataStoreClosedError",
    "MetadataStoreUnavailableError",
    "Record",
    "ValueTooLargeError",
    "Watch",
    "WatchEvent",
    "WatchOverflowError",
    "check_key",
    "check_prefix",
    "open_metadata_store",
]


async def open_metadata_store(
    url: str, *, connect_timeout_seconds: float | None = None
) -> MetadataStore:
    """Open the metadata store that ``url`` names; see the module docstring for the schemes.

    ``connect_timeout_seconds`` is how long an unreachable etcd is retried (with backoff)
    before giving up; server roles pass their ``--metadata-store-connect-timeout-seconds``
    (120 s), so that they may start before etcd. The default is the driver's own bound (10 s).

    Raises ValueError for a malformed URL or an unknown scheme, and MetadataError when the
    store cannot be opened (for example, an embedded directory in use by another process, or
    MetadataStoreUnavailableError when no etcd endpoint answers in time).
    """
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError as error:  # e.g. an unbalanced or invalid [IPv6] host
        raise ValueError(f"metadata store URL {url!r}: {error}") from error
    scheme = parts.scheme.lower()
    if scheme == "embedded":
        if parts.netloc or parts.query or parts.fragment:
            raise ValueError(
                f"metadata store URL {url!r}: write embedded:///absolute/dir or "
                "embedded:relative/dir (no host, query or fragment)"
            )
        directory = urllib.parse.unquote(parts.path)
        if not directory:
            raise ValueError(f"metadata store URL {url!r} names no directory")
        return await EmbeddedMetadataStore.open(directory)
    if scheme == "memory":
        if parts.netloc or parts.path or parts.query or parts.fragment:
            raise ValueError(f"metadata store URL {url!r}: write memory:// with nothing after")
        return await InMemoryMetadataStore.open()
    if scheme == "etcd":
        # Raises ValueError, naming the URL, for bad hosts, ports, root or options.
        return await EtcdMetadataStore.open(
            EtcdSettings.from_url(url), connect_timeout_seconds=connect_timeout_seconds
        )
    raise ValueError(
        f"metadata store URL {url!r} has unknown scheme {parts.scheme!r}; "
        "expected embedded:, memory:// or etcd://"
    )
