"""The audit log (issue 11 item 7): one structured line per admin mutation.

Logger ``strata.audit``, level INFO, with the fields ``role`` (the caller's authenticated
role, ``anonymous`` without authentication), ``operation`` (the RPC), ``target`` (the
resource the request names) and ``outcome`` (``OK`` or the status code it was refused
with). With ``--log-format json`` each is a JSON field a collector indexes. Reads are not
audited (stats, lists, lookups); every method of the admin service whose name starts with a
mutating verb is (``audit_mutations``), so a new mutation is audited by its name.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from broker.errors import to_status
from strata.auth.principal import current_role
from strata.logging_setup import CONTEXT_FIELDS

log = logging.getLogger("strata.audit")

MUTATING_PREFIXES = (
    "Create",
    "Delete",
    "Set",
    "Update",
    "Unload",
    "Split",
    "Offload",
    "Decommission",
    "Reset",
    "Skip",
    "Expire",
    "Grant",
    "Revoke",
)
# Create requests name the new resource by parent and id (AIP): field → collection.
CREATED_IDS = (("tenant_id", "tenants"), ("namespace_id", "namespaces"), ("topic_id", "topics"))

assert {"role", "operation", "target", "outcome"} <= set(CONTEXT_FIELDS)

R = TypeVar("R")
Method = Callable[[Any, Any, Any], Awaitable[R]]


def is_mutation(name: str) -> bool:
    return name.startswith(MUTATING_PREFIXES)


def target_of(request: Any) -> str:
    """The resource a request names, AIP-style where it creates one under a parent."""
    descriptor = getattr(request, "DESCRIPTOR", None)
    names = {f.name for f in descriptor.fields} if descriptor is not None else set()
    target = ""
    for field in ("name", "topic", "bookie_id"):
        if field in names and getattr(request, field):
            target = str(getattr(request, field))
            break
    else:
        parent = str(request.parent) if "parent" in names else ""
        for field, collection in CREATED_IDS:
            if field in names and getattr(request, field):
                prefix = f"{parent}/" if parent else ""
                target = f"{prefix}{collection}/{getattr(request, field)}"
                break
        else:
            target = parent
    if "subscription" in names and request.subscription:
        target += f" subscription {request.subscription}"
    return target[:300]


def audited(name: str, method: Method[R]) -> Method[R]:
    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: Any) -> R:
        outcome = "OK"
        try:
            return await method(self, request, context)
        except grpc.aio.AbortError:
            code = context.code() if callable(getattr(context, "code", None)) else None
            outcome = getattr(code, "name", "ABORTED") if code is not None else "ABORTED"
            raise
        except Exception as exc:
            status = to_status(exc)
            outcome = status[0].name if status is not None else "INTERNAL"
            raise
        finally:
            role = current_role() or "anonymous"
            target = target_of(request)
            log.info(
                "%s %s on %s: %s",
                role,
                name,
                target,
                outcome,
                extra={"role": role, "operation": name, "target": target, "outcome": outcome},
            )

    return wrapper


def audit_mutations(servicer: type) -> type:
    """Wrap every mutating method of a servicer class (see the module docstring)."""
    for name in dir(servicer):
        if is_mutation(name) and callable(getattr(servicer, name)):
            setattr(servicer, name, audited(name, getattr(servicer, name)))
    return servicer
