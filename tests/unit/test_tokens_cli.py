"""``strata tokens`` verbs in process, and which token a client command presents."""

from __future__ import annotations

import time
from pathlib import Path

import jwt
import pytest

from strata import cli
from strata.auth.tokens import create_token
from strata.tokens_cli import TokensCommandError, client_authentication


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_secret_key_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "secret.key"
    assert run(capsys, "tokens", "create-secret-key", "--output", str(key))[0] == 0
    assert len(key.read_bytes()) == 32 and key.stat().st_mode & 0o077 == 0
    code, out, _ = run(
        capsys, "tokens", "create", "--secret-key", f"file:{key}", "-s", "alice", "-e", "10m"
    )
    token = out.strip()
    assert code == 0 and jwt.get_unverified_header(token)["alg"] == "HS256"
    code, out, _ = run(capsys, "tokens", "validate", token, "--secret-key", f"file:{key}")
    assert code == 0 and "subject alice" in out
    code, out, _ = run(capsys, "tokens", "show", token)
    assert code == 0 and '"sub": "alice"' in out


def test_validate_names_the_reason_and_not_the_token(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "secret.key"
    key.write_bytes(b"k" * 32)
    expired = jwt.encode({"sub": "a", "exp": int(time.time()) - 1}, b"k" * 32, algorithm="HS256")
    code, _, err = run(capsys, "tokens", "validate", expired, "--secret-key", f"file:{key}")
    assert code == 1 and err == "error: authentication token expired\n"
    other = jwt.encode({"sub": "a"}, b"o" * 32, algorithm="HS256")
    code, _, err = run(capsys, "tokens", "validate", other, "--secret-key", f"file:{key}")
    assert code == 1 and "wrong signature" in err and other not in err


def test_usage_errors_of_the_verbs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "tokens", "create", "-s", "a")
    assert code == 1 and "--secret-key or --private-key" in err
    code, _, err = run(capsys, "tokens", "create", "--secret-key", f"file:{tmp_path}/no", "-s", "a")
    assert code == 1 and "--secret-key" in err
    (tmp_path / "short").write_bytes(b"short")
    code, _, err = run(
        capsys, "tokens", "create", "--secret-key", f"file:{tmp_path}/short", "-s", "a"
    )
    assert code == 1 and "shorter than 32 bytes" in err
    (tmp_path / "k").write_bytes(b"k" * 32)
    code, _, err = run(
        capsys, "tokens", "create", "--secret-key", f"file:{tmp_path}/k", "-s", "a", "-e", "1x"
    )
    assert code == 1 and "--expiry-time" in err
    code, _, err = run(capsys, "tokens", "show", "not-a-token")
    assert code == 1 and "malformed" in err


def test_a_flag_wins_over_the_environment(tmp_path: Path) -> None:
    token = create_token(b"k" * 32, "HS256", "from-file")
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    environ = {"STRATA_AUTH_TOKEN": "from-environment"}
    parser = cli.build_parser(environ)
    args = parser.parse_args(["produce", "t", "--auth-token-file", str(token_file)])
    authentication = client_authentication(args)
    assert authentication is not None and authentication.token() == token
    args = parser.parse_args(["produce", "t"])
    authentication = client_authentication(args)
    assert authentication is not None and authentication.token() == "from-environment"
    args = cli.build_parser({}).parse_args(["produce", "t"])
    assert client_authentication(args) is None
    both = cli.build_parser({}).parse_args(
        ["produce", "t", "--auth-token", "x", "--auth-token-file", str(token_file)]
    )
    with pytest.raises(TokensCommandError, match="not both"):
        client_authentication(both)
    missing = cli.build_parser({}).parse_args(
        ["produce", "t", "--auth-token-file", str(tmp_path / "absent")]
    )
    with pytest.raises(TokensCommandError, match="cannot read the token file"):
        client_authentication(missing)
