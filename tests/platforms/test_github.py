"""GitHub Actions OIDC tokens, checked against a real token and GitHub's cert."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from jwt.api_jws import PyJWS

from issuer.config import ConfigError
from issuer.errors import EvidenceError
from issuer.platforms import TrustSources

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
GH = DATA / "github-actions-oidc"

ISSUER = "https://token.actions.githubusercontent.com"
AUDIENCE = "https://github.com/nickolashkraus"
NOW = 1674498780
NBF = 1674498078
IAT = 1674498678
EXP = 1674498978
KID = "78167F727DEC5D801DD1C8784C704A1C880EC0E1"
SHA = "a501fa6b06a6dc25cca7cace0b989abe6b156366"
WORKFLOW = (
    "nickolashkraus/flask-oidc/.github/workflows/integration.yml"
    "@refs/heads/output-token"
)


def b64(data: bytes | bytearray) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def read_token(name: str) -> str:
    return (GH / name).read_text().replace("\n", "").strip()


def split(token: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    header, payload, signature = token.split(".")
    return json.loads(unb64(header)), json.loads(unb64(payload)), signature


def reencode(
    token: str,
    header: dict[str, Any] | None = None,
    claims: dict[str, Any] | None = None,
) -> str:
    old_header, old_claims, signature = split(token)
    head = b64(json.dumps(old_header if header is None else header).encode())
    body = b64(json.dumps(old_claims if claims is None else claims).encode())
    return f"{head}.{body}.{signature}"


def reason(call: Callable[[], object]) -> str:
    with pytest.raises(EvidenceError) as info:
        call()
    return info.value.reason


def github(**extra: object) -> TrustSources:
    table: dict[str, object] = {
        "platform": "github_actions",
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "pem_file": str(GH / "RS256.pem"),
    }
    table.update(extra)
    return TrustSources({"github": table}, issuer_url="https://issuer.test")


def test_verifies_real_token_with_every_present_attribute() -> None:
    token = read_token("expired.txt")

    identity = github().verify(token, NOW)

    assert identity.source == "github"
    assert identity.platform == "github_actions"
    assert identity.evidence_kind == "github_oidc"
    assert (
        identity.subject == "repo:nickolashkraus/flask-oidc:ref:refs/heads/output-token"
    )
    assert identity.issuer == ISSUER
    assert identity.expires_at == EXP
    assert identity.issued_at == IAT
    assert identity.digest == "sha-256:" + hashlib.sha256(token.encode()).hexdigest()
    assert identity.keys_managed is False
    # The token predates the runner_environment claim, so it is absent.
    assert identity.attributes == {
        "repository": "nickolashkraus/flask-oidc",
        "repository_owner": "nickolashkraus",
        "workflow_ref": WORKFLOW,
        "job_workflow_ref": WORKFLOW,
        "ref": "refs/heads/output-token",
        "sha": SHA,
        "workflow_sha": SHA,
        "event_name": "workflow_dispatch",
    }


def test_rejects_published_bad_token() -> None:
    assert (
        reason(lambda: github().verify(read_token("bad.txt"), NOW)) == "bad_signature"
    )


def test_rejects_flipped_signature_byte() -> None:
    head, body, signature = read_token("expired.txt").split(".")
    raw = bytearray(unb64(signature))
    raw[0] ^= 0x80

    assert reason(lambda: github().verify(f"{head}.{body}.{b64(raw)}", NOW)) == (
        "bad_signature"
    )


def test_iat_in_the_future_is_refused_even_after_nbf() -> None:
    # GitHub sets nbf ten minutes before iat; between the two, the token
    # claims to come from the future.
    token = read_token("expired.txt")

    assert reason(lambda: github().verify(token, IAT - 61)) == "issued_in_future"
    assert github().verify(token, IAT - 59).issued_at == IAT


@pytest.mark.parametrize(
    ("now", "expected"),
    [(EXP + 61, "expired"), (NBF - 61, "not_yet_valid"), (1700000000, "expired")],
)
def test_rejects_real_token_outside_its_window(now: int, expected: str) -> None:
    assert reason(lambda: github().verify(read_token("expired.txt"), now)) == expected


def test_rejects_real_token_for_default_audience() -> None:
    table = {
        "platform": "github_actions",
        "issuer": ISSUER,
        "pem_file": str(GH / "RS256.pem"),
    }
    sources = TrustSources({"github": table}, issuer_url="https://issuer.test")

    assert reason(lambda: sources.verify(read_token("expired.txt"), NOW)) == (
        "wrong_audience"
    )


def test_rejects_reencoded_payload_with_changed_audience() -> None:
    token = read_token("expired.txt")
    _, claims, _ = split(token)
    claims["aud"] = "https://issuer.test"

    sources = github(audience="https://issuer.test")

    assert reason(lambda: sources.verify(reencode(token, claims=claims), NOW)) == (
        "bad_signature"
    )


def test_rejects_reencoded_payload_with_changed_repository() -> None:
    token = read_token("expired.txt")
    _, claims, _ = split(token)
    claims["repository"] = "attacker/repo"

    assert reason(lambda: github().verify(reencode(token, claims=claims), NOW)) == (
        "bad_signature"
    )


@pytest.mark.parametrize("alg", ["HS256", "HS384", "none", "RS255", ""])
def test_rejects_changed_alg(alg: str) -> None:
    token = read_token("expired.txt")
    header, _, _ = split(token)
    header["alg"] = alg

    assert reason(lambda: github().verify(reencode(token, header=header), NOW)) == (
        "alg_not_allowed"
    )


def test_rejects_hmac_token_keyed_with_the_public_certificate() -> None:
    """The classic key confusion: HS256 with the verifier's public key as secret."""
    token = read_token("expired.txt")
    header, claims, _ = split(token)
    header["alg"] = "HS256"
    signing_input = (
        f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    )
    secret = (GH / "RS256.pem").read_bytes()
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()

    assert reason(lambda: github().verify(f"{signing_input}.{b64(mac)}", NOW)) == (
        "alg_not_allowed"
    )


def test_rejects_alg_outside_source_allow_list() -> None:
    sources = github(algorithms=["PS256"])

    assert reason(lambda: sources.verify(read_token("expired.txt"), NOW)) == (
        "alg_not_allowed"
    )


def test_rejects_alg_that_does_not_fit_the_pinned_key() -> None:
    token = read_token("expired.txt")
    header, _, _ = split(token)
    header["alg"] = "ES256"
    sources = github(algorithms=["RS256", "ES256"])

    assert reason(lambda: sources.verify(reencode(token, header=header), NOW)) == (
        "alg_not_allowed"
    )


def test_pinned_kid_must_match_the_token_kid() -> None:
    token = read_token("expired.txt")

    assert github(kid=KID).verify(token, NOW).subject.startswith("repo:")
    assert reason(lambda: github(kid="other").verify(token, NOW)) == "unknown_kid"


def test_pem_without_configured_kid_matches_any_kid() -> None:
    token = read_token("expired.txt")
    header, _, _ = split(token)
    header["kid"] = "something-else"

    # The key is still tried, and the changed header breaks the signature.
    assert reason(lambda: github().verify(reencode(token, header=header), NOW)) == (
        "bad_signature"
    )


def test_verifies_with_a_jwks_built_from_the_certificate(tmp_path: Path) -> None:
    cert = x509.load_pem_x509_certificate((GH / "RS256.pem").read_bytes())
    public = cert.public_key()
    assert isinstance(public, rsa.RSAPublicKey)
    jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
    der = cert.public_bytes(serialization.Encoding.DER)
    jwk.update(
        {
            "kid": KID,
            "use": "sig",
            "x5c": [base64.b64encode(der).decode()],
            "x5t": "eBZ_cn3sXYAd0ch4THBKHIgOwOE",
        }
    )
    decoy = RSAAlgorithm.to_jwk(
        rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key(),
        as_dict=True,
    )
    decoy["kid"] = "decoy"
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [decoy, jwk]}))
    sources = TrustSources(
        {
            "github": {
                "platform": "github_actions",
                "issuer": ISSUER,
                "audience": AUDIENCE,
                "jwks_file": str(tmp_path / "jwks.json"),
            }
        },
        issuer_url="https://issuer.test",
    )

    assert sources.verify(read_token("expired.txt"), NOW).attributes["sha"] == SHA


def test_rejects_changed_issuer() -> None:
    token = read_token("expired.txt")
    _, claims, _ = split(token)
    claims["iss"] = "https://token.actions.githubusercontent.com/enterprise"

    assert reason(lambda: github().verify(reencode(token, claims=claims), NOW)) == (
        "unknown_issuer"
    )


def test_rejects_x5c_header_naming_another_key() -> None:
    """A token may not bring its own certificate; only the pinned key counts."""
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _, claims, _ = split(read_token("expired.txt"))
    token = PyJWS().encode(
        json.dumps(claims).encode(),
        attacker,
        algorithm="RS256",
        headers={"kid": KID, "x5c": ["MIIB"], "jwk": {"kty": "RSA"}},
    )

    assert reason(lambda: github().verify(token, NOW)) == "bad_signature"


def test_rejects_attribute_claims_of_wrong_type(tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "gh.pem").write_bytes(pem)
    sources = TrustSources(
        {
            "ghes": {
                "platform": "github_actions",
                "issuer": "https://ghes.test/_services/token",
                "pem_file": str(tmp_path / "gh.pem"),
            }
        },
        issuer_url="https://issuer.test",
    )
    claims: dict[str, Any] = {
        "iss": "https://ghes.test/_services/token",
        "aud": "https://issuer.test",
        "sub": "repo:octo/app:environment:prod",
        "iat": NOW,
        "exp": NOW + 300,
        "repository": "octo/app",
        "runner_environment": "self-hosted",
    }

    def sign(body: dict[str, Any]) -> str:
        return PyJWS().encode(json.dumps(body).encode(), key, algorithm="RS256")

    assert sources.verify(sign(claims), NOW).attributes == {
        "repository": "octo/app",
        "runner_environment": "self-hosted",
    }
    claims["repository"] = 588298808
    assert reason(lambda: sources.verify(sign(claims), NOW)) == "malformed"


def test_pem_file_private_key_is_refused(tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    (tmp_path / "private.pem").write_bytes(pem)

    with pytest.raises(ConfigError, match=r"trust_sources\.github.*pem_file"):
        github(pem_file=str(tmp_path / "private.pem"))
