"""The object-store interface the offloader writes through, and its retry discipline.

Two drivers implement ``ObjectStore``: ``tiered.s3.S3ObjectStore`` (boto3) and
``tiered.filesystem.FilesystemObjectStore`` (a local directory). Both are synchronous
underneath, so every call runs in the store's own bounded thread pool and is retried with
exponential backoff (tenacity), bounded by ``retry_max_attempts`` and ``retry_timeout_ms``;
only errors whose ``retriable`` flag is set are retried. The pool is owned by the store and
shut down by ``close()``.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential_jitter,
)

from tiered.config import OffloadConfig
from tiered.errors import TieredError

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """One listed object. ``upload_id`` is set for an unfinished upload (an S3 multipart
    upload, a temporary file), which ``delete_objects`` aborts instead of deleting."""

    key: str
    size_bytes: int = 0
    upload_id: str = ""


class MultipartUpload(ABC):
    """One object written in parts; parts may be uploaded concurrently and in any order."""

    key: str

    @abstractmethod
    async def upload_part(self, part_number: int, offset: int, data: bytes) -> None:
        """Store part ``part_number`` (from 1), which starts at byte ``offset``."""

    @abstractmethod
    async def complete(self) -> None:
        """Make the object visible, made of every part uploaded, in part order."""

    @abstractmethod
    async def abort(self) -> None:
        """Drop the parts; the object never becomes visible."""


def _is_retriable(exc: BaseException) -> bool:
    return isinstance(exc, TieredError) and exc.retriable


class ObjectStore(ABC):
    """A flat namespace of immutable objects: put, multipart upload, ranged get, delete, list."""

    driver: str
    location: dict[str, str]

    def __init__(self, config: OffloadConfig) -> None:
        self.config = config
        self._pool = ThreadPoolExecutor(
            max_workers=config.max_threads, thread_name_prefix=f"offload-{config.driver}"
        )
        self.retries = 0  # calls retried since start (all kinds), for stats and tests
        self.requests = 0  # calls made (each attempt counts)

    async def call(self, what: str, function: Callable[[], T]) -> T:
        """Run ``function`` in the pool, retrying retriable failures with backoff."""
        config = self.config
        retrying = AsyncRetrying(
            stop=stop_after_attempt(config.retry_max_attempts)
            | stop_after_delay(config.retry_timeout_ms / 1000),
            wait=wait_exponential_jitter(
                multiplier=config.retry_initial_backoff_ms / 1000,
                max=config.retry_max_backoff_ms / 1000,
                jitter=config.retry_initial_backoff_ms / 1000,
            ),
            retry=retry_if_exception(_is_retriable),
            before_sleep=self._before_retry,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._run(what, function)
        raise AssertionError("unreachable: tenacity re-raises the last error")

    def _before_retry(self, state: RetryCallState) -> None:
        self.retries += 1
        outcome = state.outcome
        error = outcome.exception() if outcome is not None else None
        log.warning(
            "%s object store: attempt %d failed (%s); retrying",
            self.driver,
            state.attempt_number,
            error,
        )

    async def _run(self, what: str, function: Callable[[], T]) -> T:
        self.requests += 1
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, function)
        except TieredError:
            raise
        except Exception as exc:
            raise self.classify(what, exc) from exc

    @abstractmethod
    def classify(self, what: str, exc: Exception) -> TieredError:
        """The tiered error for a driver exception (retriable or not)."""

    @abstractmethod
    async def put(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    async def start_upload(self, key: str) -> MultipartUpload: ...

    @abstractmethod
    async def get(self, key: str) -> bytes: ...

    @abstractmethod
    async def get_range(self, key: str, offset: int, length: int) -> bytes:
        """Exactly ``length`` bytes from ``offset``; an object too short is corrupt."""

    @abstractmethod
    async def size(self, key: str) -> int: ...

    @abstractmethod
    async def delete_objects(self, objects: Sequence[ObjectInfo]) -> None:
        """Delete objects and abort unfinished uploads; missing ones are not an error."""

    @abstractmethod
    async def list(self, prefix: str) -> list[ObjectInfo]:
        """Objects and unfinished uploads whose key starts with ``prefix`` (at most
        ``max_listed_objects``)."""

    async def delete(self, keys: Sequence[str]) -> None:
        await self.delete_objects([ObjectInfo(key) for key in keys])

    async def close(self) -> None:
        # Calls not started are cancelled; a running one ends within its request timeout.
        self._pool.shutdown(wait=False, cancel_futures=True)
