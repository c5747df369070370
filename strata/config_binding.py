"""One binder from a process role's frozen config dataclass to its command line.

Every field of the dataclass is one option, made here and nowhere else:

* the flag ``--kebab-name``; the fields of a nested config dataclass (a *section*, such as
  the broker's ``ledger_client``) get the section's prefix: ``--ledger-client-read-timeout-ms``;
* the variable ``STRATA_UPPER_SNAKE`` of the flag (``STRATA_LEDGER_CLIENT_READ_TIMEOUT_MS``);
  the flag wins over it;
* the help text, written once in the field's metadata (``setting(default, "help")``);
* the type of the annotation: ``int``, ``float``, ``str``, ``Path``, ``bool`` (strictly
  true/false/1/0/yes/no), or a section. A field without a default is a required option
  (unless its variable is set).

A field declared ``repr=False`` (``secret=True``) is a secret: neither its default nor its
value appears in ``--help`` or in :func:`config_to_dict`.

:meth:`ConfigBinding.build` makes the dataclass from the parsed arguments. A bad value, from
a flag or a variable, and a ``__post_init__`` refusal are usage errors (exit status 2) that
name the option: the field names in a refusal's message are replaced by their flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import typing
from collections.abc import Callable, Collection, Iterator, Mapping
from pathlib import Path
from typing import Any, Generic, TypeVar

from strata.options import FromEnvironment, converter, env_name, parse_bool

HELP = "help"
PREFIX = "prefix"
NAME = "name"
MASK = "********"

_T = TypeVar("_T")
_SCALARS: dict[Any, Callable[[str], Any]] = {
    int: int,
    float: float,
    str: str,
    Path: Path,
    bool: parse_bool,
}
_METAVARS = {int: "N", float: "NUMBER", str: "TEXT", Path: "PATH", bool: "{true,false}"}


def setting(default: _T, help: str, *, secret: bool = False, name: str = "") -> _T:
    """A config field with its default and its help text (and, rarely, an option name other
    than the field's own, e.g. the storage's ``fsync`` is ``--journal-fsync`` on a bookie)."""
    metadata = {HELP: help, NAME: name} if name else {HELP: help}
    return dataclasses.field(default=default, repr=not secret, metadata=metadata)


def section(factory: Callable[[], _T], help: str, *, prefix: str | None = None) -> _T:
    """A nested config dataclass; its options get ``prefix`` (default: the field's name)."""
    metadata: dict[str, Any] = {HELP: help}
    if prefix is not None:
        metadata[PREFIX] = prefix
    return dataclasses.field(default_factory=factory, metadata=metadata)


class ConfigError(ValueError):
    """A config refused by its dataclass, the message already naming the option."""


@dataclasses.dataclass(frozen=True, slots=True)
class _Field:
    field: dataclasses.Field[Any]
    kind: Any  # the resolved annotation
    section: type | None  # the nested dataclass, for a section
    option_name: str  # with the section's prefix, snake_case


def _fields(cls: type, prefix: str) -> Iterator[_Field]:
    hints = typing.get_type_hints(cls)
    for item in dataclasses.fields(cls):
        kind = hints[item.name]
        if dataclasses.is_dataclass(kind) and isinstance(kind, type):
            section_prefix = item.metadata.get(PREFIX, item.name + "_")
            yield _Field(item, kind, kind, prefix + section_prefix)
        else:
            yield _Field(item, kind, None, prefix + item.metadata.get(NAME, item.name))


def _shown(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class ConfigBinding(Generic[_T]):
    """The options of one config dataclass in one parser, and the way back to the dataclass.

    ``skip`` names top-level fields the role does not offer (they keep their defaults);
    ``fixed`` gives others a value of the role's own, likewise without an option.
    """

    def __init__(
        self,
        cls: type[_T],
        *,
        skip: Collection[str] = (),
        fixed: Mapping[str, object] | None = None,
    ) -> None:
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = (set(skip) | set(fixed or {})) - names
        if unknown:
            raise ValueError(f"{cls.__name__} has no fields {sorted(unknown)}")
        self.cls = cls
        self.skip = frozenset(skip) | frozenset(fixed or {})
        self.fixed = dict(fixed or {})

    def role_parser(
        self, prog: str, description: str, environ: Mapping[str, str] | None = None
    ) -> argparse.ArgumentParser:
        """A process role's whole parser: this config's options and nothing else. Options
        cannot be abbreviated (a typo is an error, not another option)."""
        parser = argparse.ArgumentParser(
            prog=prog, description=description, usage="%(prog)s [options]", allow_abbrev=False
        )
        self.add_to(parser, environ)
        return parser

    def add_to(
        self,
        parser: argparse.ArgumentParser | argparse._ArgumentGroup,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        """Add one option per leaf field (sections recursively) to ``parser``."""
        environ = os.environ if environ is None else environ
        self._add(parser, self.cls, (), "", environ)

    def _add(
        self,
        parser: argparse.ArgumentParser | argparse._ArgumentGroup,
        cls: type,
        path: tuple[str, ...],
        prefix: str,
        environ: Mapping[str, str],
    ) -> None:
        for spec in _fields(cls, prefix):
            item = spec.field
            if not path and item.name in self.skip:
                continue
            if spec.section is not None:
                self._add(parser, spec.section, (*path, item.name), spec.option_name, environ)
                continue
            kind = _SCALARS.get(spec.kind)
            if kind is None:
                raise TypeError(f"{cls.__name__}.{item.name}: no option type for {spec.kind!r}")
            flag = "--" + spec.option_name.replace("_", "-")
            variable = env_name(flag)
            raw = environ.get(variable)
            default = None if item.default is dataclasses.MISSING else item.default
            shown = ""
            if default is not None and item.repr:  # a secret's default is not shown either
                shown = f" (default {_shown(default)})"
            help_text = f"{item.metadata.get(HELP, '')}{shown} [env {variable}]"
            parser.add_argument(
                flag,
                dest=spec.option_name,
                type=converter(kind),
                default=default if raw is None else FromEnvironment(raw, variable),
                required=raw is None and item.default is dataclasses.MISSING,
                metavar=_METAVARS[spec.kind],
                help=help_text.replace("%", "%%"),
            )

    def build(self, parser: argparse.ArgumentParser, args: argparse.Namespace) -> _T:
        """The dataclass from ``args``; a refusal is a usage error naming the option."""
        try:
            return self.build_or_raise(args)
        except ConfigError as exc:
            parser.error(str(exc))

    def build_or_raise(self, args: argparse.Namespace) -> _T:
        """The dataclass from ``args``; raises ConfigError naming the option."""
        value: _T = self._build(self.cls, (), "", args)
        return value

    def _build(
        self, cls: type, path: tuple[str, ...], prefix: str, args: argparse.Namespace
    ) -> Any:
        values: dict[str, Any] = {}
        flags: dict[str, str] = {}
        for spec in _fields(cls, prefix):
            name = spec.field.name
            if not path and name in self.skip:
                if name in self.fixed:
                    values[name] = self.fixed[name]
                continue
            if spec.section is not None:
                values[name] = self._build(spec.section, (*path, name), spec.option_name, args)
                continue
            flags[name] = "--" + spec.option_name.replace("_", "-")
            values[name] = getattr(args, spec.option_name)
        try:
            return cls(**values)
        except (ValueError, TypeError) as exc:
            raise ConfigError(_name_options(str(exc), flags)) from exc


def _name_options(message: str, flags: Mapping[str, str]) -> str:
    """Replace field names (snake or kebab case) in ``message`` by their flags."""
    for name in sorted(flags, key=len, reverse=True):
        kebab = name.replace("_", "-")
        pattern = rf"(?<![\w-])(?:--)?(?:{re.escape(name)}|{re.escape(kebab)})(?![\w-])"
        message = re.sub(pattern, flags[name], message)
    return message


def config_to_dict(config: object) -> dict[str, Any]:
    """A config dataclass as JSON-ready values: sections nested, paths as text, secrets
    masked (an empty secret stays empty: it shows that none is set)."""
    result: dict[str, Any] = {}
    for item in dataclasses.fields(config):  # type: ignore[arg-type]
        value = getattr(config, item.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            result[item.name] = config_to_dict(value)
        elif not item.repr:
            result[item.name] = MASK if value else ""
        elif isinstance(value, Path):
            result[item.name] = str(value)
        else:
            result[item.name] = value
    return result
