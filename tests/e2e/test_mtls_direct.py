"""Mutual TLS terminated by the issuer itself (RFC 8705), no proxy.

A real ``wimse-issuer serve`` with ``tls_cert_file`` runs on cheroot with
a throwaway CA made by cryptography into tmp_path; workloads use
``requests`` with their client certificates. The handshake proves
possession of the key; issuer/mtls.py still decides which client the
certificate authenticates. Certificates that do not chain to a configured
CA never get past the handshake.
"""

from __future__ import annotations

import json
import signal
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from jwt.algorithms import ECAlgorithm

from issuer.mtls import certificate_thumbprint
from verifier import TokenVerifier, VerifierError

from ..conftest import LiveIssuer, read_until_closed, start_issuer, stop_issuer
from ..test_mtls import DAY, Issued, at, issue
from .test_nginx_mtls import DN, Pair, maal_of, make_pair

API = "https://api.test"
CC = {"grant_type": "client_credentials"}


@dataclass
class Direct:
    """The running issuer, its PKI and its registered clients."""

    live: LiveIssuer
    ca_file: Path
    client: Pair  # workload-a, DN registered for the mTLS client
    stranger: Pair  # same CA, another subject
    foreign: Pair  # workload-a's subject from a CA the issuer does not know
    expired: Pair  # workload-a's subject, the right CA, expired
    self_signed: Pair  # self-signed, not listed anywhere
    pinned: Pair  # self-signed and listed in tls_client_ca_file
    clients: dict[str, dict[str, Any]]

    @property
    def url(self) -> str:
        return self.live.url

    def post(
        self, data: dict[str, str], cert: Pair | None = None, **kwargs: Any
    ) -> requests.Response:
        return requests.post(
            self.url + "/token",
            data={**CC, **data},
            cert=(str(cert.cert_file), str(cert.key_file)) if cert else None,
            verify=str(self.ca_file),
            timeout=10,
            **kwargs,
        )

    def cid(self, name: str) -> dict[str, str]:
        return {"client_id": self.clients[name]["client_id"]}

    def secret(self) -> tuple[str, str]:
        reg = self.clients["secret"]
        return reg["client_id"], reg["client_secret"]


def write_pair(folder: Path, issued: Issued) -> Pair:
    """PEM files for a certificate made by tests/test_mtls.py's ``issue``."""
    folder.mkdir()
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(issued.pem)
    key_file.write_bytes(
        issued.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_file.chmod(0o600)
    return Pair(issued.cert, issued.key, cert_file, key_file)


def jwks_file(folder: Path, pair: Pair) -> str:
    path = folder / f"{pair.cert_file.stem}.jwks"
    jwk = ECAlgorithm.to_jwk(pair.key.public_key(), as_dict=True)
    path.write_text(json.dumps({"keys": [jwk]}))
    return str(path)


@pytest.fixture(scope="module")
def direct(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Direct]:
    tmp = tmp_path_factory.mktemp("direct")
    pki = tmp / "pki"
    pki.mkdir()
    ca = make_pair(pki, "Test Root", is_ca=True)
    server = make_pair(pki, "issuer", ca, server=True)
    client = make_pair(pki, "workload-a", ca)
    stranger = make_pair(pki, "workload-b", ca)
    self_signed = make_pair(pki, "self-signed")
    pinned = make_pair(pki, "pinned")
    other = make_pair(pki, "Other Root", is_ca=True)
    foreign = write_pair(pki / "foreign", issue(Issued(other.key, other.cert)))
    expired = write_pair(
        pki / "expired",
        issue(Issued(ca.key, ca.cert), not_before=at(-10 * DAY), not_after=at(-DAY)),
    )
    home = tmp / "home"
    home.mkdir()
    config = {
        "tls_cert_file": str(server.cert_file),
        "tls_key_file": str(server.key_file),
        # A self-signed certificate listed as a handshake CA passes the
        # handshake; mtls_ca_file's CA is added to the handshake set.
        "tls_client_ca_file": str(pinned.cert_file),
        "mtls_ca_file": str(ca.cert_file),
    }
    with pytest.MonkeyPatch.context() as env:
        # A process variable must never pass for a handshake certificate:
        # cheroot's environ holds only the request and the TLS entries
        # (test_no_certificate_... fails if it leaked).
        env.setenv("SSL_CLIENT_CERT", client.cert_file.read_text())
        live = start_issuer(home, config, tls_ca=ca.cert_file)
    try:
        clients = {
            "mtls": live.add_client(
                "mtls", "--audience", API, "--tls-auth", f"subject_dn={DN}"
            ),
            "secret": live.add_client("secret", "--audience", API),
            "pinned": live.add_client(
                "pinned",
                "--audience",
                API,
                "--jwks",
                jwks_file(pki, pinned),
                "--self-signed-tls",
            ),
            "self": live.add_client(
                "self",
                "--audience",
                API,
                "--jwks",
                jwks_file(pki, self_signed),
                "--self-signed-tls",
            ),
        }
        yield Direct(
            live,
            ca.cert_file,
            client,
            stranger,
            foreign,
            expired,
            self_signed,
            pinned,
            clients,
        )
    finally:
        stop_issuer(live)


def claims_of(resp: requests.Response) -> dict[str, Any]:
    assert resp.status_code == 200, resp.text
    claims: dict[str, Any] = jwt.decode(
        resp.json()["access_token"], options={"verify_signature": False}
    )
    return claims


def error_of(resp: requests.Response) -> tuple[int, str]:
    return resp.status_code, resp.json()["error"]


def test_certificate_bound_token_over_the_issuers_own_tls(direct: Direct) -> None:
    bound = direct.post(direct.cid("mtls"), direct.client)
    bearer = direct.post({}, auth=direct.secret())

    body = bound.json()
    assert body["token_type"] == "Bearer"  # RFC 8705 section 3: still Bearer
    claims = claims_of(bound)
    assert claims["iss"] == direct.url
    assert claims["cnf"] == {"x5t#S256": certificate_thumbprint(direct.client.der)}
    bound_maal, bearer_maal = maal_of(bound), maal_of(bearer)
    assert bound_maal["boundary"] == 3 > bearer_maal["boundary"] == 1
    assert bound_maal["reuse"] == 2 > bearer_maal["reuse"] == 1
    assert "cnf" not in claims_of(bearer)

    # The audit record names the issuer's own handshake, not a proxy's.
    record = json.loads(direct.live.cli("audit", "show", claims["jti"]).stdout)
    boundary = record["ratings"]["reasons"]["maal.boundary"]
    assert boundary == "certificate-bound; key proven in a live TLS handshake"
    assert record["reasons"][0] == "mial = 1, maal = 1"

    # The verifier library accepts the token only with the same certificate.
    jwks = requests.get(
        direct.url + "/jwks.json", verify=str(direct.ca_file), timeout=5
    ).json()
    verifier = TokenVerifier(issuer=direct.url, audience=API, jwks=jwks)
    token = body["access_token"]
    verified = verifier.verify(token, client_cert_der=direct.client.der)
    assert verified.maal_vector["boundary"] == 3
    with pytest.raises(VerifierError):
        verifier.verify(token)
    with pytest.raises(VerifierError):
        verifier.verify(token, client_cert_der=direct.stranger.der)


def test_a_secret_client_presenting_a_certificate_gets_a_bound_token(
    direct: Direct,
) -> None:
    resp = direct.post({}, direct.stranger, auth=direct.secret())

    claims = claims_of(resp)
    assert claims["cnf"] == {"x5t#S256": certificate_thumbprint(direct.stranger.der)}
    assert claims["assurance_levels"]["maal"]["boundary"] == 3


def test_wrong_subject_is_invalid_client(direct: Direct) -> None:
    resp = direct.post(direct.cid("mtls"), direct.stranger)

    assert error_of(resp) == (401, "invalid_client")


def test_no_certificate_for_a_tls_client_auth_client_is_invalid_client(
    direct: Direct,
) -> None:
    resp = direct.post(direct.cid("mtls"))

    assert error_of(resp) == (401, "invalid_client")


@pytest.mark.parametrize(
    ("which", "alert", "logged"),
    [
        ("foreign", "unknown ca", "unable to get local issuer certificate"),
        ("expired", "certificate expired", "certificate has expired"),
        ("self_signed", "unknown ca", "self-signed certificate"),
    ],
)
def test_certificates_that_do_not_chain_fail_the_handshake(
    direct: Direct, which: str, alert: str, logged: str
) -> None:
    # foreign: a CA the issuer was not configured with; expired: the right
    # CA, outside its validity; self_signed: not listed as a handshake CA
    # (Python's ssl has no verify callback to let it through; see
    # docs/sender-constraints.md). None of them reaches the application:
    # the client reads the TLS alert, the server logs why.
    client = "self" if which == "self_signed" else "mtls"
    with pytest.raises(requests.exceptions.SSLError, match=alert):
        direct.post(direct.cid(client), getattr(direct, which))
    direct.live.log_once(f'"{logged}"')

    # The server goes on serving.
    assert direct.post(direct.cid("mtls"), direct.client).status_code == 200


def test_a_self_signed_certificate_listed_as_handshake_ca_authenticates(
    direct: Direct,
) -> None:
    resp = direct.post(direct.cid("pinned"), direct.pinned)

    claims = claims_of(resp)
    assert claims["cnf"] == {"x5t#S256": certificate_thumbprint(direct.pinned.der)}
    assert claims["assurance_levels"]["credential"] == "self_signed_tls_client_auth"


def test_certificate_headers_are_not_believed(direct: Direct) -> None:
    pem = quote(direct.client.cert_file.read_text(), safe="")
    forged = {"SSL-Client-Cert": pem, "X-SSL-Client-Cert": pem, "Client-Cert": pem}

    # Without a certificate in the handshake: no client authenticated.
    resp = direct.post(direct.cid("mtls"), headers=forged)
    assert error_of(resp) == (401, "invalid_client")
    # With another certificate in the handshake, that one counts.
    resp = direct.post(direct.cid("mtls"), direct.stranger, headers=forged)
    assert error_of(resp) == (401, "invalid_client")
    # A secret client sending the headers gets an unbound token.
    resp = direct.post({}, headers=forged, auth=direct.secret())
    assert "cnf" not in claims_of(resp)


def test_silent_connections_hold_no_thread(direct: Direct) -> None:
    # A new connection waits in the selector until the client sends, so
    # many more silent sockets than worker threads (4) stop nobody.
    port = int(direct.url.rsplit(":", 1)[1])
    address = ("127.0.0.1", port)
    silent = [socket.create_connection(address, timeout=5) for _ in range(40)]
    try:
        time.sleep(0.5)
        started = time.monotonic()
        for _ in range(3):
            resp = direct.post(direct.cid("mtls"), direct.client)
            assert resp.status_code == 200
        assert time.monotonic() - started < 3
    finally:
        for sock in silent:
            sock.close()


def test_a_stalled_handshake_is_dropped_after_the_handshake_timeout(
    direct: Direct,
) -> None:
    from issuer.tlsserve import HANDSHAKE_TIMEOUT

    port = int(direct.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"\x16\x03\x01")  # the start of a ClientHello, then nothing
        started = time.monotonic()
        assert sock.recv(1024) == b""  # closed by the server
        waited = time.monotonic() - started
    assert HANDSHAKE_TIMEOUT - 1 < waited < HANDSHAKE_TIMEOUT + 3


def test_tls_without_client_cas_by_flags_and_graceful_stop(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    pki.mkdir()
    ca = make_pair(pki, "Test Root", is_ca=True)
    server = make_pair(pki, "issuer", ca, server=True)
    client = make_pair(pki, "workload-a", ca)
    home = tmp_path / "home"
    home.mkdir()
    live = start_issuer(
        home,
        tls_ca=ca.cert_file,
        tls_files=(server.cert_file, server.key_file),
    )
    try:
        meta = requests.get(
            live.url + "/.well-known/oauth-authorization-server",
            verify=str(ca.cert_file),
            timeout=5,
        ).json()
        assert meta["issuer"] == live.url  # https://127.0.0.1:PORT by default
        reg = live.add_client("secret", "--audience", API)
        # No client CA configured: no certificate is asked for, so none binds.
        resp = requests.post(
            live.url + "/token",
            data=CC,
            auth=(reg["client_id"], reg["client_secret"]),
            cert=(str(client.cert_file), str(client.key_file)),
            verify=str(ca.cert_file),
            timeout=10,
        )
        assert "cnf" not in claims_of(resp)

        live.process.send_signal(signal.SIGTERM)
        assert live.process.wait(timeout=15) == 0
        live.log_once("shutting down")
    finally:
        stop_issuer(live)


def test_a_certificate_client_authenticates_at_every_endpoint(direct: Direct) -> None:
    """RFC 8705 section 2: mutual TLS authenticates the client wherever
    client authentication is required, not only at /token."""

    def call(path: str, data: dict[str, str], cert: Pair | None) -> requests.Response:
        return requests.post(
            direct.url + path,
            data={**direct.cid("mtls"), **data},
            cert=(str(cert.cert_file), str(cert.key_file)) if cert else None,
            verify=str(direct.ca_file),
            timeout=10,
        )

    token = direct.post(direct.cid("mtls"), direct.client).json()["access_token"]

    challenge = call("/challenge", {}, direct.client)
    assert challenge.status_code == 200, challenge.text
    assert challenge.json()["nonce"]
    seen = call("/introspect", {"token": token}, direct.client)
    assert seen.status_code == 200, seen.text
    assert seen.json()["active"] is True
    assert seen.json()["cnf"] == {"x5t#S256": certificate_thumbprint(direct.client.der)}

    # Without its certificate the client is told what is missing; with
    # another client's certificate it is not authenticated.
    missing = call("/introspect", {"token": token}, None)
    assert error_of(missing) == (401, "invalid_client")
    assert "client certificate required" in missing.json()["error_description"]
    assert error_of(call("/revoke", {"token": token}, direct.stranger)) == (
        401,
        "invalid_client",
    )

    revoked = call("/revoke", {"token": token}, direct.client)
    assert revoked.status_code == 200, revoked.text
    after = call("/introspect", {"token": token}, direct.client)
    assert after.json() == {"active": False}


def test_malformed_chunked_body_is_invalid_request_not_500(direct: Direct) -> None:
    import ssl as ssl_module

    context = ssl_module.create_default_context(cafile=str(direct.ca_file))
    host, port = direct.url.removeprefix("https://").split(":")
    for path in ("/token", "/introspect"):
        with (
            socket.create_connection((host, int(port)), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname=host) as sock,
        ):
            sock.sendall(
                f"POST {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n"
                "Content-Type: application/x-www-form-urlencoded\r\n"
                "Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n".encode()
            )
            answer = read_until_closed(sock)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400"), (path, head)
        assert json.loads(body)["error"] == "invalid_request"
