"""``S3ObjectStore``: the object store of an S3-compatible service, through boto3.

boto3 is synchronous; every call runs in the store's bounded thread pool (``ObjectStore``).
botocore's own retries are off (one attempt per call): tenacity retries retriable failures
with backoff, bounded by count and time, so a call never hangs longer than
``request_timeout_ms`` per attempt and ``retry_timeout_ms`` in all. Large objects are written
as multipart uploads; reads are ranged GETs.

Classification: connection errors, timeouts, throttling and 5xx answers are retriable
(``ObjectStoreUnavailableError``); a missing key is ``ObjectNotFoundError``; a range past the
object's end is ``OffloadCorruptError`` (the object is shorter than its index says); missing
credentials, a missing bucket, access denied and other 4xx answers are
``ObjectStoreConfigError``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from typing import Any

import boto3
import urllib3.exceptions
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    ParamValidationError,
    PartialCredentialsError,
)

from tiered.config import DRIVER_S3, S3_MAX_PARTS, OffloadConfig
from tiered.errors import (
    ObjectNotFoundError,
    ObjectStoreConfigError,
    ObjectStoreUnavailableError,
    OffloadCorruptError,
    TieredError,
)
from tiered.format import FORMAT_VERSION
from tiered.store import MultipartUpload, ObjectInfo, ObjectStore

log = logging.getLogger(__name__)

_RETRIABLE_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "InternalError",
        "ServiceUnavailable",
        "OperationAborted",
    }
)
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
_DELETE_BATCH = 1000  # DeleteObjects takes at most 1000 keys
_LIST_PAGE = 1000
_OBJECT_METADATA = {"strata-offload-format": str(FORMAT_VERSION)}


class S3ObjectStore(ObjectStore):
    driver = DRIVER_S3

    def __init__(self, config: OffloadConfig) -> None:
        super().__init__(config)
        self.bucket = config.bucket
        self.location = {"bucket": config.bucket}
        session = boto3.session.Session(
            aws_access_key_id=config.access_key_id or None,
            aws_secret_access_key=config.secret_access_key or None,
            region_name=config.region or None,
        )
        options: dict[str, Any] = {
            "connect_timeout": config.connect_timeout_ms / 1000,
            "read_timeout": config.request_timeout_ms / 1000,
            "retries": {"total_max_attempts": 1, "mode": "standard"},
            "max_pool_connections": config.max_threads * 2,
        }
        if config.endpoint_url:
            # S3-compatible services on a custom endpoint (MinIO, moto, Ceph) want path style.
            options["s3"] = {"addressing_style": "path"}
        self._client = session.client(
            "s3", endpoint_url=config.endpoint_url or None, config=Config(**options)
        )

    def classify(self, what: str, exc: Exception) -> TieredError:
        prefix = f"s3 {what} (bucket {self.bucket})"
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            message = f"{prefix}: {code or status}: {error.get('Message', '')}"
            if code in _NOT_FOUND_CODES:
                return ObjectNotFoundError(message)
            if code == "InvalidRange" or status == 416:
                return OffloadCorruptError(message)
            if status >= 500 or status == 429 or code in _RETRIABLE_CODES:
                return ObjectStoreUnavailableError(message)
            return ObjectStoreConfigError(message)
        if isinstance(exc, NoCredentialsError | PartialCredentialsError | ParamValidationError):
            return ObjectStoreConfigError(f"{prefix}: {exc}")
        if isinstance(exc, BotoCoreError | OSError | urllib3.exceptions.HTTPError):
            return ObjectStoreUnavailableError(f"{prefix}: {exc}")
        return TieredError(f"{prefix}: unexpected {type(exc).__name__}: {exc}")

    async def put(self, key: str, data: bytes) -> None:
        await self.call(
            f"put {key}",
            lambda: self._client.put_object(
                Bucket=self.bucket, Key=key, Body=data, Metadata=_OBJECT_METADATA
            ),
        )

    async def start_upload(self, key: str) -> MultipartUpload:
        response = await self.call(
            f"create multipart upload {key}",
            lambda: self._client.create_multipart_upload(
                Bucket=self.bucket, Key=key, Metadata=_OBJECT_METADATA
            ),
        )
        return _S3Upload(self, key, str(response["UploadId"]))

    async def get(self, key: str) -> bytes:
        def fetch() -> bytes:
            response = self._client.get_object(Bucket=self.bucket, Key=key)
            data: bytes = response["Body"].read()
            if len(data) != int(response.get("ContentLength", len(data))):
                raise ObjectStoreUnavailableError(f"s3 get {key}: short read")
            return data

        return await self.call(f"get {key}", fetch)

    async def get_range(self, key: str, offset: int, length: int) -> bytes:
        if length <= 0 or offset < 0:
            raise ValueError(f"invalid range {offset}+{length}")

        def fetch() -> bytes:
            response = self._client.get_object(
                Bucket=self.bucket, Key=key, Range=f"bytes={offset}-{offset + length - 1}"
            )
            data: bytes = response["Body"].read()
            if len(data) != length:
                # A body cut short in transit; a range past the end is a 416 (corrupt).
                raise ObjectStoreUnavailableError(
                    f"s3 get {key} bytes {offset}+{length}: got {len(data)} bytes"
                )
            return data

        return await self.call(f"get {key} bytes {offset}+{length}", fetch)

    async def size(self, key: str) -> int:
        response = await self.call(
            f"head {key}", lambda: self._client.head_object(Bucket=self.bucket, Key=key)
        )
        return int(response["ContentLength"])

    async def delete_objects(self, objects: Sequence[ObjectInfo]) -> None:
        keys = [o.key for o in objects if not o.upload_id]
        for start in range(0, len(keys), _DELETE_BATCH):
            batch = keys[start : start + _DELETE_BATCH]

            def delete(batch: list[str] = batch) -> None:
                response = self._client.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
                )
                errors = response.get("Errors") or []
                if errors:
                    first = errors[0]
                    raise ObjectStoreUnavailableError(
                        f"s3 delete: {len(errors)} keys not deleted, e.g. {first.get('Key')}: "
                        f"{first.get('Code')} {first.get('Message')}"
                    )

            await self.call(f"delete {len(batch)} objects", delete)
        for info in objects:
            if info.upload_id:
                await _abort(self, info.key, info.upload_id)

    async def list(self, prefix: str) -> list[ObjectInfo]:
        limit = self.config.max_listed_objects
        result: list[ObjectInfo] = []
        token = ""
        while len(result) < limit:
            arguments: dict[str, Any] = {
                "Bucket": self.bucket,
                "Prefix": prefix,
                "MaxKeys": _LIST_PAGE,
            }
            if token:
                arguments["ContinuationToken"] = token
            page = await self.call(
                f"list {prefix}",
                functools.partial(self._client.list_objects_v2, **arguments),
            )
            result.extend(
                ObjectInfo(str(item["Key"]), int(item.get("Size", 0)))
                for item in page.get("Contents", [])
            )
            token = str(page.get("NextContinuationToken") or "")
            if not page.get("IsTruncated") or not token:
                break
        key_marker = ""
        upload_marker = ""
        while len(result) < limit:
            arguments = {"Bucket": self.bucket, "Prefix": prefix, "MaxUploads": _LIST_PAGE}
            if key_marker:
                arguments["KeyMarker"] = key_marker
                arguments["UploadIdMarker"] = upload_marker
            page = await self.call(
                f"list uploads {prefix}",
                functools.partial(self._client.list_multipart_uploads, **arguments),
            )
            result.extend(
                ObjectInfo(str(item["Key"]), 0, str(item["UploadId"]))
                for item in page.get("Uploads", [])
            )
            key_marker = str(page.get("NextKeyMarker") or "")
            upload_marker = str(page.get("NextUploadIdMarker") or "")
            if not page.get("IsTruncated") or not key_marker:
                break
        return result[:limit]


async def _abort(store: S3ObjectStore, key: str, upload_id: str) -> None:
    def abort() -> None:
        try:
            store._client.abort_multipart_upload(Bucket=store.bucket, Key=key, UploadId=upload_id)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "NoSuchUpload":
                raise

    await store.call(f"abort upload of {key}", abort)


class _S3Upload(MultipartUpload):
    def __init__(self, store: S3ObjectStore, key: str, upload_id: str) -> None:
        self._store = store
        self.key = key
        self.upload_id = upload_id
        self._etags: dict[int, str] = {}

    async def upload_part(self, part_number: int, offset: int, data: bytes) -> None:
        if not 1 <= part_number <= S3_MAX_PARTS:
            raise ValueError(f"part number {part_number} outside 1..{S3_MAX_PARTS}")
        store = self._store
        response = await store.call(
            f"upload part {part_number} of {self.key}",
            lambda: store._client.upload_part(
                Bucket=store.bucket,
                Key=self.key,
                UploadId=self.upload_id,
                PartNumber=part_number,
                Body=data,
            ),
        )
        self._etags[part_number] = str(response["ETag"])

    async def complete(self) -> None:
        store = self._store
        parts = [{"ETag": self._etags[n], "PartNumber": n} for n in sorted(self._etags)]

        def complete() -> None:
            try:
                store._client.complete_multipart_upload(
                    Bucket=store.bucket,
                    Key=self.key,
                    UploadId=self.upload_id,
                    MultipartUpload={"Parts": parts},
                )
            except ClientError as exc:
                # A retry after an answer lost in transit: the first attempt completed it.
                # (The offload verifies the object's bytes afterwards either way.)
                if exc.response.get("Error", {}).get("Code") != "NoSuchUpload":
                    raise
                store._client.head_object(Bucket=store.bucket, Key=self.key)

        await store.call(f"complete upload of {self.key}", complete)

    async def abort(self) -> None:
        await _abort(self._store, self.key, self.upload_id)
