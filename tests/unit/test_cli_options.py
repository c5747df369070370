"""The ``strata`` command line: options, their ``STRATA_*`` variables, errors, dispatch."""

from __future__ import annotations

import argparse
import socket

import pytest

from strata import cli


def parse(argv: list[str], environ: dict[str, str] | None = None) -> argparse.Namespace:
    return cli.build_parser(environ or {}).parse_args(argv)


def test_defaults() -> None:
    produce = parse(["produce", "t"])
    assert produce.service_url == "localhost:6650"
    assert (produce.count, produce.rate, produce.disable_batching) == (1, 0.0, False)
    assert produce.message is None and produce.key is None
    consume = parse(["consume", "t", "-s", "sub"])
    assert (consume.count, consume.type, consume.initial_position) == (1, "exclusive", "latest")
    assert consume.timeout_seconds == 0.0
    perf = parse(["perf", "produce", "t"])
    assert (perf.size, perf.messages, perf.rate, perf.producers) == (100, 100_000, 0.0, 1)
    # The SDK's defaults (pulsar-client's).
    assert (perf.batch_max_messages, perf.batch_delay_ms) == (1000, 10.0)
    perf_consume = parse(["perf", "consume", "t"])
    assert (perf_consume.subscription, perf_consume.messages) == ("sub", 0)


def test_environment_sets_defaults_and_flags_win() -> None:
    environ = {
        "STRATA_SERVICE_URL": "pulsar://broker:6650",
        "STRATA_COUNT": "7",
        "STRATA_RATE": "5000",
        "STRATA_DISABLE_BATCHING": "true",
        "STRATA_KEY": "k",
        "STRATA_OPERATION_TIMEOUT_SECONDS": "2.5",
    }
    produce = parse(["produce", "t"], environ)
    assert produce.service_url == "pulsar://broker:6650"
    assert (produce.count, produce.rate, produce.disable_batching, produce.key) == (
        7,
        5000.0,
        True,
        "k",
    )
    assert produce.operation_timeout_seconds == 2.5
    flagged = parse(["produce", "t", "-n", "3", "--service-url", "other:1"], environ)
    assert (flagged.count, flagged.service_url) == (3, "other:1")

    consume = parse(
        ["consume", "t"],
        {
            "STRATA_SUBSCRIPTION": "from-env",
            "STRATA_TYPE": "shared",
            "STRATA_INITIAL_POSITION": "earliest",
            "STRATA_TIMEOUT_SECONDS": "4",
        },
    )
    assert (consume.subscription, consume.type) == ("from-env", "shared")
    assert (consume.initial_position, consume.timeout_seconds) == ("earliest", 4.0)

    perf = parse(["perf", "produce", "t"], {"STRATA_SIZE": "1024", "STRATA_MESSAGES": "0"})
    assert (perf.size, perf.messages) == (1024, 0)
    delete = parse(["admin", "topics", "delete", "t"], {"STRATA_FORCE": "1"})
    assert delete.force is True


def test_bad_environment_value_is_a_usage_error_naming_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as info:
        parse(["produce", "t"], {"STRATA_COUNT": "many"})
    assert info.value.code == 2
    assert "--count: invalid int value 'many' in STRATA_COUNT" in capsys.readouterr().err
    # The flag wins: a bad variable does not matter when the flag is given.
    assert parse(["produce", "t", "-n", "2"], {"STRATA_COUNT": "many"}).count == 2


@pytest.mark.parametrize("text", ["flase", "", "on", "off", "2", "y"])
def test_boolean_variables_are_strict(text: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse(["admin", "topics", "delete", "t"], {"STRATA_FORCE": text})
    assert info.value.code == 2
    assert "STRATA_FORCE" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("true", True),
        ("TRUE", True),
        ("1", True),
        ("Yes", True),
        ("false", False),
        ("0", False),
        ("NO", False),
    ],
)
def test_boolean_words(text: str, value: bool) -> None:
    assert parse(["admin", "topics", "delete", "t"], {"STRATA_FORCE": text}).force is value


def _walk(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    actions: list[argparse.Action] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                actions += _walk(sub)
        else:
            actions.append(action)
    return actions


def test_every_option_names_its_environment_variable() -> None:
    for action in _walk(cli.build_parser({})):
        if not action.option_strings or isinstance(action, argparse._HelpAction):
            continue
        long_flag = next(f for f in action.option_strings if f.startswith("--"))
        variable = "STRATA_" + long_flag[2:].replace("-", "_").upper()
        assert f"[env {variable}]" in (action.help or ""), long_flag


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    with pytest.raises(SystemExit) as info:
        cli.main(["consume", "t"])  # no subscription
    assert info.value.code == 2
    assert "subscription" in capsys.readouterr().err


def test_bad_service_url_is_one_error_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["produce", "t", "-m", "x", "--service-url", "http://x:1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err


def test_unreachable_broker_fails_within_the_operation_timeout(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code = cli.main(
        [
            "produce",
            "t",
            "-m",
            "x",
            "--service-url",
            f"127.0.0.1:{port}",
            "--operation-timeout-seconds",
            "0.3",
        ]
    )
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")


def test_admin_bad_name_is_invalid_argument(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["admin", "namespaces", "create", "no-slash"]) == 1
    assert capsys.readouterr().err.startswith("error: INVALID_ARGUMENT: ")


def test_server_roles_are_dispatched_lazily(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(cli.SERVER_ROLES, "bookie", "strata_no_such_module.main")
    assert cli.main(["bookie", "--data-dir", "x"]) == 2
    assert "not available" in capsys.readouterr().err
    calls: list[list[str]] = []

    def fake_main(argv: list[str]) -> int:
        calls.append(argv)
        return 7

    monkeypatch.setitem(cli.SERVER_ROLES, "broker", "tests.unit.test_cli_options")
    monkeypatch.setattr("tests.unit.test_cli_options.main", fake_main, raising=False)
    assert cli.main(["broker", "--port", "1"]) == 7  # the role's own exit code
    assert calls == [["--port", "1"]]
