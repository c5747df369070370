"""Errors of the bookie: the storage server and the ledger client.

Hierarchy::

    BookieError                  base; ``retriable`` says whether the same call may succeed later
    ├── LedgerFencedError        the ledger is fenced; non-recovery adds are refused (not retriable)
    ├── NoSuchLedgerError        the bookie holds nothing for this ledger
    ├── NoSuchEntryError         the ledger exists here, the entry does not
    ├── LedgerDeletedError       the ledger was deleted
    ├── CorruptEntryError        a stored record failed its CRC32C check (DATA_LOSS; never served)
    ├── BadRequestError          malformed request: negative ids, wrong master key, oversize entry
    ├── BookieUnavailableError   the bookie cannot be reached or is shutting down (retriable)
    └── BookieIOError            disk error on the bookie (retriable on another bookie)
"""

from __future__ import annotations


class BookieError(Exception):
    """Base of every bookie error."""

    retriable = False


class LedgerFencedError(BookieError):
    """The ledger is fenced: a new owner is recovering it, so this writer must stop."""


class NoSuchLedgerError(BookieError):
    """The bookie has no entries and no state for this ledger."""


class NoSuchEntryError(BookieError):
    """The ledger is known, but the entry is not stored here."""


class LedgerDeletedError(BookieError):
    """The ledger was deleted on this bookie."""


class CorruptEntryError(BookieError):
    """A stored record failed its checksum; it is reported and never served."""


class BadRequestError(BookieError):
    """The request is malformed: negative ids, a wrong master key, an oversize entry."""


class BookieUnavailableError(BookieError):
    """The bookie cannot be reached, or it is shutting down."""

    retriable = True


class BookieIOError(BookieError):
    """The bookie failed to read or write its disk."""

    retriable = True
