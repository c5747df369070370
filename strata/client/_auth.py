"""``AuthenticationToken``: the credentials a client presents, pulsar-client's class."""

from __future__ import annotations

from collections.abc import Callable

from strata.auth.credentials import CredentialsError, TokenSource, static_token
from strata.client._errors import InvalidArgument


class AuthenticationToken:
    """A JSON Web Token sent as ``authorization: Bearer <token>`` on every call.

    ``token`` is the token itself or a callable returning it; a callable is asked again for
    each call, so every stream (re)connect presents a fresh token and tokens can rotate
    (pulsar-client's token supplier). A broker ends a stream whose token expired; the
    producer or consumer then reconnects with what the callable gives.
    """

    def __init__(self, token: str | Callable[[], str]) -> None:
        if callable(token):
            supplier = token

            def ask() -> str:
                value = supplier()
                if not isinstance(value, str) or not value.strip():
                    raise InvalidArgument("the token supplier returned no token")
                return value.strip()

            self._source: TokenSource = ask
        else:
            try:
                self._source = static_token(token)
            except CredentialsError as exc:
                raise InvalidArgument(str(exc)) from None

    def token(self) -> str:
        """The token to present now."""
        return self._source()

    def __repr__(self) -> str:
        return "AuthenticationToken(...)"  # never the token
