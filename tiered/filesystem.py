"""``FilesystemObjectStore``: objects as files under one directory (for a standalone, or a
mounted network file system).

A key ``a/b/c`` is the file ``<directory>/a/b/c``; keys are built by ``tiered.format`` from
validated names only, and checked again here, so a path never leaves the directory. An object
becomes visible atomically: it is written to a temporary file beside its final name
(``<name>.tmp-<token>``), fsynced and renamed, and the directory is fsynced. A crash leaves at
most a temporary file, which ``list`` reports as an unfinished upload of its final key so that
a sweep can delete it. File I/O runs in the store's thread pool like the S3 driver's calls.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Sequence
from pathlib import Path

from tiered.config import DRIVER_FILESYSTEM, OffloadConfig
from tiered.errors import (
    ObjectNotFoundError,
    ObjectStoreConfigError,
    ObjectStoreUnavailableError,
    OffloadCorruptError,
    TieredError,
)
from tiered.store import MultipartUpload, ObjectInfo, ObjectStore

TMP_MARKER = ".tmp-"


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FilesystemObjectStore(ObjectStore):
    driver = DRIVER_FILESYSTEM

    def __init__(self, config: OffloadConfig) -> None:
        super().__init__(config)
        self.root = Path(config.directory).resolve()
        self.location = {"directory": str(self.root)}

    def path(self, key: str) -> Path:
        parts = key.split("/")
        if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"object key {key!r} is not a relative path of named parts")
        if any(TMP_MARKER in p for p in parts):
            raise ValueError(f"object key {key!r} holds the temporary-file marker")
        return self.root.joinpath(*parts)

    def classify(self, what: str, exc: Exception) -> TieredError:
        message = f"filesystem {what} (under {self.root}): {exc}"
        if isinstance(exc, FileNotFoundError):
            return ObjectNotFoundError(message)
        if isinstance(exc, PermissionError | NotADirectoryError | IsADirectoryError):
            return ObjectStoreConfigError(message)
        if isinstance(exc, OSError):
            # EIO, ENOSPC, a stale network mount: may succeed later.
            return ObjectStoreUnavailableError(message)
        return TieredError(message)

    def _temporary(self, path: Path) -> Path:
        return path.with_name(f"{path.name}{TMP_MARKER}{secrets.token_hex(8)}")

    async def put(self, key: str, data: bytes) -> None:
        path = self.path(key)

        def write() -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = self._temporary(path)
            try:
                with open(temporary, "wb") as file:
                    file.write(data)
                    file.flush()
                    os.fsync(file.fileno())
                os.replace(temporary, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    temporary.unlink()
                raise
            _fsync_directory(path.parent)

        await self.call(f"put {key}", write)

    async def start_upload(self, key: str) -> MultipartUpload:
        path = self.path(key)

        def open_temporary() -> tuple[Path, int]:
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = self._temporary(path)
            return temporary, os.open(temporary, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)

        temporary, fd = await self.call(f"start upload {key}", open_temporary)
        return _FileUpload(self, key, path, temporary, fd)

    async def get(self, key: str) -> bytes:
        path = self.path(key)
        return await self.call(f"get {key}", path.read_bytes)

    async def get_range(self, key: str, offset: int, length: int) -> bytes:
        if length <= 0 or offset < 0:
            raise ValueError(f"invalid range {offset}+{length}")
        path = self.path(key)

        def read() -> bytes:
            with open(path, "rb") as file:
                file.seek(offset)
                data = file.read(length)
            if len(data) != length:
                raise OffloadCorruptError(
                    f"filesystem get {key} bytes {offset}+{length}: the file is too short"
                )
            return data

        return await self.call(f"get {key} bytes {offset}+{length}", read)

    async def size(self, key: str) -> int:
        path = self.path(key)
        return await self.call(f"size {key}", lambda: path.stat().st_size)

    async def delete_objects(self, objects: Sequence[ObjectInfo]) -> None:
        paths: list[Path] = []
        for info in objects:
            path = self.path(info.key)
            if info.upload_id:
                if not info.upload_id.startswith(path.name + TMP_MARKER) or "/" in info.upload_id:
                    raise ValueError(f"{info.upload_id!r} is not a temporary file of {info.key}")
                paths.append(path.with_name(info.upload_id))
            else:
                paths.append(path)

        def delete() -> None:
            for path in paths:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

        await self.call(f"delete {len(paths)} objects", delete)

    async def list(self, prefix: str) -> list[ObjectInfo]:
        limit = self.config.max_listed_objects
        directory = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        base = self.path(directory) if directory else self.root

        def walk() -> list[ObjectInfo]:
            result: list[ObjectInfo] = []
            if not base.is_dir():
                return result
            for folder, _dirs, files in os.walk(base):
                for name in sorted(files):
                    full = Path(folder) / name
                    key = full.relative_to(self.root).as_posix()
                    upload_id = ""
                    if TMP_MARKER in name:
                        upload_id = name
                        key = key[: key.rindex(TMP_MARKER)]
                    if not key.startswith(prefix):
                        continue
                    try:
                        size = full.stat().st_size
                    except FileNotFoundError:
                        continue
                    result.append(ObjectInfo(key, size, upload_id))
                    if len(result) >= limit:
                        return result
            return result

        return await self.call(f"list {prefix}", walk)


class _FileUpload(MultipartUpload):
    def __init__(
        self, store: FilesystemObjectStore, key: str, path: Path, temporary: Path, fd: int
    ) -> None:
        self._store = store
        self.key = key
        self._path = path
        self._temporary = temporary
        self._fd: int | None = fd

    def _descriptor(self) -> int:
        if self._fd is None:
            raise OSError(errno.EBADF, f"upload of {self.key} is finished")
        return self._fd

    async def upload_part(self, part_number: int, offset: int, data: bytes) -> None:
        def write() -> None:
            fd = self._descriptor()
            view = memoryview(data)
            written = 0
            while written < len(view):
                written += os.pwrite(fd, view[written:], offset + written)

        await self._store.call(f"write part {part_number} of {self.key}", write)

    async def complete(self) -> None:
        def finish() -> None:
            fd = self._descriptor()
            os.fsync(fd)
            os.close(fd)
            self._fd = None
            os.replace(self._temporary, self._path)
            _fsync_directory(self._path.parent)

        await self._store.call(f"complete {self.key}", finish)

    async def abort(self) -> None:
        def drop() -> None:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            with contextlib.suppress(FileNotFoundError):
                self._temporary.unlink()

        await self._store.call(f"abort {self.key}", drop)
