"""JWT-SVIDs as client assertions (docs/platforms.md, "JWT-SVID client
assertions"), signed with the published c-spiffe test key."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from jwt.algorithms import ECAlgorithm

from issuer.clients import RegistrationError
from issuer.web import create_app

from .test_token_exchange import _spiffe_key

KID = "ff3c5c96-392e-46ef-a839-6ff16027af78"
SPIFFE_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-spiffe"
ID = "spiffe://example.com/payments/api"


@pytest.fixture
def svid_service(make_service: Any, tmp_path: Path) -> Any:
    key = _spiffe_key()
    jwk = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    jwk.update(kid=KID, use="jwt-svid")
    bundle = tmp_path / "bundle.json"
    bundle.write_text(json.dumps({"keys": [jwk]}))
    return make_service(
        trust_sources={
            "example": {
                "platform": "spiffe",
                "trust_domain": "example.com",
                "jwks_file": str(bundle),
                "algorithms": ["ES256"],
                "max_lifetime": 3600,
            }
        }
    )


def svid(sub: str = ID, aud: str = "https://issuer.test", lifetime: int = 300) -> str:
    now = int(time.time())
    return jwt.encode(
        {"sub": sub, "aud": [aud], "iat": now, "exp": now + lifetime},
        _spiffe_key(),
        algorithm="ES256",
        headers={"kid": KID, "typ": "JWT"},
    )


def request(app: Any, client_id: str, assertion: str) -> Any:
    return app.post(
        "/token",
        data={
            "grant_type": "client_credentials",
            "client_id": client_id,
            "client_assertion_type": SPIFFE_TYPE,
            "client_assertion": assertion,
        },
    )


def test_jwt_svid_authenticates_and_is_rated_as_platform_evidence(
    svid_service: Any,
) -> None:
    app = create_app(svid_service).test_client()
    client, secret = svid_service.clients.add(
        "svid", audiences=["https://api.test"], spiffe_id=ID
    )
    assert secret is None
    token = svid()
    for _ in range(2):  # the profile lets an SVID be reused until it expires
        resp = request(app, client.client_id, token)
        assert resp.status_code == 200, resp.get_json()
    claims = jwt.decode(
        resp.get_json()["access_token"], options={"verify_signature": False}
    )
    assert claims["sub"] == ID
    assert claims["mial"] == 2
    levels = claims["assurance_levels"]
    assert levels["credential"] == "spiffe_jwt_svid"
    assert levels["evidence"][0]["kind"] == "spiffe_jwt_svid"
    assert levels["maal"]["unlocking"] == 2
    assert (
        claims["exp"] <= jwt.decode(token, options={"verify_signature": False})["exp"]
    )


@pytest.mark.parametrize(
    "case", ["other-id", "other-audience", "too-long", "garbage", "secret-client"]
)
def test_bad_jwt_svids_are_invalid_client(svid_service: Any, case: str) -> None:
    app = create_app(svid_service).test_client()
    client, _ = svid_service.clients.add(
        "svid", audiences=["https://api.test"], spiffe_id=ID
    )
    client_id = client.client_id
    token = {
        "other-id": lambda: svid(sub="spiffe://example.com/other"),
        "other-audience": lambda: svid(aud="https://elsewhere.test"),
        "too-long": lambda: svid(lifetime=7200),
        "garbage": lambda: "a.b.c",
        "secret-client": lambda: svid(),
    }[case]()
    if case == "secret-client":
        other, _ = svid_service.clients.add("plain", audiences=["https://api.test"])
        client_id = other.client_id
    resp = request(app, client_id, token)
    assert resp.status_code == 401
    assert resp.get_json()["error"] == "invalid_client"


def test_registration_checks_the_spiffe_id(svid_service: Any) -> None:
    for bad in ("https://example.com/x", "spiffe://example.com/", "spiffe://EX/a"):
        with pytest.raises(RegistrationError):
            svid_service.clients.add("x", spiffe_id=bad)
