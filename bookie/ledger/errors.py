"""Errors of the ledger client (``bookie.errors`` holds the bookies' own).

Hierarchy::

    LedgerClientError             base; ``retriable``: may the same call succeed later?
    ├── LedgerClosedError         the ledger is closed or its writer failed; no more adds
    ├── NotEnoughBookiesError     too few live bookies for an ensemble or a replacement
    │                             (retriable)
    ├── LedgerMetadataConflictError  someone else changed the metadata in a way we cannot
    │                             merge: a recovery fenced the ledger, or it was closed elsewhere
    ├── LedgerRecoveryError       recovery could not decide the ledger's end (retriable)
    └── BookieTimeoutError        a bookie did not answer within its bound (retriable)

Retry code asks ``err.retriable`` rather than matching classes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bookie.ledger.metadata import LedgerMetadata


class LedgerClientError(Exception):
    """Base of the ledger client's own errors."""

    retriable = False


class LedgerClosedError(LedgerClientError):
    """The ledger is closed or its writer failed; no more adds.

    ``fenced`` is True when the writer stopped because a recovery took the ledger over.
    """

    def __init__(self, message: str, *, fenced: bool = False) -> None:
        super().__init__(message)
        self.fenced = fenced


class NotEnoughBookiesError(LedgerClientError):
    """Fewer live bookies than an ensemble, or no bookie left to replace a failed one."""

    retriable = True


class LedgerMetadataConflictError(LedgerClientError):
    """Someone else changed the ledger's metadata: a recovery fenced it or another owner closed
    it. ``current`` is the metadata as it was read after the conflict, when known."""

    def __init__(self, message: str, *, current: LedgerMetadata | None = None) -> None:
        super().__init__(message)
        self.current = current


class LedgerRecoveryError(LedgerClientError):
    """Recovery could not decide where the ledger ends (an error, a timeout or a corrupt record
    is never read as "absent"); the ledger stays IN_RECOVERY and the caller retries."""

    retriable = True


class BookieTimeoutError(LedgerClientError):
    """A bookie did not answer within the bound the configuration gives that call."""

    retriable = True
