"""Topic names with a partition suffix, and refusals that quote little (issue 11 item 6)."""

from __future__ import annotations

import pytest

from strata.naming import InvalidNameError, TopicName


@pytest.mark.parametrize(
    "local", ["t-partition--1", "t-partition-01", "t-partition-x", "t-partition-"]
)
def test_a_partition_suffix_is_a_plain_number(local: str) -> None:
    with pytest.raises(InvalidNameError, match="a partition is named"):
        TopicName.parse(local)


def test_partition_names_parse() -> None:
    assert TopicName.parse("t-partition-0").partition_index == 0
    assert TopicName.parse("t-partition-12").partitioned_name == TopicName.parse("t")


def test_a_huge_bad_name_is_quoted_short() -> None:
    with pytest.raises(InvalidNameError) as raised:
        TopicName.parse("a/b/" + "é" * 100_000)
    assert len(str(raised.value)) < 400
    with pytest.raises(InvalidNameError) as raised:
        TopicName.parse("x" * 100_000 + "/y")
    assert len(str(raised.value)) < 400


@pytest.mark.parametrize("text", ["t\n", "public/default/t\n", "a\n/ns/t", "public/ns\n/t"])
def test_a_trailing_newline_is_not_a_name_character(text: str) -> None:
    """``$`` matches before a final newline: names are checked with fullmatch (a fuzz find:
    ``0\\n`` reached the metadata store, which refused it with INTERNAL)."""
    with pytest.raises(InvalidNameError):
        TopicName.parse(text)
