"""DPoP-bound access tokens at the token endpoint (RFC 9449 sections 5 to 8),
and the verifier library accepting them only with a proof."""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from typing import Any

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from issuer.keys import jwk_thumbprint
from issuer.web import create_app
from verifier import TokenVerifier, VerifierError

from .conftest import basic

TOKEN_URL = "https://issuer.test/token"
CC = {"grant_type": "client_credentials"}


class Holder:
    """A workload's DPoP key and proof maker."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.jwk = ECAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        self.jkt = jwk_thumbprint(self.jwk)

    def proof(
        self,
        htu: str = TOKEN_URL,
        htm: str = "POST",
        *,
        nonce: str | None = None,
        jti: str | None = None,
        iat: int | None = None,
        access_token: str | None = None,
    ) -> str:
        claims: dict[str, Any] = {
            "jti": jti or secrets.token_urlsafe(12),
            "htm": htm,
            "htu": htu,
            "iat": int(time.time()) if iat is None else iat,
        }
        if nonce is not None:
            claims["nonce"] = nonce
        if access_token is not None:
            digest = hashlib.sha256(access_token.encode()).digest()
            claims["ath"] = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
        headers = {"typ": "dpop+jwt", "jwk": self.jwk}
        return jwt.encode(claims, self.key, algorithm="ES256", headers=headers)


@pytest.fixture
def registered(service: Any) -> dict[str, str]:
    client, secret = service.clients.add("dpop", audiences=["https://api.test"])
    return {"Authorization": basic(client.client_id, secret)}


def test_dpop_proof_binds_the_token_and_raises_boundary(
    client_app: Any, registered: dict[str, str]
) -> None:
    holder = Holder()
    bearer = client_app.post("/token", data=CC, headers=registered).get_json()
    resp = client_app.post(
        "/token", data=CC, headers={**registered, "DPoP": holder.proof()}
    )
    assert resp.status_code == 200, resp.get_json()
    body = resp.get_json()
    assert body["token_type"] == "DPoP"
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["cnf"] == {"jkt": holder.jkt}
    plain = jwt.decode(bearer["access_token"], options={"verify_signature": False})
    assert "cnf" not in plain
    maal, plain_maal = (
        claims["assurance_levels"]["maal"],
        plain["assurance_levels"]["maal"],
    )
    assert (plain_maal["boundary"], maal["boundary"]) == (1, 3)
    assert (plain_maal["reuse"], maal["reuse"]) == (1, 2)


@pytest.mark.parametrize(
    "case",
    ["replayed", "other-htu", "other-htm", "too-old", "future", "hs256", "two-proofs"],
)
def test_bad_proofs_are_invalid_dpop_proof(
    client_app: Any, registered: dict[str, str], case: str
) -> None:
    holder = Holder()
    proof = holder.proof()
    if case == "replayed":
        ok = client_app.post("/token", data=CC, headers={**registered, "DPoP": proof})
        assert ok.status_code == 200
    elif case == "other-htu":
        proof = holder.proof(htu="https://elsewhere.test/token")
    elif case == "other-htm":
        proof = holder.proof(htm="GET")
    elif case == "too-old":
        proof = holder.proof(iat=int(time.time()) - 600)
    elif case == "future":
        proof = holder.proof(iat=int(time.time()) + 600)
    elif case == "hs256":
        proof = jwt.encode(
            {"jti": "x", "htm": "POST", "htu": TOKEN_URL, "iat": int(time.time())},
            "secret-key-of-thirty-two-bytes!!",
            algorithm="HS256",
            headers={"typ": "dpop+jwt", "jwk": holder.jwk},
        )
    headers = [*registered.items(), ("DPoP", proof)]
    if case == "two-proofs":
        headers.append(("DPoP", holder.proof()))
    resp = client_app.post("/token", data=CC, headers=headers)
    assert resp.status_code == 400
    assert resp.get_json()["error"] == "invalid_dpop_proof"


def test_dpop_bound_client_gets_no_bearer_token(client_app: Any, service: Any) -> None:
    client, secret = service.clients.add(
        "bound", audiences=["https://api.test"], dpop_bound=True
    )
    auth = {"Authorization": basic(client.client_id, secret)}
    resp = client_app.post("/token", data=CC, headers=auth)
    assert resp.status_code == 400
    assert resp.get_json()["error"] == "invalid_request"
    resp = client_app.post(
        "/token", data=CC, headers={**auth, "DPoP": Holder().proof()}
    )
    assert resp.get_json()["token_type"] == "DPoP"


def test_server_nonces_when_required(make_service: Any) -> None:
    service = make_service(dpop_require_nonce=True)
    app = create_app(service).test_client()
    client, secret = service.clients.add("n", audiences=["https://api.test"])
    auth = {"Authorization": basic(client.client_id, secret)}
    holder = Holder()
    first = app.post("/token", data=CC, headers={**auth, "DPoP": holder.proof()})
    assert first.status_code == 400
    assert first.get_json()["error"] == "use_dpop_nonce"
    nonce = first.headers["DPoP-Nonce"]
    jti = secrets.token_urlsafe(12)
    second = app.post(
        "/token", data=CC, headers={**auth, "DPoP": holder.proof(nonce=nonce, jti=jti)}
    )
    assert second.status_code == 200
    assert second.headers["DPoP-Nonce"]
    # The same jti under a fresh nonce is still a replay.
    fresh = second.headers["DPoP-Nonce"]
    third = app.post(
        "/token", data=CC, headers={**auth, "DPoP": holder.proof(nonce=fresh, jti=jti)}
    )
    assert third.get_json()["error"] == "invalid_dpop_proof"
    forged = app.post(
        "/token", data=CC, headers={**auth, "DPoP": holder.proof(nonce="A" * 43)}
    )
    assert forged.get_json()["error"] == "use_dpop_nonce"


def test_proof_used_on_one_instance_is_refused_on_another(make_service: Any) -> None:
    one = make_service(replay_store="database")
    two = make_service(replay_store="database")
    client, secret = one.clients.add("x", audiences=["https://api.test"])
    proof = Holder().proof()
    auth = {"Authorization": basic(client.client_id, secret)}
    assert (
        create_app(one)
        .test_client()
        .post("/token", data=CC, headers={**auth, "DPoP": proof})
        .status_code
        == 200
    )
    resp = (
        create_app(two)
        .test_client()
        .post("/token", data=CC, headers={**auth, "DPoP": proof})
    )
    assert resp.get_json()["error"] == "invalid_dpop_proof"


def test_metadata_and_introspection_know_dpop(
    client_app: Any, registered: dict[str, str]
) -> None:
    meta = client_app.get("/.well-known/oauth-authorization-server").get_json()
    assert "ES256" in meta["dpop_signing_alg_values_supported"]
    holder = Holder()
    token = client_app.post(
        "/token", data=CC, headers={**registered, "DPoP": holder.proof()}
    ).get_json()["access_token"]
    body = client_app.post(
        "/introspect", data={"token": token}, headers=registered
    ).get_json()
    assert body["token_type"] == "DPoP"
    assert body["cnf"] == {"jkt": holder.jkt}


def test_live_server_dpop_token_is_accepted_by_the_verifier_only_with_a_proof(
    live_issuer: Any,
) -> None:
    live = live_issuer()
    reg = live.add_client("rp-test", "--audience", "https://api.test")
    holder = Holder()
    resp = requests.post(
        live.url + "/token",
        data=CC,
        auth=(reg["client_id"], reg["client_secret"]),
        headers={"DPoP": holder.proof(htu=live.url + "/token")},
        timeout=10,
    )
    assert resp.status_code == 200, resp.text
    token = resp.json()["access_token"]
    verifier = TokenVerifier(
        issuer=live.url, audience="https://api.test", allow_http=True
    )
    with pytest.raises(VerifierError):
        verifier.verify(token)  # presented as a bearer token
    api_url = "https://api.test/orders"
    proof = holder.proof(htu=api_url, htm="GET", access_token=token)
    verified = verifier.verify(
        token,
        presentation="dpop",
        dpop_proof=proof,
        http_method="GET",
        http_url=api_url,
    )
    assert verified.maal_vector["boundary"] == 3
    with pytest.raises(VerifierError):  # the same proof again is a replay
        verifier.verify(
            token, presentation="dpop", dpop_proof=proof, http_method="GET",
            http_url=api_url,
        )  # fmt: skip
