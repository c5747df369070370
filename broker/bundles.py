"""Bundle ranges: which bundle of its namespace holds a topic (pure; no I/O).

Each namespace's 32-bit hash ring is split into bundles (default 4, set per namespace at
creation; the boundaries live in the namespace policies under ``"bundles"``). A topic belongs
to the bundle holding ``murmur3_32(topic name)``. A bundle's ownership key in the metadata
store is ``/namespace/<tenant>/<namespace>/<0xLO_0xHI>``; ``broker.ownership`` does the I/O.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import mmh3

from broker.errors import PreconditionError
from strata.naming import NamespaceName, TopicName, quoted

OWNERSHIP_PREFIX = "/namespace/"
HASH_RANGE = 1 << 32
DEFAULT_BUNDLE_COUNT = 4
MAX_BUNDLE_COUNT = 1024


def topic_hash(name: TopicName) -> int:
    """The 32-bit Murmur3 hash of the canonical topic name that places it in a bundle."""
    return mmh3.hash(str(name), signed=False)


def equal_boundaries(count: int) -> list[int]:
    if not 1 <= count <= MAX_BUNDLE_COUNT:
        raise ValueError(f"bundle count must be within 1..{MAX_BUNDLE_COUNT}, got {count}")
    return [HASH_RANGE * i // count for i in range(count)] + [HASH_RANGE]


@dataclass(frozen=True, slots=True)
class Bundle:
    namespace: NamespaceName
    lower: int  # inclusive
    upper: int  # exclusive; HASH_RANGE for the last bundle

    @property
    def name(self) -> str:
        return f"0x{self.lower:08x}_0x{min(self.upper, HASH_RANGE - 1):08x}"

    @property
    def key(self) -> str:
        return bundle_key(self.namespace, self.name)

    def contains(self, name: TopicName) -> bool:
        return name.namespace_name == self.namespace and self.holds(topic_hash(name))

    def holds(self, hash_value: int) -> bool:
        return self.lower <= hash_value < self.upper

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


def bundles_of(namespace: NamespaceName, policies: dict[str, Any]) -> list[Bundle]:
    boundaries = policies.get("bundles") or equal_boundaries(DEFAULT_BUNDLE_COUNT)
    return [Bundle(namespace, lo, hi) for lo, hi in itertools.pairwise(boundaries)]


# A refusal names at most this many of the namespace's bundles.
MAX_LISTED_BUNDLES = 8


def parse_bundle_name(namespace: NamespaceName, name: str, bundles: list[Bundle]) -> Bundle:
    for bundle in bundles:
        if bundle.name == name:
            return bundle
    listed = ", ".join(b.name for b in bundles[:MAX_LISTED_BUNDLES])
    if len(bundles) > MAX_LISTED_BUNDLES:
        listed += f", ... ({len(bundles)} bundles)"
    raise PreconditionError(
        f"namespace {namespace} has no bundle {quoted(name)}; its bundles are {listed}"
    )


def bundle_key(namespace: NamespaceName, name: str) -> str:
    return f"{OWNERSHIP_PREFIX}{namespace.tenant}/{namespace.namespace}/{name}"


def split_bundle_key(key: str) -> tuple[NamespaceName, str]:
    """A bundle's ownership key → (namespace, bundle name)."""
    tenant, namespace, name = key[len(OWNERSHIP_PREFIX) :].split("/")
    return NamespaceName(tenant, namespace), name


def with_boundary(policies: dict[str, Any], middle: int) -> dict[str, Any]:
    """The namespace policies with one more bundle boundary (a split at ``middle``)."""
    boundaries = list(policies.get("bundles") or equal_boundaries(DEFAULT_BUNDLE_COUNT))
    if middle not in boundaries:
        boundaries.append(middle)
        boundaries.sort()
    return {**policies, "bundles": boundaries}
