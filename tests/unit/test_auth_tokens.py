"""Token verification (``strata.auth.tokens``): every refusal has its reason, and none of them
quotes the token. Tokens are made with PyJWT directly, so that the verifier is tested against
tokens it did not make (``alg: none``, the key-confusion HS256 token, garbage)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from strata.auth import tokens
from strata.auth.config import AuthConfig
from strata.auth.tokens import (
    MAX_VERIFIED_TOKENS_CACHED,
    KeyLoadError,
    Principal,
    TokenRefused,
    TokenVerifier,
    create_token,
    parse_duration_s,
    unverified_claims,
    verifier_for,
)

SECRET = b"s" * 32
OTHER_SECRET = b"o" * 32


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_pem(key: Any) -> bytes:
    data: bytes = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return data


def refusal(verifier: TokenVerifier, token: str) -> TokenRefused:
    with pytest.raises(TokenRefused) as caught:
        verifier.verify(token)
    assert not token or token not in str(caught.value)
    return caught.value


def hs256(claims: dict[str, Any], key: bytes = SECRET) -> str:
    return jwt.encode(claims, key, algorithm="HS256")


# ---------------------------------------------------------------- accepted


def test_a_valid_secret_key_token_names_its_subject() -> None:
    verifier = TokenVerifier.from_secret(SECRET)
    expires = int(time.time()) + 3600
    assert verifier.verify(hs256({"sub": "alice", "exp": expires})) == Principal("alice", expires)


def test_a_token_without_exp_never_expires_as_in_pulsar() -> None:
    principal = TokenVerifier.from_secret(SECRET).verify(hs256({"sub": "alice"}))
    assert principal.expires_at_s is None
    assert not principal.expired()


def test_rs256_and_es256_public_keys_pin_their_algorithm(
    rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    rs = TokenVerifier.from_public_key(public_pem(rsa_key))
    es = TokenVerifier.from_public_key(public_pem(ec_key))
    assert (rs.algorithm, es.algorithm) == ("RS256", "ES256")
    assert rs.verify(jwt.encode({"sub": "r"}, rsa_key, algorithm="RS256")).role == "r"
    assert es.verify(jwt.encode({"sub": "e"}, ec_key, algorithm="ES256")).role == "e"
    # Each key verifies its own algorithm only.
    assert refusal(rs, jwt.encode({"sub": "r"}, rsa_key, algorithm="RS512")).reason == (
        tokens.WRONG_ALGORITHM
    )


def test_audience_is_checked_only_when_configured() -> None:
    token = hs256({"sub": "a", "aud": "cluster-a"})
    assert TokenVerifier.from_secret(SECRET).verify(token).role == "a"
    assert TokenVerifier.from_secret(SECRET, audience="cluster-a").verify(token).role == "a"


def test_the_bearer_scheme_is_required() -> None:
    verifier = TokenVerifier.from_secret(SECRET)
    token = hs256({"sub": "a"})
    assert verifier.verify_bearer(f"Bearer {token}").role == "a"
    assert verifier.verify_bearer(f"bearer {token}").role == "a"
    assert refusal_of_bearer(verifier, None).reason == tokens.MISSING
    assert refusal_of_bearer(verifier, "").reason == tokens.MISSING
    assert refusal_of_bearer(verifier, token).reason == tokens.MALFORMED
    assert refusal_of_bearer(verifier, f"Basic {token}").reason == tokens.MALFORMED
    assert refusal_of_bearer(verifier, "Bearer ").reason == tokens.MALFORMED


def refusal_of_bearer(verifier: TokenVerifier, value: str | None) -> TokenRefused:
    with pytest.raises(TokenRefused) as caught:
        verifier.verify_bearer(value)
    return caught.value


# ---------------------------------------------------------------- refused, one reason each


def test_expired() -> None:
    token = hs256({"sub": "a", "exp": int(time.time()) - 10})
    assert refusal(TokenVerifier.from_secret(SECRET), token).reason == tokens.EXPIRED


def test_not_yet_valid() -> None:
    token = hs256({"sub": "a", "nbf": int(time.time()) + 600})
    assert refusal(TokenVerifier.from_secret(SECRET), token).reason == tokens.NOT_YET_VALID


def test_wrong_signature() -> None:
    token = hs256({"sub": "a"}, OTHER_SECRET)
    assert refusal(TokenVerifier.from_secret(SECRET), token).reason == tokens.WRONG_SIGNATURE


def test_a_tampered_payload_is_a_wrong_signature() -> None:
    header, _, signature = hs256({"sub": "a"}).split(".")
    payload = base64.urlsafe_b64encode(json.dumps({"sub": "root"}).encode()).rstrip(b"=")
    token = f"{header}.{payload.decode()}.{signature}"
    assert refusal(TokenVerifier.from_secret(SECRET), token).reason == tokens.WRONG_SIGNATURE


def test_alg_none_is_a_wrong_algorithm(rsa_key: rsa.RSAPrivateKey) -> None:
    token = jwt.encode({"sub": "admin"}, None, algorithm="none")  # type: ignore[arg-type]
    assert refusal(TokenVerifier.from_secret(SECRET), token).reason == tokens.WRONG_ALGORITHM
    rs = TokenVerifier.from_public_key(public_pem(rsa_key))
    assert refusal(rs, token).reason == tokens.WRONG_ALGORITHM


def test_hs256_signed_with_the_public_key_is_a_wrong_algorithm(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    """The key-confusion attack: the attacker knows the public key and signs HS256 with it."""
    pem = public_pem(rsa_key)
    header = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=")
    payload = base64.urlsafe_b64encode(b'{"sub":"admin"}').rstrip(b"=")
    signing_input = header + b"." + payload
    signature = base64.urlsafe_b64encode(
        hmac.new(pem, signing_input, hashlib.sha256).digest()
    ).rstrip(b"=")
    token = (signing_input + b"." + signature).decode()
    verifier = TokenVerifier.from_public_key(pem)
    assert refusal(verifier, token).reason == tokens.WRONG_ALGORITHM


def test_an_rs256_token_to_a_secret_key_server_is_a_wrong_algorithm(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    token = jwt.encode({"sub": "a"}, rsa_key, algorithm="RS256")
    assert refusal(TokenVerifier.from_secret(SECRET), token).reason == tokens.WRONG_ALGORITHM


def test_wrong_audience_and_no_audience() -> None:
    verifier = TokenVerifier.from_secret(SECRET, audience="cluster-a")
    wrong = hs256({"sub": "a", "aud": "cluster-b"})
    assert refusal(verifier, wrong).reason == tokens.WRONG_AUDIENCE
    assert refusal(verifier, hs256({"sub": "a"})).reason == tokens.WRONG_AUDIENCE


@pytest.mark.parametrize("claims", [{}, {"sub": ""}, {"sub": "  "}, {"sub": 7}, {"sub": None}])
def test_missing_subject(claims: dict[str, Any]) -> None:
    token = jwt.encode(claims, SECRET, algorithm="HS256") if "sub" not in claims else None
    if token is None:
        # PyJWT refuses to encode a non-string sub; build the token by hand.
        header = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=")
        body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=")
        signature = base64.urlsafe_b64encode(
            hmac.new(SECRET, header + b"." + body, hashlib.sha256).digest()
        ).rstrip(b"=")
        token = (header + b"." + body + b"." + signature).decode()
    reason = refusal(TokenVerifier.from_secret(SECRET), token).reason
    # PyJWT itself refuses a non-string sub as malformed; either way no role is made up.
    assert reason in (tokens.MISSING_SUBJECT, tokens.MALFORMED)
    if claims in ({}, {"sub": ""}, {"sub": "  "}):
        assert reason == tokens.MISSING_SUBJECT


@pytest.mark.parametrize(
    "token",
    [
        "garbage",
        "a.b.c",
        "...",
        "eyJhbGciOiJIUzI1NiJ9.!!!.xyz",
        "\x00\x01\x02",
        "Ωmega.token.here",
        "x" * 64 * 1024,  # 64 KiB
    ],
)
def test_garbage_is_malformed(token: str) -> None:
    assert refusal(TokenVerifier.from_secret(SECRET), token).reason == tokens.MALFORMED


def test_empty_token_is_missing() -> None:
    assert refusal(TokenVerifier.from_secret(SECRET), "").reason == tokens.MISSING


# ---------------------------------------------------------------- the cache


def test_cached_tokens_still_expire() -> None:
    verifier = TokenVerifier.from_secret(SECRET)
    expires = int(time.time()) + 1
    token = hs256({"sub": "a", "exp": expires})
    assert verifier.verify(token).role == "a"
    while time.time() < expires + 0.05:  # the token's own second passing, about 1 s
        time.sleep(0.05)
    with pytest.raises(TokenRefused) as caught:
        verifier.verify(token)
    assert caught.value.reason == tokens.EXPIRED


def test_the_cache_is_bounded() -> None:
    verifier = TokenVerifier.from_secret(SECRET)
    for i in range(MAX_VERIFIED_TOKENS_CACHED + 50):
        verifier.verify(hs256({"sub": f"r{i}"}))
    assert len(verifier._cache) == MAX_VERIFIED_TOKENS_CACHED


# ---------------------------------------------------------------- keys and making tokens


def test_create_token_round_trip(rsa_key: rsa.RSAPrivateKey) -> None:
    token = create_token(rsa_key, "RS256", "bob", expires_in_s=60, audience="x")
    claims = unverified_claims(token)
    assert claims["sub"] == "bob" and claims["aud"] == "x"
    assert claims["exp"] - time.time() == pytest.approx(60, abs=2)
    assert TokenVerifier.from_public_key(public_pem(rsa_key), "x").verify(token).role == "bob"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30", 30), ("30s", 30), ("10m", 600), ("1h", 3600), ("2d", 172800), ("1w", 604800)],
)
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration_s(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "-1h", "1x", "h", "1.5h", "1 h"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration_s(text)


def test_short_secret_keys_are_refused() -> None:
    with pytest.raises(KeyLoadError, match="shorter than 32 bytes"):
        TokenVerifier.from_secret(b"short")


def test_verifier_for_config_reads_file_and_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rsa_key: rsa.RSAPrivateKey
) -> None:
    assert verifier_for(AuthConfig()) is None
    (tmp_path / "secret").write_bytes(SECRET)
    config = AuthConfig(
        authentication_enabled=True, auth_token_secret_key=f"file:{tmp_path}/secret"
    )
    verifier = verifier_for(config)
    assert verifier is not None and verifier.verify(hs256({"sub": "a"})).role == "a"
    monkeypatch.setenv("STRATA_TEST_PUBLIC_KEY", public_pem(rsa_key).decode())
    config = AuthConfig(
        authentication_enabled=True, auth_token_public_key="env:STRATA_TEST_PUBLIC_KEY"
    )
    verifier = verifier_for(config)
    assert verifier is not None and verifier.algorithm == "RS256"


def test_key_errors_name_the_option_not_the_key(tmp_path: Path) -> None:
    missing = AuthConfig(authentication_enabled=True, auth_token_secret_key=f"file:{tmp_path}/nope")
    with pytest.raises(KeyLoadError, match="--auth-token-secret-key"):
        verifier_for(missing)
    (tmp_path / "bad.pem").write_bytes(b"not a key at all, but secret-ish")
    bad = AuthConfig(authentication_enabled=True, auth_token_public_key=f"file:{tmp_path}/bad.pem")
    with pytest.raises(KeyLoadError) as caught:
        verifier_for(bad)
    assert "--auth-token-public-key" in str(caught.value)
    assert "secret-ish" not in str(caught.value)


def test_refresh_check_must_be_positive() -> None:
    with pytest.raises(ValueError, match="authentication_refresh_check_seconds"):
        AuthConfig(authentication_refresh_check_seconds=0)
