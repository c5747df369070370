"""Command-line options that also read ``STRATA_<OPTION_NAME>`` environment variables.

Every option of every ``strata`` command can be set either way; the flag wins. For
``--service-url`` the variable is ``STRATA_SERVICE_URL``; for ``-n/--count`` it is
``STRATA_COUNT``. The server roles bind their whole config dataclass the same way (see
``strata.config_binding``).

A value read from a variable is converted only when the flag is absent, by the option's own
type, so a bad one is a usage error (exit status 2) that names both the option and the
variable. Booleans are strict: true/false/1/0/yes/no, any case; anything else is an error.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any, TypedDict, TypeVar

ENV_PREFIX = "STRATA_"
TRUE_WORDS = ("true", "1", "yes")
FALSE_WORDS = ("false", "0", "no")

_T = TypeVar("_T")


def env_name(flag: str) -> str:
    """``--service-url`` → ``STRATA_SERVICE_URL``."""
    return ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()


def parse_bool(text: str) -> bool:
    """``true/1/yes`` → True, ``false/0/no`` → False (any case); ValueError otherwise.

    Nothing else is accepted, not even the empty string: a typo such as ``flase`` must not
    turn a safety switch (``--journal-fsync``) off.
    """
    lowered = text.strip().lower()
    if lowered in TRUE_WORDS:
        return True
    if lowered in FALSE_WORDS:
        return False
    raise ValueError(f"not a boolean: {text!r} (expected true, false, 1, 0, yes or no)")


class FromEnvironment(str):
    """A default taken from an environment variable, still as text.

    argparse converts a string default with the option's ``type`` only when the flag was not
    given, and reports a failure as a usage error; the marker lets the converter name the
    variable in that error.
    """

    __slots__ = ("variable",)

    def __new__(cls, text: str, variable: str) -> FromEnvironment:
        instance = super().__new__(cls, text)
        instance.variable = variable
        return instance

    variable: str


def converter(kind: Callable[[str], _T], kind_name: str = "") -> Callable[[str], _T]:
    """Wrap ``kind`` (int, float, Path, ``parse_bool`` ...) so that a bad value is reported as
    ``invalid <kind> value 'x'`` plus, for a value from the environment, the variable."""
    name = kind_name or ("boolean" if kind is parse_bool else getattr(kind, "__name__", "value"))

    def convert(text: str) -> _T:
        try:
            return kind(str(text))
        except (ValueError, TypeError) as exc:
            source = f" in {text.variable}" if isinstance(text, FromEnvironment) else ""
            hint = " (expected true, false, 1, 0, yes or no)" if kind is parse_bool else ""
            raise argparse.ArgumentTypeError(
                f"invalid {name} value {str(text)!r}{source}{hint}"
            ) from exc

    convert.__name__ = name
    return convert


def environment_bool(raw: str, variable: str) -> bool:
    """A store_true flag's variable, read at once (argparse does not convert its default)."""
    try:
        return parse_bool(raw)
    except ValueError as exc:
        print(f"error: invalid value in {variable}: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc


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

    Flags with ``action="store_true"`` read the variable as a (strict) boolean.
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
            default = environment_bool(raw, variable)
        parser.add_argument(
            *flags, default=default, help=f"{help} [env {variable}]".strip(), **kwargs
        )
        return
    shown = "" if default is None else f" (default {default})"
    if raw is not None:
        default = FromEnvironment(raw, variable)
        kwargs["required"] = False
    parser.add_argument(
        *flags,
        default=default,
        type=converter(type),
        help=f"{help}{shown} [env {variable}]".strip().replace("%", "%%"),
        **kwargs,
    )


def add_tls_options(parser: argparse.ArgumentParser, environ: Mapping[str, str] | None) -> None:
    """A client command's TLS options (for a ``grpcs://`` or ``pulsar+ssl://`` service URL)."""
    add_option(
        parser,
        "--tls-trust-certs-file",
        help="CA certificates (PEM) to trust (default: the system's)",
        environ=environ,
    )
    add_option(
        parser,
        "--tls-cert-file",
        help="client certificate (PEM) for a mutual-TLS broker",
        environ=environ,
    )
    add_option(parser, "--tls-key-file", help="the key (PEM) of --tls-cert-file", environ=environ)


class ClientTls(TypedDict):
    tls_trust_certs_file_path: str | None
    tls_certificate_file_path: str | None
    tls_private_key_file_path: str | None


def client_tls(args: argparse.Namespace) -> ClientTls:
    """The SDK client's TLS keyword arguments from a client command's options."""
    return {
        "tls_trust_certs_file_path": getattr(args, "tls_trust_certs_file", None) or None,
        "tls_certificate_file_path": getattr(args, "tls_cert_file", None) or None,
        "tls_private_key_file_path": getattr(args, "tls_key_file", None) or None,
    }
