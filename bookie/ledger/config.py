"""``LedgerClientConfig``: every bound of the ledger client, with its unit in its name."""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True, slots=True)
class LedgerClientConfig:
    """Bounds of the ledger client; passed once to ``LedgerManager`` and shared by its handles.

    A bookie that does not answer an add within ``add_entry_timeout_ms`` counts as failed (an
    ensemble change replaces it); reads and fences are bounded the same way, and every metadata
    call by ``metadata_timeout_ms``. Nothing the client does waits without a bound.
    """

    # One add to one bookie; past it the bookie is treated as failed and replaced.
    add_entry_timeout_ms: int = 3_000
    # One read RPC to one bookie; past it the reader tries the next bookie of the write set.
    read_timeout_ms: int = 5_000
    # One fence RPC to one bookie during recovery.
    fence_timeout_ms: int = 5_000
    # One delete RPC to one bookie.
    delete_timeout_ms: int = 5_000
    # One metadata-store call (get or compare-and-set).
    metadata_timeout_ms: int = 30_000
    # Pipelined adds of one handle not yet confirmed; more are refused.
    max_pending_adds: int = 10_000
    # Compare-and-set attempts of one metadata update (conflicts re-read and merge).
    max_metadata_update_attempts: int = 10
    # Pause before retrying a metadata update after a store error (grows linearly per attempt).
    metadata_retry_backoff_ms: int = 50
    # Fence attempts per bookie during one recovery (a lost fence is sent again).
    max_fence_attempts: int = 3
    # Ensemble changes one handle may make in one go before it gives up (each excludes a bookie).
    max_ensemble_changes: int = 32
    # Entries a recovery reads ahead concurrently past the last add confirmed.
    recovery_read_batch_entries: int = 16
    # Entries a fragment copy (replace_bookie) writes concurrently.
    replication_batch_entries: int = 64

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{item.name} must be a positive integer, got {value!r}")
