"""SPIFFE JWT-SVIDs: the published sample and tokens minted with its test key."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from jwt.algorithms import ECAlgorithm
from jwt.api_jws import PyJWS

from issuer.config import ConfigError
from issuer.errors import EvidenceError
from issuer.platforms import TrustSources
from issuer.platforms.spiffe import parse_spiffe_id

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
SVID = DATA / "spiffe-jwt-svid"

KID = "ff3c5c96-392e-46ef-a839-6ff16027af78"
NOW = 1763985600
AUDIENCE = "https://issuer.test"


def b64(data: bytes | bytearray) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def reason(call: Callable[[], object]) -> str:
    with pytest.raises(EvidenceError) as info:
        call()
    return info.value.reason


def published_test_key() -> ec.EllipticCurvePrivateKey:
    """The published c-spiffe test key, re-wrapped under its true PEM label.

    The file says EC PRIVATE KEY but holds PKCS#8, which is PRIVATE KEY.
    """
    body = "".join(
        line
        for line in (SVID / "ec-secp256k1-priv-key.pem").read_text().splitlines()
        if not line.startswith("-----")
    )
    pem = f"-----BEGIN PRIVATE KEY-----\n{body}\n-----END PRIVATE KEY-----\n"
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def jwk_of(key: ec.EllipticCurvePrivateKey, **members: str) -> dict[str, Any]:
    jwk = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    jwk.update(members)
    return jwk


def write_bundle(path: Path, keys: list[dict[str, Any]]) -> Path:
    path.write_text(json.dumps({"spiffe_sequence": 1, "keys": keys}))
    return path


@pytest.fixture(scope="module")
def key() -> ec.EllipticCurvePrivateKey:
    return published_test_key()


@pytest.fixture
def bundle(tmp_path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    other = ec.generate_private_key(ec.SECP256R1())
    return write_bundle(
        tmp_path / "bundle.json",
        [
            # An X.509 authority under the same kid must never verify a JWT.
            jwk_of(other, kid=KID, use="x509-svid"),
            jwk_of(key, kid=KID, use="jwt-svid"),
        ],
    )


def spiffe_sources(bundle: Path, **extra: object) -> TrustSources:
    table: dict[str, object] = {
        "platform": "spiffe",
        "trust_domain": "example.com",
        "jwks_file": str(bundle),
    }
    table.update(extra)
    return TrustSources({"example": table}, issuer_url=AUDIENCE)


def mint(
    key: ec.EllipticCurvePrivateKey,
    headers: dict[str, Any] | None = None,
    algorithm: str = "ES256",
    **overrides: Any,
) -> str:
    claims: dict[str, Any] = {
        "sub": "spiffe://example.com/workload1",
        "aud": [AUDIENCE],
        "iat": NOW - 5,
        "exp": NOW + 300,
    }
    claims.update(overrides)
    claims = {k: v for k, v in claims.items() if v is not ...}
    header: dict[str, Any] = {"typ": "JWT", "kid": KID}
    header.update(headers or {})
    header = {k: v for k, v in header.items() if v is not ...}
    return PyJWS().encode(
        json.dumps(claims).encode(), key, algorithm=algorithm, headers=header
    )


def test_refuses_published_sample_because_it_has_no_audience(bundle: Path) -> None:
    token = (SVID / "c-spiffe-jwtsvid.jwt").read_text().strip()

    assert reason(lambda: spiffe_sources(bundle).verify(token, NOW)) == "wrong_audience"


def test_rejects_published_sample_with_flipped_signature_byte(bundle: Path) -> None:
    token = (SVID / "c-spiffe-jwtsvid.jwt").read_text().strip()
    head, body, signature = token.split(".")
    raw = bytearray(unb64(signature))
    raw[5] ^= 0x01

    tampered = f"{head}.{body}.{b64(raw)}"

    # Only the audience fails on the original; a flipped byte fails earlier.
    assert reason(lambda: spiffe_sources(bundle).verify(tampered, NOW)) == (
        "bad_signature"
    )


def test_verifies_minted_jwt_svid(
    bundle: Path, key: ec.EllipticCurvePrivateKey
) -> None:
    identity = spiffe_sources(bundle).verify(mint(key), NOW)

    assert identity.source == "example"
    assert identity.platform == "spiffe"
    assert identity.evidence_kind == "spiffe_jwt_svid"
    assert identity.subject == "spiffe://example.com/workload1"
    assert identity.issuer == "spiffe://example.com"
    assert identity.expires_at == NOW + 300
    assert identity.issued_at == NOW - 5
    assert identity.keys_managed is False
    assert identity.attributes == {
        "spiffe_id": "spiffe://example.com/workload1",
        "trust_domain": "example.com",
    }


def test_iss_is_not_required_and_not_trusted(
    bundle: Path, key: ec.EllipticCurvePrivateKey
) -> None:
    token = mint(key, iss="https://somewhere.else")

    assert spiffe_sources(bundle).verify(token, NOW).issuer == "spiffe://example.com"


def test_accepts_string_audience_and_configured_audience(
    bundle: Path, key: ec.EllipticCurvePrivateKey
) -> None:
    sources = spiffe_sources(bundle, audience="spiffe://example.com/issuer")

    assert sources.verify(mint(key, aud="spiffe://example.com/issuer"), NOW)
    assert reason(lambda: sources.verify(mint(key), NOW)) == "wrong_audience"


@pytest.mark.parametrize("aud", [["https://other"], "https://other", [], ...])
def test_rejects_minted_token_with_wrong_audience(
    bundle: Path, key: ec.EllipticCurvePrivateKey, aud: object
) -> None:
    token = mint(key, aud=aud)

    assert reason(lambda: spiffe_sources(bundle).verify(token, NOW)) == "wrong_audience"


def test_verifies_without_kid_when_the_bundle_has_one_jwt_key(
    tmp_path: Path, key: ec.EllipticCurvePrivateKey
) -> None:
    path = write_bundle(tmp_path / "b.json", [jwk_of(key, kid=KID, use="jwt-svid")])
    token = mint(key, headers={"kid": ...})

    assert spiffe_sources(path).verify(token, NOW).subject.endswith("/workload1")


def test_accepts_bundle_keys_without_use(
    tmp_path: Path, key: ec.EllipticCurvePrivateKey
) -> None:
    path = write_bundle(tmp_path / "b.json", [jwk_of(key, kid=KID)])

    assert spiffe_sources(path).verify(mint(key), NOW).keys_managed is False


def test_bundle_with_only_x509_svid_keys_is_refused(
    tmp_path: Path, key: ec.EllipticCurvePrivateKey
) -> None:
    path = write_bundle(tmp_path / "b.json", [jwk_of(key, kid=KID, use="x509-svid")])

    with pytest.raises(ConfigError, match=r"trust_sources\.example.*jwks_file"):
        spiffe_sources(path)


def test_bundle_with_private_key_is_refused(
    tmp_path: Path, key: ec.EllipticCurvePrivateKey
) -> None:
    private = ECAlgorithm.to_jwk(key, as_dict=True)
    private.update({"kid": KID, "use": "jwt-svid"})
    path = write_bundle(tmp_path / "b.json", [private])

    with pytest.raises(ConfigError, match=r"trust_sources\.example.*jwks_file"):
        spiffe_sources(path)


def test_rejects_unknown_kid(bundle: Path, key: ec.EllipticCurvePrivateKey) -> None:
    token = mint(key, headers={"kid": "not-in-bundle"})

    assert reason(lambda: spiffe_sources(bundle).verify(token, NOW)) == "unknown_kid"


def test_rejects_token_signed_by_another_key(bundle: Path) -> None:
    stranger = ec.generate_private_key(ec.SECP256R1())

    assert reason(lambda: spiffe_sources(bundle).verify(mint(stranger), NOW)) == (
        "bad_signature"
    )


def test_rejects_der_encoded_ecdsa_signature(
    bundle: Path, key: ec.EllipticCurvePrivateKey
) -> None:
    head, body, _ = mint(key).split(".")
    der = key.sign(f"{head}.{body}".encode(), ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    assert r and s

    token = f"{head}.{body}.{b64(der)}"

    assert reason(lambda: spiffe_sources(bundle).verify(token, NOW)) == (
        "bad_signature"
    )


@pytest.mark.parametrize(
    "sub",
    [
        "spiffe://other.org/workload1",
        "spiffe://EXAMPLE.com/workload1",
        "spiffe://example.com:443/workload1",
        "spiffe://user@example.com/workload1",
        "https://example.com/workload1",
        "system:serviceaccount:a:b",
    ],
)
def test_rejects_subject_outside_the_trust_domain(
    bundle: Path, key: ec.EllipticCurvePrivateKey, sub: str
) -> None:
    token = mint(key, sub=sub)

    assert reason(lambda: spiffe_sources(bundle).verify(token, NOW)) == "unknown_issuer"


@pytest.mark.parametrize(
    "sub",
    [
        "spiffe://example.com",
        "spiffe://example.com/",
        "spiffe://example.com/a//b",
        "spiffe://example.com/a/../b",
        "spiffe://example.com/./a",
        "spiffe://example.com/a?x=1",
        "spiffe://example.com/a#frag",
        "spiffe://example.com/a%20b",
        "spiffe://example.com/a/",
        "spiffe://example.com/" + "a" * 2048,
    ],
)
def test_rejects_subject_that_is_not_a_workload_spiffe_id(
    bundle: Path, key: ec.EllipticCurvePrivateKey, sub: str
) -> None:
    token = mint(key, sub=sub)

    assert reason(lambda: spiffe_sources(bundle).verify(token, NOW)) == "malformed"


def test_token_without_subject_or_known_issuer_has_no_source(
    bundle: Path, key: ec.EllipticCurvePrivateKey
) -> None:
    token = mint(key, sub=..., iss="https://not-configured")

    assert reason(lambda: spiffe_sources(bundle).verify(token, NOW)) == "unknown_issuer"


@pytest.mark.parametrize("typ", ["at+jwt", "dpop+jwt", "jwt", 1])
def test_rejects_typ_other_than_jwt_or_jose(
    bundle: Path, key: ec.EllipticCurvePrivateKey, typ: object
) -> None:
    token = mint(key, headers={"typ": typ})

    assert reason(lambda: spiffe_sources(bundle).verify(token, NOW)) == "malformed"


def test_accepts_typ_jose(bundle: Path, key: ec.EllipticCurvePrivateKey) -> None:
    assert spiffe_sources(bundle).verify(mint(key, headers={"typ": "JOSE"}), NOW)


def test_key_url_headers_are_ignored(
    monkeypatch: pytest.MonkeyPatch, bundle: Path, key: ec.EllipticCurvePrivateKey
) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("a key URL named by the token was fetched")

    monkeypatch.setattr("socket.create_connection", no_network)
    monkeypatch.setattr("requests.Session.request", no_network)
    unreachable = "https://127.0.0.1:9/keys"
    token = mint(key, headers={"jku": unreachable, "x5u": unreachable})

    assert spiffe_sources(bundle).verify(token, NOW).subject.endswith("/workload1")


def test_embedded_jwk_header_cannot_vouch_for_its_own_token(bundle: Path) -> None:
    attacker = ec.generate_private_key(ec.SECP256R1())
    token = mint(attacker, headers={"jwk": jwk_of(attacker, kid=KID)})

    assert reason(lambda: spiffe_sources(bundle).verify(token, NOW)) == "bad_signature"


@pytest.mark.parametrize("alg", ["HS256", "none"])
def test_rejects_changed_alg(
    bundle: Path, key: ec.EllipticCurvePrivateKey, alg: str
) -> None:
    head, body, signature = mint(key).split(".")
    header = json.loads(unb64(head))
    header["alg"] = alg
    token = f"{b64(json.dumps(header).encode())}.{body}.{signature}"

    assert (
        reason(lambda: spiffe_sources(bundle).verify(token, NOW)) == "alg_not_allowed"
    )


def test_rejects_alg_that_does_not_fit_the_p256_key(
    bundle: Path, key: ec.EllipticCurvePrivateKey
) -> None:
    head, body, signature = mint(key).split(".")
    header = json.loads(unb64(head))
    header["alg"] = "ES384"
    token = f"{b64(json.dumps(header).encode())}.{body}.{signature}"
    sources = spiffe_sources(bundle, algorithms=["ES256", "ES384"])

    assert reason(lambda: sources.verify(token, NOW)) == "alg_not_allowed"


def test_rejects_eddsa_in_spiffe_config(bundle: Path) -> None:
    # JWT-SVID section 2.1 lists RSA, ECDSA and RSA-PSS only.
    with pytest.raises(ConfigError, match=r"trust_sources\.example.*algorithms"):
        spiffe_sources(bundle, algorithms=["ES256", "EdDSA"])


@pytest.mark.parametrize(
    ("claims", "now", "expected"),
    [
        ({"exp": NOW - 61}, NOW, "expired"),
        ({"exp": ...}, NOW, "malformed"),
        ({"exp": "9990000000"}, NOW, "malformed"),
        ({"exp": 9990000000.5}, NOW, "malformed"),
        ({"nbf": NOW + 120}, NOW, "not_yet_valid"),
        ({"iat": NOW + 120}, NOW, "issued_in_future"),
        ({"iat": "now"}, NOW, "malformed"),
    ],
)
def test_rejects_bad_time_claims(
    bundle: Path,
    key: ec.EllipticCurvePrivateKey,
    claims: dict[str, Any],
    now: int,
    expected: str,
) -> None:
    token = mint(key, **claims)

    assert reason(lambda: spiffe_sources(bundle).verify(token, now)) == expected


def test_max_lifetime_bounds_exp_minus_iat(
    bundle: Path, key: ec.EllipticCurvePrivateKey
) -> None:
    sources = spiffe_sources(bundle, max_lifetime=600)

    assert sources.verify(mint(key, iat=NOW, exp=NOW + 600), NOW)
    assert reason(lambda: sources.verify(mint(key, iat=NOW, exp=NOW + 601), NOW)) == (
        "lifetime_too_long"
    )


def test_rejects_payload_that_is_a_json_array(
    bundle: Path, key: ec.EllipticCurvePrivateKey
) -> None:
    token = PyJWS().encode(b"[1, 2, 3]", key, algorithm="ES256", headers={"kid": KID})

    assert reason(lambda: spiffe_sources(bundle).verify(token, NOW)) == "malformed"


def test_rejects_crit_header(bundle: Path, key: ec.EllipticCurvePrivateKey) -> None:
    token = mint(key, headers={"crit": ["exp"], "exp": NOW})

    assert (
        reason(lambda: spiffe_sources(bundle).verify(token, NOW)) == "unsupported_crit"
    )


def test_config_requires_trust_domain_and_refuses_issuer(bundle: Path) -> None:
    with pytest.raises(ConfigError, match=r"trust_sources\.example.*trust_domain"):
        TrustSources(
            {"example": {"platform": "spiffe", "jwks_file": str(bundle)}},
            issuer_url=AUDIENCE,
        )
    with pytest.raises(ConfigError, match=r"trust_sources\.example.*issuer"):
        spiffe_sources(bundle, issuer="https://example.com")
    with pytest.raises(ConfigError, match=r"trust_sources\.example.*trust_domain"):
        spiffe_sources(bundle, trust_domain="Example.COM")


def test_two_sources_for_one_trust_domain_are_refused(bundle: Path) -> None:
    table = {
        "platform": "spiffe",
        "trust_domain": "example.com",
        "jwks_file": str(bundle),
    }

    with pytest.raises(ConfigError, match=r"trust_sources\.b.*trust_domain"):
        TrustSources({"a": table, "b": table}, issuer_url=AUDIENCE)


@pytest.mark.parametrize(
    ("value", "domain", "path"),
    [
        ("spiffe://example.com/workload1", "example.com", "/workload1"),
        (
            "spiffe://k8s-west.example.com/ns/staging/sa/default",
            "k8s-west.example.com",
            "/ns/staging/sa/default",
        ),
        ("spiffe://td_1/A.b-c_d", "td_1", "/A.b-c_d"),
    ],
)
def test_parses_valid_spiffe_ids(value: str, domain: str, path: str) -> None:
    parsed = parse_spiffe_id(value)

    assert (parsed.trust_domain, parsed.path, str(parsed)) == (domain, path, value)
