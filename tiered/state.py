"""A ledger's offload state as the managed ledger records it (Pulsar's ``OffloadContext``).

It is stored inside the topic's ledger list (``/managed-ledgers/...``, one entry per ledger)
and changes only together with that list, by compare-and-set. States, in order::

    (none) ── CAS IN_PROGRESS (uuid, keys) ── upload ── verify ──▶ CAS COMPLETE
           (checksum, length, completed_ms) ── deletion lag ──▶ CAS BOOKIE_DELETED ── delete
           the bookie copy

A crash after IN_PROGRESS leaves objects whose UUID is never recorded COMPLETE: the next
attempt records a new UUID, and objects of any other UUID are orphans that a sweep deletes.
Only COMPLETE and BOOKIE_DELETED name objects that hold the ledger's data.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from tiered.format import check_uuid

OFFLOAD_IN_PROGRESS = "IN_PROGRESS"
OFFLOAD_COMPLETE = "COMPLETE"
OFFLOAD_BOOKIE_DELETED = "BOOKIE_DELETED"
OFFLOAD_STATES = (OFFLOAD_IN_PROGRESS, OFFLOAD_COMPLETE, OFFLOAD_BOOKIE_DELETED)


@dataclass(frozen=True, slots=True)
class OffloadContext:
    uuid: str
    state: str
    driver: str  # "s3" or "filesystem"
    # Where the objects are: {"bucket": ...} for S3, {"directory": ...} for a file system.
    location: dict[str, str] = field(default_factory=dict)
    data_key: str = ""
    index_key: str = ""
    data_length: int = 0
    data_crc32c: int = 0
    index_crc32c: int = 0
    started_ms: int = 0
    completed_ms: int = 0
    bookie_deleted_ms: int = 0

    def __post_init__(self) -> None:
        check_uuid(self.uuid)
        assert self.state in OFFLOAD_STATES, self.state

    @property
    def complete(self) -> bool:
        """The objects hold the ledger's data, verified (COMPLETE or BOOKIE_DELETED)."""
        return self.state in (OFFLOAD_COMPLETE, OFFLOAD_BOOKIE_DELETED)

    @property
    def bookie_deleted(self) -> bool:
        return self.state == OFFLOAD_BOOKIE_DELETED

    def completed(
        self,
        data_length: int,
        data_crc32c: int,
        index_crc32c: int,
        now_ms: int,
    ) -> OffloadContext:
        assert self.state == OFFLOAD_IN_PROGRESS
        return replace(
            self,
            state=OFFLOAD_COMPLETE,
            data_length=data_length,
            data_crc32c=data_crc32c,
            index_crc32c=index_crc32c,
            completed_ms=now_ms,
        )

    def with_bookie_deleted(self, now_ms: int) -> OffloadContext:
        assert self.state == OFFLOAD_COMPLETE
        return replace(self, state=OFFLOAD_BOOKIE_DELETED, bookie_deleted_ms=now_ms)

    def to_dict(self) -> dict[str, Any]:
        return {
            "uuid": self.uuid,
            "state": self.state,
            "driver": self.driver,
            "location": dict(self.location),
            "data_key": self.data_key,
            "index_key": self.index_key,
            "data_length": self.data_length,
            "data_crc32c": self.data_crc32c,
            "index_crc32c": self.index_crc32c,
            "started_ms": self.started_ms,
            "completed_ms": self.completed_ms,
            "bookie_deleted_ms": self.bookie_deleted_ms,
        }

    @classmethod
    def from_dict(cls, body: dict[str, Any]) -> OffloadContext:
        return cls(
            uuid=str(body["uuid"]),
            state=str(body["state"]),
            driver=str(body["driver"]),
            location={str(k): str(v) for k, v in dict(body.get("location", {})).items()},
            data_key=str(body.get("data_key", "")),
            index_key=str(body.get("index_key", "")),
            data_length=int(body.get("data_length", 0)),
            data_crc32c=int(body.get("data_crc32c", 0)),
            index_crc32c=int(body.get("index_crc32c", 0)),
            started_ms=int(body.get("started_ms", 0)),
            completed_ms=int(body.get("completed_ms", 0)),
            bookie_deleted_ms=int(body.get("bookie_deleted_ms", 0)),
        )
