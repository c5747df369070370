"""The security options every server role binds (broker, standalone, bookie), Pulsar's names:
``--authentication-enabled``, ``--authorization-enabled``, ``--superuser-roles``,
``--auth-token-secret-key``, ``--auth-token-public-key``, ``--auth-token-audience``, and the
credentials a server presents to the servers it calls (``--broker-client-auth-token[-file]``).
"""

from __future__ import annotations

from dataclasses import dataclass

from strata.config_binding import setting


@dataclass(frozen=True, slots=True)
class AuthConfig:
    authentication_enabled: bool = setting(
        False, "require a valid token (authorization: Bearer JWT) on every call but health"
    )
    authorization_enabled: bool = setting(
        False, "check every call against the caller's role (needs authentication)"
    )
    superuser_roles: str = setting(
        "", "comma-separated roles allowed everything (cluster operations, ledger access)"
    )
    auth_token_secret_key: str = setting(
        "", "HS256 secret to verify tokens: file:PATH or env:VARIABLE", secret=True
    )
    auth_token_public_key: str = setting(
        "", "RS256/ES256 public key to verify tokens: file:PATH or env:VARIABLE"
    )
    auth_token_audience: str = setting("", "the audience (aud) a token must name (empty: any)")
    authentication_refresh_check_seconds: float = setting(
        60.0, "how often open streams are checked for an expired token (closed if so)"
    )
    broker_client_auth_token: str = setting(
        "", "token this process presents to brokers and bookies it calls", secret=True
    )
    broker_client_auth_token_file: str = setting(
        "", "file holding the token this process presents (re-read on each connection)"
    )

    def __post_init__(self) -> None:
        if not self.authentication_refresh_check_seconds > 0:
            raise ValueError("authentication_refresh_check_seconds must be > 0")
        if self.authorization_enabled and not self.authentication_enabled:
            raise ValueError("authorization_enabled needs authentication_enabled")
        if self.auth_token_secret_key and self.auth_token_public_key:
            raise ValueError("give auth_token_secret_key or auth_token_public_key, not both")
        for name in ("auth_token_secret_key", "auth_token_public_key"):
            value = getattr(self, name)
            if value and not value.startswith(("file:", "env:")):
                raise ValueError(f"{name} must be file:PATH or env:VARIABLE")
        if self.authentication_enabled and not (
            self.auth_token_secret_key or self.auth_token_public_key
        ):
            raise ValueError(
                "authentication_enabled needs auth_token_secret_key or auth_token_public_key"
            )
        if self.broker_client_auth_token and self.broker_client_auth_token_file:
            raise ValueError(
                "give broker_client_auth_token or broker_client_auth_token_file, not both"
            )

    @property
    def superusers(self) -> frozenset[str]:
        return frozenset(r.strip() for r in self.superuser_roles.split(",") if r.strip())
