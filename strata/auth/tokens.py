"""JSON Web Tokens, as Pulsar's token authentication uses them: made and verified with PyJWT.

A token's ``sub`` claim is the caller's role. A server verifies with either a secret key
(``--auth-token-secret-key``, HS256) or a public key (``--auth-token-public-key``, RS256 for an
RSA key, ES256/ES384/ES512 for an EC key by its curve). The accepted algorithm is pinned by the
configured key, never taken from the token's header: a token that names another algorithm --
``none``, or HS256 signed with the public key as an HMAC secret (the classic key-confusion
attack) -- is refused as "wrong algorithm" before any signature check.

Every refusal is a ``TokenRefused`` whose ``reason`` is one of ``REFUSAL_REASONS``; its message
never holds the token. As Pulsar, a token without ``exp`` never expires, and ``aud`` is checked
only when the server names an audience.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from strata.auth.config import AuthConfig

# A token longer than this is refused unread (gRPC's own metadata limit is 8 KiB by default).
MAX_TOKEN_BYTES = 8 * 1024
# HS256 keys shorter than the hash (RFC 7518 §3.2) are refused when loaded.
MIN_SECRET_KEY_BYTES = 32
SECRET_KEY_BYTES = 32
MAX_VERIFIED_TOKENS_CACHED = 1024

MISSING = "missing"
MALFORMED = "malformed"
EXPIRED = "expired"
NOT_YET_VALID = "not yet valid"
WRONG_SIGNATURE = "wrong signature"
WRONG_ALGORITHM = "wrong algorithm"
WRONG_AUDIENCE = "wrong audience"
MISSING_SUBJECT = "missing subject"
REFUSAL_REASONS = (
    MISSING,
    MALFORMED,
    EXPIRED,
    NOT_YET_VALID,
    WRONG_SIGNATURE,
    WRONG_ALGORITHM,
    WRONG_AUDIENCE,
    MISSING_SUBJECT,
)

_DURATION = re.compile(r"^(\d+)([smhdwy]?)$")
_DURATION_SECONDS = {
    "": 1,
    "s": 1,
    "m": 60,
    "h": 3600,
    "d": 86400,
    "w": 7 * 86400,
    "y": 365 * 86400,
}


class TokenRefused(Exception):
    """A token that does not authenticate; ``reason`` is one of ``REFUSAL_REASONS``."""

    def __init__(self, reason: str, detail: str = "") -> None:
        assert reason in REFUSAL_REASONS, reason
        self.reason = reason
        super().__init__(f"authentication token {reason}" + (f": {detail}" if detail else ""))


class KeyLoadError(ValueError):
    """A key that cannot be loaded (its message names the option or the file, never the key)."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a verified token says the caller is, and until when (epoch seconds; None: ever)."""

    role: str
    expires_at_s: float | None

    def expired(self, now_s: float | None = None) -> bool:
        if self.expires_at_s is None:
            return False
        return (time.time() if now_s is None else now_s) >= self.expires_at_s


def read_key_source(source: str, what: str) -> bytes:
    """The bytes named by ``file:PATH`` or ``env:VARIABLE`` (``what`` names the option)."""
    kind, _, where = source.partition(":")
    if kind == "file" and where:
        try:
            return Path(where).read_bytes()
        except OSError as exc:
            raise KeyLoadError(f"{what}: cannot read the key file ({exc.strerror})") from None
    if kind == "env" and where:
        value = os.environ.get(where)
        if not value:
            raise KeyLoadError(f"{what}: environment variable {where} is not set")
        return value.encode()
    raise KeyLoadError(f"{what} must be file:PATH or env:VARIABLE")


def load_secret_key(data: bytes, what: str = "secret key") -> bytes:
    if len(data) < MIN_SECRET_KEY_BYTES:
        raise KeyLoadError(f"{what} is shorter than {MIN_SECRET_KEY_BYTES} bytes")
    return data


def _algorithm_of(key: Any, what: str) -> str:
    if isinstance(key, (rsa.RSAPublicKey, rsa.RSAPrivateKey)):
        return "RS256"
    if isinstance(key, (ec.EllipticCurvePublicKey, ec.EllipticCurvePrivateKey)):
        by_curve = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
        algorithm = by_curve.get(key.curve.name)
        if algorithm is not None:
            return algorithm
    raise KeyLoadError(f"{what}: only RSA and EC (P-256, P-384, P-521) keys are supported")


def load_public_key(data: bytes, what: str = "public key") -> tuple[Any, str]:
    """A PEM (or DER) public key and the one algorithm it verifies."""
    try:
        key: Any = (
            serialization.load_pem_public_key(data)
            if data.lstrip().startswith(b"-----")
            else serialization.load_der_public_key(data)
        )
    except ValueError:
        raise KeyLoadError(f"{what} is not a PEM or DER public key") from None
    return key, _algorithm_of(key, what)


def load_private_key(data: bytes, what: str = "private key") -> tuple[Any, str]:
    """A PEM (or DER) private key and the one algorithm it signs with."""
    try:
        key: Any = (
            serialization.load_pem_private_key(data, password=None)
            if data.lstrip().startswith(b"-----")
            else serialization.load_der_private_key(data, password=None)
        )
    except (ValueError, TypeError):
        raise KeyLoadError(f"{what} is not an unencrypted PEM or DER private key") from None
    return key, _algorithm_of(key, what)


def parse_duration_s(text: str) -> int:
    """``30``, ``30s``, ``10m``, ``1h``, ``7d``, ``2w``, ``1y`` (Pulsar's --expiry-time, its
    RelativeTimeUtil units) in seconds."""
    match = _DURATION.match(text.strip())
    if match is None or int(match.group(1)) <= 0:
        raise ValueError(f"invalid duration {text!r} (e.g. 30s, 10m, 1h, 7d, 2w, 1y)")
    return int(match.group(1)) * _DURATION_SECONDS[match.group(2)]


def create_token(
    key: Any,
    algorithm: str,
    subject: str,
    *,
    expires_in_s: float | None = None,
    audience: str | None = None,
    extra_claims: dict[str, Any] | None = None,
) -> str:
    """A signed token for ``subject`` (``key``: HS256 secret bytes or a private key)."""
    if not subject:
        raise ValueError("a token needs a subject")
    claims: dict[str, Any] = {"sub": subject, **(extra_claims or {})}
    if expires_in_s is not None:
        claims["exp"] = int(time.time() + expires_in_s)
    if audience:
        claims["aud"] = audience
    return jwt.encode(claims, key, algorithm=algorithm)


def unverified_claims(token: str) -> dict[str, Any]:
    """The claims of ``token`` without any check (``strata tokens show``, as Pulsar's)."""
    try:
        claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise TokenRefused(MALFORMED) from None
    return claims


class TokenVerifier:
    """Verifies tokens against one key, for one optional audience; remembers up to
    ``MAX_VERIFIED_TOKENS_CACHED`` verified tokens (by their SHA-256) until they expire, so
    that a client's many calls cost one signature check."""

    def __init__(self, key: Any, algorithm: str, audience: str | None = None) -> None:
        self._key = key
        self._algorithm = algorithm
        self._audience = audience or None
        self._cache: OrderedDict[bytes, Principal] = OrderedDict()

    @classmethod
    def from_secret(cls, secret: bytes, audience: str | None = None) -> TokenVerifier:
        return cls(load_secret_key(secret), "HS256", audience)

    @classmethod
    def from_public_key(cls, data: bytes, audience: str | None = None) -> TokenVerifier:
        key, algorithm = load_public_key(data)
        return cls(key, algorithm, audience)

    @property
    def algorithm(self) -> str:
        return self._algorithm

    def verify_bearer(self, value: str | None) -> Principal:
        """Verify an ``authorization`` metadata value, ``Bearer <token>``."""
        if not value:
            raise TokenRefused(MISSING)
        scheme, _, token = value.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise TokenRefused(MALFORMED, "expected 'authorization: Bearer <token>'")
        return self.verify(token.strip())

    def verify(self, token: str) -> Principal:
        if not token:
            raise TokenRefused(MISSING)
        if len(token) > MAX_TOKEN_BYTES:
            raise TokenRefused(MALFORMED, f"longer than {MAX_TOKEN_BYTES} bytes")
        digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        cached = self._cache.get(digest)
        if cached is not None:
            if not cached.expired():
                self._cache.move_to_end(digest)
                return cached
            del self._cache[digest]
        principal = self._verify_uncached(token)
        self._cache[digest] = principal
        if len(self._cache) > MAX_VERIFIED_TOKENS_CACHED:
            self._cache.popitem(last=False)
        return principal

    def _verify_uncached(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenRefused(MALFORMED) from None
        algorithm = header.get("alg")
        if algorithm != self._algorithm:
            shown = algorithm if isinstance(algorithm, str) and len(algorithm) <= 16 else "?"
            raise TokenRefused(WRONG_ALGORITHM, f"{shown}, expected {self._algorithm}")
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=[self._algorithm],
                audience=self._audience,
                options={"verify_aud": self._audience is not None, "require": []},
            )
        except jwt.ExpiredSignatureError:
            raise TokenRefused(EXPIRED) from None
        except jwt.ImmatureSignatureError:
            raise TokenRefused(NOT_YET_VALID) from None
        except jwt.InvalidSignatureError:
            raise TokenRefused(WRONG_SIGNATURE) from None
        except jwt.InvalidAlgorithmError:
            raise TokenRefused(WRONG_ALGORITHM) from None
        except jwt.InvalidAudienceError:
            raise TokenRefused(WRONG_AUDIENCE) from None
        except jwt.MissingRequiredClaimError as exc:
            if exc.claim == "aud":
                raise TokenRefused(WRONG_AUDIENCE, "the token names no audience") from None
            raise TokenRefused(MALFORMED, f"missing claim {exc.claim}") from None
        except jwt.PyJWTError:
            raise TokenRefused(MALFORMED) from None
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject.strip():
            raise TokenRefused(MISSING_SUBJECT)
        expires = claims.get("exp")
        return Principal(subject, float(expires) if expires is not None else None)


def verifier_for(config: AuthConfig) -> TokenVerifier | None:
    """The verifier a server with ``config`` uses (None: authentication is off); raises
    ``KeyLoadError`` naming the option when its key cannot be loaded."""
    if not config.authentication_enabled:
        return None
    audience = config.auth_token_audience or None
    if config.auth_token_secret_key:
        secret = read_key_source(config.auth_token_secret_key, "--auth-token-secret-key")
        return TokenVerifier(load_secret_key(secret, "--auth-token-secret-key"), "HS256", audience)
    data = read_key_source(config.auth_token_public_key, "--auth-token-public-key")
    key, algorithm = load_public_key(data, "--auth-token-public-key")
    return TokenVerifier(key, algorithm, audience)
