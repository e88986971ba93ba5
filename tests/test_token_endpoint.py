"""The token endpoint over HTTP (Flask test client): success and every refusal."""

from __future__ import annotations

import base64
import json
from typing import Any

import jwt
import pytest

from issuer.storage import AuditRecord

from .conftest import basic

FORM = "application/x-www-form-urlencoded"
CC = "client_credentials"


@pytest.fixture
def registered(service: Any) -> tuple[str, str]:
    client, secret = service.clients.add(
        "svc",
        audiences=["https://api.test", "https://other.test"],
        scopes=["read", "write"],
    )
    return client.client_id, secret


def post(
    app: Any,
    data: str | dict[str, str],
    headers: dict[str, str] | None = None,
    path: str = "/token",
    content_type: str = FORM,
) -> Any:
    return app.post(path, data=data, headers=headers or {}, content_type=content_type)


def claims_of(resp: Any) -> dict[str, Any]:
    return jwt.decode(
        resp.get_json()["access_token"], options={"verify_signature": False}
    )


def audit_rows(service: Any) -> list[AuditRecord]:
    with service.db.session() as s:
        return list(s.query(AuditRecord).order_by(AuditRecord.id).all())


def test_client_secret_basic_gets_a_signed_rfc9068_token(
    client_app: Any, service: Any, registered: tuple[str, str]
) -> None:
    cid, secret = registered
    resp = post(client_app, {"grant_type": CC}, {"Authorization": basic(cid, secret)})
    assert resp.status_code == 200
    assert resp.headers["Cache-Control"] == "no-store"
    body = resp.get_json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 300
    assert body["scope"] == "read write"
    token = body["access_token"]
    header = jwt.get_unverified_header(token)
    assert header["typ"] == "at+jwt"
    key = service.keyring.public_key(header["kid"])
    claims = jwt.decode(
        token,
        jwt.PyJWK(key.jwk).key,
        algorithms=["ES256"],
        audience="https://api.test",
        issuer="https://issuer.test",
    )
    assert claims["sub"] == f"client:{cid}"
    assert claims["client_id"] == cid
    assert claims["exp"] - claims["iat"] == 300
    assert (claims["mial"], claims["maal"]) == (1, 1)
    levels = claims["assurance_levels"]
    assert levels["scheme"] == "urn:wimse-assurance:levels:1"
    assert levels["credential"] == "client_secret"
    assert levels["mial"]["identity_attestation"] == 1
    assert levels["maal"]["containment"] == 0
    assert levels["policy_version"] == "none"
    rows = audit_rows(service)
    assert [(r.decision, r.jti) for r in rows] == [("issued", claims["jti"])]


def test_client_secret_post_and_form_encoded_basic_credentials(
    client_app: Any, service: Any
) -> None:
    client, secret = service.clients.add("p", audiences=["https://api.test"])
    resp = post(
        client_app,
        {"grant_type": CC, "client_id": client.client_id, "client_secret": secret},
    )
    assert resp.status_code == 200
    # RFC 6749 section 2.3.1: id and secret are form-urlencoded before base64;
    # our generated secrets may contain "-" and "_" only, so encode a "+" path
    # by checking that %2D decodes to "-".
    encoded = secret.replace("-", "%2D")
    resp = post(
        client_app,
        {"grant_type": CC},
        {"Authorization": basic(client.client_id, encoded)},
    )
    assert resp.status_code == 200


def test_scope_and_resource_select_a_subset(
    client_app: Any, registered: tuple[str, str]
) -> None:
    cid, secret = registered
    resp = post(
        client_app,
        "grant_type=client_credentials&scope=read&resource=https%3A%2F%2Fother.test",
        {"Authorization": basic(cid, secret)},
    )
    assert resp.status_code == 200
    claims = claims_of(resp)
    assert claims["scope"] == "read"
    assert claims["aud"] == "https://other.test"
    resp = post(
        client_app,
        "grant_type=client_credentials&resource=https%3A%2F%2Fapi.test&audience=https%3A%2F%2Fother.test",
        {"Authorization": basic(cid, secret)},
    )
    assert claims_of(resp)["aud"] == ["https://api.test", "https://other.test"]


@pytest.mark.parametrize(
    ("auth", "status", "www"),
    [
        ("wrong-secret", 401, True),
        ("unknown-client", 401, True),
        ("none", 401, False),
        ("bad-base64", 401, True),
        ("no-colon", 401, True),
    ],
)
def test_client_authentication_failures_are_invalid_client(
    client_app: Any,
    service: Any,
    registered: tuple[str, str],
    auth: str,
    status: int,
    www: bool,
) -> None:
    cid, secret = registered
    headers = {
        "wrong-secret": {"Authorization": basic(cid, secret + "x")},
        "unknown-client": {"Authorization": basic("nobody", secret)},
        "none": {},
        "bad-base64": {"Authorization": "Basic !!!notbase64"},
        "no-colon": {"Authorization": "Basic " + base64.b64encode(b"abc").decode()},
    }[auth]
    resp = post(client_app, {"grant_type": CC}, headers)
    assert resp.status_code == status
    assert resp.get_json()["error"] == "invalid_client"
    assert ("WWW-Authenticate" in resp.headers) is www
    # Refusals before client authentication are not audited.
    assert audit_rows(service) == []


def test_disabled_client_is_invalid_client(
    client_app: Any, service: Any, registered: tuple[str, str]
) -> None:
    cid, secret = registered
    service.clients.update(cid, disabled=True)
    resp = post(client_app, {"grant_type": CC}, {"Authorization": basic(cid, secret)})
    assert resp.get_json()["error"] == "invalid_client"


def test_rotated_secret_keeps_old_one_for_grace_period(
    client_app: Any, service: Any, registered: tuple[str, str]
) -> None:
    cid, old = registered
    _, new = service.clients.update(cid, rotate_secret=True)
    for secret in (old, new):
        resp = post(
            client_app, {"grant_type": CC}, {"Authorization": basic(cid, secret)}
        )
        assert resp.status_code == 200
    record = service.clients.get(cid)
    assert not service.clients.check_secret(
        record, old, now=record.previous_secret_expires_at + 1
    )


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ("grant_type=password", "unsupported_grant_type"),
        ("grant_type=", "invalid_request"),
        ("scope=read", "invalid_request"),
        (
            "grant_type=client_credentials&grant_type=client_credentials",
            "invalid_request",
        ),
        ("grant_type=client_credentials&scope=admin", "invalid_scope"),
        ("grant_type=client_credentials&scope=%20", "invalid_scope"),
        (
            "grant_type=client_credentials&resource=https%3A%2F%2Fevil.test",
            "invalid_target",
        ),
        (
            "grant_type=client_credentials&audience=https%3A%2F%2Fevil.test",
            "invalid_target",
        ),
        ("grant_type=client_credentials&min_mial=2", "insufficient_workload_assurance"),
        ("grant_type=client_credentials&min_mial=9", "invalid_request"),
        (
            "grant_type=client_credentials&min_assurance=maal.containment%3E%3D1",
            "insufficient_workload_assurance",
        ),
        ("grant_type=client_credentials&min_assurance=bogus", "invalid_request"),
        ("grant_type=client_credentials&grant_type=x%ff", "invalid_request"),
    ],
)
def test_bad_requests_after_authentication_get_the_right_error_and_an_audit_record(
    client_app: Any, service: Any, registered: tuple[str, str], body: str, error: str
) -> None:
    cid, secret = registered
    resp = post(client_app, body, {"Authorization": basic(cid, secret)})
    assert resp.status_code == 400
    assert resp.get_json()["error"] == error
    rows = audit_rows(service)
    if error in ("invalid_request",) and (
        "%ff" in body or body.count("grant_type=") > 1
    ):
        # Malformed bodies fail before authentication: log only.
        assert rows == []
    else:
        assert [(r.decision, r.error) for r in rows] == [("refused", error)]


def test_insufficient_assurance_names_dimension_required_and_found(
    client_app: Any, registered: tuple[str, str]
) -> None:
    cid, secret = registered
    resp = post(
        client_app,
        "grant_type=client_credentials&min_mial=2",
        {"Authorization": basic(cid, secret)},
    )
    description = resp.get_json()["error_description"]
    assert "mial is 1, 2 required" in description


def test_unauthorized_grant_for_client(client_app: Any, service: Any) -> None:
    client, secret = service.clients.add(
        "te-only",
        audiences=["https://api.test"],
        grant_types=["urn:ietf:params:oauth:grant-type:token-exchange"],
    )
    resp = post(
        client_app,
        {"grant_type": CC},
        {"Authorization": basic(client.client_id, secret)},
    )
    assert resp.get_json()["error"] == "unauthorized_client"


def test_client_without_audience_gets_invalid_target(
    client_app: Any, service: Any
) -> None:
    client, secret = service.clients.add("noaud")
    resp = post(
        client_app,
        {"grant_type": CC},
        {"Authorization": basic(client.client_id, secret)},
    )
    assert resp.get_json()["error"] == "invalid_target"


@pytest.mark.parametrize(
    ("content_type", "path_suffix", "data"),
    [
        ("application/json", "", json.dumps({"grant_type": CC})),
        ("text/plain", "", "grant_type=client_credentials"),
        (FORM, "?client_secret=x", "grant_type=client_credentials"),
        (
            FORM,
            "",
            "grant_type=client_credentials&" + "&".join(f"f{i}=1" for i in range(100)),
        ),
        (FORM, "", "grant_type=caf\xe9"),
    ],
)
def test_malformed_transport_is_invalid_request(
    client_app: Any,
    registered: tuple[str, str],
    content_type: str,
    path_suffix: str,
    data: str,
) -> None:
    cid, secret = registered
    resp = client_app.post(
        "/token" + path_suffix,
        data=data.encode("latin-1"),
        content_type=content_type,
        headers={"Authorization": basic(cid, secret)},
    )
    assert resp.status_code == 400
    assert resp.get_json()["error"] == "invalid_request"


def test_oversized_body_is_refused_without_500(client_app: Any) -> None:
    resp = post(client_app, "grant_type=client_credentials&x=" + "a" * 600000)
    assert resp.status_code == 413
    assert resp.get_json()["error"] == "invalid_request"


def test_two_authentication_methods_are_refused(
    client_app: Any, registered: tuple[str, str]
) -> None:
    cid, secret = registered
    resp = post(
        client_app,
        {"grant_type": CC, "client_id": cid, "client_secret": secret},
        {"Authorization": basic(cid, secret)},
    )
    assert resp.status_code == 400
    assert resp.get_json()["error"] == "invalid_request"


def test_get_on_token_and_unknown_paths_answer_json(client_app: Any) -> None:
    resp = client_app.get("/token")
    assert resp.status_code == 405
    assert resp.get_json()["error"] == "method_not_allowed"
    resp = client_app.get("/nothing")
    assert resp.status_code == 404
    assert resp.get_json()["error"] == "not_found"


def test_policy_file_minimums_refuse_and_admit(
    make_service: Any, tmp_path: Any
) -> None:
    from issuer.web import create_app

    policy = tmp_path / "policy.toml"
    policy.write_text(
        'version = "p-7"\n[default]\nmin_mial = 1\n'
        '[[rules]]\nname = "strict-api"\n'
        'audience = "https://strict.test"\nmin_mial = 2\n'
    )
    service = make_service(policy_file=str(policy))
    app = create_app(service).test_client()
    client, secret = service.clients.add(
        "s", audiences=["https://api.test", "https://strict.test"]
    )
    auth = {"Authorization": basic(client.client_id, secret)}
    ok = post(app, {"grant_type": CC}, auth)
    assert claims_of(ok)["assurance_levels"]["policy_version"] == "p-7"
    refused = post(app, {"grant_type": CC, "resource": "https://strict.test"}, auth)
    assert refused.get_json()["error"] == "insufficient_workload_assurance"
    assert "(policy p-7)" in refused.get_json()["error_description"]
    rows = audit_rows(service)
    assert rows[-1].policy_version == "p-7"
    assert "strict-api" in json.loads(rows[-1].reasons)[0]


def test_declared_values_reach_the_token_and_above_one_are_refused(
    client_app: Any, service: Any
) -> None:
    from issuer.clients import RegistrationError

    for bad in ({"mial.configuration": 3}, {"mial.nothing": 1}):
        with pytest.raises(RegistrationError):
            service.clients.add("d", audiences=["https://api.test"], declared=bad)
    client, secret = service.clients.add(
        "d", audiences=["https://api.test"], declared={"mial.configuration": 1}
    )
    resp = post(
        client_app,
        {"grant_type": CC},
        {"Authorization": basic(client.client_id, secret)},
    )
    assert claims_of(resp)["assurance_levels"]["mial"]["configuration"] == 1


def test_failed_authentication_is_logged_with_client_and_reason(
    client_app: Any, registered: tuple[str, str], caplog: Any
) -> None:
    import logging

    caplog.set_level(logging.INFO, logger="issuer")
    cid, secret = registered
    post(client_app, {"grant_type": CC}, {"Authorization": basic(cid, "wrong")})
    record = next(r for r in caplog.records if r.getMessage() == "request refused")
    fields = record.fields  # type: ignore[attr-defined]
    assert fields["error"] == "invalid_client"
    assert cid in fields["reason"] and "secret mismatch" in fields["reason"]
    assert secret not in caplog.text and "wrong" not in fields["reason"]


def test_a_secret_sent_as_the_client_id_never_reaches_the_log(
    client_app: Any, registered: tuple[str, str], caplog: Any
) -> None:
    import logging

    caplog.set_level(logging.INFO, logger="issuer")
    cid, secret = registered
    attempts = [
        {"Authorization": basic(secret, cid)},  # fields swapped
        {"Authorization": basic(cid + secret, "x")},  # joined
    ]
    for headers in attempts:
        resp = post(client_app, {"grant_type": CC}, headers)
        assert resp.status_code == 401
        assert resp.get_json()["error"] == "invalid_client"
    resp = post(client_app, {"grant_type": CC, "client_id": f"{cid}:{secret}"}, {})
    assert resp.get_json()["error"] == "invalid_client"
    reasons = [
        r.fields["reason"]  # type: ignore[attr-defined]
        for r in caplog.records
        if r.getMessage() == "request refused"
    ]
    assert len(reasons) == 3
    assert all("unknown client id (sha-256 " in r for r in reasons[:2]), reasons
    assert secret not in caplog.text
    assert secret[:16] not in caplog.text


def test_reused_assessment_keeps_its_own_appraisal_time_and_follows_changes(
    service: Any,
) -> None:
    client, secret = service.clients.add("cache", audiences=["https://api.test"])
    auth = basic(client.client_id, secret)
    params = {"grant_type": ["client_credentials"]}
    first = service.token(params, auth, now=1_900_000_000.0).body["access_token"]
    second = service.token(params, auth, now=1_900_000_100.0).body["access_token"]
    a, b = (jwt.decode(t, options={"verify_signature": False}) for t in (first, second))
    assert a["assurance_levels"]["appraised_at"] == 1_900_000_000
    assert b["assurance_levels"]["appraised_at"] == 1_900_000_100
    assert a["assurance_levels"]["mial"] == b["assurance_levels"]["mial"]
    # Same second again, after another one: stamped anew, not reused stale.
    again = service.token(params, auth, now=1_900_000_000.5).body["access_token"]
    c = jwt.decode(again, options={"verify_signature": False})
    assert c["assurance_levels"]["appraised_at"] == 1_900_000_000
    service.clients.update(client.client_id, declared={"mial.configuration": 1})
    third = service.token(params, auth).body["access_token"]
    claims = jwt.decode(third, options={"verify_signature": False})
    assert claims["assurance_levels"]["mial"]["configuration"] == 1


def test_token_ids_start_with_the_issue_time_and_never_repeat(
    client_app: Any, registered: tuple[str, str]
) -> None:
    cid, secret = registered
    claims = []
    for _ in range(20):
        resp = post(
            client_app, {"grant_type": CC}, {"Authorization": basic(cid, secret)}
        )
        claims.append(
            jwt.decode(
                resp.get_json()["access_token"], options={"verify_signature": False}
            )
        )
    jtis = [c["jti"] for c in claims]
    assert len(set(jtis)) == 20
    for c in claims:
        # 12 hex digits of milliseconds, then 32 random hex digits.
        assert len(c["jti"]) == 44 and int(c["jti"], 16) >= 0
        assert int(c["jti"][:12], 16) // 1000 in (c["iat"], c["iat"] + 1)
    # Ids issued later sort later, to the millisecond.
    assert [j[:12] for j in jtis] == sorted(j[:12] for j in jtis)
