"""The ``Offloader`` interface (Pulsar's PIP-17 ``LedgerOffloader``) and its two drivers.

An offloader copies one closed ledger, given a reader of its entries, into a data object and
an index object (``tiered.format``), reads the ledger back from them, and deletes them. It
knows nothing of managed ledgers or their metadata: the state machine that decides when to
offload, records the attempt and deletes the bookie copy is the broker's
(``broker.offload``).

Drivers: ``S3Offloader`` (any S3-compatible service, through boto3) and
``FilesystemOffloader`` (a local directory). Both share ``BlockOffloader``, which does the
format and the streaming over an ``ObjectStore``; a driver only supplies the store.

Lifecycle: create (``create_offloader``) → ``offload``/``verify``/``open_ledger``/``delete``
from any number of coroutines (at most ``max_concurrent_offloads`` uploads at once) →
``close()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import crc32c

from bookie.api import LedgerEntry
from bookie.ledger import STATE_CLOSED, LedgerMetadata
from strata.naming import TopicName
from tiered.config import DRIVER_FILESYSTEM, DRIVER_S3, S3_MAX_PARTS, OffloadConfig
from tiered.errors import OffloadCorruptError, TieredError
from tiered.format import (
    ENTRY_HEADER,
    BlockBuilder,
    BlockRef,
    ObjectName,
    OffloadIndex,
    OffloadKeys,
    decode_block,
    offload_keys,
    parse_object_name,
    topic_prefix,
)
from tiered.reader import BlockCache, OffloadedLedger
from tiered.store import MultipartUpload, ObjectInfo, ObjectStore

log = logging.getLogger(__name__)

ABORT_TIMEOUT_S = 5.0


class EntrySource(Protocol):
    """What an offload reads a ledger through: ``bookie.ledger.LedgerReader`` fits."""

    @property
    def metadata(self) -> LedgerMetadata: ...

    async def read(
        self, first_entry_id: int, last_entry_id: int, max_bytes: int = 0
    ) -> list[LedgerEntry]: ...


@dataclass(frozen=True, slots=True)
class OffloadResult:
    keys: OffloadKeys
    data_length: int
    data_crc32c: int
    index_crc32c: int
    entry_count: int
    block_count: int


@dataclass(frozen=True, slots=True)
class OffloadedObject:
    """A listed object under a topic's prefix, with what its name says (None: not ours)."""

    info: ObjectInfo
    name: ObjectName | None


class Offloader(ABC):
    driver: str
    location: dict[str, str]

    @abstractmethod
    def keys(self, topic: TopicName, ledger_id: int, uuid: str) -> OffloadKeys: ...

    @abstractmethod
    async def offload(self, source: EntrySource, topic: TopicName, uuid: str) -> OffloadResult:
        """Copy the closed ledger ``source`` reads into its two objects; return their keys
        and checksums. On failure nothing is visible under the index key."""

    @abstractmethod
    async def verify(self, result: OffloadResult) -> None:
        """Read the objects back and check them against ``result``; raise if they differ."""

    @abstractmethod
    async def open_ledger(
        self, data_key: str, index_key: str, index_crc32c: int
    ) -> OffloadedLedger: ...

    @abstractmethod
    async def delete(self, keys: OffloadKeys) -> None: ...

    @abstractmethod
    async def list_objects(self, topic: TopicName) -> list[OffloadedObject]: ...

    @abstractmethod
    async def delete_objects(self, objects: Sequence[ObjectInfo]) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...


def _first_error(exc: BaseException) -> BaseException:
    """The error to report from a task group's exception group (not a cancellation)."""
    while isinstance(exc, BaseExceptionGroup):
        real = [e for e in exc.exceptions if not isinstance(e, asyncio.CancelledError)]
        exc = (real or list(exc.exceptions))[0]
    return exc


class LedgerUploadOp:
    """Streams one closed ledger from its reader into the data object, then the index.

    Entries are read in runs of at most ``source_read_max_bytes`` and cut into blocks of
    about ``block_size_bytes``; blocks accumulate into parts of at least ``part_size_bytes``.
    A ledger smaller than one part is one PUT; a larger one is a multipart upload with at most
    ``max_parts_in_flight`` parts uploading while the next is read. The index is written only
    after the data object is complete, so an index object always describes a whole data
    object. On failure the multipart upload is aborted (a cancelled one is left for the
    orphan sweep).
    """

    def __init__(
        self, store: ObjectStore, config: OffloadConfig, source: EntrySource, keys: OffloadKeys
    ) -> None:
        self._store = store
        self._config = config
        self._source = source
        self._keys = keys
        self._blocks: list[BlockRef] = []
        self._length = 0
        self._crc = 0
        self._buffer = bytearray()
        self._upload: MultipartUpload | None = None
        self._next_part = 1
        self._part_offset = 0
        self._slots = asyncio.Semaphore(config.max_parts_in_flight)
        self._group: asyncio.TaskGroup | None = None

    async def run(self) -> OffloadResult:
        metadata = self._source.metadata
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                await self._stream(metadata.last_entry_id)
            if self._upload is None:
                await self._store.put(self._keys.data_key, bytes(self._buffer))
            else:
                await self._upload.complete()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            error = _first_error(exc)
            if not isinstance(error, asyncio.CancelledError):
                await self._abort_quietly()
            raise error from None
        finally:
            self._buffer = bytearray()
        index = OffloadIndex(
            ledger_id=metadata.ledger_id,
            last_entry_id=metadata.last_entry_id,
            data_length=self._length,
            data_crc32c=self._crc,
            blocks=tuple(self._blocks),
            ledger_metadata=metadata.to_json(),
        ).encode()
        await self._store.put(self._keys.index_key, index)
        return OffloadResult(
            keys=self._keys,
            data_length=self._length,
            data_crc32c=self._crc,
            index_crc32c=crc32c.crc32c(index),
            entry_count=metadata.last_entry_id + 1,
            block_count=len(self._blocks),
        )

    async def _stream(self, last_entry_id: int) -> None:
        config = self._config
        builder = BlockBuilder(0)
        next_id = 0
        while next_id <= last_entry_id:
            entries = await self._source.read(next_id, last_entry_id, config.source_read_max_bytes)
            if not entries:
                raise TieredError(f"reading entry {next_id} returned nothing")
            for entry in entries:
                if entry.entry_id != next_id:
                    raise TieredError(f"read entry {entry.entry_id}, expected {next_id}")
                grown = builder.body_bytes + ENTRY_HEADER.size + len(entry.payload)
                if builder.entry_count and grown > config.block_size_bytes:
                    await self._add_block(builder)
                    builder = BlockBuilder(next_id)
                builder.add(next_id, entry.payload)
                next_id += 1
        await self._add_block(builder)
        if self._upload is not None and self._buffer:
            await self._upload_buffer()

    async def _add_block(self, builder: BlockBuilder) -> None:
        data, checksum = builder.finish()
        self._blocks.append(
            BlockRef(builder.first_entry_id, builder.entry_count, self._length, len(data), checksum)
        )
        self._crc = crc32c.crc32c(data, self._crc)
        self._length += len(data)
        self._buffer += data
        if len(self._buffer) >= self._config.part_size_bytes:
            await self._upload_buffer()

    async def _upload_buffer(self) -> None:
        assert self._group is not None
        if self._upload is None:
            self._upload = await self._store.start_upload(self._keys.data_key)
        if self._next_part > S3_MAX_PARTS:
            raise TieredError(
                f"ledger needs more than {S3_MAX_PARTS} parts of {self._config.part_size_bytes} "
                "bytes; raise the part size"
            )
        part = bytes(self._buffer)
        self._buffer = bytearray()
        await self._slots.acquire()
        number, offset = self._next_part, self._part_offset
        self._next_part += 1
        self._part_offset += len(part)
        self._group.create_task(self._upload_part(self._upload, number, offset, part))

    async def _upload_part(
        self, upload: MultipartUpload, number: int, offset: int, part: bytes
    ) -> None:
        try:
            await upload.upload_part(number, offset, part)
        finally:
            self._slots.release()

    async def _abort_quietly(self) -> None:
        if self._upload is None:
            return
        try:
            async with asyncio.timeout(ABORT_TIMEOUT_S):
                await self._upload.abort()
        except (TieredError, TimeoutError) as exc:
            log.warning("could not abort the upload of %s: %s", self._keys.data_key, exc)


class BlockOffloader(Offloader):
    """The offloader over any ``ObjectStore``; owns the store and the block cache."""

    def __init__(self, store: ObjectStore, config: OffloadConfig) -> None:
        self.store = store
        self.config = config
        self.driver = store.driver
        self.location = dict(store.location)
        self.cache = BlockCache(config.block_cache_size_bytes)
        self._offload_slots = asyncio.Semaphore(config.max_concurrent_offloads)

    def keys(self, topic: TopicName, ledger_id: int, uuid: str) -> OffloadKeys:
        return offload_keys(self.config.prefix, topic, ledger_id, uuid)

    async def offload(self, source: EntrySource, topic: TopicName, uuid: str) -> OffloadResult:
        metadata = source.metadata
        if metadata.state != STATE_CLOSED or metadata.last_entry_id < 0:
            raise ValueError(
                f"only a closed, non-empty ledger can be offloaded; ledger "
                f"{metadata.ledger_id} is {metadata.state} ending at {metadata.last_entry_id}"
            )
        keys = self.keys(topic, metadata.ledger_id, uuid)
        async with self._offload_slots:
            return await LedgerUploadOp(self.store, self.config, source, keys).run()

    async def verify(self, result: OffloadResult) -> None:
        keys = result.keys
        raw = await self.store.get(keys.index_key)
        if crc32c.crc32c(raw) != result.index_crc32c:
            raise OffloadCorruptError(f"index {keys.index_key} differs from what was written")
        index = OffloadIndex.decode(raw)
        if (
            index.data_length != result.data_length
            or index.data_crc32c != result.data_crc32c
            or index.entry_count != result.entry_count
        ):
            raise OffloadCorruptError(f"index {keys.index_key} describes another data object")
        size = await self.store.size(keys.data_key)
        if size != result.data_length:
            raise OffloadCorruptError(
                f"data object {keys.data_key} is {size} bytes, expected {result.data_length}"
            )
        if not self.config.verify_data:
            return
        window = max(self.config.read_window_bytes, self.config.part_size_bytes)
        checksum = 0
        for first, last in index.windows(0, window):
            start = index.blocks[first].offset
            end = index.blocks[last].offset + index.blocks[last].length
            data = await self.store.get_range(keys.data_key, start, end - start)
            view = memoryview(data)
            for ref in index.blocks[first : last + 1]:
                decode_block(view[ref.offset - start : ref.offset - start + ref.length], ref)
            checksum = crc32c.crc32c(data, checksum)
        if checksum != result.data_crc32c:
            raise OffloadCorruptError(f"data object {keys.data_key} failed its CRC32C check")

    async def open_ledger(
        self, data_key: str, index_key: str, index_crc32c: int
    ) -> OffloadedLedger:
        raw = await self.store.get(index_key)
        if crc32c.crc32c(raw) != index_crc32c:
            raise OffloadCorruptError(f"index {index_key} differs from the one recorded")
        index = OffloadIndex.decode(raw)
        return OffloadedLedger(
            self.store, self.cache, index, data_key, self.config.read_window_bytes
        )

    async def delete(self, keys: OffloadKeys) -> None:
        self.cache.invalidate(keys.data_key)
        # The index first: an index object never describes a missing data object.
        await self.store.delete([keys.index_key])
        await self.store.delete([keys.data_key])

    async def list_objects(self, topic: TopicName) -> list[OffloadedObject]:
        prefix = topic_prefix(self.config.prefix, topic)
        result: list[OffloadedObject] = []
        for info in await self.store.list(prefix):
            rest = info.key[len(prefix) :]
            name = parse_object_name(rest) if "/" not in rest else None
            result.append(OffloadedObject(info, name))
        return result

    async def delete_objects(self, objects: Sequence[ObjectInfo]) -> None:
        for info in objects:
            self.cache.invalidate(info.key)
        await self.store.delete_objects(objects)

    async def close(self) -> None:
        await self.store.close()


class S3Offloader(BlockOffloader):
    """Offloads to a bucket of an S3-compatible service (``tiered.s3``)."""

    def __init__(self, config: OffloadConfig) -> None:
        from tiered.s3 import S3ObjectStore

        super().__init__(S3ObjectStore(config), config)


class FilesystemOffloader(BlockOffloader):
    """Offloads to a local directory (``tiered.filesystem``)."""

    def __init__(self, config: OffloadConfig) -> None:
        from tiered.filesystem import FilesystemObjectStore

        super().__init__(FilesystemObjectStore(config), config)


def create_offloader(config: OffloadConfig) -> Offloader:
    if config.driver == DRIVER_S3:
        return S3Offloader(config)
    if config.driver == DRIVER_FILESYSTEM:
        return FilesystemOffloader(config)
    raise ValueError(f"unknown offload driver {config.driver!r}")


async def close_quietly(offloader: Offloader) -> None:
    with contextlib.suppress(Exception):
        await offloader.close()
