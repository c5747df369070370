"""The managed ledger: one topic's log as a list of ledgers, plus the broker's entry cache.

Modules, each one concern (imports point down the list)::

    ledger_list    LedgerInfo and the list's JSON codec (pure); LedgerList: the list, its
                   version and compare-and-set (a conflict fences), position arithmetic
    entry_cache    Entry; EntryCache, the broker-wide cache bounded in bytes
    reader         EntryReader: reads from the cache, the bookies and offloaded ledgers
    offload_state  OffloadState: offload contexts by CAS, ledgers mid-offload, deletions
    writer         LedgerWriter: the add path and the one owner of its state (the ledger open
                   for writing, the adds waiting for a rollover, the rollover task, fencing)
    rollover       RolloverOp: close the full ledger, record and open the next, re-issue adds,
                   through the writer's rollover methods
    trim           which ledgers every cursor has passed; list stored first, then deletions
    ledger         ManagedLedger (open, trim, close; adds delegated to its writer), its config
                   and its listener

Offloaded ledgers (``broker.offload``, ``tiered``): each ledger's offload state lives in the
ledger list beside it (``LedgerInfo.offload``) and changes by the same compare-and-set. Once
its bookie copy is deleted (BOOKIE_DELETED), reads of a ledger go to the object store through
an ``OffloadedLedger`` reader, transparently: same positions, same bytes. Trimming skips a
ledger while it is being offloaded and deletes the objects of the ledgers it removes.

Architecture invariant: at most one ledger of a managed ledger is open for writing, and it is
the last one in the list; a ledger is in the list before its first entry is written.
"""

from broker.managed_ledger.entry_cache import Entry, EntryCache
from broker.managed_ledger.ledger import (
    ManagedLedger,
    ManagedLedgerConfig,
    ManagedLedgerListener,
)
from broker.managed_ledger.ledger_list import (
    MANAGED_LEDGERS_PREFIX,
    LedgerInfo,
    LedgerList,
    Position,
    decode_ledger_list,
    encode_ledger_list,
)
from broker.managed_ledger.offload_state import MAX_ROLLOVER_WAITS, OffloadState
from broker.managed_ledger.reader import MAX_OPEN_OFFLOADED_LEDGERS, READ_MAX_BYTES, EntryReader
from broker.managed_ledger.rollover import RolloverOp
from broker.managed_ledger.trim import NO_RETENTION, Retention, consumed_ledgers, trim_ledgers
from broker.managed_ledger.writer import MAX_ADD_ATTEMPTS, LedgerWriter

__all__ = [
    "MANAGED_LEDGERS_PREFIX",
    "MAX_ADD_ATTEMPTS",
    "MAX_OPEN_OFFLOADED_LEDGERS",
    "MAX_ROLLOVER_WAITS",
    "NO_RETENTION",
    "READ_MAX_BYTES",
    "Entry",
    "EntryCache",
    "EntryReader",
    "LedgerInfo",
    "LedgerList",
    "LedgerWriter",
    "ManagedLedger",
    "ManagedLedgerConfig",
    "ManagedLedgerListener",
    "OffloadState",
    "Position",
    "Retention",
    "RolloverOp",
    "consumed_ledgers",
    "decode_ledger_list",
    "encode_ledger_list",
    "trim_ledgers",
]
