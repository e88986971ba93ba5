"""Introspection (RFC 7662), revocation (RFC 7009), metadata (RFC 8414), JWKS."""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import basic

CC = {"grant_type": "client_credentials"}


@pytest.fixture
def parties(service: Any, client_app: Any) -> dict[str, Any]:
    owner, owner_secret = service.clients.add("owner", audiences=["https://api.test"])
    other, other_secret = service.clients.add("other", audiences=["https://api.test"])
    rs, rs_secret = service.clients.add(
        "api", audiences=["https://api.test"], grant_types=[], resource_server=True
    )
    rs2, rs2_secret = service.clients.add(
        "api2",
        audiences=["https://elsewhere.test"],
        grant_types=[],
        resource_server=True,
    )
    token = client_app.post(
        "/token",
        data=CC,
        headers={"Authorization": basic(owner.client_id, owner_secret)},
    ).get_json()["access_token"]
    return {
        "token": token,
        "owner": basic(owner.client_id, owner_secret),
        "other": basic(other.client_id, other_secret),
        "rs": basic(rs.client_id, rs_secret),
        "rs2": basic(rs2.client_id, rs2_secret),
        "owner_id": owner.client_id,
    }


def introspect(app: Any, auth: str, token: str) -> Any:
    return app.post(
        "/introspect", data={"token": token}, headers={"Authorization": auth}
    )


def test_owner_and_resource_server_see_levels(client_app: Any, parties: Any) -> None:
    for who in ("owner", "rs"):
        resp = introspect(client_app, parties[who], parties["token"])
        assert resp.status_code == 200
        body = resp.get_json()
        assert body["active"] is True
        assert body["client_id"] == parties["owner_id"]
        assert body["aud"] == "https://api.test"
        assert (body["mial"], body["maal"]) == (1, 1)
        assert body["assurance_levels"]["credential"] == "client_secret"
        assert body["token_type"] == "Bearer"


def test_others_get_inactive(client_app: Any, parties: Any) -> None:
    for who in ("other", "rs2"):
        body = introspect(client_app, parties[who], parties["token"]).get_json()
        assert body == {"active": False}


@pytest.mark.parametrize(
    "token", ["garbage", "a.b.c", "x" * 40000, "eyJhbGciOiJub25lIn0.e30."]
)
def test_unknown_or_malformed_tokens_are_inactive(
    client_app: Any, parties: Any, token: str
) -> None:
    body = introspect(client_app, parties["rs"], token).get_json()
    assert body == {"active": False}


def test_expired_token_is_inactive(service: Any, parties: Any) -> None:
    import time

    params = {"token": [parties["token"]]}
    assert service.introspect(params, parties["owner"])["active"] is True
    later = time.time() + 3600
    assert service.introspect(params, parties["owner"], now=later) == {"active": False}


def test_introspection_requires_client_authentication(
    client_app: Any, parties: Any
) -> None:
    resp = client_app.post("/introspect", data={"token": parties["token"]})
    assert resp.status_code == 401
    assert resp.get_json()["error"] == "invalid_client"
    resp = client_app.post(
        "/introspect", data={}, headers={"Authorization": parties["rs"]}
    )
    assert resp.status_code == 400
    assert resp.get_json()["error"] == "invalid_request"


def test_revocation_by_owner_makes_token_inactive_everywhere(
    client_app: Any, parties: Any
) -> None:
    resp = client_app.post(
        "/revoke",
        data={"token": parties["token"]},
        headers={"Authorization": parties["other"]},
    )
    assert resp.status_code == 400
    assert resp.get_json()["error"] == "unauthorized_client"
    assert introspect(client_app, parties["rs"], parties["token"]).get_json()["active"]

    resp = client_app.post(
        "/revoke",
        data={"token": parties["token"], "token_type_hint": "access_token"},
        headers={"Authorization": parties["owner"]},
    )
    assert resp.status_code == 200
    assert introspect(client_app, parties["rs"], parties["token"]).get_json() == {
        "active": False
    }
    # Revoking again, or revoking junk, still answers 200 (RFC 7009 2.2).
    for token in (parties["token"], "junk"):
        resp = client_app.post(
            "/revoke",
            data={"token": token},
            headers={"Authorization": parties["owner"]},
        )
        assert resp.status_code == 200


def test_revocation_requires_client_authentication(
    client_app: Any, parties: Any
) -> None:
    resp = client_app.post("/revoke", data={"token": parties["token"]})
    assert resp.status_code == 401
    assert resp.get_json()["error"] == "invalid_client"


def test_metadata_lists_grants_methods_algorithms_and_levels(client_app: Any) -> None:
    resp = client_app.get("/.well-known/oauth-authorization-server")
    meta = resp.get_json()
    assert meta["issuer"] == "https://issuer.test"
    assert meta["token_endpoint"] == "https://issuer.test/token"
    assert meta["jwks_uri"] == "https://issuer.test/jwks.json"
    assert (
        "urn:ietf:params:oauth:grant-type:token-exchange"
        in meta["grant_types_supported"]
    )
    assert "private_key_jwt" in meta["token_endpoint_auth_methods_supported"]
    assert "none" not in meta["token_endpoint_auth_signing_alg_values_supported"]
    assert meta["access_token_signing_alg_values_supported"] == ["ES256"]
    assert meta["mial_levels_supported"] == [0, 1, 2, 3, 4]
    assert meta["workload_assurance_scheme"] == "urn:wimse-assurance:levels:1"
    assert "k8s_sa_token" in meta["evidence_kinds_supported"]


def test_jwks_is_public_and_cacheable(client_app: Any) -> None:
    resp = client_app.get("/jwks.json")
    assert resp.headers["Cache-Control"] == "public, max-age=300"
    keys = resp.get_json()["keys"]
    assert len(keys) == 1
    assert keys[0]["kty"] == "EC" and "d" not in keys[0]
    assert keys[0]["use"] == "sig" and keys[0]["alg"] == "ES256"


@pytest.mark.parametrize("alg", ["EdDSA", "PS256", "RS256"])
def test_other_signing_algorithms(make_service: Any, alg: str) -> None:
    import jwt

    service = make_service(signing_alg=alg)
    client, secret = service.clients.add("a", audiences=["https://api.test"])
    token = service.token(
        {"grant_type": ["client_credentials"]}, basic(client.client_id, secret)
    ).body["access_token"]
    header = jwt.get_unverified_header(token)
    assert header["alg"] == alg
    key = service.keyring.public_key(header["kid"])
    claims = jwt.decode(
        token, jwt.PyJWK(key.jwk).key, algorithms=[alg], audience="https://api.test"
    )
    assert claims["mial"] == 1


def test_readiness_reports_database(client_app: Any) -> None:
    assert client_app.get("/readyz").get_json() == {"status": "ready"}
    assert client_app.get("/healthz").status_code == 200


def test_tokens_of_a_disabled_client_are_inactive(
    client_app: Any, service: Any, parties: Any
) -> None:
    service.clients.update(parties["owner_id"], disabled=True)
    body = introspect(client_app, parties["rs"], parties["token"]).get_json()
    assert body == {"active": False}
