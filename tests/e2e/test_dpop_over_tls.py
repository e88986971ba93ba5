"""A DPoP-bound token through the real server over real TLS (RFC 9449).

The issuer terminates TLS itself with a throwaway CA; the Kubernetes trust
source fetches its keys over https from a loopback JWKS server signed by the
same CA, so the subject token's provenance is 2 (docs/levels.md section
3.3). Binding the exchanged token to the workload's DPoP key then raises
boundary to 3 and reuse to 2, and with them the overall MAAL from 2 to 3
(section 4.2); the verifier library accepts that token only with a proof.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from verifier import Introspector, KeyFetchError, TokenVerifier, VerifierError
from verifier.cli import main as verify_cli

from ..conftest import start_issuer, stop_issuer
from ..test_dpop_issuance import Holder
from .test_live_server import JWT_TYPE, K8S_ISSUER, TE, _cluster, sa_token
from .test_nginx_mtls import Pair, make_pair

API = "https://payments.test"


class _Jwks(BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def jwks_over_https(tmp_path: Path) -> Iterator[tuple[str, Pair, Pair, Any, str]]:
    """A loopback https server publishing a cluster's JWKS; yields its URL,
    the CA, the server pair (reused by the issuer), the cluster key and kid."""
    pki = tmp_path / "pki"
    pki.mkdir()
    ca = make_pair(pki, "Test Root", is_ca=True)
    server_pair = make_pair(pki, "localhost", ca, server=True)
    key, kid, jwks_path = _cluster(tmp_path)
    handler = type("Handler", (_Jwks,), {"body": jwks_path.read_bytes()})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(server_pair.cert_file, server_pair.key_file)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"https://127.0.0.1:{httpd.server_address[1]}/keys"
        yield url, ca, server_pair, key, kid
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def test_dpop_over_tls_raises_overall_maal_and_needs_the_proof(
    tmp_path: Path, jwks_over_https: tuple[str, Pair, Pair, Any, str]
) -> None:
    jwks_url, ca, server_pair, cluster_key, kid = jwks_over_https
    home = tmp_path / "home"
    home.mkdir()
    config = {
        "trust_sources": {
            "cluster": {
                "platform": "kubernetes",
                "issuer": K8S_ISSUER,
                "audience": "wimse-issuer",
                "jwks_url": jwks_url,
                "ca_file": str(ca.cert_file),
            }
        }
    }
    live = start_issuer(
        home,
        config,
        tls_ca=ca.cert_file,
        tls_files=(server_pair.cert_file, server_pair.key_file),
    )
    try:
        assert live.url.startswith("https://127.0.0.1:")
        reg = live.add_client("pod", "--audience", API)
        auth = (reg["client_id"], reg["client_secret"])
        verify = str(ca.cert_file)

        def exchange(headers: dict[str, str]) -> dict[str, Any]:
            resp = requests.post(
                live.url + "/token",
                data={
                    "grant_type": TE,
                    "subject_token": sa_token(cluster_key, kid, "wimse-issuer"),
                    "subject_token_type": JWT_TYPE,
                },
                auth=auth,
                headers=headers,
                verify=verify,
                timeout=10,
            )
            assert resp.status_code == 200, resp.text
            body: dict[str, Any] = resp.json()
            return body

        # The verifier discovers the keys over https under the private CA.
        verifier = TokenVerifier(issuer=live.url, audience=API, ca_file=verify)

        bearer = exchange({})
        assert bearer["token_type"] == "Bearer"
        plain = verifier.verify(bearer["access_token"])
        assert (plain.mial, plain.maal) == (2, 2)

        holder = Holder()
        bound = exchange({"DPoP": holder.proof(htu=live.url + "/token")})
        assert bound["token_type"] == "DPoP"
        token = bound["access_token"]
        with pytest.raises(VerifierError):
            verifier.verify(token)  # presented as a bearer token
        api_url = API + "/orders"
        verified = verifier.verify(
            token,
            presentation="dpop",
            dpop_proof=holder.proof(htu=api_url, htm="GET", access_token=token),
            http_method="GET",
            http_url=api_url,
        )
        assert (verified.mial, verified.maal) == (2, 3)
        assert verified.maal_vector["boundary"] == 3 > plain.maal_vector["boundary"]
        assert verified.maal_vector["reuse"] == 2 > plain.maal_vector["reuse"]
        assert verified.claims["cnf"] == {"jkt": holder.jkt}
        # A proof made by another key does not present the token.
        with pytest.raises(VerifierError):
            verifier.verify(
                token,
                presentation="dpop",
                dpop_proof=Holder().proof(htu=api_url, htm="GET", access_token=token),
                http_method="GET",
                http_url=api_url,
            )
        jti = verified.claims["jti"]
        assert token not in live.log_once(jti)

        # Without the CA the keys cannot be fetched, and the error says why.
        blind = TokenVerifier(issuer=live.url, audience=API)
        with pytest.raises(KeyFetchError) as caught:
            blind.verify(bearer["access_token"])
        assert "SSLCertVerificationError" in str(caught.value)
        # Introspection and wimse-verify take the same CA file.
        reader = Introspector(
            issuer=live.url,
            client_id=reg["client_id"],
            client_secret=reg["client_secret"],
            ca_file=verify,
        )
        assert reader.introspect(bearer["access_token"])["active"] is True
        args = ["--issuer", live.url, "--audience", API, bearer["access_token"]]
        assert verify_cli([*args, "--ca-file", verify]) == 0
        assert verify_cli(args) == 1
    finally:
        stop_issuer(live)
