"""Names of tenants, namespaces and topics: parsing and validation, with no I/O.

A topic is written ``persistent://tenant/namespace/topic``; ``tenant/namespace/topic`` and a
bare ``topic`` (meaning ``persistent://public/default/topic``) are accepted too. Admin resource
names follow AIP-122: ``tenants/{tenant}`` and ``tenants/{tenant}/namespaces/{namespace}``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_TENANT = "public"
DEFAULT_NAMESPACE = "default"
PERSISTENT_SCHEME = "persistent://"
MAX_NAME_LENGTH = 255

# Pulsar allows letters, digits and - _ = : . in tenant and namespace names; topics may also
# hold these characters. Slashes, spaces and control characters are never allowed.
_NAME_RE = re.compile(r"^[A-Za-z0-9_=:.\-]+$")


class InvalidNameError(ValueError):
    """A tenant, namespace or topic name is malformed."""


# Refusals quote at most this much of what was given, so that a huge bad name cannot make
# the refusal itself too big to send.
MAX_QUOTED_CHARACTERS = 100


def quoted(text: str) -> str:
    """``text`` as a refusal quotes it: repr'd, cut to ``MAX_QUOTED_CHARACTERS``."""
    if len(text) <= MAX_QUOTED_CHARACTERS:
        return repr(text)
    return repr(text[:MAX_QUOTED_CHARACTERS]) + f"... ({len(text)} characters)"


_PARTITION_SUFFIX = "-partition-"


def check_name_part(kind: str, part: str) -> str:
    """Return ``part`` if it is a valid tenant, namespace or topic local name; else raise."""
    if not part:
        raise InvalidNameError(f"{kind} name is empty")
    if len(part) > MAX_NAME_LENGTH:
        raise InvalidNameError(f"{kind} name is longer than {MAX_NAME_LENGTH} characters")
    if not _NAME_RE.fullmatch(part) or part in (".", ".."):
        raise InvalidNameError(
            f"{kind} name {quoted(part)} may hold only letters, digits and - _ = : ."
        )
    if kind == "topic":
        _check_partition_suffix(part)
    return part


def _check_partition_suffix(local: str) -> None:
    """``t-partition-N`` names partition N of ``t``: N is a plain non-negative number."""
    head, sep, tail = local.rpartition(_PARTITION_SUFFIX)
    if not sep or not head:
        return
    if not tail.isdigit() or (len(tail) > 1 and tail[0] == "0") or len(tail) > 6:
        raise InvalidNameError(
            f"topic name {quoted(local)}: a partition is named {head}{_PARTITION_SUFFIX}N "
            "with N a number without leading zeros"
        )


@dataclass(frozen=True, slots=True)
class NamespaceName:
    tenant: str
    namespace: str

    @classmethod
    def parse(cls, text: str) -> NamespaceName:
        """Parse ``tenant/namespace`` or ``tenants/{tenant}/namespaces/{namespace}``."""
        parts = text.split("/")
        if len(parts) == 4 and parts[0] == "tenants" and parts[2] == "namespaces":
            tenant, namespace = parts[1], parts[3]
        elif len(parts) == 2:
            tenant, namespace = parts
        else:
            raise InvalidNameError(
                f"namespace {quoted(text)} must be 'tenant/namespace' or "
                "'tenants/{tenant}/namespaces/{namespace}'"
            )
        return cls(check_name_part("tenant", tenant), check_name_part("namespace", namespace))

    @property
    def resource_name(self) -> str:
        return f"tenants/{self.tenant}/namespaces/{self.namespace}"

    def __str__(self) -> str:
        return f"{self.tenant}/{self.namespace}"


def parse_tenant(text: str) -> str:
    """Parse ``tenant`` or ``tenants/{tenant}``."""
    if text.startswith("tenants/"):
        text = text[len("tenants/") :]
    return check_name_part("tenant", text)


@dataclass(frozen=True, slots=True)
class TopicName:
    tenant: str
    namespace: str
    local_name: str

    @classmethod
    def parse(cls, text: str) -> TopicName:
        """Parse any accepted spelling of a topic name; raise ``InvalidNameError`` if malformed."""
        if not text:
            raise InvalidNameError("topic name is empty")
        rest = text
        if "://" in rest:
            if not rest.startswith(PERSISTENT_SCHEME):
                raise InvalidNameError(
                    f"topic {quoted(text)}: only the persistent:// domain is supported"
                )
            rest = rest[len(PERSISTENT_SCHEME) :]
            parts = rest.split("/")
            if len(parts) != 3:
                raise InvalidNameError(
                    f"topic {quoted(text)} must be 'persistent://tenant/namespace/topic'"
                )
        else:
            parts = rest.split("/")
            if len(parts) == 1:
                parts = [DEFAULT_TENANT, DEFAULT_NAMESPACE, parts[0]]
            elif len(parts) != 3:
                raise InvalidNameError(
                    f"topic {quoted(text)} must be 'topic', 'tenant/namespace/topic' or "
                    "'persistent://tenant/namespace/topic'"
                )
        tenant, namespace, local = parts
        return cls(
            check_name_part("tenant", tenant),
            check_name_part("namespace", namespace),
            check_name_part("topic", local),
        )

    @property
    def namespace_name(self) -> NamespaceName:
        return NamespaceName(self.tenant, self.namespace)

    @property
    def partition_index(self) -> int:
        """The partition number for ``t-partition-N``, else -1."""
        head, sep, tail = self.local_name.rpartition("-partition-")
        if sep and head and tail.isdigit():
            return int(tail)
        return -1

    @property
    def partitioned_name(self) -> TopicName:
        """``t`` for ``t-partition-N``; the name itself otherwise."""
        if self.partition_index < 0:
            return self
        head = self.local_name.rpartition("-partition-")[0]
        return TopicName(self.tenant, self.namespace, head)

    def partition(self, index: int) -> TopicName:
        """The name of partition ``index`` of this partitioned topic: ``t-partition-<index>``."""
        if index < 0:
            raise InvalidNameError(f"partition index must not be negative, got {index}")
        return TopicName(self.tenant, self.namespace, f"{self.local_name}-partition-{index}")

    def __str__(self) -> str:
        return f"{PERSISTENT_SCHEME}{self.tenant}/{self.namespace}/{self.local_name}"
