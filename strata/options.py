"""Command-line options that also read ``STRATA_<OPTION_NAME>`` environment variables.

Every option of every ``strata`` command can be set either way; the flag wins. For
``--service-url`` the variable is ``STRATA_SERVICE_URL``; for ``-n/--count`` it is
``STRATA_COUNT``.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping
from typing import Any

ENV_PREFIX = "STRATA_"


def env_name(flag: str) -> str:
    """``--service-url`` → ``STRATA_SERVICE_URL``."""
    return ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()


def parse_bool(text: str) -> bool:
    """``1/true/yes/on`` → True, ``0/false/no/off`` or empty → False; ValueError otherwise."""
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def add_option(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    *flags: str,
    default: Any = None,
    type: Callable[[str], Any] = str,
    help: str = "",
    environ: Mapping[str, str] | None = None,
    **kwargs: Any,
) -> None:
    """Add an option whose default comes from its environment variable when that is set.

    Flags with ``action="store_true"`` read the variable as a boolean.
    """
    environ = os.environ if environ is None else environ
    long_flags = [f for f in flags if f.startswith("--")]
    if not long_flags:
        raise ValueError(f"option {flags} needs a long --name for its environment variable")
    variable = env_name(long_flags[0])
    action = kwargs.get("action")
    raw = environ.get(variable)
    if action in ("store_true", "store_false"):
        if raw is not None:
            default = parse_bool(raw)
        parser.add_argument(
            *flags, default=default, help=f"{help} [env {variable}]".strip(), **kwargs
        )
        return
    if raw is not None:
        try:
            default = type(raw)
        except ValueError as exc:
            raise SystemExit(f"invalid value in {variable}: {raw!r} ({exc})") from exc
    shown = "" if default is None else f" (default {default})"
    parser.add_argument(
        *flags,
        default=default,
        type=type,
        help=f"{help}{shown} [env {variable}]".strip(),
        **kwargs,
    )
