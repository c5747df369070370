"""Errors of tiered storage: the object stores and the offloaded-ledger format.

Hierarchy::

    TieredError                       base; ``retriable`` says whether the same call may succeed
    │                                 later
    ├── ObjectStoreUnavailableError   the object store cannot be reached, timed out, throttled
    │                                 or answered 5xx, after the retries (retriable)
    ├── ObjectStoreConfigError        bucket missing, access denied, bad endpoint: an operator
    │                                 has to fix the configuration (not retriable)
    ├── ObjectNotFoundError           an object that should exist does not (not retriable)
    └── OffloadCorruptError           a block, an index or a whole object failed its CRC32C or
                                      its structure check; never served (DATA_LOSS)

The broker maps these to gRPC statuses in ``broker.errors.to_status``: retriable ones to
UNAVAILABLE (a consumer waits and retries), a missing or corrupt object to DATA_LOSS.
"""

from __future__ import annotations


class TieredError(Exception):
    """Base of every tiered-storage error."""

    retriable = False


class ObjectStoreUnavailableError(TieredError):
    """The object store did not answer, or answered with an error worth retrying."""

    retriable = True


class ObjectStoreConfigError(TieredError):
    """The object store refused the request for a reason only an operator can fix."""


class ObjectNotFoundError(TieredError):
    """The object does not exist."""


class OffloadCorruptError(TieredError):
    """Offloaded bytes failed a checksum or a structure check."""
