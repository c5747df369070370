"""The embedded metadata-store driver: durable on local disk, for one process.

``strata standalone`` keeps its metadata here. The data lives in ``metadata.sqlite3`` inside
the store's directory (SQLite in WAL mode with ``synchronous=FULL``: a put returns only once
its transaction is fsynced). Two tables::

    kv(key TEXT PRIMARY KEY, value BLOB, version INTEGER, mod_revision INTEGER,
       ephemeral_session TEXT NULL)
    meta(name TEXT PRIMARY KEY, value)   -- schema_version, revision, session

Only one process may open a directory at a time: an exclusive ``flock`` on ``LOCK`` in the
directory, held until close and released by the kernel if the process dies. Because of that
lock, every ephemeral key found on open belongs to a process that is gone, and is deleted.

Every SQLite call runs on one worker thread owned by the store, so the event loop never waits
for the disk and the connection is only ever used from the thread that opened it. Watches are
in-process, like the store.
"""

from __future__ import annotations

import asyncio
import builtins
import concurrent.futures
import contextlib
import errno
import fcntl
import logging
import os
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path

from strata.metadata.base import MetadataError, Record
from strata.metadata.memory import LocalBackend, LocalMetadataStore, StoreEngine

_logger = logging.getLogger(__name__)

DATABASE_FILE_NAME = "metadata.sqlite3"
LOCK_FILE_NAME = "LOCK"
SCHEMA_VERSION = 1
# After a checkpoint SQLite truncates the write-ahead log back to this size, which bounds the
# disk the log keeps between checkpoints of a busy store.
WAL_SIZE_LIMIT_BYTES = 64 * 1024 * 1024

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    version INTEGER NOT NULL,
    mod_revision INTEGER NOT NULL,
    ephemeral_session TEXT NULL
);
CREATE INDEX IF NOT EXISTS kv_ephemeral_session ON kv (ephemeral_session)
    WHERE ephemeral_session IS NOT NULL;
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value NOT NULL
);
"""


class SqliteEngine(StoreEngine):
    """The store's rows in SQLite; built, used and closed on the store's single worker thread.

    Lifecycle: the constructor takes the directory lock, opens or creates the database,
    deletes the ephemeral keys of dead processes and records a fresh id for this opening in
    ``meta`` (for diagnostics; each session's ephemeral keys carry that session's own id);
    :meth:`close` closes the database and releases the lock.
    """

    def __init__(self, directory: Path) -> None:
        super().__init__()
        # Resolved here, on the worker thread, because it may ask the file system for the cwd.
        directory = directory.absolute()
        self.directory = directory
        self.session = uuid.uuid4().hex
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise MetadataError(f"cannot create store directory {directory}: {error}") from error
        self._lock_fd = _lock_directory(directory)
        self._connection: sqlite3.Connection | None = None
        try:
            self._connection = self._connect()
            removed = self.end_session(None)
            if removed:
                _logger.info(
                    "embedded metadata store at %s: deleted %d ephemeral keys of a previous "
                    "process",
                    directory,
                    removed,
                )
            _fsync_directory(directory)
        except BaseException:
            self.close()
            raise

    def _connect(self) -> sqlite3.Connection:
        try:
            # isolation_level=None: the module's implicit transactions are off; _transaction()
            # issues BEGIN IMMEDIATE / COMMIT itself.
            connection = sqlite3.connect(self.directory / DATABASE_FILE_NAME, isolation_level=None)
        except sqlite3.Error as error:
            raise self._error(error) from error
        try:
            mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise MetadataError(f"{self._where()}: cannot switch SQLite to WAL ({mode})")
            connection.execute("PRAGMA synchronous = FULL")
            connection.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT_BYTES}")
            connection.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    connection.execute(statement)
            connection.execute(
                "INSERT OR IGNORE INTO meta (name, value) VALUES ('schema_version', ?)",
                (SCHEMA_VERSION,),
            )
            connection.execute("INSERT OR IGNORE INTO meta (name, value) VALUES ('revision', 0)")
            connection.execute(
                "INSERT INTO meta (name, value) VALUES ('session', ?) "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (self.session,),
            )
            meta = dict(connection.execute("SELECT name, value FROM meta").fetchall())
            if meta["schema_version"] != SCHEMA_VERSION:
                raise MetadataError(
                    f"{self._where()}: schema version {meta['schema_version']} is not "
                    f"{SCHEMA_VERSION}, the version this Strata understands"
                )
            connection.execute("COMMIT")
            self.revision = int(meta["revision"])
        except BaseException as error:
            connection.close()
            if isinstance(error, sqlite3.Error):
                raise self._error(error) from error
            raise
        return connection

    def _where(self) -> str:
        return f"embedded metadata store at {self.directory}"

    def _error(self, error: sqlite3.Error) -> MetadataError:
        return MetadataError(f"{self._where()}: {type(error).__name__}: {error}")

    @property
    def _db(self) -> sqlite3.Connection:
        assert self._connection is not None, "the engine is closed"
        return self._connection

    def _read(self, key: str) -> tuple[Record, str | None] | None:
        row = self._db.execute(
            "SELECT value, version, mod_revision, ephemeral_session FROM kv WHERE key = ?",
            (key,),
        ).fetchone()
        if row is None:
            return None
        value, version, mod_revision, session = row
        return Record(key, value, version, mod_revision), session

    def _scan(self, prefix: str) -> builtins.list[Record]:
        records = []
        # Keys starting with prefix sort together, right from prefix on (SQLite compares UTF-8
        # bytes, which orders like code points), so the scan stops at the first key outside.
        for key, value, version, mod_revision in self._db.execute(
            "SELECT key, value, version, mod_revision FROM kv WHERE key >= ? ORDER BY key",
            (prefix,),
        ):
            if not key.startswith(prefix):
                break
            records.append(Record(key, value, version, mod_revision))
        return records

    def _scan_keys(self, prefix: str) -> builtins.list[str]:
        keys = []
        for (key,) in self._db.execute("SELECT key FROM kv WHERE key >= ? ORDER BY key", (prefix,)):
            if not key.startswith(prefix):
                break
            keys.append(key)
        return keys

    def _ephemeral_keys(self, session: str | None) -> builtins.list[str]:
        if session is None:
            rows = self._db.execute(
                "SELECT key FROM kv WHERE ephemeral_session IS NOT NULL ORDER BY key"
            )
        else:
            rows = self._db.execute(
                "SELECT key FROM kv WHERE ephemeral_session = ? ORDER BY key", (session,)
            )
        return [key for (key,) in rows]

    def _write(self, record: Record, session: str | None) -> None:
        self._db.execute(
            "INSERT INTO kv (key, value, version, mod_revision, ephemeral_session) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value, "
            "version = excluded.version, mod_revision = excluded.mod_revision, "
            "ephemeral_session = excluded.ephemeral_session",
            (record.key, record.value, record.version, record.mod_revision, session),
        )

    def _remove(self, key: str) -> None:
        self._db.execute("DELETE FROM kv WHERE key = ?", (key,))

    def _save_revision(self, revision: int) -> None:
        self._db.execute("UPDATE meta SET value = ? WHERE name = 'revision'", (revision,))

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        # IMMEDIATE takes the write lock up front; no other connection exists (the directory
        # lock sees to that), so it never waits.
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as error:
            raise self._error(error) from error
        try:
            yield
            # With synchronous=FULL the commit returns after the write-ahead log is fsynced.
            self._db.execute("COMMIT")
        except BaseException as error:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            if isinstance(error, sqlite3.Error):
                raise self._error(error) from error
            raise

    @contextlib.contextmanager
    def _reading(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as error:
            raise self._error(error) from error

    def close(self) -> None:
        try:
            if self._connection is not None:
                connection, self._connection = self._connection, None
                connection.close()
        finally:
            if self._lock_fd >= 0:
                fd, self._lock_fd = self._lock_fd, -1
                # Closing the descriptor releases the flock.
                os.close(fd)


def _lock_directory(directory: Path) -> int:
    """Take the directory's exclusive lock; return the descriptor that holds it."""
    try:
        fd = os.open(directory / LOCK_FILE_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as error:
        raise MetadataError(
            f"cannot open the lock file of store at {directory}: {error}"
        ) from error
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        os.close(fd)
        if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise MetadataError(
                f"store at {directory} is in use by another process "
                f"(or by another store in this process)"
            ) from error
        raise MetadataError(f"cannot lock store at {directory}: {error}") from error
    return fd


def _fsync_directory(directory: Path) -> None:
    """Make the directory entries of the database files durable, not only their contents."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class EmbeddedMetadataStore(LocalMetadataStore):
    """The embedded driver's store: durable on local disk, open in one process at a time.

    Lifecycle: ``await EmbeddedMetadataStore.open(directory)`` (or
    ``open_metadata_store("embedded:///path")``) locks the directory, creates it if needed and
    returns the first session, which owns the worker thread and the database. ``close()``
    ends every session (deleting their ephemeral keys), closes the database and releases the
    lock. If the process dies instead, the next ``open`` deletes the ephemeral keys it left.
    """

    def __init__(self, backend: LocalBackend, *, directory: Path) -> None:
        super().__init__(backend, owns_backend=True)
        self.directory = directory

    @classmethod
    async def open(cls, directory: str | os.PathLike[str]) -> EmbeddedMetadataStore:
        """Open (creating if needed) the store in ``directory``; MetadataError if it is in use."""
        loop = asyncio.get_running_loop()
        executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="strata-metadata"
        )
        opening = executor.submit(SqliteEngine, Path(directory))
        try:
            engine = await asyncio.wrap_future(opening)
        except BaseException:
            if opening.done() and not opening.cancelled() and opening.exception() is not None:
                # The open itself failed and the worker is idle: this join returns at once.
                executor.shutdown(wait=True)
            else:
                # We were cancelled and the worker may still finish opening: close what it
                # opened (the job queued behind runs after it) so that the lock is released.
                executor.submit(_close_if_opened, opening)
                executor.shutdown(wait=False)
            raise
        backend = LocalBackend(
            engine,
            executor=executor,
            loop=loop,
            description=f"embedded metadata store at {engine.directory}",
        )
        return cls(backend, directory=engine.directory)


def _close_if_opened(opening: concurrent.futures.Future[SqliteEngine]) -> None:
    if not opening.cancelled() and opening.exception() is None:
        opening.result().close()
