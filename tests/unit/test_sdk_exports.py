"""``strata`` re-exports the SDK: a sorted, complete ``__all__`` and a light import."""

from __future__ import annotations

import subprocess
import sys

import strata
import strata.client


def test_all_is_sorted_and_unique() -> None:
    assert strata.__all__ == sorted(set(strata.__all__))
    assert strata.client.__all__ == sorted(set(strata.client.__all__))


def test_all_is_the_sdk() -> None:
    assert strata.__all__ == strata.client.__all__
    for name in strata.__all__:
        assert getattr(strata, name) is getattr(strata.client, name)


def test_every_public_name_of_the_sdk_is_exported() -> None:
    public = {
        name
        for name, value in vars(strata.client).items()
        if not name.startswith("_") and getattr(value, "__module__", "").startswith("strata.client")
    }
    assert public <= set(strata.client.__all__)


def test_pulsar_names_are_there() -> None:
    for name in (
        "Client",
        "MessageId",
        "ConsumerType",
        "InitialPosition",
        "CompressionType",
        "Timeout",
        "TopicNotFound",
        "ProducerQueueIsFull",
        "MessageTooBig",
        "ConsumerBusy",
        "AuthorizationError",
        "Result",
    ):
        assert name in strata.__all__
    assert strata.TopicNotFound is strata.NotFound


def test_import_strata_is_light() -> None:
    # Server code imports strata.naming; that must not pull in the SDK, grpc or servers.
    code = (
        "import sys, strata, strata.naming; "
        "heavy = [m for m in ('strata.client', 'grpc', 'broker', 'bookie') if m in sys.modules]; "
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_sdk_never_imports_servers() -> None:
    code = (
        "import sys, strata; strata.Client; import strata.cli, strata.perf; "
        "print([m for m in sys.modules if m.split('.')[0] in ('broker', 'bookie', 'tiered')])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
