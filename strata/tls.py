"""TLS for every server role and the clients they make (issue 11): Pulsar's option names.

A server with ``--tls-cert-file`` and ``--tls-key-file`` serves TLS only (TLS 1.2 or later,
gRPC's floor); with ``--tls-trust-certs-file`` and ``--tls-require-trusted-client-cert true``
it requires a client certificate signed by that CA (mutual TLS). The calls a server makes
(a broker to bookies and to other brokers, autorecovery to bookies) use TLS with
``--broker-client-tls-enabled true``, trusting ``--broker-client-trust-certs-file`` and
presenting ``--broker-client-cert-file``/``-key-file``. Files are read at start (a rotated
certificate takes a restart). A client never falls back to plaintext: an unknown CA or a
name mismatch fails the connection.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

from strata.config_binding import setting


def _read(path: str, option: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"{option} {path!r} cannot be read: {exc.strerror}") from None


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """The TLS section of a broker's, standalone's or bookie's config; refused when an option
    would be ignored or half a pair is given (a typo must not leave a port in plaintext or a
    client certificate unchecked).

    The rules: the certificate and its key go together, on both sides; the client CA
    (``tls_trust_certs_file``) and ``tls_require_trusted_client_cert`` go together and need a
    TLS server; the ``broker_client_*`` files need ``broker_client_tls_enabled``; every file
    given must be readable, checked here so that a missing one stops the process at start
    naming its option.

    There is no "client certificate verified if presented" mode (Pulsar's
    ``tlsRequireTrustedClientCertOnConnect=false`` with a trust store, Netty's
    ``ClientAuth.OPTIONAL``): gRPC Python offers only require-and-verify or request nothing
    (``GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE``), so a CA file without the requirement would
    check no client at all, not even one presenting a certificate of another CA.
    ``test_tls.py`` pins that gRPC behaviour. Strata authenticates clients with tokens, so an
    optional certificate would have nothing to carry anyway.
    """

    tls_cert_file: str = setting("", "serve TLS with this certificate chain (PEM)")
    tls_key_file: str = setting("", "the private key (PEM) of --tls-cert-file")
    tls_trust_certs_file: str = setting(
        "", "CA certificates (PEM) that client certificates must be signed by (mutual TLS)"
    )
    tls_require_trusted_client_cert: bool = setting(
        False, "require a client certificate signed by --tls-trust-certs-file (mutual TLS)"
    )
    broker_client_tls_enabled: bool = setting(False, "call bookies and other brokers over TLS")
    broker_client_trust_certs_file: str = setting(
        "", "CA certificates (PEM) this process trusts when it calls (default: system roots)"
    )
    broker_client_cert_file: str = setting(
        "", "certificate (PEM) this process presents when it calls (mutual TLS)"
    )
    broker_client_key_file: str = setting("", "the private key (PEM) of --broker-client-cert-file")

    def __post_init__(self) -> None:
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("tls_cert_file and tls_key_file go together")
        if self.tls_require_trusted_client_cert and not self.tls_trust_certs_file:
            raise ValueError("tls_require_trusted_client_cert needs tls_trust_certs_file")
        if (self.tls_trust_certs_file or self.tls_require_trusted_client_cert) and not (
            self.tls_cert_file
        ):
            raise ValueError("tls_trust_certs_file needs tls_cert_file (a TLS server)")
        if self.tls_trust_certs_file and not self.tls_require_trusted_client_cert:
            # gRPC would request no client certificate at all (see the class docstring).
            raise ValueError(
                "tls_trust_certs_file needs tls_require_trusted_client_cert true: "
                "without it no client certificate is requested or checked"
            )
        if not self.broker_client_tls_enabled:
            for name in (
                "broker_client_trust_certs_file",
                "broker_client_cert_file",
                "broker_client_key_file",
            ):
                if getattr(self, name):
                    raise ValueError(f"{name} needs broker_client_tls_enabled true")
        if bool(self.broker_client_cert_file) != bool(self.broker_client_key_file):
            raise ValueError("broker_client_cert_file and broker_client_key_file go together")
        for name in (
            "tls_cert_file",
            "tls_key_file",
            "tls_trust_certs_file",
            "broker_client_trust_certs_file",
            "broker_client_cert_file",
            "broker_client_key_file",
        ):
            path = getattr(self, name)
            if path:
                _read(path, name)

    def server_credentials(self) -> grpc.ServerCredentials | None:
        """The credentials to serve with, or None for plaintext."""
        if not self.tls_cert_file:
            return None
        key = _read(self.tls_key_file, "tls_key_file")
        chain = _read(self.tls_cert_file, "tls_cert_file")
        trusted = (
            _read(self.tls_trust_certs_file, "tls_trust_certs_file")
            if self.tls_trust_certs_file
            else None
        )
        return grpc.ssl_server_credentials(
            [(key, chain)],
            root_certificates=trusted,
            require_client_auth=self.tls_require_trusted_client_cert,
        )

    def client_credentials(self) -> grpc.ChannelCredentials | None:
        """The credentials this process calls other servers with, or None for plaintext."""
        if not self.broker_client_tls_enabled:
            return None
        return channel_credentials(
            self.broker_client_trust_certs_file,
            self.broker_client_cert_file,
            self.broker_client_key_file,
        )


def channel_credentials(
    trust_certs_file: str = "", cert_file: str = "", key_file: str = ""
) -> grpc.ChannelCredentials:
    """TLS channel credentials: trusting ``trust_certs_file`` (default: the system roots),
    presenting ``cert_file``/``key_file`` when given."""
    return grpc.ssl_channel_credentials(
        root_certificates=_read(trust_certs_file, "trust certs file") if trust_certs_file else None,
        private_key=_read(key_file, "key file") if key_file else None,
        certificate_chain=_read(cert_file, "cert file") if cert_file else None,
    )
