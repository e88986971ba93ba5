"""Certificate-bound tokens through a real nginx terminating mutual TLS.

nginx (the Debian package) listens with TLS on a loopback port, asks every
client for a certificate (``ssl_verify_client optional_no_ca``, so that
self-signed certificates reach the issuer, which checks them itself) and
forwards it in ``X-SSL-Client-Cert`` to a real ``wimse-issuer serve``. A
workload using ``requests`` with its certificate gets a token bound to it;
the verifier library accepts that token only with the same certificate.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from jwt.algorithms import ECAlgorithm

from issuer.mtls import certificate_thumbprint
from verifier import TokenVerifier, VerifierError

from ..conftest import free_port

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
HEADER = "X-SSL-Client-Cert"
DN = "CN=workload-a,O=Example Corp,C=US"
CC = {"grant_type": "client_credentials"}

pytestmark = pytest.mark.skipif(
    not Path(NGINX).exists(), reason="nginx is not installed (.ci/run installs it)"
)


@dataclass
class Pair:
    """A certificate and its private key, written as PEM files."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    cert_file: Path
    key_file: Path

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example Corp"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _usage(ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def make_pair(
    folder: Path,
    cn: str,
    ca: Pair | None = None,
    *,
    is_ca: bool = False,
    server: bool = False,
) -> Pair:
    """A CA, a server certificate for 127.0.0.1, or a client certificate
    (self-signed when ``ca`` is None), valid from yesterday for a week."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca.cert.subject if ca else _name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        .add_extension(_usage(is_ca), critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
    )
    if ca is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        ).add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
    elif not is_ca:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    cert = builder.sign(ca.key if ca else key, hashes.SHA256())
    cert_file, key_file = folder / f"{cn}.pem", folder / f"{cn}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_file.chmod(0o600)
    return Pair(cert, key, cert_file, key_file)


NGINX_CONF = """\
master_process off;
pid {dir}/nginx.pid;
error_log {dir}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {dir}/tmp/body;
    proxy_temp_path {dir}/tmp/proxy;
    fastcgi_temp_path {dir}/tmp/fastcgi;
    uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {server_cert};
        ssl_certificate_key {server_key};
        ssl_verify_client optional_no_ca;
        location / {{
            proxy_pass http://127.0.0.1:{upstream_port};
            proxy_set_header Host $http_host;
            proxy_set_header {header} $ssl_client_escaped_cert;
        }}
    }}
}}
"""


@contextmanager
def running_nginx(
    folder: Path, port: int, upstream_port: int, server: Pair
) -> Iterator[None]:
    """Run nginx in the foreground with a config in ``folder``; always stop it."""
    (folder / "tmp").mkdir()
    conf = folder / "nginx.conf"
    conf.write_text(
        NGINX_CONF.format(
            dir=folder,
            port=port,
            server_cert=server.cert_file,
            server_key=server.key_file,
            upstream_port=upstream_port,
            header=HEADER,
        )
    )
    cmd = [NGINX, "-p", str(folder), "-e", str(folder / "error.log")]
    proc = subprocess.Popen(
        [*cmd, "-c", str(conf), "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.time() + 15
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    "nginx exited: " + (folder / "error.log").read_text()
                )
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline:
                    raise RuntimeError("nginx did not start") from None
                time.sleep(0.05)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Setup:
    url: str
    ca_file: Path
    live: Any
    client: Pair
    self_signed: Pair
    stranger: Pair


@pytest.fixture
def behind_nginx(tmp_path: Path, live_issuer: Any) -> Iterator[Setup]:
    pki = tmp_path / "pki"
    pki.mkdir()
    ca = make_pair(pki, "Test Root", is_ca=True)
    server = make_pair(pki, "nginx", ca, server=True)
    client = make_pair(pki, "workload-a", ca)
    self_signed = make_pair(pki, "self-signed")
    stranger = make_pair(pki, "workload-b", ca)
    port = free_port()
    live = live_issuer(
        {
            "issuer_url": f"https://127.0.0.1:{port}",
            "mtls_ca_file": str(ca.cert_file),
            "mtls_proxy_header": HEADER,
            "mtls_trusted_proxies": ["127.0.0.1/32"],
        }
    )
    upstream = int(live.url.rsplit(":", 1)[1])
    folder = tmp_path / "nginx"
    folder.mkdir()
    with running_nginx(folder, port, upstream, server):
        yield Setup(
            f"https://127.0.0.1:{port}",
            ca.cert_file,
            live,
            client,
            self_signed,
            stranger,
        )


def token(setup: Setup, data: dict[str, str], **kwargs: Any) -> requests.Response:
    return requests.post(
        setup.url + "/token",
        data={**CC, **data},
        verify=str(setup.ca_file),
        timeout=10,
        **kwargs,
    )


def maal_of(resp: requests.Response) -> dict[str, int]:
    assert resp.status_code == 200, resp.text
    claims = jwt.decode(
        resp.json()["access_token"], options={"verify_signature": False}
    )
    maal: dict[str, int] = claims["assurance_levels"]["maal"]
    return maal


def test_mtls_bound_token_through_nginx(behind_nginx: Setup, tmp_path: Path) -> None:
    setup, live = behind_nginx, behind_nginx.live
    api = "https://api.test"
    mtls = live.add_client("mtls", "--audience", api, "--tls-auth", f"subject_dn={DN}")
    secret = live.add_client("secret", "--audience", api)
    jwks_file = tmp_path / "self-signed.jwks"
    jwk = ECAlgorithm.to_jwk(setup.self_signed.key.public_key(), as_dict=True)
    jwks_file.write_text(json.dumps({"keys": [jwk]}))
    selfsig = live.add_client(
        "self", "--audience", api, "--jwks", str(jwks_file), "--self-signed-tls"
    )
    cert = (str(setup.client.cert_file), str(setup.client.key_file))

    bound = token(setup, {"client_id": mtls["client_id"]}, cert=cert)
    bearer = token(setup, {}, auth=(secret["client_id"], secret["client_secret"]))

    bound_maal, bearer_maal = maal_of(bound), maal_of(bearer)
    assert bound_maal["boundary"] == 3 > bearer_maal["boundary"] == 1
    assert bound_maal["reuse"] == 2 > bearer_maal["reuse"] == 1
    access_token = bound.json()["access_token"]
    claims = jwt.decode(access_token, options={"verify_signature": False})
    assert claims["cnf"] == {"x5t#S256": certificate_thumbprint(setup.client.der)}
    assert claims["iss"] == setup.url

    # A self-signed certificate, passed on by optional_no_ca, whose key the
    # client registered (RFC 8705 section 2.2).
    own = (str(setup.self_signed.cert_file), str(setup.self_signed.key_file))
    resp = token(setup, {"client_id": selfsig["client_id"]}, cert=own)
    assert maal_of(resp)["boundary"] == 3

    # The verifier accepts the bound token only with its certificate.
    verifier = TokenVerifier(
        issuer=setup.url,
        audience=api,
        jwks_uri=live.url + "/jwks.json",
        allow_http=True,
    )
    verified = verifier.verify(access_token, client_cert_der=setup.client.der)
    assert verified.maal_vector["boundary"] == 3
    with pytest.raises(VerifierError):
        verifier.verify(access_token)
    with pytest.raises(VerifierError):
        verifier.verify(access_token, client_cert_der=setup.stranger.der)


def test_nginx_refusals(behind_nginx: Setup) -> None:
    setup, live = behind_nginx, behind_nginx.live
    mtls = live.add_client(
        "mtls", "--audience", "https://api.test", "--tls-auth", f"subject_dn={DN}"
    )
    cid = {"client_id": mtls["client_id"]}

    # No certificate, but the client's own copy of the header: nginx replaces
    # it with the empty variable, which it does not send at all.
    pem = setup.client.cert_file.read_text()
    forged = token(setup, cid, headers={HEADER: requests.utils.quote(pem, safe="")})
    assert (forged.status_code, forged.json()["error"]) == (401, "invalid_client")

    # Another certificate of the same CA, with another subject.
    other = (str(setup.stranger.cert_file), str(setup.stranger.key_file))
    resp = token(setup, cid, cert=other)
    assert (resp.status_code, resp.json()["error"]) == (401, "invalid_client")

    # A self-signed certificate for a tls_client_auth client: no chain.
    own = (str(setup.self_signed.cert_file), str(setup.self_signed.key_file))
    resp = token(setup, cid, cert=own)
    assert (resp.status_code, resp.json()["error"]) == (401, "invalid_client")
