"""Fixtures shared by every test tier: a real etcd server and fresh namespaces on it.

``etcd_server`` starts one etcd for the whole session (about half a second). A test that
needs an empty store takes ``etcd_url``: the server's URL with a key root of its own, so that
tests share the server but never each other's keys. Tests that kill, pause or restart etcd
should start their own :class:`~tests.etcd_server.EtcdServer` rather than disturb the shared
one (``etcd_url`` brings a paused or stopped shared server back regardless).

A missing etcd binary fails these fixtures rather than skipping the tests: etcd comes with
the ``dev`` extra (``make install``), so its absence is a broken set-up, not an option.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.etcd_server import EtcdNotFoundError, EtcdServer, find_etcd_binary
from tests.moto_server import MotoServer


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    """One etcd server for the session, on free loopback ports; stopped at the end."""
    try:
        binary = find_etcd_binary()
    except EtcdNotFoundError as error:
        pytest.fail(str(error), pytrace=False)
    with EtcdServer(tmp_path_factory.mktemp("etcd"), binary=binary) as server:
        yield server


@pytest.fixture
def etcd_url(etcd_server: EtcdServer) -> str:
    """``etcd://127.0.0.1:PORT/tests/<unique>``: an empty store on the shared server."""
    etcd_server.ensure_running()
    return f"{etcd_server.url}/tests/{uuid.uuid4().hex}"


@pytest.fixture
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """moto's S3 server as its own process on a free loopback port, for one test (it is
    ready in about half a second, and a test may pause or stop it)."""
    with MotoServer(tmp_path_factory.mktemp("moto") / "moto.log") as server:
        yield server
