"""The ledger client: BookKeeper-style E/Qw/Qa replication over ``BookieClient``s.

Module map:

* ``bookie.ledger.config``       ``LedgerClientConfig``: every timeout and limit
* ``bookie.ledger.errors``       the client's error hierarchy
* ``bookie.ledger.metadata``     ``LedgerMetadata``, striping, fragments, the merge rule (pure)
* ``bookie.ledger.manager``      ``LedgerManager``: create, recover, delete, repair; the CAS loop
* ``bookie.ledger.writer``       ``LedgerHandle``: the single writer, with ensemble changes
* ``bookie.ledger.reader``       ``LedgerReader``: reads across fragments
* ``bookie.ledger.recovery``     ``LedgerRecoveryOp`` and ``FenceOp``: fence, read the tail, close
* ``bookie.ledger.replication``  ``FragmentReplicator``: move a bookie's share of a fragment

Lifecycle of a ledger::

    create (OPEN, in metadata) → adds (ensemble changes on bookie failures)
        → close (CLOSED with last_entry_id and length, by CAS)
    a new owner: IN_RECOVERY → fence → read the tail → write it back → close (recovery)
"""

from bookie.ledger.config import LedgerClientConfig
from bookie.ledger.errors import (
    BookieTimeoutError,
    LedgerClientError,
    LedgerClosedError,
    LedgerMetadataConflictError,
    LedgerRecoveryError,
    NotEnoughBookiesError,
)
from bookie.ledger.manager import LEDGER_ID_COUNTER_KEY, BookieResolver, LedgerManager
from bookie.ledger.metadata import (
    LEDGERS_PREFIX,
    STATE_CLOSED,
    STATE_IN_RECOVERY,
    STATE_OPEN,
    Fragment,
    LedgerMetadata,
    ledger_fragments,
    ledger_key,
    merge_ensembles,
    write_set_slots,
)
from bookie.ledger.reader import LedgerReader
from bookie.ledger.recovery import FenceOp, LedgerRecoveryOp
from bookie.ledger.replication import FragmentReplicator
from bookie.ledger.writer import LedgerHandle

__all__ = [
    "LEDGERS_PREFIX",
    "LEDGER_ID_COUNTER_KEY",
    "STATE_CLOSED",
    "STATE_IN_RECOVERY",
    "STATE_OPEN",
    "BookieResolver",
    "BookieTimeoutError",
    "FenceOp",
    "Fragment",
    "FragmentReplicator",
    "LedgerClientConfig",
    "LedgerClientError",
    "LedgerClosedError",
    "LedgerHandle",
    "LedgerManager",
    "LedgerMetadata",
    "LedgerMetadataConflictError",
    "LedgerReader",
    "LedgerRecoveryError",
    "LedgerRecoveryOp",
    "NotEnoughBookiesError",
    "ledger_fragments",
    "ledger_key",
    "merge_ensembles",
    "write_set_slots",
]
