"""The ledger client's public names, kept at the import path the broker uses.

The client itself lives in the ``bookie.ledger`` package (see its docstring for the module
map): ledger metadata, the single writer ``LedgerHandle`` with ensemble changes, readers,
recovery (fence, read the tail, write it back, close by compare-and-set) and the fragment
replicator for autorecovery.

Lifecycle of a ledger::

    create (OPEN, in metadata) → adds (ensemble changes on bookie failures)
        → close (CLOSED with last_entry_id and length, by CAS)
    a new owner: IN_RECOVERY → fence → read the tail → write it back → close (recovery)
"""

from bookie.ledger import (
    LEDGER_ID_COUNTER_KEY,
    LEDGERS_PREFIX,
    STATE_CLOSED,
    STATE_IN_RECOVERY,
    STATE_OPEN,
    BookieResolver,
    BookieTimeoutError,
    Fragment,
    LedgerClientConfig,
    LedgerClientError,
    LedgerClosedError,
    LedgerHandle,
    LedgerManager,
    LedgerMetadata,
    LedgerMetadataConflictError,
    LedgerReader,
    LedgerRecoveryError,
    NotEnoughBookiesError,
    ledger_fragments,
    ledger_key,
)

__all__ = [
    "LEDGERS_PREFIX",
    "LEDGER_ID_COUNTER_KEY",
    "STATE_CLOSED",
    "STATE_IN_RECOVERY",
    "STATE_OPEN",
    "BookieResolver",
    "BookieTimeoutError",
    "Fragment",
    "LedgerClientConfig",
    "LedgerClientError",
    "LedgerClosedError",
    "LedgerHandle",
    "LedgerManager",
    "LedgerMetadata",
    "LedgerMetadataConflictError",
    "LedgerReader",
    "LedgerRecoveryError",
    "NotEnoughBookiesError",
    "ledger_fragments",
    "ledger_key",
]
