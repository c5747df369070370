"""Ledger metadata and the pure rules over it: striping, fragments and the merge rule.

The metadata of ledger *L* lives in the metadata store under ``/ledgers/<L>`` as JSON and
changes only by compare-and-set. ``ensembles`` maps the first entry id of each fragment to the
E bookies that store the fragment's entries; an entry belongs to the last fragment whose first
entry id is at most its own. The writer adds a fragment at LAC+1 when it replaces a failed
bookie (ensemble change); an autorecovery worker replaces a bookie inside an earlier fragment.

No I/O here: everything in this module is a pure function of its arguments.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

from bookie.ledger.errors import LedgerMetadataConflictError

LEDGERS_PREFIX = "/ledgers/"
STATE_OPEN = "OPEN"
STATE_IN_RECOVERY = "IN_RECOVERY"
STATE_CLOSED = "CLOSED"
STATES = (STATE_OPEN, STATE_IN_RECOVERY, STATE_CLOSED)


def ledger_key(ledger_id: int) -> str:
    return f"{LEDGERS_PREFIX}{ledger_id:020d}"


def write_set_slots(entry_id: int, ensemble_size: int, write_quorum: int) -> list[int]:
    """Ensemble positions storing ``entry_id``: Qw consecutive slots from ``entry_id mod E``."""
    start = entry_id % ensemble_size
    return [(start + i) % ensemble_size for i in range(write_quorum)]


def slot_stores_entry(slot: int, entry_id: int, ensemble_size: int, write_quorum: int) -> bool:
    """True if the bookie at ensemble position ``slot`` is in the write set of ``entry_id``."""
    return (slot - entry_id) % ensemble_size < write_quorum


@dataclass(frozen=True, slots=True)
class LedgerMetadata:
    ledger_id: int
    ensemble_size: int
    write_quorum: int
    ack_quorum: int
    # First entry id of each fragment → its E bookie addresses, in increasing key order.
    ensembles: dict[int, list[str]]
    state: str = STATE_OPEN
    last_entry_id: int = -1  # meaningful once CLOSED
    length_bytes: int = 0  # meaningful once CLOSED
    created_ms: int = 0
    password: str = ""  # hex master key shared by the writer and recovery
    custom: dict[str, str] = field(default_factory=dict)
    version: int = 0  # metadata-store version this was read at; not stored

    def __post_init__(self) -> None:
        assert self.state in STATES, self.state
        assert 1 <= self.ack_quorum <= self.write_quorum <= self.ensemble_size
        assert 0 in self.ensembles, "the first fragment starts at entry 0"
        assert all(len(e) == self.ensemble_size for e in self.ensembles.values())

    def to_json(self) -> bytes:
        body: dict[str, Any] = {
            "ledger_id": self.ledger_id,
            "ensemble_size": self.ensemble_size,
            "write_quorum": self.write_quorum,
            "ack_quorum": self.ack_quorum,
            "ensembles": {str(k): self.ensembles[k] for k in sorted(self.ensembles)},
            "state": self.state,
            "last_entry_id": self.last_entry_id,
            "length_bytes": self.length_bytes,
            "created_ms": self.created_ms,
            "password": self.password,
            "custom": self.custom,
        }
        return json.dumps(body, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes, version: int) -> LedgerMetadata:
        body = json.loads(data)
        ensembles = {int(k): list(v) for k, v in body["ensembles"].items()}
        return cls(
            ledger_id=int(body["ledger_id"]),
            ensemble_size=int(body["ensemble_size"]),
            write_quorum=int(body["write_quorum"]),
            ack_quorum=int(body["ack_quorum"]),
            ensembles={k: ensembles[k] for k in sorted(ensembles)},
            state=str(body["state"]),
            last_entry_id=int(body["last_entry_id"]),
            length_bytes=int(body["length_bytes"]),
            created_ms=int(body["created_ms"]),
            password=str(body.get("password", "")),
            custom=dict(body.get("custom", {})),
            version=version,
        )

    def same_content(self, other: LedgerMetadata) -> bool:
        """Equal as stored (the version is not part of the stored value)."""
        return self.to_json() == other.to_json()

    @property
    def last_fragment_first(self) -> int:
        """First entry id of the last fragment: the one an open ledger's writer appends to."""
        return max(self.ensembles)

    def fragment_first_for(self, entry_id: int) -> int:
        return max(k for k in self.ensembles if k <= max(entry_id, 0))

    def ensemble_for(self, entry_id: int) -> list[str]:
        return self.ensembles[self.fragment_first_for(entry_id)]

    def fragment_end(self, entry_id: int) -> int | None:
        """Last entry id of the fragment holding ``entry_id``; None for the open tail."""
        later = [k for k in self.ensembles if k > max(entry_id, 0)]
        if later:
            return min(later) - 1
        return self.last_entry_id if self.state == STATE_CLOSED else None

    def write_set(self, entry_id: int) -> list[str]:
        """The Qw bookies that store ``entry_id``: round-robin striping from ``entry_id mod E``."""
        ensemble = self.ensemble_for(entry_id)
        slots = write_set_slots(entry_id, self.ensemble_size, self.write_quorum)
        return [ensemble[s] for s in slots]

    def all_bookies(self) -> set[str]:
        return {address for ensemble in self.ensembles.values() for address in ensemble}

    def with_fragment(self, first_entry_id: int, ensemble: list[str]) -> LedgerMetadata:
        """A copy whose fragment at ``first_entry_id`` is ``ensemble`` (added or replaced)."""
        ensembles = {k: list(v) for k, v in self.ensembles.items()}
        ensembles[first_entry_id] = list(ensemble)
        return replace(self, ensembles={k: ensembles[k] for k in sorted(ensembles)})


class Fragment(NamedTuple):
    """A run of entries stored on one ensemble; ``last_entry_id`` is None for an open tail."""

    first_entry_id: int
    last_entry_id: int | None
    ensemble: list[str]


def ledger_fragments(metadata: LedgerMetadata) -> list[Fragment]:
    """The ledger's fragments in entry order. A fragment of a closed ledger that starts after
    its last entry is empty (``last_entry_id < first_entry_id``)."""
    keys = sorted(metadata.ensembles)
    result: list[Fragment] = []
    for index, first in enumerate(keys):
        if index + 1 < len(keys):
            last: int | None = keys[index + 1] - 1
        elif metadata.state == STATE_CLOSED:
            last = metadata.last_entry_id
        else:
            last = None
        result.append(Fragment(first, last, list(metadata.ensembles[first])))
    return result


def merge_ensembles(
    theirs: dict[int, list[str]], ours: dict[int, list[str]], current_first: int
) -> dict[int, list[str]]:
    """The writer's merge rule after a lost compare-and-set on a still-open ledger.

    Only the writer adds fragments, and an autorecovery worker only replaces bookies inside
    fragments before the writer's current one. So: theirs for fragments before
    ``current_first``, ours from ``current_first`` on. Any other difference (a fragment added
    or removed before ours) is a conflict we cannot merge.
    """
    theirs_before = {k: v for k, v in theirs.items() if k < current_first}
    ours_before = {k for k in ours if k < current_first}
    if set(theirs_before) != ours_before:
        raise LedgerMetadataConflictError(
            f"fragments before entry {current_first} differ: stored {sorted(theirs_before)}, "
            f"ours {sorted(ours_before)}"
        )
    merged = {k: list(v) for k, v in theirs_before.items()}
    merged.update({k: list(v) for k, v in ours.items() if k >= current_first})
    return {k: merged[k] for k in sorted(merged)}
