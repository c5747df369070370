"""``strata tokens``: Pulsar's token verbs, and the credential options of the client commands.

``create-secret-key``, ``create-key-pair``, ``create``, ``show`` and ``validate`` work as
``pulsar tokens`` does (``show`` prints the claims without verifying them). Key files are
written readable by their owner only. The client commands (produce, consume, admin, perf)
take ``--auth-token`` / ``--auth-token-file`` (or ``STRATA_AUTH_TOKEN`` /
``STRATA_AUTH_TOKEN_FILE``); a token is never printed, not even in an error.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from strata.auth.credentials import CredentialsError, token_source
from strata.auth.tokens import (
    SECRET_KEY_BYTES,
    KeyLoadError,
    TokenRefused,
    TokenVerifier,
    create_token,
    load_private_key,
    load_public_key,
    load_secret_key,
    parse_duration_s,
    read_key_source,
    unverified_claims,
)
from strata.client import AuthenticationToken
from strata.options import add_option, env_name

RSA_KEY_BITS = 2048
OWNER_ONLY_MODE = 0o600


class TokensCommandError(Exception):
    """A tokens verb that failed (exit status 1, one line on stderr)."""


# ------------------------------------------------------------ client credentials


def add_credential_options(
    parser: argparse.ArgumentParser, environ: Mapping[str, str] | None
) -> None:
    add_option(
        parser,
        "--auth-token",
        help="token (JWT) to present as 'authorization: Bearer'; prefer --auth-token-file",
        environ=environ,
    )
    add_option(
        parser,
        "--auth-token-file",
        help="file holding the token to present (read at each connection)",
        environ=environ,
    )
    # What the variables said, so that a flag can win over the other variable.
    environ = os.environ if environ is None else environ
    parser.set_defaults(
        auth_token_environment=environ.get(env_name("--auth-token")),
        auth_token_file_environment=environ.get(env_name("--auth-token-file")),
    )


def client_authentication(args: argparse.Namespace) -> AuthenticationToken | None:
    """The ``AuthenticationToken`` named by a client command's options (None: none)."""
    token = getattr(args, "auth_token", None) or ""
    token_file_path = getattr(args, "auth_token_file", None) or ""
    # A flag wins over a variable: --auth-token-file beats STRATA_AUTH_TOKEN and the reverse.
    if token and token_file_path:
        token_from_environment = token == getattr(args, "auth_token_environment", None)
        file_from_environment = token_file_path == getattr(
            args, "auth_token_file_environment", None
        )
        if token_from_environment and not file_from_environment:
            token = ""
        elif file_from_environment and not token_from_environment:
            token_file_path = ""
    try:
        source = token_source(token, token_file_path)
    except CredentialsError as exc:
        raise TokensCommandError(str(exc)) from None
    return None if source is None else AuthenticationToken(source)


# ------------------------------------------------------------------ the verbs


def _write_owner_only(path: str, data: bytes) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, OWNER_ONLY_MODE)
    with os.fdopen(descriptor, "wb") as file:
        file.write(data)


def _create_secret_key(args: argparse.Namespace) -> None:
    key = secrets.token_bytes(SECRET_KEY_BYTES)
    if args.output:
        _write_owner_only(args.output, key)
    else:
        print(base64.b64encode(key).decode())


def _create_key_pair(args: argparse.Namespace) -> None:
    private: Any
    if args.algorithm == "RS256":
        private = rsa.generate_private_key(public_exponent=65537, key_size=RSA_KEY_BITS)
    else:
        private = ec.generate_private_key(ec.SECP256R1())
    private_pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _write_owner_only(args.output_private_key, private_pem)
    Path(args.output_public_key).write_bytes(public_pem)


def _signing_key(args: argparse.Namespace) -> tuple[Any, str]:
    if bool(args.secret_key) == bool(args.private_key):
        raise TokensCommandError("give --secret-key or --private-key (one of them)")
    if args.secret_key:
        data = read_key_source(args.secret_key, "--secret-key")
        return load_secret_key(data, "--secret-key"), "HS256"
    return load_private_key(read_key_source(args.private_key, "--private-key"), "--private-key")


def _create(args: argparse.Namespace) -> None:
    key, algorithm = _signing_key(args)
    if not args.subject.strip():
        raise TokensCommandError("--subject must not be empty")
    try:
        expires_in_s = parse_duration_s(args.expiry_time) if args.expiry_time else None
    except ValueError as exc:
        raise TokensCommandError(f"--expiry-time: {exc}") from None
    print(
        create_token(
            key, algorithm, args.subject, expires_in_s=expires_in_s, audience=args.audience
        )
    )


def _read_token(args: argparse.Namespace) -> str:
    if args.token_file:
        source = token_source(token_file_path=args.token_file)
        assert source is not None
        return source()
    if args.token:
        return str(args.token).strip()
    if args.stdin:
        return sys.stdin.readline().strip()
    raise TokensCommandError("give the token: TOKEN, -f/--token-file FILE or -i/--stdin")


def _show(args: argparse.Namespace) -> None:
    print(json.dumps(unverified_claims(_read_token(args)), indent=2, sort_keys=True))


def _validate(args: argparse.Namespace) -> None:
    if bool(args.secret_key) == bool(args.public_key):
        raise TokensCommandError("give --secret-key or --public-key (one of them)")
    if args.secret_key:
        secret = read_key_source(args.secret_key, "--secret-key")
        verifier = TokenVerifier(load_secret_key(secret, "--secret-key"), "HS256", args.audience)
    else:
        key, algorithm = load_public_key(
            read_key_source(args.public_key, "--public-key"), "--public-key"
        )
        verifier = TokenVerifier(key, algorithm, args.audience)
    principal = verifier.verify(_read_token(args))
    expiry = "never" if principal.expires_at_s is None else f"at {principal.expires_at_s:.0f}"
    print(f"valid: subject {principal.role}, expires {expiry}")


def _token_arguments(parser: argparse.ArgumentParser, environ: Mapping[str, str] | None) -> None:
    parser.add_argument("token", nargs="?", metavar="TOKEN", help="the token (else -f or -i)")
    add_option(parser, "-f", "--token-file", help="read the token from this file", environ=environ)
    add_option(
        parser,
        "-i",
        "--stdin",
        action="store_true",
        help="read the token from stdin",
        environ=environ,
    )


def add_tokens_parser(commands: Any, environ: Mapping[str, str] | None = None) -> None:
    tokens = commands.add_parser(
        "tokens", help="create and check authentication tokens (pulsar's tokens verbs)"
    )
    verbs = tokens.add_subparsers(dest="tokens_verb", metavar="VERB", required=True)

    secret = verbs.add_parser("create-secret-key", help="a new HS256 secret key")
    add_option(
        secret,
        "-o",
        "--output",
        help="write it (raw bytes) here, else print base64",
        environ=environ,
    )
    secret.set_defaults(handler=_run, tokens_handler=_create_secret_key)

    pair = verbs.add_parser("create-key-pair", help="a new RS256 or ES256 key pair (PEM)")
    add_option(pair, "--output-private-key", required=True, metavar="FILE", environ=environ)
    add_option(pair, "--output-public-key", required=True, metavar="FILE", environ=environ)
    add_option(
        pair, "-a", "--algorithm", choices=("RS256", "ES256"), default="RS256", environ=environ
    )
    pair.set_defaults(handler=_run, tokens_handler=_create_key_pair)

    create = verbs.add_parser("create", help="a new token, printed on stdout")
    add_option(create, "--secret-key", help="HS256 key: file:PATH or env:VARIABLE", environ=environ)
    add_option(
        create,
        "--private-key",
        help="RS256/ES256 private key: file:PATH or env:VAR",
        environ=environ,
    )
    add_option(
        create, "-s", "--subject", required=True, help="the role the token names", environ=environ
    )
    add_option(
        create, "-e", "--expiry-time", help="e.g. 30m, 1h, 7d, 1y (default: never)", environ=environ
    )
    add_option(
        create, "--audience", help="the aud claim (for brokers that require one)", environ=environ
    )
    create.set_defaults(handler=_run, tokens_handler=_create)

    show = verbs.add_parser("show", help="print a token's claims (not verified)")
    _token_arguments(show, environ)
    show.set_defaults(handler=_run, tokens_handler=_show)

    validate = verbs.add_parser("validate", help="verify a token; exit 1 with the reason")
    _token_arguments(validate, environ)
    add_option(
        validate, "--secret-key", help="HS256 key: file:PATH or env:VARIABLE", environ=environ
    )
    add_option(
        validate,
        "--public-key",
        help="RS256/ES256 public key: file:PATH or env:VAR",
        environ=environ,
    )
    add_option(validate, "--audience", help="the audience the token must name", environ=environ)
    validate.set_defaults(handler=_run, tokens_handler=_validate)


def _run(args: argparse.Namespace) -> int:
    try:
        args.tokens_handler(args)
    except (TokensCommandError, KeyLoadError, TokenRefused, CredentialsError, OSError) as exc:
        message = str(exc)
        if isinstance(exc, OSError) and exc.strerror:
            message = f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
        print(f"error: {message}", file=sys.stderr)
        return 1
    return 0
