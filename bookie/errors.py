"""Errors of the bookie: the storage server, the ledger client and the registry.

Hierarchy::

    BookieError                  base; ``retriable`` says whether the same call may succeed later
    ├── LedgerFencedError        the ledger is fenced; non-recovery adds are refused (not retriable)
    ├── NoSuchLedgerError        the bookie holds nothing for this ledger
    ├── NoSuchEntryError         the ledger exists here, the entry does not
    ├── LedgerDeletedError       the ledger was deleted
    ├── CorruptEntryError        a stored record failed its CRC32C check (DATA_LOSS; never served)
    ├── BadRequestError          malformed request: negative ids, wrong master key, oversize entry
    ├── BookieUnavailableError   the bookie cannot be reached or is shutting down (retriable)
    ├── BookieIOError            disk error on the bookie (retriable on another bookie)
    └── BookieLocalError         handled in the process that raised it, never sent on the wire
        ├── SegmentGoneError         GC removed a segment under a read; the read looks again
        │                            (retriable; ``bookie.storage.reads``)
        ├── CheckpointError          the index checkpoint is damaged or of an unknown version;
        │                            open replays the whole journal (``bookie.storage.recovery``)
        ├── CookieMismatchError      the data directory and the metadata store disagree about
        │                            the bookie's identity; it refuses to start (``registry``)
        └── DecommissionRefusedError the bookie still runs or ledgers still list it; the admin
                                     service answers FAILED_PRECONDITION (``registry``)

The errors above ``BookieLocalError`` are the bookie protocol's: each has one row in
``bookie.status_map``, and the gRPC client raises the same class the local client would.
``BookieLocalError`` and its subclasses have no row there on purpose: none of them is ever
answered by the bookie server (if one were, it would leave as INTERNAL, like any unmapped
error, and the client would raise ``BookieIOError``).
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


class BookieLocalError(BookieError):
    """Base of the errors that stay inside one process: the code that raised them (or its
    caller) handles them; the bookie protocol has no status for them."""


class SegmentGoneError(BookieLocalError):
    """A segment named by the index was removed by garbage collection meanwhile; the caller
    looks the locations up again (they now point at the compacted copies)."""

    retriable = True


class CheckpointError(BookieLocalError):
    """The checkpoint file is damaged or of an unknown version."""


class CookieMismatchError(BookieLocalError):
    """The data directory and the metadata store disagree about this bookie's identity."""


class DecommissionRefusedError(BookieLocalError):
    """The bookie is still running, or ledgers still need it."""
