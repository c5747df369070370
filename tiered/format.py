"""The offloaded-ledger format and object keys: pure functions, no I/O.

An offloaded ledger is two objects (``../shared/reference/pulsar-bookkeeper.md`` §8.4, with
smaller blocks and a checksum per block)::

    {prefix}/{tenant}/{namespace}/{topic}/{ledger_id}-{uuid}          data object
    {prefix}/{tenant}/{namespace}/{topic}/{ledger_id}-{uuid}-index    index object

The names come only from validated tenant, namespace and topic names (``strata.naming``), the
numeric ledger id and the attempt's UUID (32 hex digits), so a key can never escape its
topic's directory on a file system or collide with another topic's.

**Data object**: the ledger's entries in order, cut into blocks of about
``block_size_bytes``; an entry never spans two blocks (an entry larger than the block size
gets a block of its own). Block layout, big-endian::

    header (24 bytes): magic "STB1" | first entry id u64 | entry count u32
                       | body length u32 | CRC32C u32 over header[0:20] + body
    body:              per entry: payload length u32 | entry id u64 | payload

**Index object**: what a reader needs without any bookie metadata::

    header (56 bytes): magic "STI1" | version u16 | flags u16 | ledger id u64
                       | last entry id i64 | entry count u64 | data length u64
                       | data CRC32C u32 | block count u32 | metadata length u32 | reserved u32
    ledger metadata:   the ledger's metadata JSON as it was when offloaded
    block references:  per block: first entry id u64 | entry count u32 | offset u64
                       | length u32 | CRC32C u32 (28 bytes each)
    trailer:           CRC32C u32 over everything before it

Every read checks the block's checksum and its place in the index before any byte is served;
the data object's CRC32C over all its bytes is what the managed ledger records as the
offload's checksum.
"""

from __future__ import annotations

import bisect
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import crc32c

from strata.naming import TopicName, check_name_part
from tiered.errors import OffloadCorruptError

FORMAT_VERSION = 1
BLOCK_MAGIC = b"STB1"
INDEX_MAGIC = b"STI1"
INDEX_SUFFIX = "-index"
BLOCK_HEADER = struct.Struct(">4sQIII")
ENTRY_HEADER = struct.Struct(">IQ")
INDEX_HEADER = struct.Struct(">4sHHQqQQIIII")
BLOCK_REF = struct.Struct(">QIQII")
TRAILER = struct.Struct(">I")
# Sanity bounds of what a decoder accepts (a corrupt length must not allocate gigabytes).
MAX_BLOCK_BODY_BYTES = 256 * 1024 * 1024
MAX_INDEX_METADATA_BYTES = 1024 * 1024
MAX_BLOCKS = 4_000_000
MAX_PREFIX_LENGTH = 512

_UUID_RE = re.compile(r"^[0-9a-f]{32}$")
_OBJECT_RE = re.compile(r"^(?P<ledger>[0-9]{1,20})-(?P<uuid>[0-9a-f]{32})(?P<index>-index)?$")


# ---- keys ---------------------------------------------------------------------------------


def check_prefix(prefix: str) -> str:
    """Return ``prefix`` if it is empty or ``part/part/...`` of valid name parts; else raise."""
    if not prefix:
        return prefix
    if len(prefix) > MAX_PREFIX_LENGTH:
        raise ValueError(f"offload prefix is longer than {MAX_PREFIX_LENGTH} characters")
    for part in prefix.split("/"):
        try:
            check_name_part("offload prefix", part)
        except ValueError as exc:
            raise ValueError(
                f"offload prefix {prefix!r}: each '/'-separated part may hold only letters, "
                "digits and - _ = : . (no empty, '.' or '..' parts)"
            ) from exc
    return prefix


def check_uuid(uuid: str) -> str:
    if not _UUID_RE.match(uuid):
        raise ValueError(f"offload attempt id {uuid!r} is not 32 lowercase hex digits")
    return uuid


def topic_prefix(prefix: str, topic: TopicName) -> str:
    """``{prefix}/{tenant}/{namespace}/{topic}/`` (no leading slash when prefix is empty)."""
    parts = [
        check_name_part("tenant", topic.tenant),
        check_name_part("namespace", topic.namespace),
        check_name_part("topic", topic.local_name),
    ]
    if prefix:
        parts.insert(0, check_prefix(prefix))
    return "/".join(parts) + "/"


@dataclass(frozen=True, slots=True)
class OffloadKeys:
    data_key: str
    index_key: str


def offload_keys(prefix: str, topic: TopicName, ledger_id: int, uuid: str) -> OffloadKeys:
    if isinstance(ledger_id, bool) or not isinstance(ledger_id, int) or ledger_id < 0:
        raise ValueError(f"ledger id {ledger_id!r} must be a non-negative integer")
    data_key = f"{topic_prefix(prefix, topic)}{ledger_id}-{check_uuid(uuid)}"
    return OffloadKeys(data_key, data_key + INDEX_SUFFIX)


@dataclass(frozen=True, slots=True)
class ObjectName:
    """What an object key under a topic's prefix says about the object."""

    ledger_id: int
    uuid: str
    is_index: bool


def parse_object_name(name: str) -> ObjectName | None:
    """Parse the last part of a key (``{ledger}-{uuid}[-index]``); None if it is not ours."""
    match = _OBJECT_RE.match(name)
    if match is None:
        return None
    return ObjectName(int(match["ledger"]), match["uuid"], match["index"] is not None)


# ---- blocks -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BlockRef:
    """The index's record of one block: its entries and where its bytes are."""

    first_entry_id: int
    entry_count: int
    offset: int
    length: int
    crc32c: int

    @property
    def last_entry_id(self) -> int:
        return self.first_entry_id + self.entry_count - 1


class BlockBuilder:
    """Accumulates consecutive entries into one block."""

    def __init__(self, first_entry_id: int) -> None:
        self.first_entry_id = first_entry_id
        self._parts: list[bytes] = []
        self.entry_count = 0
        self.body_bytes = 0

    @property
    def next_entry_id(self) -> int:
        return self.first_entry_id + self.entry_count

    def add(self, entry_id: int, payload: bytes) -> None:
        if entry_id != self.next_entry_id:
            raise ValueError(f"entry {entry_id} out of order: expected {self.next_entry_id}")
        self._parts.append(ENTRY_HEADER.pack(len(payload), entry_id))
        self._parts.append(payload)
        self.entry_count += 1
        self.body_bytes += ENTRY_HEADER.size + len(payload)

    def finish(self) -> tuple[bytes, int]:
        """The block's bytes and CRC32C."""
        if self.entry_count == 0:
            raise ValueError("a block holds at least one entry")
        if self.body_bytes > MAX_BLOCK_BODY_BYTES:
            raise ValueError(f"block of {self.body_bytes} bytes is over the format's limit")
        body = b"".join(self._parts)
        head = BLOCK_HEADER.pack(BLOCK_MAGIC, self.first_entry_id, self.entry_count, len(body), 0)[
            :20
        ]
        checksum = crc32c.crc32c(body, crc32c.crc32c(head))
        return head + struct.pack(">I", checksum) + body, checksum


def encode_block(first_entry_id: int, payloads: list[bytes]) -> tuple[bytes, int]:
    builder = BlockBuilder(first_entry_id)
    for offset, payload in enumerate(payloads):
        builder.add(first_entry_id + offset, payload)
    return builder.finish()


def decode_block(data: bytes | memoryview, ref: BlockRef) -> list[tuple[int, bytes]]:
    """The ``(entry id, payload)`` pairs of one block, after checking it against ``ref``.

    Raises ``OffloadCorruptError`` on any mismatch: length, magic, checksum, entry ids.
    """
    view = memoryview(data)
    if len(view) != ref.length or len(view) < BLOCK_HEADER.size:
        raise OffloadCorruptError(
            f"block at offset {ref.offset}: {len(view)} bytes, index says {ref.length}"
        )
    magic, first, count, body_length, checksum = BLOCK_HEADER.unpack_from(view)
    if magic != BLOCK_MAGIC:
        raise OffloadCorruptError(f"block at offset {ref.offset}: bad magic {magic!r}")
    if body_length != len(view) - BLOCK_HEADER.size:
        raise OffloadCorruptError(f"block at offset {ref.offset}: body length mismatch")
    actual = crc32c.crc32c(view[BLOCK_HEADER.size :], crc32c.crc32c(view[:20]))
    if actual != checksum or checksum != ref.crc32c:
        raise OffloadCorruptError(
            f"block at offset {ref.offset}: CRC32C {actual:#010x}, header {checksum:#010x}, "
            f"index {ref.crc32c:#010x}"
        )
    if first != ref.first_entry_id or count != ref.entry_count:
        raise OffloadCorruptError(
            f"block at offset {ref.offset} holds entries {first}+{count}, index says "
            f"{ref.first_entry_id}+{ref.entry_count}"
        )
    entries: list[tuple[int, bytes]] = []
    position = BLOCK_HEADER.size
    for expected in range(first, first + count):
        if position + ENTRY_HEADER.size > len(view):
            raise OffloadCorruptError(f"block at offset {ref.offset}: truncated entry header")
        length, entry_id = ENTRY_HEADER.unpack_from(view, position)
        position += ENTRY_HEADER.size
        if entry_id != expected or position + length > len(view):
            raise OffloadCorruptError(
                f"block at offset {ref.offset}: entry {entry_id} (expected {expected}) of "
                f"{length} bytes does not fit"
            )
        entries.append((entry_id, bytes(view[position : position + length])))
        position += length
    if position != len(view):
        raise OffloadCorruptError(f"block at offset {ref.offset}: trailing bytes")
    return entries


# ---- index --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OffloadIndex:
    ledger_id: int
    last_entry_id: int
    data_length: int
    data_crc32c: int
    blocks: tuple[BlockRef, ...]
    ledger_metadata: bytes = b""

    @property
    def entry_count(self) -> int:
        return self.last_entry_id + 1

    def encode(self) -> bytes:
        self.check()
        if len(self.ledger_metadata) > MAX_INDEX_METADATA_BYTES:
            raise ValueError("ledger metadata too large for the index")
        parts = [
            INDEX_HEADER.pack(
                INDEX_MAGIC,
                FORMAT_VERSION,
                0,
                self.ledger_id,
                self.last_entry_id,
                self.entry_count,
                self.data_length,
                self.data_crc32c,
                len(self.blocks),
                len(self.ledger_metadata),
                0,
            ),
            self.ledger_metadata,
        ]
        parts.extend(
            BLOCK_REF.pack(b.first_entry_id, b.entry_count, b.offset, b.length, b.crc32c)
            for b in self.blocks
        )
        body = b"".join(parts)
        return body + TRAILER.pack(crc32c.crc32c(body))

    @classmethod
    def decode(cls, data: bytes) -> OffloadIndex:
        view = memoryview(data)
        if len(view) < INDEX_HEADER.size + TRAILER.size:
            raise OffloadCorruptError(f"index of {len(view)} bytes is too short")
        (stored_crc,) = TRAILER.unpack_from(view, len(view) - TRAILER.size)
        if crc32c.crc32c(view[: len(view) - TRAILER.size]) != stored_crc:
            raise OffloadCorruptError("index failed its CRC32C check")
        (
            magic,
            version,
            _flags,
            ledger_id,
            last_entry_id,
            entry_count,
            data_length,
            data_crc,
            block_count,
            metadata_length,
            _reserved,
        ) = INDEX_HEADER.unpack_from(view)
        if magic != INDEX_MAGIC or version != FORMAT_VERSION:
            raise OffloadCorruptError(f"index magic {magic!r} version {version} not supported")
        if block_count > MAX_BLOCKS or metadata_length > MAX_INDEX_METADATA_BYTES:
            raise OffloadCorruptError("index counts out of bounds")
        expected = INDEX_HEADER.size + metadata_length + block_count * BLOCK_REF.size + TRAILER.size
        if len(view) != expected:
            raise OffloadCorruptError(f"index is {len(view)} bytes; its header says {expected}")
        position = INDEX_HEADER.size
        metadata = bytes(view[position : position + metadata_length])
        position += metadata_length
        blocks = tuple(
            BlockRef(*BLOCK_REF.unpack_from(view, position + i * BLOCK_REF.size))
            for i in range(block_count)
        )
        index = cls(ledger_id, last_entry_id, data_length, data_crc, blocks, metadata)
        if entry_count != index.entry_count:
            raise OffloadCorruptError("index entry count disagrees with its last entry id")
        try:
            index.check()
        except ValueError as exc:
            raise OffloadCorruptError(f"index inconsistent: {exc}") from exc
        return index

    def check(self) -> None:
        """Blocks are contiguous in bytes and in entry ids, from entry 0 to the last."""
        if self.last_entry_id < 0 or not self.blocks:
            raise ValueError("an offloaded ledger holds at least one entry")
        offset = 0
        next_entry = 0
        for block in self.blocks:
            if block.offset != offset or block.first_entry_id != next_entry:
                raise ValueError(f"block at {block.offset} does not follow the previous one")
            if block.entry_count <= 0 or block.length < BLOCK_HEADER.size:
                raise ValueError(f"block at {block.offset} is empty")
            offset += block.length
            next_entry += block.entry_count
        if offset != self.data_length or next_entry != self.entry_count:
            raise ValueError(
                f"blocks cover {offset} bytes and {next_entry} entries; the index says "
                f"{self.data_length} bytes and {self.entry_count} entries"
            )

    def find_block(self, entry_id: int) -> int:
        """The position in ``blocks`` of the block holding ``entry_id``."""
        if not 0 <= entry_id <= self.last_entry_id:
            raise ValueError(f"entry {entry_id} is not in ledger {self.ledger_id}")
        firsts = [b.first_entry_id for b in self.blocks]
        return bisect.bisect_right(firsts, entry_id) - 1

    def windows(self, start_block: int, window_bytes: int) -> Iterator[tuple[int, int]]:
        """Runs ``[first, last]`` of block positions from ``start_block`` on, each at most
        ``window_bytes`` long (or one block, if that block alone is longer)."""
        first = start_block
        while first < len(self.blocks):
            last = first
            total = self.blocks[first].length
            while last + 1 < len(self.blocks) and total + self.blocks[last + 1].length <= (
                window_bytes
            ):
                last += 1
                total += self.blocks[last].length
            yield first, last
            first = last + 1
