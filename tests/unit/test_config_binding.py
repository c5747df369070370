"""The config binder: every field of every role's config is an option, with a variable and help.

``test_every_field_of_every_role_is_bound`` walks each role's dataclass itself (not the
binder's own list) and fails when a field has no help text, no flag in the role's parser, or
a variable that is not read; a role may leave out only the top-level fields it declares.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from bookie import __main__ as bookie_main
from bookie.config import BookieConfig
from broker import __main__ as broker_main
from broker import standalone
from broker.config import BrokerConfig
from strata.config_binding import (
    HELP,
    MASK,
    NAME,
    PREFIX,
    ConfigBinding,
    config_to_dict,
    setting,
)
from strata.options import FromEnvironment

RoleParser = Callable[
    [Mapping[str, str] | None], tuple[argparse.ArgumentParser, ConfigBinding[Any]]
]
ROLES: dict[str, RoleParser] = {
    "standalone": standalone.build_parser,
    "broker": broker_main.build_parser,
    "bookie": bookie_main.build_parser,
}
REQUIRED = {"bookie": ["--metadata-url", "etcd://127.0.0.1:1", "--data-dir", "/tmp/x"]}


def leaf_fields(cls: type, path: tuple[str, ...] = (), prefix: str = "") -> Iterator[Any]:
    """(path, flag, field) of every leaf field, sections walked with their prefixes."""
    hints = typing.get_type_hints(cls)
    for item in dataclasses.fields(cls):
        kind = hints[item.name]
        if dataclasses.is_dataclass(kind):
            assert item.metadata.get(HELP), f"section {cls.__name__}.{item.name} has no help"
            inner = prefix + item.metadata.get(PREFIX, item.name + "_")
            yield from leaf_fields(kind, (*path, item.name), inner)  # type: ignore[arg-type]
        else:
            name = prefix + item.metadata.get(NAME, item.name)
            yield (*path, item.name), "--" + name.replace("_", "-"), item


def text_of(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def actions_by_flag(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {flag: action for action in parser._actions for flag in action.option_strings}


@pytest.mark.parametrize("role", sorted(ROLES))
def test_every_field_of_every_role_is_bound(role: str) -> None:
    parser, binding = ROLES[role]({})
    actions = actions_by_flag(parser)
    bound: dict[tuple[str, ...], str] = {}
    for path, flag, item in leaf_fields(binding.cls):
        assert item.metadata.get(HELP), f"{role}: field {'.'.join(path)} has no help text"
        if len(path) == 1 and path[0] in binding.skip:
            continue  # a field this role sets itself (declared in the role's module)
        assert flag in actions, f"{role}: field {'.'.join(path)} has no flag {flag}"
        variable = "STRATA_" + flag[2:].replace("-", "_").upper()
        help_text = actions[flag].help or ""
        assert item.metadata[HELP] in help_text.replace("%%", "%"), f"{role}: {flag} help"
        assert help_text.endswith(f"[env {variable}]"), f"{role}: {flag} names no variable"
        bound[path] = variable
    # Every variable is read: set each to its field's default and the config comes out the same.
    defaults = {
        variable: text_of(item.default)
        for path, flag, item in leaf_fields(binding.cls)
        if path in bound and item.default is not dataclasses.MISSING
        for variable in [bound[path]]
    }
    with_env, _ = ROLES[role](defaults)
    for variable in defaults:
        action = actions_by_flag(with_env)["--" + variable[7:].lower().replace("_", "-")]
        assert isinstance(action.default, FromEnvironment), variable
        assert action.default.variable == variable
    argv = REQUIRED.get(role, [])
    assert binding.build(parser, parser.parse_args(argv)) == binding.build(
        with_env, with_env.parse_args(argv)
    )


@pytest.mark.parametrize("text", ["flase", "", "on", "off", "2", "tru", "nope"])
def test_booleans_are_strict_from_the_flag(text: str, capsys: pytest.CaptureFixture[str]) -> None:
    parser, _ = standalone.build_parser({})
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["--journal-fsync", text])
    assert info.value.code == 2
    assert f"argument --journal-fsync: invalid boolean value {text!r}" in capsys.readouterr().err


@pytest.mark.parametrize("text", ["flase", "", "off"])
def test_booleans_are_strict_from_the_environment(
    text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    parser, _ = standalone.build_parser({"STRATA_JOURNAL_FSYNC": text})
    with pytest.raises(SystemExit) as info:
        parser.parse_args([])
    assert info.value.code == 2
    assert "--journal-fsync" in (err := capsys.readouterr().err)
    assert "STRATA_JOURNAL_FSYNC" in err


@pytest.mark.parametrize(
    ("text", "value"), [("true", True), ("Yes", True), ("1", True), ("FALSE", False), ("no", False)]
)
def test_boolean_words(text: str, value: bool) -> None:
    parser, binding = standalone.build_parser({})
    config = binding.build(parser, parser.parse_args(["--journal-fsync", text]))
    assert config.journal_fsync is value


def test_the_flag_wins_over_the_variable() -> None:
    environ = {"STRATA_JOURNAL_FSYNC": "false", "STRATA_LEDGER_CLIENT_READ_TIMEOUT_MS": "700"}
    parser, binding = standalone.build_parser(environ)
    from_env = binding.build(parser, parser.parse_args([]))
    assert from_env.journal_fsync is False
    assert from_env.ledger_client.read_timeout_ms == 700
    flagged = binding.build(
        parser,
        parser.parse_args(["--journal-fsync", "true", "--ledger-client-read-timeout-ms", "9"]),
    )
    assert flagged.journal_fsync is True
    assert flagged.ledger_client.read_timeout_ms == 9
    # A bad variable does not matter once the flag is given.
    parser, binding = standalone.build_parser({"STRATA_PORT": "many"})
    assert binding.build(parser, parser.parse_args(["--port", "1"])).port == 1


def test_a_bad_int_names_the_option(capsys: pytest.CaptureFixture[str]) -> None:
    parser, _ = broker_main.build_parser({})
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["--managed-ledger-max-entries-per-ledger", "lots"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --managed-ledger-max-entries-per-ledger: invalid int value 'lots'" in err
    parser, _ = broker_main.build_parser({"STRATA_PORT": "x1"})
    with pytest.raises(SystemExit):
        parser.parse_args([])
    assert "argument --port: invalid int value 'x1' in STRATA_PORT" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (
            ["--managed-ledger-max-entries-per-ledger", "0"],
            "--managed-ledger-max-entries-per-ledger",
        ),
        (["--ledger-client-read-timeout-ms", "0"], "--ledger-client-read-timeout-ms"),
        (["--managed-ledger-default-ack-quorum", "3"], "--managed-ledger-default-ack-quorum"),
        (["--offload-driver", "tape"], "--offload-driver"),
        (["--web-port", "70000"], "--web-port"),
        (["--web-admin-actions", "true"], "--web-admin-actions"),
        (["--web-enabled", "true", "--metrics-port", "-1"], "--web-enabled"),
        (["--web-enabled", "yes please"], "--web-enabled"),
    ],
)
def test_a_refused_config_is_a_usage_error_naming_the_option(
    argv: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    parser, binding = broker_main.build_parser({})
    with pytest.raises(SystemExit) as info:
        binding.build(parser, parser.parse_args(argv))
    assert info.value.code == 2
    assert named in capsys.readouterr().err


def test_options_cannot_be_abbreviated(capsys: pytest.CaptureFixture[str]) -> None:
    parser, _ = standalone.build_parser({})
    with pytest.raises(SystemExit):
        parser.parse_args(["--journal-fs", "false"])
    assert "unrecognized arguments" in capsys.readouterr().err


def test_secrets_are_never_shown(capsys: pytest.CaptureFixture[str]) -> None:
    environ = {"STRATA_OFFLOAD_SECRET_ACCESS_KEY": "hush-hush"}
    parser, binding = standalone.build_parser(environ)
    assert "hush-hush" not in parser.format_help()
    config = binding.build(parser, parser.parse_args([]))
    assert config.offload_secret_access_key == "hush-hush"
    assert "hush-hush" not in repr(config)
    shown = config_to_dict(config)
    assert shown["offload_secret_access_key"] == MASK
    assert shown["offload_access_key_id"] == ""  # none set: nothing to hide
    assert "hush-hush" not in json.dumps(shown)


def test_config_to_dict_nests_sections() -> None:
    shown = config_to_dict(BrokerConfig(data_dir=Path("/d")))
    assert shown["data_dir"] == "/d"
    assert shown["journal_fsync"] is True
    assert shown["ledger_client"]["add_entry_timeout_ms"] == 3_000
    json.dumps(shown)  # JSON-ready


def test_the_bookie_binds_its_storage_recovery_and_ledger_client() -> None:
    parser, binding = bookie_main.build_parser({"STRATA_JOURNAL_FSYNC": "no"})
    argv = [
        *REQUIRED["bookie"],
        "--gc-interval-ms",
        "1234",
        "--autorecovery-lost-bookie-grace-ms",
        "600",
        "--ledger-client-add-entry-timeout-ms",
        "900",
        "--autorecovery",
        "false",
    ]
    config: BookieConfig = binding.build(parser, parser.parse_args(argv))
    assert config.storage.data_dir == Path("/tmp/x")
    assert config.storage.fsync is False
    assert config.storage.gc_interval_ms == 1234
    assert config.recovery.lost_bookie_grace_ms == 600
    assert config.ledger_client.add_entry_timeout_ms == 900
    assert config.autorecovery is False


def test_the_bookie_requires_its_metadata_store_and_data_dir(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parser, _ = bookie_main.build_parser({})
    with pytest.raises(SystemExit) as info:
        parser.parse_args([])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--metadata-url" in err and "--data-dir" in err
    # ... which its variables may give.
    parser, binding = bookie_main.build_parser(
        {"STRATA_METADATA_URL": "etcd://h:1", "STRATA_DATA_DIR": "/tmp/b"}
    )
    config = binding.build(parser, parser.parse_args([]))
    assert (config.metadata_url, config.storage.data_dir) == ("etcd://h:1", Path("/tmp/b"))


def test_the_standalone_fixes_its_quorums() -> None:
    parser, binding = standalone.build_parser({})
    assert "--managed-ledger-default-ensemble-size" not in actions_by_flag(parser)
    config = binding.build(parser, parser.parse_args([]))
    assert (
        config.managed_ledger_default_ensemble_size,
        config.managed_ledger_default_write_quorum,
        config.managed_ledger_default_ack_quorum,
    ) == (1, 1, 1)


@dataclasses.dataclass(frozen=True, slots=True)
class _Unhelpful:
    documented: int = setting(1, "has help")
    undocumented: int = 2


def test_the_walk_catches_a_field_without_help() -> None:
    fields = {path: item for path, _flag, item in leaf_fields(_Unhelpful)}
    assert fields[("documented",)].metadata[HELP] == "has help"
    assert not fields[("undocumented",)].metadata.get(HELP)
