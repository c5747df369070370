"""``OffloadState.delete_bookie_copy`` after the ledger left the list: a trim (retention,
compaction settling a subscription) may remove a ledger between the offloader recording
BOOKIE_DELETED and deleting the bookie copy; the trim deleted the copy itself, so nothing is
left to do — found by the compaction soak, where the AssertionError killed the topic's
offload task."""

from __future__ import annotations

from broker.managed_ledger.ledger_list import LedgerList
from broker.managed_ledger.offload_state import OffloadState
from strata.metadata.memory import InMemoryMetadataStore


async def test_a_ledger_trimmed_meanwhile_is_not_deleted_again() -> None:
    store = await InMemoryMetadataStore.open()
    deleted: list[int] = []

    async def delete_ledger(ledger_id: int) -> None:
        deleted.append(ledger_id)

    try:
        ledgers = LedgerList(store, "t/ns/persistent/topic", lambda error: error)
        state = OffloadState(
            "t/ns/persistent/topic",
            ledgers,
            reader=None,  # type: ignore[arg-type]  # not used by delete_bookie_copy
            offloader=None,
            delete_ledger=delete_ledger,
            rollover_in_progress=lambda: None,
        )
        await state.delete_bookie_copy(7)  # not in the list (trimmed): no error, no delete
        assert deleted == []
    finally:
        await store.close()
