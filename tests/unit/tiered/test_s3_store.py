"""The S3 driver's failure handling: retries with backoff for 5xx, throttling and connection
errors (bounded by count and time), no retries for what an operator must fix, configuration
from the standard AWS environment variables."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from moto import mock_aws
from moto.core.botocore_stubber import MockRawResponse

from tests.harness import free_port
from tests.unit.tiered.support import BUCKET, REGION, small_config
from tiered.errors import (
    ObjectNotFoundError,
    ObjectStoreConfigError,
    ObjectStoreUnavailableError,
)
from tiered.s3 import S3ObjectStore

ERROR_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
    b"<Message>injected</Message></Error>"
)


@pytest.fixture
def aws() -> Iterator[None]:
    with mock_aws():
        boto3.client("s3", region_name=REGION).create_bucket(Bucket=BUCKET)
        yield


def inject(store: S3ObjectStore, operation: str, status: int, code: str, times: int) -> list[int]:
    """Answer the next ``times`` calls of ``operation`` with an error, before moto sees them."""
    calls = [0]

    def handler(request: Any, **_: Any) -> AWSResponse | None:
        calls[0] += 1
        if calls[0] > times:
            return None
        body = ERROR_BODY.replace(b"{code}", code.encode())
        return AWSResponse(request.url, status, {}, MockRawResponse(body))

    store._client.meta.events.register_first(f"before-send.s3.{operation}", handler)
    return calls


async def test_server_errors_and_throttling_are_retried(aws: None, tmp_path: Path) -> None:
    store = S3ObjectStore(small_config("s3", tmp_path))
    try:
        await store.put("a/b", b"hello")
        calls = inject(store, "GetObject", 503, "SlowDown", times=2)
        assert await store.get_range("a/b", 1, 3) == b"ell"
        assert calls[0] == 3 and store.retries == 2
        inject(store, "PutObject", 500, "InternalError", times=1)
        await store.put("a/c", b"x")
        assert await store.get("a/c") == b"x"
    finally:
        await store.close()


async def test_retries_are_bounded(aws: None, tmp_path: Path) -> None:
    store = S3ObjectStore(small_config("s3", tmp_path, retry_max_attempts=4))
    try:
        await store.put("a/b", b"hello")
        calls = inject(store, "GetObject", 503, "ServiceUnavailable", times=1000)
        with pytest.raises(ObjectStoreUnavailableError):
            await store.get("a/b")
        assert calls[0] == 4
    finally:
        await store.close()


async def test_what_an_operator_must_fix_is_not_retried(aws: None, tmp_path: Path) -> None:
    store = S3ObjectStore(small_config("s3", tmp_path))
    try:
        calls = inject(store, "PutObject", 403, "AccessDenied", times=1000)
        with pytest.raises(ObjectStoreConfigError):
            await store.put("a/b", b"x")
        assert calls[0] == 1
        with pytest.raises(ObjectNotFoundError):
            await store.get("missing")
    finally:
        await store.close()
    other = S3ObjectStore(small_config("s3", tmp_path, bucket="no-such-bucket-here"))
    try:
        with pytest.raises(ObjectStoreConfigError):
            await other.put("a/b", b"x")
    finally:
        await other.close()


async def test_unreachable_endpoint_fails_within_the_retry_budget(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    store = S3ObjectStore(
        small_config(
            "s3",
            tmp_path,
            endpoint_url=f"http://127.0.0.1:{port}",
            access_key_id="testing",
            secret_access_key="testing",
            retry_timeout_ms=1_500,
            connect_timeout_ms=500,
        )
    )
    try:
        started = time.monotonic()
        with pytest.raises(ObjectStoreUnavailableError):
            await store.get("a/b")
        assert time.monotonic() - started < 5
        assert store.retries >= 1
    finally:
        await store.close()


async def test_credentials_region_and_endpoint_from_the_environment(
    aws: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "from-env")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "from-env-secret")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:1")
    store = S3ObjectStore(small_config("s3", tmp_path, region=""))
    try:
        client = store._client
        assert client.meta.region_name == "eu-west-1"
        assert client.meta.endpoint_url == "http://127.0.0.1:1"
        credentials = client._request_signer._credentials
        assert credentials.access_key == "from-env"
    finally:
        await store.close()
    configured = S3ObjectStore(
        small_config(
            "s3",
            tmp_path,
            region="us-west-2",
            endpoint_url="http://127.0.0.1:2",
            access_key_id="from-config",
            secret_access_key="secret",
        )
    )
    try:
        assert configured._client.meta.region_name == "us-west-2"
        assert configured._client.meta.endpoint_url == "http://127.0.0.1:2"
        assert configured._client._request_signer._credentials.access_key == "from-config"
        assert "secret" not in repr(configured.config)
    finally:
        await configured.close()
