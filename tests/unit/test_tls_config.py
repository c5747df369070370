"""``TlsConfig`` refuses every configuration that would serve or call in a way other than the
one asked for: half of a pair, an option that would be ignored, a file that cannot be read.
Each refusal names its option, and through the config binder the option's flag.

No sockets: the certificates are files made by ``tests.tls_certs``; building gRPC
credentials from them opens no connection.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from broker import __main__ as broker_main
from strata.tls import TlsConfig, channel_credentials
from tests.tls_certs import TlsFiles, make_tls_files


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("certs"))


def server(files: TlsFiles, **more: Any) -> dict[str, Any]:
    """The options of a TLS server, with ``more``."""
    return {"tls_cert_file": str(files.server_cert), "tls_key_file": str(files.server_key), **more}


def mutual(files: TlsFiles) -> dict[str, Any]:
    return server(files, tls_trust_certs_file=str(files.ca), tls_require_trusted_client_cert=True)


def calls(files: TlsFiles, **more: Any) -> dict[str, Any]:
    """The options of a process calling over mutual TLS, with ``more``."""
    return {
        "broker_client_tls_enabled": True,
        "broker_client_trust_certs_file": str(files.ca),
        "broker_client_cert_file": str(files.client_cert),
        "broker_client_key_file": str(files.client_key),
        **more,
    }


def refusal(build: Callable[[], object]) -> str:
    """The message of the ValueError ``build`` raises."""
    with pytest.raises(ValueError) as raised:
        build()
    return str(raised.value)


def refused(**options: Any) -> str:
    """The message ``TlsConfig(**options)`` is refused with."""
    return refusal(lambda: TlsConfig(**options))


# ---------------------------------------------------------------- what is accepted


def test_the_default_is_plaintext_both_ways() -> None:
    config = TlsConfig()
    assert config.server_credentials() is None
    assert config.client_credentials() is None


def test_server_tls_without_client_certificates(files: TlsFiles) -> None:
    config = TlsConfig(**server(files))
    assert isinstance(config.server_credentials(), grpc.ServerCredentials)
    assert config.client_credentials() is None


def test_mutual_tls(files: TlsFiles) -> None:
    assert isinstance(TlsConfig(**mutual(files)).server_credentials(), grpc.ServerCredentials)


def test_calls_over_tls_without_a_server_certificate(files: TlsFiles) -> None:
    """A process may call over TLS and serve plaintext (a broker behind a TLS proxy)."""
    config = TlsConfig(**calls(files))
    assert config.server_credentials() is None
    assert isinstance(config.client_credentials(), grpc.ChannelCredentials)


def test_calls_over_tls_trusting_the_system_roots() -> None:
    config = TlsConfig(broker_client_tls_enabled=True)
    assert isinstance(config.client_credentials(), grpc.ChannelCredentials)


def test_channel_credentials_name_an_unreadable_file(tmp_path: Path) -> None:
    missing = tmp_path / "none.pem"
    assert refusal(lambda: channel_credentials(str(missing))) == (
        f"trust certs file {str(missing)!r} cannot be read: No such file or directory"
    )


# ---------------------------------------------------------------- pairs


@pytest.mark.parametrize("given", ["tls_cert_file", "tls_key_file"])
def test_the_server_certificate_and_key_go_together(files: TlsFiles, given: str) -> None:
    assert refused(**{given: server(files)[given]}) == "tls_cert_file and tls_key_file go together"


@pytest.mark.parametrize("left_out", ["broker_client_cert_file", "broker_client_key_file"])
def test_the_client_certificate_and_key_go_together(files: TlsFiles, left_out: str) -> None:
    options = calls(files)
    del options[left_out]
    assert refused(**options) == "broker_client_cert_file and broker_client_key_file go together"


def test_requiring_client_certificates_needs_their_ca(files: TlsFiles) -> None:
    assert (
        refused(**server(files, tls_require_trusted_client_cert=True))
        == "tls_require_trusted_client_cert needs tls_trust_certs_file"
    )


def test_a_client_ca_alone_is_refused(files: TlsFiles) -> None:
    """gRPC would request no client certificate, so the CA would check nobody (the
    ``TlsConfig`` docstring): the option is refused rather than silently ignored."""
    assert refused(**server(files, tls_trust_certs_file=str(files.ca))) == (
        "tls_trust_certs_file needs tls_require_trusted_client_cert true: "
        "without it no client certificate is requested or checked"
    )


@pytest.mark.parametrize(
    "options",
    [
        {"tls_trust_certs_file": "ca.pem", "tls_require_trusted_client_cert": True},
        {"tls_trust_certs_file": "ca.pem"},
    ],
    ids=["mutual", "trust-only"],
)
def test_client_certificates_need_a_tls_server(options: dict[str, Any]) -> None:
    assert refused(**options) == "tls_trust_certs_file needs tls_cert_file (a TLS server)"


@pytest.mark.parametrize(
    "name",
    ["broker_client_trust_certs_file", "broker_client_cert_file", "broker_client_key_file"],
)
def test_client_files_need_client_tls_enabled(files: TlsFiles, name: str) -> None:
    """Each ``broker_client_*`` file without ``broker_client_tls_enabled`` would be ignored:
    the calls would go plaintext while the operator believes they are encrypted. This is
    checked before the certificate/key pair, so a lone file names the missing switch."""
    assert refused(**{name: calls(files)[name]}) == f"{name} needs broker_client_tls_enabled true"
    all_but_the_switch = {**calls(files), "broker_client_tls_enabled": False}
    assert refused(**all_but_the_switch).endswith(" needs broker_client_tls_enabled true")


# ---------------------------------------------------------------- files


@pytest.mark.parametrize(
    "name",
    [
        "tls_cert_file",
        "tls_key_file",
        "tls_trust_certs_file",
        "broker_client_trust_certs_file",
        "broker_client_cert_file",
        "broker_client_key_file",
    ],
)
def test_an_unreadable_file_is_refused_naming_its_option(
    files: TlsFiles, tmp_path: Path, name: str
) -> None:
    missing = str(tmp_path / "none.pem")
    options = {**mutual(files), **calls(files), name: missing}
    assert refused(**options) == f"{name} {missing!r} cannot be read: No such file or directory"


def test_a_directory_is_not_a_readable_file(files: TlsFiles, tmp_path: Path) -> None:
    assert refused(**server(files, tls_cert_file=str(tmp_path))) == (
        f"tls_cert_file {str(tmp_path)!r} cannot be read: Is a directory"
    )


# ---------------------------------------------------------------- through the binder


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--tls-cert-file", "x.pem"], "--tls-cert-file and --tls-key-file go together"),
        (
            ["--broker-client-key-file", "c.key"],
            "--broker-client-key-file needs --broker-client-tls-enabled true",
        ),
        (
            ["--broker-client-trust-certs-file", "ca.pem"],
            "--broker-client-trust-certs-file needs --broker-client-tls-enabled true",
        ),
    ],
)
def test_refusals_name_the_flags(
    argv: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    parser, binding = broker_main.build_parser({})
    with pytest.raises(SystemExit) as info:
        binding.build(parser, parser.parse_args(argv))
    assert info.value.code == 2
    assert named in capsys.readouterr().err


def test_a_client_ca_alone_names_both_flags(
    files: TlsFiles, capsys: pytest.CaptureFixture[str]
) -> None:
    parser, binding = broker_main.build_parser({})
    argv = [
        "--tls-cert-file",
        str(files.server_cert),
        "--tls-key-file",
        str(files.server_key),
        "--tls-trust-certs-file",
        str(files.ca),
    ]
    with pytest.raises(SystemExit):
        binding.build(parser, parser.parse_args(argv))
    assert (
        "--tls-trust-certs-file needs --tls-require-trusted-client-cert true"
        in capsys.readouterr().err
    )
