"""The bookie's error hierarchy against its wire table: every protocol error maps to a status
and back to the same class; the local-only errors have no row and never change a mapping."""

from __future__ import annotations

import inspect

import grpc
import pytest

import bookie.errors
import bookie.registry
from bookie.errors import (
    BookieError,
    BookieIOError,
    BookieLocalError,
    CheckpointError,
    CookieMismatchError,
    DecommissionRefusedError,
    SegmentGoneError,
)
from bookie.status_map import add_status_for, error_for_status, status_for
from strata.storage.v1 import bookie_pb2

ERRORS = [
    cls
    for _, cls in inspect.getmembers(bookie.errors, inspect.isclass)
    if issubclass(cls, BookieError) and cls not in (BookieError, BookieLocalError)
]
LOCAL = [SegmentGoneError, CheckpointError, CookieMismatchError, DecommissionRefusedError]


def test_the_local_errors_are_the_bookie_local_ones() -> None:
    assert sorted(c.__name__ for c in ERRORS if issubclass(c, BookieLocalError)) == sorted(
        c.__name__ for c in LOCAL
    )


@pytest.mark.parametrize("error_class", [c for c in ERRORS if c not in LOCAL])
def test_every_protocol_error_travels_as_itself(error_class: type[BookieError]) -> None:
    code, reason = status_for(error_class("x"))
    assert reason != "BOOKIE_ERROR"
    assert type(error_for_status(code, "x", reason)) is error_class


@pytest.mark.parametrize("error_class", LOCAL)
def test_local_errors_have_no_row(error_class: type[BookieError]) -> None:
    error = error_class("x")
    assert status_for(error) == (grpc.StatusCode.INTERNAL, "BOOKIE_ERROR")
    assert add_status_for(error) == bookie_pb2.ADD_STATUS_ERROR
    assert type(error_for_status(*status_for(error), None)) is BookieIOError


def test_retriable_flags_and_old_import_paths() -> None:
    assert SegmentGoneError.retriable  # the read looks its locations up again
    assert not CheckpointError.retriable
    assert not CookieMismatchError.retriable
    assert not DecommissionRefusedError.retriable
    # The bookie entry point and the broker's admin service import these from the registry.
    assert bookie.registry.CookieMismatchError is CookieMismatchError
    assert bookie.registry.DecommissionRefusedError is DecommissionRefusedError
