"""End to end: the real ``wimse-issuer serve`` (granian) on a loopback port,
driven by Authlib's OAuth client and by plain HTTP."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
import requests
from authlib.integrations.requests_client import OAuth2Session
from authlib.oauth2.rfc7523 import PrivateKeyJWT
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from joserfc.jwk import ECKey
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from issuer.keys import jwk_thumbprint

from ..conftest import basic, start_issuer, stop_issuer, wait_for_workers

TE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
K8S_ISSUER = "https://k8s.cluster.test"


def verify_with_server_keys(url: str, token: str, audience: str) -> dict[str, Any]:
    meta = requests.get(
        url + "/.well-known/oauth-authorization-server", timeout=5
    ).json()
    assert meta["issuer"] == url
    jwks = requests.get(meta["jwks_uri"], timeout=5).json()
    kid = jwt.get_unverified_header(token)["kid"]
    jwk = next(k for k in jwks["keys"] if k["kid"] == kid)
    claims: dict[str, Any] = jwt.decode(
        token, jwt.PyJWK(jwk).key, algorithms=["ES256"], audience=audience, issuer=url
    )
    return claims


def test_authlib_client_secret_basic(live_issuer: Any) -> None:
    live = live_issuer()
    reg = live.add_client("web", "--audience", "https://api.test", "--scope", "read")
    session = OAuth2Session(
        reg["client_id"],
        reg["client_secret"],
        token_endpoint_auth_method="client_secret_basic",
        scope="read",
    )
    token = session.fetch_token(live.url + "/token", grant_type="client_credentials")
    assert token["token_type"] == "Bearer"
    claims = verify_with_server_keys(
        live.url, token["access_token"], "https://api.test"
    )
    assert (claims["mial"], claims["maal"]) == (1, 1)
    assert claims["scope"] == "read"

    # Neither the issued token nor the client secret reaches the log.
    log = live.log_once(claims["jti"])
    assert "token issued" in log
    assert token["access_token"] not in log
    assert token["access_token"].split(".")[1] not in log
    assert reg["client_secret"] not in log

    # The audit trail answers "which evidence backed token jti X".
    record = json.loads(live.cli("audit", "show", claims["jti"]).stdout)
    assert record["decision"] == "issued"
    assert record["client_id"] == reg["client_id"]
    assert record["mial"] == 1


def test_authlib_private_key_jwt(live_issuer: Any, tmp_path: Path) -> None:
    live = live_issuer()
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    jwk["kid"] = jwk_thumbprint(jwk)
    jwks_file = tmp_path / "client-jwks.json"
    jwks_file.write_text(json.dumps({"keys": [jwk]}))
    reg = live.add_client(
        "keyed", "--audience", "https://api.test", "--jwks", str(jwks_file)
    )
    assert "client_secret" not in reg
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    session = OAuth2Session(
        reg["client_id"],
        ECKey.import_key(pem),
        token_endpoint_auth_method="private_key_jwt",
    )
    session.register_client_auth_method(
        ShortLivedPrivateKeyJWT(live.url + "/token", alg="ES256")
    )
    for _ in range(2):
        token = session.fetch_token(
            live.url + "/token", grant_type="client_credentials"
        )
    claims = verify_with_server_keys(
        live.url, token["access_token"], "https://api.test"
    )
    assert claims["assurance_levels"]["credential"] == "private_key_jwt"


class ShortLivedPrivateKeyJWT(PrivateKeyJWT):  # type: ignore[misc]
    """Authlib's private_key_jwt with a 60 s assertion and a fresh claim set.

    Authlib signs one-hour assertions by default, longer than the issuer's
    five-minute limit, and stores the generated jti in the shared claims
    dict, which would replay it on the next request.
    """

    def sign(self, auth: Any, token_endpoint: str) -> Any:
        self.claims = {"exp": int(time.time()) + 60}
        return super().sign(auth, token_endpoint)


def _cluster(tmp_path: Path) -> tuple[rsa.RSAPrivateKey, str, Path]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    jwk["kid"] = "cluster-key-1"
    jwk["alg"] = "RS256"
    path = tmp_path / "cluster-jwks.json"
    path.write_text(json.dumps({"keys": [jwk]}))
    return key, "cluster-key-1", path


def sa_token(key: Any, kid: str, audience: str, lifetime: int = 600) -> str:
    now = int(time.time())
    claims = {
        "iss": K8S_ISSUER,
        "sub": "system:serviceaccount:payments:api",
        "aud": [audience],
        "iat": now,
        "nbf": now,
        "exp": now + lifetime,
        "jti": str(uuid.uuid4()),
        "kubernetes.io": {
            "namespace": "payments",
            "serviceaccount": {"name": "api", "uid": str(uuid.uuid4())},
            "pod": {"name": "api-7d9c-abcde", "uid": str(uuid.uuid4())},
            "node": {"name": "node-1", "uid": str(uuid.uuid4())},
        },
    }
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid})


def test_token_exchange_over_http_with_a_kubernetes_token(
    live_issuer: Any, tmp_path: Path
) -> None:
    key, kid, jwks_path = _cluster(tmp_path)
    config = {
        "trust_sources": {
            "cluster": {
                "platform": "kubernetes",
                "issuer": K8S_ISSUER,
                "audience": "wimse-issuer",
                "jwks_file": str(jwks_path),
            }
        }
    }
    live = live_issuer(config)
    reg = live.add_client("pod", "--audience", "https://payments.test")
    subject_token = sa_token(key, kid, "wimse-issuer", lifetime=120)
    resp = requests.post(
        live.url + "/token",
        data={
            "grant_type": TE,
            "subject_token": subject_token,
            "subject_token_type": JWT_TYPE,
            "min_mial": "2",
        },
        auth=(reg["client_id"], reg["client_secret"]),
        timeout=10,
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["issued_token_type"] == "urn:ietf:params:oauth:token-type:access_token"
    assert body["expires_in"] <= 120
    claims = verify_with_server_keys(
        live.url, body["access_token"], "https://payments.test"
    )
    assert claims["sub"] == "system:serviceaccount:payments:api"
    assert claims["mial"] == 2
    assert claims["assurance_levels"]["mial"]["deployment_environment"] == 1

    # A token for another audience is refused with invalid_request.
    resp = requests.post(
        live.url + "/token",
        data={
            "grant_type": TE,
            "subject_token": sa_token(key, kid, "someone-else"),
            "subject_token_type": JWT_TYPE,
        },
        auth=(reg["client_id"], reg["client_secret"]),
        timeout=10,
    )
    assert resp.status_code == 400
    assert resp.json()["error"] == "invalid_request"
    assert subject_token not in live.log_once(claims["jti"])


def test_cli_manages_clients_keys_and_policy(live_issuer: Any, tmp_path: Path) -> None:
    live = live_issuer()
    reg = live.add_client("cli", "--audience", "https://api.test")
    cid = reg["client_id"]
    listed = json.loads(live.cli("client", "list", "--json").stdout)
    assert [c["client_id"] for c in listed] == [cid]
    shown = json.loads(live.cli("client", "show", cid).stdout)
    assert "client_secret" not in shown and shown["has_secret"] is True
    rotated = json.loads(
        live.cli("client", "update", cid, "--rotate-secret", "--json").stdout
    )
    new_secret = rotated["client_secret"]
    for secret in (reg["client_secret"], new_secret):
        resp = requests.post(
            live.url + "/token",
            data={"grant_type": "client_credentials"},
            auth=(cid, secret),
            timeout=10,
        )
        assert resp.status_code == 200
    live.cli("client", "disable", cid)
    time.sleep(1.1)  # client_cache_seconds: a disable reaches the server within 1 s
    resp = requests.post(
        live.url + "/token",
        data={"grant_type": "client_credentials"},
        auth=(cid, new_secret),
        timeout=10,
    )
    assert resp.status_code == 401

    keys = json.loads(live.cli("keys", "list", "--json").stdout)
    assert [k["state"] for k in keys] == ["signing"]
    out = live.cli("keys", "rotate").stdout
    assert out.startswith("added ")
    keys = json.loads(live.cli("keys", "list", "--json").stdout)
    assert sorted(k["state"] for k in keys) == ["pending", "signing"]
    # The start it prints is the one it stored.
    pending = next(k for k in keys if k["state"] == "pending")
    printed = out.strip().rsplit(" ", 1)[1]
    assert printed == time.strftime(
        "%Y-%m-%dT%H:%M:%SZ", time.gmtime(pending["not_before"])
    )
    assert pending["kid"] in out
    time.sleep(1.2)  # the server re-reads the key state at most once a second
    jwks = requests.get(live.url + "/jwks.json", timeout=5).json()
    assert len(jwks["keys"]) == 2

    policy = tmp_path / "policy.toml"
    policy.write_text('version = "v1"\n[default]\nmin_mial = 5\n')
    result = subprocess.run(
        [sys.executable, "-m", "issuer", "policy", "check", str(policy)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert "min_mial" in result.stderr
    policy.write_text('version = "v1"\n[default]\nmin_mial = 2\n')
    out = live.cli("policy", "check", str(policy)).stdout
    assert "valid" in out

    live.cli("client", "delete", cid)
    listed = json.loads(live.cli("client", "list", "--json").stdout)
    assert listed == []
    audit = live.cli("audit", "list", "--client", cid).stdout.splitlines()
    assert len(audit) == 2


def test_sigterm_stops_the_server_even_with_a_body_that_never_ends(
    tmp_path: Path,
) -> None:
    import signal
    import socket

    from issuer.cli import SHUTDOWN_SECONDS

    live = start_issuer(tmp_path)
    try:
        host, port = live.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as stalled:
            stalled.sendall(
                b"POST /token HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/x-www-form-urlencoded\r\n"
                b"Content-Length: 100\r\n\r\ngrant_type="
            )
            time.sleep(0.5)
            started = time.monotonic()
            live.process.send_signal(signal.SIGTERM)
            code = live.process.wait(timeout=SHUTDOWN_SECONDS + 15)
        assert code == 0
        assert time.monotonic() - started < SHUTDOWN_SECONDS + 10
        assert "refused to gracefully stop" in live.log_text()
    finally:
        stop_issuer(live)


def test_a_clean_stop_folds_the_sqlite_wal_into_the_database(tmp_path: Path) -> None:
    live = start_issuer(tmp_path, workers=2)
    try:
        # A worker stopped while still loading never closes its connections
        # (so the WAL stays, to be recovered at the next start): stop only
        # once both serve.
        wait_for_workers(live, 2)
        reg = live.add_client("wal", "--audience", "https://api.test")
        for _ in range(4):
            resp = requests.post(
                live.url + "/token",
                data={"grant_type": "client_credentials"},
                headers={
                    "Authorization": basic(reg["client_id"], reg["client_secret"])
                },
                timeout=10,
            )
            assert resp.status_code == 200
        assert (tmp_path / "wimse-issuer.db-wal").exists()
    finally:
        stop_issuer(live)
    # Each worker closed its connections on SIGTERM, then the serve process,
    # with no worker left, opened and closed one more: that last close
    # checkpointed the WAL into the database and removed it.
    assert not (tmp_path / "wimse-issuer.db-wal").exists()
    assert "4 records verified" in live.cli("audit", "verify").stdout
