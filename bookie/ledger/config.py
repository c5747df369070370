"""``LedgerClientConfig``: every bound of the ledger client, with its unit in its name."""

from __future__ import annotations

from dataclasses import dataclass, fields

from strata.config_binding import setting


@dataclass(frozen=True, slots=True)
class LedgerClientConfig:
    """Bounds of the ledger client; passed once to ``LedgerManager`` and shared by its handles.

    A bookie that does not answer an add within ``add_entry_timeout_ms`` counts as failed (an
    ensemble change replaces it); reads and fences are bounded the same way, and every metadata
    call by ``metadata_timeout_ms``. Nothing the client does waits without a bound. Each field's
    help text (``setting``) is also its ``--ledger-client-*`` option's help on the roles that
    run a ledger client.
    """

    add_entry_timeout_ms: int = setting(
        3_000, "one add to one bookie; past it the bookie is treated as failed and replaced"
    )
    read_timeout_ms: int = setting(
        5_000, "one read from one bookie; past it the next bookie of the write set is tried"
    )
    fence_timeout_ms: int = setting(5_000, "one fence request to one bookie during recovery")
    delete_timeout_ms: int = setting(5_000, "one delete request to one bookie")
    metadata_timeout_ms: int = setting(30_000, "one metadata-store call (get or compare-and-set)")
    max_pending_adds: int = setting(
        10_000, "pipelined adds of one ledger not yet confirmed; more are refused"
    )
    max_metadata_update_attempts: int = setting(
        10, "compare-and-set attempts of one metadata update (conflicts re-read and merge)"
    )
    metadata_retry_backoff_ms: int = setting(
        50, "pause before retrying a metadata update after a store error (grows per attempt)"
    )
    max_fence_attempts: int = setting(
        3, "fence attempts per bookie during one recovery (a lost fence is sent again)"
    )
    max_ensemble_changes: int = setting(
        32, "ensemble changes one ledger may make in one go before it gives up"
    )
    # BookKeeper's delayEnsembleChange: with no spare bookie (3 bookies at E=3), a failed one
    # leaves its position empty instead of failing the ledger, as long as every entry still
    # reaches Qa bookies (acknowledged entries keep their guarantee: Qa copies).
    delay_ensemble_change: bool = setting(
        True,
        "when no bookie can replace a failed one, keep writing at Qa without it (false: the "
        "ledger fails and the topic rolls over)",
    )
    recovery_read_batch_entries: int = setting(
        16, "entries a recovery reads ahead concurrently past the last add confirmed"
    )
    replication_batch_entries: int = setting(
        64, "entries a fragment copy (re-replication) writes concurrently"
    )

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, bool):
                continue  # a switch, checked by its type
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{item.name} must be a positive integer, got {value!r}")
