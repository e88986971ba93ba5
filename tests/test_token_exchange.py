"""RFC 8693 token exchange with real platform tokens from ../shared/data.

Time is injected into the core (``IssuerService.token(now=...)``) and
pinned inside each sample's validity window.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import jwt
import pytest

from issuer.errors import InsufficientAssurance, InvalidRequest, OAuthError

from .conftest import DATA, GITHUB_NOW, K8S_NOW, basic

TE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
K8S_TOKEN = (DATA / "k8s-sa-token" / "token.jwt").read_text().strip()
GITHUB_TOKEN = "".join(
    (DATA / "github-actions-oidc" / "expired.txt").read_text().split()
)
GITHUB_BAD = "".join((DATA / "github-actions-oidc" / "bad.txt").read_text().split())


@pytest.fixture
def client(service: Any) -> tuple[str, str]:
    c, secret = service.clients.add("te", audiences=["https://api.test"])
    return c.client_id, secret


def exchange(
    service: Any, client: tuple[str, str], token: str, now: int, **extra: str
) -> dict[str, Any]:
    params = {
        "grant_type": [TE],
        "subject_token": [token],
        "subject_token_type": [JWT_TYPE],
        **{k: [v] for k, v in extra.items()},
    }
    result = service.token(params, basic(*client), now=now)
    body: dict[str, Any] = result.body
    return body


def decode(body: dict[str, Any]) -> dict[str, Any]:
    return jwt.decode(body["access_token"], options={"verify_signature": False})


def test_kubernetes_token_yields_mial2_and_pod_identity(
    service: Any, client: tuple[str, str]
) -> None:
    body = exchange(service, client, K8S_TOKEN, K8S_NOW)
    assert body["issued_token_type"] == "urn:ietf:params:oauth:token-type:access_token"
    claims = decode(body)
    assert claims["sub"] == "system:serviceaccount:hakawai:hakawai-litellm-proxy"
    assert (claims["mial"], claims["maal"]) == (2, 1)
    levels = claims["assurance_levels"]
    assert levels["mial"] == {
        "identity_attestation": 2,
        "deployment_environment": 1,
        "software_integrity": 0,
        "configuration": 0,
        "supply_chain": 0,
    }
    assert levels["maal"] == {
        "provenance": 1,
        "enrollment": 2,
        "containment": 1,
        "unlocking": 1,
        "boundary": 1,
        "reuse": 1,
        "recovery": 2,
        "governance": 3,
    }
    import hashlib

    digest = "sha-256:" + hashlib.sha256(K8S_TOKEN.encode()).hexdigest()
    assert levels["evidence"] == [{"kind": "k8s_sa_token", "digest": digest}]
    assert levels["credential"] == "k8s_sa_token"
    record = service.audit.by_jti(claims["jti"])
    assert record["evidence"] == [{"kind": "k8s_sa_token", "digest": digest}]
    assert record["subject"] == claims["sub"]
    assert record["ratings"]["mial"]["identity_attestation"] == 2


def test_token_lifetime_never_exceeds_the_evidence(
    service: Any, client: tuple[str, str]
) -> None:
    exp = 1764056278  # the sample's exp
    body = exchange(service, client, K8S_TOKEN, exp - 100)
    claims = decode(body)
    assert claims["exp"] == exp
    assert body["expires_in"] == 100


def test_github_actions_token_rates_commit_and_workflow(
    service: Any, client: tuple[str, str]
) -> None:
    claims = decode(exchange(service, client, GITHUB_TOKEN, GITHUB_NOW))
    assert claims["sub"] == "repo:nickolashkraus/flask-oidc:ref:refs/heads/output-token"
    levels = claims["assurance_levels"]
    assert levels["mial"]["identity_attestation"] == 2
    assert levels["mial"]["software_integrity"] == 1
    assert levels["mial"]["configuration"] == 1
    assert levels["mial"]["deployment_environment"] == 0
    assert claims["mial"] == 2
    assert levels["evidence"][0]["kind"] == "github_oidc"


def test_min_mial_step_up_is_met_by_token_exchange(
    service: Any, client: tuple[str, str]
) -> None:
    claims = decode(exchange(service, client, K8S_TOKEN, K8S_NOW, min_mial="2"))
    assert claims["mial"] == 2
    with pytest.raises(InsufficientAssurance) as info:
        exchange(service, client, K8S_TOKEN, K8S_NOW, min_maal="2")
    assert "maal is 1, 2 required" in info.value.description


def _tamper_payload(token: str, **changes: Any) -> str:
    header, payload, sig = token.split(".")
    data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    data.update(changes)
    raw = json.dumps(data).encode()
    return ".".join([header, base64.urlsafe_b64encode(raw).rstrip(b"=").decode(), sig])


def _tamper_header(token: str, **changes: Any) -> str:
    header, payload, sig = token.split(".")
    data = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))
    data.update(changes)
    raw = json.dumps(data).encode()
    return ".".join([base64.urlsafe_b64encode(raw).rstrip(b"=").decode(), payload, sig])


def _flip_signature_byte(token: str) -> str:
    header, payload, sig = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)))
    raw[10] ^= 0x01
    return ".".join(
        [header, payload, base64.urlsafe_b64encode(raw).rstrip(b"=").decode()]
    )


@pytest.mark.parametrize(
    ("token", "now", "reason"),
    [
        (_flip_signature_byte(K8S_TOKEN), K8S_NOW, "bad_signature"),
        (GITHUB_BAD, GITHUB_NOW, "bad_signature"),
        (_tamper_header(K8S_TOKEN, alg="HS256"), K8S_NOW, "alg_not_allowed"),
        (_tamper_header(K8S_TOKEN, alg="none"), K8S_NOW, "alg_not_allowed"),
        (
            _tamper_payload(K8S_TOKEN, aud=["https://api.test"]),
            K8S_NOW,
            "bad_signature",
        ),
        (K8S_TOKEN, 1764056278 + 3600, "expired"),
        (
            _tamper_payload(K8S_TOKEN, iss="https://evil.test"),
            K8S_NOW,
            "unknown_issuer",
        ),
        (_tamper_header(K8S_TOKEN, kid="not-a-key"), K8S_NOW, "unknown_kid"),
        ("not.a.jwt", K8S_NOW, "malformed"),
        ("x" * 20000, K8S_NOW, "too_large"),
    ],
)
def test_tampered_subject_tokens_are_invalid_request(
    service: Any, client: tuple[str, str], token: str, now: int, reason: str
) -> None:
    with pytest.raises(InvalidRequest) as info:
        exchange(service, client, token, now)
    assert info.value.error == "invalid_request"
    assert reason in info.value.detail
    records = service.audit.recent(client[0])
    assert records[0]["decision"] == "refused"
    assert records[0]["error"] == "invalid_request"


@pytest.mark.parametrize(
    ("params", "error"),
    [
        ({"subject_token_type": [JWT_TYPE]}, "invalid_request"),
        ({"subject_token": [K8S_TOKEN]}, "invalid_request"),
        (
            {
                "subject_token": [K8S_TOKEN],
                "subject_token_type": ["urn:ietf:params:oauth:token-type:saml2"],
            },
            "invalid_request",
        ),
        (
            {
                "subject_token": [K8S_TOKEN],
                "subject_token_type": [JWT_TYPE],
                "requested_token_type": [
                    "urn:ietf:params:oauth:token-type:refresh_token"
                ],
            },
            "invalid_request",
        ),
        (
            {
                "subject_token": [K8S_TOKEN],
                "subject_token_type": [JWT_TYPE],
                "actor_token_type": [JWT_TYPE],
            },
            "invalid_request",
        ),
        (
            {
                "subject_token": [K8S_TOKEN],
                "subject_token_type": [JWT_TYPE],
                "actor_token": [GITHUB_BAD],
                "actor_token_type": [JWT_TYPE],
            },
            "invalid_request",
        ),
    ],
)
def test_malformed_exchange_requests(
    service: Any, client: tuple[str, str], params: dict[str, list[str]], error: str
) -> None:
    with pytest.raises(OAuthError) as info:
        service.token({"grant_type": [TE], **params}, basic(*client), now=K8S_NOW)
    assert info.value.error == error


def test_subject_patterns_restrict_which_identities_a_client_may_exchange(
    service: Any,
) -> None:
    c, secret = service.clients.add(
        "restricted",
        audiences=["https://api.test"],
        subject_patterns=["system:serviceaccount:payments:*"],
    )
    with pytest.raises(InvalidRequest):
        exchange(service, (c.client_id, secret), K8S_TOKEN, K8S_NOW)
    service.clients.update(
        c.client_id, subject_patterns=["system:serviceaccount:hakawai:*"]
    )
    assert (
        decode(exchange(service, (c.client_id, secret), K8S_TOKEN, K8S_NOW))["mial"]
        == 2
    )


def test_actor_token_becomes_act_claim(service: Any, client: tuple[str, str]) -> None:
    claims = decode(
        exchange(
            service,
            client,
            K8S_TOKEN,
            K8S_NOW,
            actor_token=K8S_TOKEN,
            actor_token_type=JWT_TYPE,
        )
    )
    assert claims["act"] == {
        "sub": "system:serviceaccount:hakawai:hakawai-litellm-proxy"
    }


def test_policy_explain_dry_runs_without_auditing(
    service: Any, client: tuple[str, str]
) -> None:
    result = service.explain(client[0], subject_token=K8S_TOKEN, now=K8S_NOW)
    assert (result["mial"], result["maal"]) == (2, 1)
    assert result["decision"] == "issue"
    assert any(line.startswith("maal 2 not reached") for line in result["explanation"])
    assert service.audit.recent(client[0]) == []


def _spiffe_key() -> Any:
    from cryptography.hazmat.primitives import serialization

    # The published c-spiffe test key is PKCS#8 under a mislabelled
    # "EC PRIVATE KEY" armour (its SOURCE.md); re-armour it.
    text = (DATA / "spiffe-jwt-svid" / "ec-secp256k1-priv-key.pem").read_text()
    body = "".join(line for line in text.splitlines() if "-----" not in line)
    pem = f"-----BEGIN PRIVATE KEY-----\n{body}\n-----END PRIVATE KEY-----\n"
    return serialization.load_pem_private_key(pem.encode(), password=None)


def test_spiffe_jwt_svid_signed_with_the_published_test_key(
    make_service: Any, tmp_path: Any
) -> None:
    import time

    from jwt.algorithms import ECAlgorithm

    kid = "ff3c5c96-392e-46ef-a839-6ff16027af78"
    key = _spiffe_key()
    jwk = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    jwk.update(kid=kid, use="jwt-svid")
    bundle = tmp_path / "bundle.json"
    bundle.write_text(json.dumps({"keys": [jwk]}))
    service = make_service(
        trust_sources={
            "example": {
                "platform": "spiffe",
                "trust_domain": "example.com",
                "jwks_file": str(bundle),
                "algorithms": ["ES256"],
            }
        }
    )
    c, secret = service.clients.add("svid", audiences=["https://api.test"])
    now = int(time.time())
    svid = jwt.encode(
        {
            "sub": "spiffe://example.com/workload1",
            "aud": ["https://issuer.test"],
            "iat": now,
            "exp": now + 300,
        },
        key,
        algorithm="ES256",
        headers={"kid": kid, "typ": "JWT"},
    )
    claims = decode(exchange(service, (c.client_id, secret), svid, now))
    assert claims["sub"] == "spiffe://example.com/workload1"
    assert claims["assurance_levels"]["evidence"][0]["kind"] == "spiffe_jwt_svid"
    assert claims["assurance_levels"]["maal"]["unlocking"] == 2
    assert claims["mial"] == 2
    # The real sample has no aud, which the JWT-SVID profile requires.
    sample = (DATA / "spiffe-jwt-svid" / "c-spiffe-jwtsvid.jwt").read_text().strip()
    with pytest.raises(InvalidRequest) as info:
        exchange(service, (c.client_id, secret), sample, now)
    assert "wrong_audience" in info.value.detail


def test_no_token_secret_or_evidence_reaches_the_log(
    service: Any, client: tuple[str, str], caplog: Any
) -> None:
    import logging

    caplog.set_level(logging.DEBUG)
    body = exchange(service, client, K8S_TOKEN, K8S_NOW)
    with pytest.raises(InvalidRequest):
        exchange(service, client, GITHUB_BAD, GITHUB_NOW)
    text = caplog.text + " ".join(str(r.__dict__) for r in caplog.records)
    assert "token issued" in caplog.text
    for secret in (body["access_token"], client[1], K8S_TOKEN, GITHUB_BAD):
        assert secret not in text
    for jwt_text in (body["access_token"], K8S_TOKEN, GITHUB_BAD):
        assert jwt_text.split(".")[1] not in text  # not even the payload alone


def test_trailing_newline_of_a_token_file_is_tolerated(
    service: Any, client: tuple[str, str]
) -> None:
    claims = decode(exchange(service, client, K8S_TOKEN + "\n", K8S_NOW))
    assert claims["mial"] == 2


def test_refusal_names_the_dimensions_behind_an_unmet_level(
    service: Any, client: tuple[str, str]
) -> None:
    with pytest.raises(InsufficientAssurance) as info:
        exchange(service, client, K8S_TOKEN, K8S_NOW, min_maal="2")
    assert "maal.provenance is 1, 2 required" in info.value.description


def test_explain_refuses_what_the_endpoint_refuses(
    service: Any, client: tuple[str, str]
) -> None:
    from issuer.errors import InvalidTarget

    with pytest.raises(InvalidTarget):
        service.explain(client[0], audiences=["https://not-registered.test"])


def test_a_verified_subject_token_is_reused_only_within_its_validity(
    service: Any, client: tuple[str, str]
) -> None:
    calls = []
    real = service.trust.verify

    def counting(token: str, now: float) -> Any:
        calls.append(now)
        return real(token, now)

    service.trust.verify = counting
    exchange(service, client, K8S_TOKEN, K8S_NOW)
    exchange(service, client, K8S_TOKEN, K8S_NOW + 10)
    assert len(calls) == 1
    # Earlier than the verification, or past exp: verified again (and refused).
    with pytest.raises(InvalidRequest):
        exchange(service, client, K8S_TOKEN, 1764056278 + 3600)
    exchange(service, client, K8S_TOKEN, K8S_NOW - 10)
    assert len(calls) == 3
