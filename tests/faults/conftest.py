"""Fixtures of the fault tests: a metadata-store session on the test's cluster."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from strata.metadata import MetadataStore, open_metadata_store
from tests.cluster import Cluster


@pytest.fixture
async def store(cluster: Cluster) -> AsyncIterator[MetadataStore]:
    """The cluster's metadata store, as the test's own client (the test defines ``cluster``)."""
    opened = await open_metadata_store(cluster.metadata_url)
    try:
        yield opened
    finally:
        await opened.close()
