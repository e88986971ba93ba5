"""private_key_jwt client authentication (RFC 7523 section 3, RFC 7521 4.2)."""

from __future__ import annotations

import base64
import json
import secrets
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from issuer.keys import jwk_thumbprint

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ISSUER = "https://issuer.test"


@pytest.fixture
def keyed_client(service: Any) -> tuple[str, ec.EllipticCurvePrivateKey, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    jwk["kid"] = jwk_thumbprint(jwk)
    client, secret = service.clients.add(
        "keyed", jwks={"keys": [jwk]}, audiences=["https://api.test"]
    )
    assert secret is None
    return client.client_id, key, jwk["kid"]


def assertion(cid: str, key: Any, kid: str | None, **overrides: Any) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": cid,
        "sub": cid,
        "aud": ISSUER,
        "iat": now,
        "exp": now + 60,
        "jti": secrets.token_urlsafe(12),
    }
    headers = overrides.pop("headers", {})
    alg = overrides.pop("alg", "ES256")
    for name, value in overrides.items():
        if value is None:
            claims.pop(name, None)
        else:
            claims[name] = value
    if kid is not None:
        headers.setdefault("kid", kid)
    return jwt.encode(claims, key, algorithm=alg, headers=headers)


def request(app: Any, token: str, **extra: str) -> Any:
    data = {
        "grant_type": "client_credentials",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": token,
        **extra,
    }
    return app.post("/token", data=data)


def test_private_key_jwt_gets_a_token(client_app: Any, keyed_client: Any) -> None:
    cid, key, kid = keyed_client
    resp = request(client_app, assertion(cid, key, kid))
    assert resp.status_code == 200
    claims = jwt.decode(
        resp.get_json()["access_token"], options={"verify_signature": False}
    )
    assert claims["client_id"] == cid
    assert claims["assurance_levels"]["credential"] == "private_key_jwt"
    assert claims["assurance_levels"]["maal"]["containment"] == 1


def test_token_endpoint_url_is_an_accepted_audience(
    client_app: Any, keyed_client: Any
) -> None:
    cid, key, kid = keyed_client
    resp = request(client_app, assertion(cid, key, kid, aud=ISSUER + "/token"))
    assert resp.status_code == 200


def test_assertion_without_kid_tries_registered_keys(
    client_app: Any, keyed_client: Any
) -> None:
    cid, key, _ = keyed_client
    assert request(client_app, assertion(cid, key, None)).status_code == 200


def test_replayed_assertion_is_refused(client_app: Any, keyed_client: Any) -> None:
    cid, key, kid = keyed_client
    token = assertion(cid, key, kid)
    assert request(client_app, token).status_code == 200
    resp = request(client_app, token)
    assert resp.status_code == 401
    assert resp.get_json()["error"] == "invalid_client"


def test_assertion_issued_before_the_replay_store_started(
    client_app: Any, service: Any, keyed_client: Any
) -> None:
    cid, key, kid = keyed_client
    service.authenticator.replay.started_at = time.time() + 600
    resp = request(client_app, assertion(cid, key, kid))
    assert resp.get_json()["error"] == "invalid_client"


def _hs256_with_public_key(cid: str, kid: str, public_pem: bytes) -> str:
    header = {"alg": "HS256", "typ": "JWT", "kid": kid}
    now = int(time.time())
    payload = {"iss": cid, "sub": cid, "aud": ISSUER, "exp": now + 60, "jti": "x"}

    def seg(obj: Any) -> str:
        raw = json.dumps(obj).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    import hashlib
    import hmac

    signing_input = f"{seg(header)}.{seg(payload)}"
    mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "case",
    [
        "aud-array",
        "aud-other",
        "no-exp",
        "exp-string",
        "exp-far-future",
        "expired",
        "iat-future",
        "no-jti",
        "iss-not-sub",
        "other-key",
        "alg-none",
        "alg-hs256-public-key",
        "unknown-kid",
        "wrong-assertion-type",
        "truncated",
        "not-json",
        "crit",
        "unknown-client",
    ],
)
def test_bad_assertions_are_invalid_client(
    client_app: Any, service: Any, keyed_client: Any, case: str
) -> None:
    cid, key, kid = keyed_client
    now = int(time.time())
    extra: dict[str, str] = {}
    if case == "aud-array":
        token = assertion(cid, key, kid, aud=[ISSUER])
    elif case == "aud-other":
        token = assertion(cid, key, kid, aud="https://elsewhere.test")
    elif case == "no-exp":
        token = assertion(cid, key, kid, exp=None)
    elif case == "exp-string":
        token = assertion(cid, key, kid, exp=str(now + 60))
    elif case == "exp-far-future":
        token = assertion(cid, key, kid, exp=now + 3600)
    elif case == "expired":
        token = assertion(cid, key, kid, exp=now - 120, iat=now - 180)
    elif case == "iat-future":
        token = assertion(cid, key, kid, iat=now + 600)
    elif case == "no-jti":
        token = assertion(cid, key, kid, jti=None)
    elif case == "iss-not-sub":
        token = assertion(cid, key, kid, iss="someone-else")
    elif case == "other-key":
        token = assertion(cid, ec.generate_private_key(ec.SECP256R1()), kid)
    elif case == "alg-none":
        token = jwt.encode(
            {"iss": cid, "sub": cid, "aud": ISSUER, "exp": now + 60, "jti": "n"},
            None,
            algorithm="none",
        )
    elif case == "alg-hs256-public-key":
        from cryptography.hazmat.primitives import serialization

        pem = key.public_key().public_bytes(
            serialization.Encoding.PEM,
            serialization.PublicFormat.SubjectPublicKeyInfo,
        )
        token = _hs256_with_public_key(cid, kid, pem)
    elif case == "unknown-kid":
        token = assertion(cid, key, "no-such-kid")
    elif case == "wrong-assertion-type":
        token = assertion(cid, key, kid)
        extra["client_assertion_type"] = "urn:example:other"
    elif case == "truncated":
        token = assertion(cid, key, kid).rsplit(".", 1)[0]
    elif case == "not-json":
        token = "bm90anNvbg.bm90anNvbg.c2ln"
    elif case == "crit":
        token = assertion(cid, key, kid, headers={"crit": ["exp"], "exp": 1})
    else:
        token = assertion("nobody", key, kid)
    resp = request(client_app, token, **extra)
    assert resp.status_code == 401, resp.get_json()
    assert resp.get_json()["error"] == "invalid_client"
    assert "WWW-Authenticate" not in resp.headers


def test_client_id_parameter_must_match_the_assertion(
    client_app: Any, keyed_client: Any
) -> None:
    cid, key, kid = keyed_client
    resp = request(client_app, assertion(cid, key, kid), client_id="other")
    assert resp.status_code == 400
    assert resp.get_json()["error"] == "invalid_request"


def test_registration_refuses_private_or_symmetric_keys(service: Any) -> None:
    from issuer.clients import RegistrationError

    key = ec.generate_private_key(ec.SECP256R1())
    private_jwk = ECAlgorithm.to_jwk(key, as_dict=True)
    with pytest.raises(RegistrationError):
        service.clients.add("x", jwks={"keys": [private_jwk]})
    with pytest.raises(RegistrationError):
        service.clients.add("x", jwks={"keys": [{"kty": "oct", "k": "AAAA"}]})
    with pytest.raises(RegistrationError):
        service.clients.add("x", jwks={"keys": []})


def test_database_replay_store_is_shared_between_services(make_service: Any) -> None:
    from issuer.web import create_app

    one = make_service(replay_store="database")
    two = make_service(replay_store="database")
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    jwk["kid"] = jwk_thumbprint(jwk)
    client, _ = one.clients.add("k", jwks={"keys": [jwk]}, audiences=["https://a.test"])
    token = assertion(client.client_id, key, jwk["kid"])
    assert request(create_app(one).test_client(), token).status_code == 200
    resp = request(create_app(two).test_client(), token)
    assert resp.status_code == 401
    assert resp.get_json()["error"] == "invalid_client"


def test_replay_store_choice_follows_settings() -> None:
    from issuer.config import Settings

    assert Settings().resolved_replay_store() == "memory"
    assert Settings(workers=2).resolved_replay_store() == "database"
    assert Settings(database_url="postgresql://x/y").resolved_replay_store() == (
        "database"
    )
    assert Settings(replay_store="database").resolved_replay_store() == "database"


@pytest.mark.usefixtures("quiet_gc")
def test_deeply_nested_assertion_json_is_invalid_client(client_app: Any) -> None:
    nested = base64.urlsafe_b64encode(b"[" * 100000).rstrip(b"=").decode()
    for token in (f"{nested}.e30.AAAA", f"eyJhbGciOiJFUzI1NiJ9.{nested}.AAAA"):
        resp = request(client_app, token)
        assert resp.status_code == 401
        assert resp.get_json()["error"] == "invalid_client"


def test_a_jti_that_is_not_printable_text_is_invalid_client(
    client_app: Any, keyed_client: Any
) -> None:
    cid, key, kid = keyed_client
    for jti in ("\ud800", "a\x00b", "line\nbreak"):
        resp = request(client_app, assertion(cid, key, kid, jti=jti))
        assert resp.status_code == 401
        assert resp.get_json()["error"] == "invalid_client"


def test_long_jti_and_nul_client_id_never_reach_the_store(
    client_app: Any, keyed_client: Any
) -> None:
    cid, key, kid = keyed_client
    resp = request(client_app, assertion(cid, key, kid, jti="j" * 200))
    assert resp.status_code == 200
    resp = client_app.post(
        "/token",
        data={"grant_type": "client_credentials", "client_id": "abc\x00",
              "client_secret": "x"},
    )  # fmt: skip
    assert resp.status_code == 401
    assert resp.get_json()["error"] == "invalid_client"
