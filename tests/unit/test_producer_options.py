"""``ProducerOptions`` is the one place a producer setting is declared (issue 9)."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import pytest

from strata.client import InvalidArgument
from strata.client._options import ProducerKeywords, ProducerOptions, producer_options


def test_the_keywords_are_exactly_the_options() -> None:
    assert set(ProducerKeywords.__annotations__) == {f.name for f in fields(ProducerOptions)}


def test_defaults_are_pulsar_clients() -> None:
    options = producer_options({})
    assert options.max_pending_messages == 1000
    assert options.batching_max_messages == 1000
    assert options.batching_max_allowed_size_in_bytes == 128 * 1024
    assert options.send_timeout_millis == 30_000
    assert options.batching_max_publish_delay_ms == 10


def test_a_misspelt_keyword_is_a_type_error_naming_it() -> None:
    keywords: Any = {"max_pending_mesages": 10}
    with pytest.raises(TypeError, match="max_pending_mesages"):
        producer_options(keywords)


@pytest.mark.parametrize(
    "keywords",
    [
        {"max_pending_messages": 0},
        {"batching_max_messages": 0},
        {"batching_max_allowed_size_in_bytes": 0},
        {"send_timeout_millis": -1},
        {"batching_max_publish_delay_ms": -0.5},
    ],
)
def test_invalid_values_raise_invalid_argument(keywords: Any) -> None:
    with pytest.raises(InvalidArgument):
        producer_options(keywords)
