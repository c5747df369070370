"""Certificates for TLS tests, made at test time with ``cryptography``: a CA, a server
certificate for localhost / 127.0.0.1, one for another name, a client certificate, and
another CA with a client certificate of its own (one the first CA does not trust), written as
PEM files."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    misnamed_server_cert: Path  # signed by ca for elsewhere.invalid only
    misnamed_server_key: Path
    other_ca: Path  # a CA that signed none of the above
    untrusted_client_cert: Path  # signed by other_ca
    untrusted_client_key: Path


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _ca(common_name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return certificate, key


def _leaf(
    common_name: str,
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    san: list[x509.GeneralName],
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def _write(path: Path, certificate: x509.Certificate) -> Path:
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return path


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    return path


def make_tls_files(directory: Path) -> TlsFiles:
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key = _ca("strata test CA")
    other, other_key = _ca("some other CA")
    server, server_key = _leaf(
        "localhost",
        ca,
        ca_key,
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    client, client_key = _leaf("client", ca, ca_key, [x509.DNSName("client")])
    misnamed, misnamed_key = _leaf(
        "elsewhere.invalid", ca, ca_key, [x509.DNSName("elsewhere.invalid")]
    )
    untrusted, untrusted_key = _leaf("client", other, other_key, [x509.DNSName("client")])
    return TlsFiles(
        ca=_write(directory / "ca.pem", ca),
        server_cert=_write(directory / "server.pem", server),
        server_key=_write_key(directory / "server.key", server_key),
        client_cert=_write(directory / "client.pem", client),
        client_key=_write_key(directory / "client.key", client_key),
        misnamed_server_cert=_write(directory / "misnamed-server.pem", misnamed),
        misnamed_server_key=_write_key(directory / "misnamed-server.key", misnamed_key),
        other_ca=_write(directory / "other-ca.pem", other),
        untrusted_client_cert=_write(directory / "untrusted-client.pem", untrusted),
        untrusted_client_key=_write_key(directory / "untrusted-client.key", untrusted_key),
    )
