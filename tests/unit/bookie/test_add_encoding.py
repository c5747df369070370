"""The ledger client's own AddEntries encoding: the bytes it sends parse to exactly the
AddEntriesRequest the generated code would have built, entry for entry."""

from __future__ import annotations

import pytest

from bookie.grpc_client import AddEncodings, encode_add_request
from strata.storage.v1 import bookie_pb2

CASES = [
    # request id, ledger, entry, LAC, payload, master key, recovery
    (1, 0, 0, -1, b"", b"", False),
    (2, 7, 3, 2, b"x" * 100, b"k" * 20, False),
    (2**63 + 5, 2**64 - 1, 2**40, 2**62, bytes(range(256)) * 600, b"\x00" * 32, True),
    (300, 12, 128, 127, b"\x0a\x08\x00" * 50, b"master", True),
]


@pytest.mark.parametrize("batch_size", [1, 2, len(CASES)])
def test_encoded_requests_parse_to_the_generated_message(batch_size: int) -> None:
    encodings = AddEncodings()
    for start in range(0, len(CASES), batch_size):
        cases = CASES[start : start + batch_size]
        sent = encode_add_request(
            [
                (request_id, encodings.encode(ledger, entry, lac, payload, key, recovery))
                for request_id, ledger, entry, lac, payload, key, recovery in cases
            ]
        )
        expected = bookie_pb2.AddEntriesRequest(
            entries=[
                bookie_pb2.AddEntry(
                    request_id=request_id,
                    ledger_id=ledger,
                    entry_id=entry,
                    last_add_confirmed=lac,
                    payload=payload,
                    master_key=key,
                    recovery_add=recovery,
                )
                for request_id, ledger, entry, lac, payload, key, recovery in cases
            ]
        )
        assert bookie_pb2.AddEntriesRequest.FromString(sent) == expected


def test_one_encoding_per_write_set_and_never_a_stale_one() -> None:
    encodings = AddEncodings(max_kept=2)
    payload = b"p" * 1000
    first = encodings.encode(1, 0, -1, payload, b"k", False)
    assert encodings.encode(1, 0, -1, payload, b"k", False) is first  # the next bookie's
    # A new LAC, recovery flag or payload with the same ids is encoded afresh.
    assert encodings.encode(1, 0, 0, payload, b"k", False) is not first
    other = bytes(bytearray(b"q" * 1000))
    parsed = bookie_pb2.AddEntry.FromString(encodings.encode(1, 0, -1, other, b"k", False))
    assert parsed.payload == other and parsed.last_add_confirmed == -1
    recovery = bookie_pb2.AddEntry.FromString(encodings.encode(1, 0, -1, payload, b"k", True))
    assert recovery.recovery_add and recovery.payload == payload
    assert len(encodings._kept) == 2  # bounded
