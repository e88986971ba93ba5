"""TLS terminated by the issuer: settings, the SSL context, and where the
application takes a client certificate from (tests/e2e/test_mtls_direct.py
runs the real server)."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from issuer.cli import main
from issuer.config import ConfigError, Settings, load_settings
from issuer.errors import InvalidRequest
from issuer.mtls import certificate_thumbprint
from issuer.service import PresentedCertificate
from issuer.tlsserve import build_context, client_ca_files
from issuer.web import create_app

from .conftest import basic
from .test_mtls import Issued, issue, make_ca
from .test_mtls_issuance import HEADER, forwarded

CC = {"grant_type": "client_credentials"}


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    """A CA, a server certificate with its key, and a second key."""
    ca = make_ca("Test Root")
    server = issue(ca, cn="issuer")
    files = {
        "ca": tmp_path / "ca.pem",
        "cert": tmp_path / "server.pem",
        "key": tmp_path / "server.key",
        "other_key": tmp_path / "other.key",
        "encrypted_key": tmp_path / "encrypted.key",
        "empty": tmp_path / "empty.pem",
    }
    files["ca"].write_bytes(ca.pem)
    files["cert"].write_bytes(server.pem)
    files["key"].write_bytes(_pem_key(server.key))
    files["other_key"].write_bytes(_pem_key(ec.generate_private_key(ec.SECP256R1())))
    files["encrypted_key"].write_bytes(
        server.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret-passphrase"),
        )
    )
    files["empty"].write_text("no certificates here\n")
    return files


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def tls(pki: dict[str, Path], **extra: Any) -> dict[str, Any]:
    return {"tls_cert_file": str(pki["cert"]), "tls_key_file": str(pki["key"]), **extra}


# -- settings --------------------------------------------------------------


def test_tls_settings_from_the_environment(
    pki: dict[str, Path], tmp_path: Path
) -> None:
    env = {
        "WIMSE_ISSUER_TLS_CERT_FILE": str(pki["cert"]),
        "WIMSE_ISSUER_TLS_KEY_FILE": str(pki["key"]),
        "WIMSE_ISSUER_TLS_CLIENT_CA_FILE": str(pki["ca"]),
    }
    settings = load_settings(environ=env, overrides={"home": str(tmp_path)})

    assert settings.terminates_tls
    assert settings.tls_client_ca_file == str(pki["ca"])
    assert settings.resolved_issuer_url() == "https://127.0.0.1:8080"
    assert not Settings().terminates_tls
    assert Settings().resolved_issuer_url() == "http://127.0.0.1:8080"
    explicit = Settings(issuer_url="https://issuer.example/", **tls(pki)).validate()
    assert explicit.resolved_issuer_url() == "https://issuer.example"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"tls_cert_file": "CERT"},
            "tls_cert_file and tls_key_file must be set together",
        ),
        (
            {"tls_key_file": "KEY"},
            "tls_cert_file and tls_key_file must be set together",
        ),
        (
            {"tls_client_ca_file": "CA"},
            "tls_client_ca_file needs tls_cert_file and tls_key_file",
        ),
        (
            {"tls_cert_file": "CERT", "tls_key_file": "KEY", "workers": 2},
            "workers must be 1 when the issuer terminates TLS (tls_cert_file); "
            "for more processes run several instances or a TLS proxy in front",
        ),
        (
            {"tls_cert_file": "MISSING", "tls_key_file": "KEY"},
            "cannot read tls_cert_file MISSING: No such file or directory",
        ),
        (
            {"tls_cert_file": "CERT", "tls_key_file": "DIR"},
            "tls_key_file DIR is not a file",
        ),
        (
            {
                "tls_cert_file": "CERT",
                "tls_key_file": "KEY",
                "tls_client_ca_file": "MISSING",
            },
            "cannot read tls_client_ca_file MISSING: No such file or directory",
        ),
    ],
)
def test_invalid_tls_settings_are_named(
    pki: dict[str, Path], tmp_path: Path, values: dict[str, Any], message: str
) -> None:
    paths = {
        "CERT": str(pki["cert"]),
        "KEY": str(pki["key"]),
        "CA": str(pki["ca"]),
        "DIR": str(tmp_path),
        "MISSING": str(tmp_path / "missing.pem"),
    }
    resolved = {
        k: paths.get(v, v) if isinstance(v, str) else v for k, v in values.items()
    }
    expected = message
    for word, path in paths.items():
        expected = expected.replace(f" {word}", f" {path}")

    with pytest.raises(ConfigError) as info:
        Settings(**resolved).validate()

    assert str(info.value) == expected


def test_serve_refuses_a_certificate_without_its_key(
    pki: dict[str, Path], tmp_path: Path
) -> None:
    result = CliRunner().invoke(
        main, ["--home", str(tmp_path), "serve", "--tls-cert", str(pki["cert"])]
    )

    assert result.exit_code == 1
    assert "tls_cert_file and tls_key_file must be set together" in result.output


def test_serve_refuses_a_key_that_does_not_match(
    pki: dict[str, Path], tmp_path: Path
) -> None:
    args = ["--tls-cert", str(pki["cert"]), "--tls-key", str(pki["other_key"])]

    result = CliRunner().invoke(main, ["--home", str(tmp_path), "serve", *args])

    assert result.exit_code == 1
    assert "its matching unencrypted private key" in result.output


# -- the SSL context ---------------------------------------------------------


def test_context_without_client_cas_asks_for_no_certificate(
    pki: dict[str, Path],
) -> None:
    context = build_context(Settings(**tls(pki)).validate())

    assert context.verify_mode == ssl.CERT_NONE
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2


def test_context_with_client_cas_makes_certificates_optional(
    pki: dict[str, Path], tmp_path: Path
) -> None:
    bundle = tmp_path / "example.test.pem"
    bundle.write_bytes(make_ca("SPIFFE Root").pem)
    settings = Settings(
        **tls(pki, tls_client_ca_file=str(pki["ca"])),
        mtls_ca_file=str(pki["ca"]),
        spiffe_bundles={"example.test": str(bundle)},
    ).validate()

    context = build_context(settings)

    assert context.verify_mode == ssl.CERT_OPTIONAL
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    # The same file twice is loaded once; SPIFFE roots join the set.
    assert client_ca_files(settings) == [
        ("tls_client_ca_file", str(pki["ca"])),
        ("spiffe_bundles.example.test", str(bundle)),
    ]
    assert len(context.get_ca_certs()) == 2


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"tls_key_file": "other_key"}, "its matching unencrypted private key"),
        ({"tls_key_file": "encrypted_key"}, "must not be encrypted"),
        ({"tls_client_ca_file": "empty"}, "holds no usable PEM certificate"),
        ({"mtls_ca_file": "empty"}, "mtls_ca_file"),
    ],
)
def test_context_errors_name_the_setting(
    pki: dict[str, Path], values: dict[str, str], message: str
) -> None:
    settings = Settings(**{**tls(pki), **{k: str(pki[v]) for k, v in values.items()}})

    with pytest.raises(ConfigError, match=message):
        build_context(settings.validate())


# -- where the application takes the certificate from -------------------------------


@pytest.fixture
def leaf() -> Issued:
    return issue(make_ca("Client Root"))


def _pem(cert: Issued) -> str:
    return cert.pem.decode()


def test_handshake_certificate_counts_only_when_the_issuer_terminates_tls(
    make_service: Callable[..., Any], pki: dict[str, Path], leaf: Issued
) -> None:
    plain = make_service()
    direct = make_service(**tls(pki))

    assert plain.client_certificate(None, "127.0.0.1", _pem(leaf)) is None
    assert direct.client_certificate(None, "127.0.0.1", _pem(leaf)) == (
        PresentedCertificate(leaf.der, via_proxy=False)
    )
    assert direct.client_certificate(None, "127.0.0.1", None) is None
    with pytest.raises(InvalidRequest):
        direct.client_certificate(None, "127.0.0.1", "-----BEGIN CERTIFICATE-----")


def test_a_trusted_proxy_speaks_through_its_header(
    make_service: Callable[..., Any], pki: dict[str, Path], leaf: Issued
) -> None:
    proxy_cert = issue(make_ca("Proxy Root"), cn="proxy")
    service = make_service(
        **tls(pki),
        mtls_proxy_header=HEADER,
        mtls_trusted_proxies=["127.0.0.1/32"],
    )

    # The proxy's own handshake certificate is not its clients'.
    assert service.client_certificate(None, "127.0.0.1", _pem(proxy_cert)) is None
    assert service.client_certificate(
        forwarded(leaf), "127.0.0.1", _pem(proxy_cert)
    ) == PresentedCertificate(leaf.der, via_proxy=True)
    # A direct client's handshake certificate counts.
    assert service.client_certificate(
        None, "192.0.2.7", _pem(leaf)
    ) == PresentedCertificate(leaf.der, via_proxy=False)


@pytest.mark.parametrize("through_flask", [False, True])
def test_ssl_client_cert_binds_only_with_tls_settings(
    make_service: Callable[..., Any],
    pki: dict[str, Path],
    leaf: Issued,
    through_flask: bool,
) -> None:
    def token_for(service: Any, name: str) -> dict[str, Any]:
        app = create_app(service)
        if through_flask:
            # Unwrap TokenFastPath so the request reaches the Flask route.
            app.wsgi_app = app.wsgi_app.app  # type: ignore[attr-defined]
        client, secret = service.clients.add(name, audiences=["https://api.test"])
        resp = app.test_client().post(
            "/token",
            data=CC,
            headers={"Authorization": basic(client.client_id, secret)},
            environ_base={"SSL_CLIENT_CERT": _pem(leaf)},
        )
        assert resp.status_code == 200, resp.get_json()
        claims: dict[str, Any] = jwt.decode(
            resp.get_json()["access_token"], options={"verify_signature": False}
        )
        return claims

    # Another server (or a process variable) may put SSL_CLIENT_CERT in the
    # environ; it counts only when the issuer's own TLS server runs.
    assert "cnf" not in token_for(make_service(), "plain")
    bound = token_for(make_service(**tls(pki)), "direct")
    assert bound["cnf"] == {"x5t#S256": certificate_thumbprint(leaf.der)}
    assert bound["assurance_levels"]["maal"]["boundary"] == 3


def test_serve_reports_a_port_in_use_without_a_traceback(
    pki: dict[str, Path], tmp_path: Path
) -> None:
    import socket
    import subprocess
    import sys

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        tls = ["--tls-cert", str(pki["cert"]), "--tls-key", str(pki["key"])]
        cmd = [sys.executable, "-m", "issuer", "--home", str(tmp_path), "serve"]
        result = subprocess.run(
            [*cmd, "--port", str(port), *tls],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert "Error: cannot serve:" in result.stderr
    assert "Address already in use" in result.stderr
    assert "Traceback" not in result.stderr


def test_client_add_explains_a_distinguished_name_it_cannot_read(
    tmp_path: Path,
) -> None:
    home = ["--home", str(tmp_path)]
    slash = CliRunner().invoke(
        main, [*home, "client", "add", "a", "--tls-auth", "subject_dn=/O=Example/CN=a"]
    )
    assert slash.exit_code == 1
    assert "is not an RFC 4514 distinguished name" in slash.output
    assert "CN=api,O=Example" in slash.output

    twice = ["--tls-auth", "san_dns=a.example", "--tls-auth", "san_ip=127.0.0.1"]
    repeated = CliRunner().invoke(main, [*home, "client", "add", "b", *twice])
    assert repeated.exit_code == 2
    assert "give it once" in repeated.output


def test_plain_serve_reports_a_port_in_use_without_a_traceback(
    tmp_path: Path,
) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(
            main, ["--home", str(tmp_path), "serve", "--port", str(port)]
        )
    assert result.exit_code == 1
    assert f"cannot serve on 127.0.0.1:{port}: Address already in use" in result.output
