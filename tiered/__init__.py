"""Tiered storage: closed ledgers copied to object storage and read back from it.

``offloader`` (the ``Offloader`` interface and its S3 and file-system drivers), ``format``
(the block and index format and the object keys; pure), ``reader`` (reading an offloaded
ledger with a block cache and read-ahead), ``state`` (the offload state a managed ledger
records), ``store``/``s3``/``filesystem`` (object stores), ``errors``.

Imports point one way: ``broker → tiered → bookie (client) → strata``.
"""

from tiered.config import DRIVER_FILESYSTEM, DRIVER_S3, OffloadConfig
from tiered.errors import (
    ObjectNotFoundError,
    ObjectStoreConfigError,
    ObjectStoreUnavailableError,
    OffloadCorruptError,
    TieredError,
)
from tiered.offloader import (
    EntrySource,
    FilesystemOffloader,
    OffloadedObject,
    Offloader,
    OffloadResult,
    S3Offloader,
    create_offloader,
)
from tiered.reader import BlockCache, OffloadedLedger
from tiered.state import (
    OFFLOAD_BOOKIE_DELETED,
    OFFLOAD_COMPLETE,
    OFFLOAD_IN_PROGRESS,
    OffloadContext,
)

__all__ = [
    "DRIVER_FILESYSTEM",
    "DRIVER_S3",
    "OFFLOAD_BOOKIE_DELETED",
    "OFFLOAD_COMPLETE",
    "OFFLOAD_IN_PROGRESS",
    "BlockCache",
    "EntrySource",
    "FilesystemOffloader",
    "ObjectNotFoundError",
    "ObjectStoreConfigError",
    "ObjectStoreUnavailableError",
    "OffloadConfig",
    "OffloadContext",
    "OffloadCorruptError",
    "OffloadResult",
    "OffloadedLedger",
    "OffloadedObject",
    "Offloader",
    "S3Offloader",
    "TieredError",
    "create_offloader",
]
