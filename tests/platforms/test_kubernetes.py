"""Kubernetes projected service account tokens, checked against a real EKS token."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from jwt.api_jws import PyJWS

from issuer.config import ConfigError
from issuer.errors import EvidenceError
from issuer.platforms import PlatformIdentity, TrustSources

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
K8S = DATA / "k8s-sa-token"

ISSUER = "https://oidc.eks.eu-west-1.amazonaws.com/id/B88E7287E54DB073AC9CDC2FD1BE0969"
AUDIENCE = "sts.amazonaws.com"
NOW = 1763985600
KID = "e3b1d185e0d794058a6346c32b2575ac0efb622e"
EXP = 1764056278
IAT = 1763969878


def b64(data: bytes | bytearray) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def split(token: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    header, payload, signature = token.split(".")
    return json.loads(unb64(header)), json.loads(unb64(payload)), signature


def reencode(
    token: str,
    header: dict[str, Any] | None = None,
    claims: dict[str, Any] | None = None,
) -> str:
    """Rebuild ``token`` with a new header or payload, keeping its signature."""
    old_header, old_claims, signature = split(token)
    head = b64(json.dumps(old_header if header is None else header).encode())
    body = b64(json.dumps(old_claims if claims is None else claims).encode())
    return f"{head}.{body}.{signature}"


def real_token() -> str:
    return (K8S / "token.jwt").read_text().strip()


def reason(call: Callable[[], object]) -> str:
    with pytest.raises(EvidenceError) as info:
        call()
    return info.value.reason


def eks_sources(**extra: object) -> TrustSources:
    table: dict[str, object] = {
        "platform": "kubernetes",
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "jwks_file": str(K8S / "jwks.json"),
    }
    table.update(extra)
    return TrustSources({"eks": table}, issuer_url="https://issuer.test")


@pytest.fixture(scope="module")
def cluster_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def minted(
    tmp_path: Path, cluster_key: rsa.RSAPrivateKey
) -> tuple[TrustSources, Callable[..., str]]:
    """A test cluster: its trust source and a function that signs claims."""
    jwk = RSAAlgorithm.to_jwk(cluster_key.public_key(), as_dict=True)
    jwk.update({"kid": "test-kid", "use": "sig", "alg": "RS256"})
    jwks = tmp_path / "cluster-jwks.json"
    jwks.write_text(json.dumps({"keys": [jwk]}))
    sources = TrustSources(
        {
            "test-cluster": {
                "platform": "kubernetes",
                "issuer": "https://kubernetes.default.svc",
                "jwks_file": str(jwks),
            }
        },
        issuer_url="https://issuer.test",
    )

    def mint(headers: dict[str, Any] | None = None, **overrides: Any) -> str:
        claims: dict[str, Any] = {
            "iss": "https://kubernetes.default.svc",
            "aud": ["https://issuer.test"],
            "sub": "system:serviceaccount:payments:api",
            "iat": NOW - 10,
            "nbf": NOW - 10,
            "exp": NOW + 600,
            "kubernetes.io": {
                "namespace": "payments",
                "serviceaccount": {"name": "api", "uid": "sa-uid"},
                "pod": {"name": "api-0", "uid": "pod-uid"},
            },
        }
        claims.update(overrides)
        claims = {k: v for k, v in claims.items() if v is not ...}
        # PyJWS signs the bytes as given, so claims of wrong types survive.
        return PyJWS().encode(
            json.dumps(claims).encode(),
            cluster_key,
            algorithm="RS256",
            headers={"typ": "JWT", "kid": "test-kid", **(headers or {})},
        )

    return sources, mint


def test_verifies_real_eks_token_with_every_attribute() -> None:
    token = real_token()

    identity = eks_sources().verify(token, NOW)

    assert identity == PlatformIdentity(
        source="eks",
        platform="kubernetes",
        evidence_kind="k8s_sa_token",
        subject="system:serviceaccount:hakawai:hakawai-litellm-proxy",
        issuer=ISSUER,
        expires_at=EXP,
        issued_at=IAT,
        digest="sha-256:" + hashlib.sha256(token.encode("ascii")).hexdigest(),
        attributes={
            "namespace": "hakawai",
            "service_account": "hakawai-litellm-proxy",
            "service_account_uid": "8180de1d-6687-4024-8c6c-bb5d4700897a",
            "pod": "hakawai-litellm-proxy-57456bb9cb-bwzxh",
            "pod_uid": "989f1a6e-8af7-4740-93d8-206f8daf9a84",
            "node": "ip-10-15-179-190.eu-west-1.compute.internal",
        },
        keys_managed=False,
    )


def test_names_lists_configured_sources() -> None:
    assert eks_sources().names() == ["eks"]


def test_rejects_flipped_signature_byte() -> None:
    head, body, signature = real_token().split(".")
    raw = bytearray(unb64(signature))
    raw[17] ^= 0x01

    assert reason(lambda: eks_sources().verify(f"{head}.{body}.{b64(raw)}", NOW)) == (
        "bad_signature"
    )


@pytest.mark.parametrize("alg", ["HS256", "HS512", "none", "None", "NONE", "RS1"])
def test_rejects_changed_alg(alg: str) -> None:
    header, _, _ = split(real_token())
    header["alg"] = alg
    token = reencode(real_token(), header=header)

    assert reason(lambda: eks_sources().verify(token, NOW)) == "alg_not_allowed"


def test_rejects_alg_none_with_empty_signature() -> None:
    header, claims, _ = split(real_token())
    header["alg"] = "none"
    token = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}."

    assert reason(lambda: eks_sources().verify(token, NOW)) == "alg_not_allowed"


def test_refuses_allow_list_that_fits_no_pinned_key() -> None:
    # Every key in the EKS set declares alg RS256, so no other algorithm
    # could ever verify a token from this source.
    with pytest.raises(ConfigError, match=r"trust_sources\.eks"):
        eks_sources(algorithms=["ES256"])
    with pytest.raises(ConfigError, match=r"trust_sources\.eks"):
        eks_sources(algorithms=["RS384", "PS256"])


def test_rejects_reencoded_payload_with_changed_audience() -> None:
    _, claims, _ = split(real_token())
    claims["aud"] = ["https://issuer.test"]
    token = reencode(real_token(), claims=claims)
    sources = eks_sources(audience="https://issuer.test")

    assert reason(lambda: sources.verify(token, NOW)) == "bad_signature"


def test_rejects_real_token_for_other_audience() -> None:
    sources = eks_sources(audience="https://issuer.test")

    assert reason(lambda: sources.verify(real_token(), NOW)) == "wrong_audience"


def test_audience_defaults_to_issuer_url() -> None:
    table = {
        "platform": "kubernetes",
        "issuer": ISSUER,
        "jwks_file": str(K8S / "jwks.json"),
    }
    sources = TrustSources({"eks": table}, issuer_url=AUDIENCE)

    assert sources.verify(real_token(), NOW).subject.endswith(":hakawai-litellm-proxy")


def test_rejects_minted_token_with_wrong_audience(
    minted: tuple[TrustSources, Callable[..., str]],
) -> None:
    sources, mint = minted

    assert sources.verify(mint(), NOW).attributes == {
        "namespace": "payments",
        "service_account": "api",
        "service_account_uid": "sa-uid",
        "pod": "api-0",
        "pod_uid": "pod-uid",
    }
    assert reason(lambda: sources.verify(mint(aud="https://other"), NOW)) == (
        "wrong_audience"
    )
    assert reason(lambda: sources.verify(mint(aud=...), NOW)) == "wrong_audience"
    assert reason(lambda: sources.verify(mint(aud=[]), NOW)) == "wrong_audience"


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (EXP + 61, "expired"),
        (EXP + 60, "expired"),
        (IAT - 61, "not_yet_valid"),
    ],
)
def test_rejects_real_token_outside_its_window(now: int, expected: str) -> None:
    assert reason(lambda: eks_sources().verify(real_token(), now)) == expected


@pytest.mark.parametrize("now", [EXP + 59, IAT - 59])
def test_accepts_real_token_within_clock_skew(now: int) -> None:
    assert eks_sources().verify(real_token(), now).expires_at == EXP


def test_clock_skew_is_configurable() -> None:
    table = {
        "platform": "kubernetes",
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "jwks_file": str(K8S / "jwks.json"),
    }
    strict = TrustSources({"eks": table}, issuer_url="https://x", clock_skew=0)

    assert reason(lambda: strict.verify(real_token(), EXP)) == "expired"


def test_rejects_minted_token_issued_in_the_future(
    minted: tuple[TrustSources, Callable[..., str]],
) -> None:
    sources, mint = minted
    token = mint(iat=NOW + 120, nbf=...)

    assert reason(lambda: sources.verify(token, NOW)) == "issued_in_future"


def test_rejects_changed_issuer() -> None:
    _, claims, _ = split(real_token())
    claims["iss"] = "https://oidc.eks.eu-west-1.amazonaws.com/id/OTHER"
    token = reencode(real_token(), claims=claims)

    assert reason(lambda: eks_sources().verify(token, NOW)) == "unknown_issuer"


def test_rejects_token_without_issuer() -> None:
    _, claims, _ = split(real_token())
    del claims["iss"]
    token = reencode(real_token(), claims=claims)

    assert reason(lambda: eks_sources().verify(token, NOW)) == "unknown_issuer"


def test_rejects_unknown_kid() -> None:
    header, _, _ = split(real_token())
    header["kid"] = "0000000000000000000000000000000000000000"
    token = reencode(real_token(), header=header)

    assert reason(lambda: eks_sources().verify(token, NOW)) == "unknown_kid"


def test_rejects_kid_of_another_key_in_the_set() -> None:
    other = json.loads((K8S / "jwks.json").read_text())["keys"][0]["kid"]
    assert other != KID
    header, _, _ = split(real_token())
    header["kid"] = other
    token = reencode(real_token(), header=header)

    assert reason(lambda: eks_sources().verify(token, NOW)) == "bad_signature"


def test_rejects_missing_kid_when_the_set_has_many_keys() -> None:
    header, _, _ = split(real_token())
    del header["kid"]
    token = reencode(real_token(), header=header)

    assert reason(lambda: eks_sources().verify(token, NOW)) == "unknown_kid"


def test_rejects_oversized_token_before_parsing() -> None:
    token = real_token() + "A" * 16384

    assert reason(lambda: eks_sources().verify(token, NOW)) == "too_large"
    assert reason(lambda: eks_sources().verify("!" * 16385, NOW)) == "too_large"


def test_max_token_bytes_is_configurable() -> None:
    table = {
        "platform": "kubernetes",
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "jwks_file": str(K8S / "jwks.json"),
    }
    small = TrustSources({"eks": table}, issuer_url="https://x", max_token_bytes=1024)

    assert reason(lambda: small.verify(real_token(), NOW)) == "too_large"


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t.replace(".", "!", 1),
        lambda t: t[:40] + "!" + t[41:],
        lambda t: t[:40] + "=" + t[41:],
        lambda t: t.split(".")[0] + "." + t.split(".")[1] + "==." + t.split(".")[2],
        lambda t: t + ".",
        lambda t: t.rsplit(".", 1)[0],
        lambda t: t.replace(".", ". ", 1),
        lambda t: t[:100] + "\u00e9" + t[101:],
        lambda t: "",
    ],
    ids=[
        "no-dots",
        "bad-char",
        "inner-padding",
        "padded",
        "four-parts",
        "two-parts",
        "space",
        "non-ascii",
        "empty",
    ],
)
def test_rejects_bad_base64_and_shape(mangle: Callable[[str], str]) -> None:
    token = mangle(real_token())

    assert reason(lambda: eks_sources().verify(token, NOW)) == "malformed"


def test_rejects_payload_that_is_a_json_array() -> None:
    head, _, signature = real_token().split(".")
    token = f"{head}.{b64(b'[1, 2]')}.{signature}"

    assert reason(lambda: eks_sources().verify(token, NOW)) == "malformed"


@pytest.mark.usefixtures("quiet_gc")
def test_rejects_deeply_nested_payload() -> None:
    head, _, signature = real_token().split(".")
    token = f"{head}.{b64(b'[' * 9000)}.{signature}"

    assert reason(lambda: eks_sources().verify(token, NOW)) == "malformed"


def test_rejects_header_that_is_not_json() -> None:
    _, body, signature = real_token().split(".")
    token = f"{b64(b'{not json')}.{body}.{signature}"

    assert reason(lambda: eks_sources().verify(token, NOW)) == "malformed"


def test_rejects_duplicate_claim_names() -> None:
    head, _, signature = real_token().split(".")
    body = b'{"iss": "x", "iss": "' + ISSUER.encode() + b'"}'
    token = f"{head}.{b64(body)}.{signature}"

    assert reason(lambda: eks_sources().verify(token, NOW)) == "malformed"


@pytest.mark.parametrize("crit", [["exp"], ["b64"], ["x-unknown"], "b64"])
def test_rejects_crit_header(crit: object) -> None:
    header, _, _ = split(real_token())
    header["crit"] = crit
    token = reencode(real_token(), header=header)

    assert reason(lambda: eks_sources().verify(token, NOW)) == "unsupported_crit"


def test_jku_header_is_never_fetched(
    monkeypatch: pytest.MonkeyPatch,
    minted: tuple[TrustSources, Callable[..., str]],
) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("a key URL named by the token was fetched")

    monkeypatch.setattr("socket.create_connection", no_network)
    monkeypatch.setattr("requests.Session.request", no_network)
    sources, mint = minted
    unreachable = "http://127.0.0.1:9/jwks.json"

    accepted = sources.verify(
        mint(headers={"jku": unreachable, "x5u": unreachable}), NOW
    )
    assert accepted.subject == "system:serviceaccount:payments:api"

    header, _, _ = split(real_token())
    header["jku"] = unreachable
    tampered = reencode(real_token(), header=header)
    assert reason(lambda: eks_sources().verify(tampered, NOW)) == "bad_signature"


@pytest.mark.parametrize(
    ("claim", "value"),
    [
        ("exp", str(NOW + 600)),
        ("exp", float(NOW + 600)),
        ("exp", True),
        ("exp", ...),
        ("iat", "yesterday"),
        ("nbf", [NOW]),
        ("sub", 42),
        ("sub", ...),
        ("aud", 7),
        ("aud", ["https://issuer.test", 7]),
        ("iss", ["https://kubernetes.default.svc"]),
        ("kubernetes.io", "payments"),
        ("kubernetes.io", ...),
        ("kubernetes.io", {"namespace": "payments"}),
        ("kubernetes.io", {"namespace": 1, "serviceaccount": {"name": "api"}}),
        ("kubernetes.io", {"namespace": "payments", "serviceaccount": {"name": 3}}),
        ("kubernetes.io", {"namespace": "other", "serviceaccount": {"name": "api"}}),
    ],
)
def test_rejects_claims_of_wrong_type_or_shape(
    minted: tuple[TrustSources, Callable[..., str]], claim: str, value: object
) -> None:
    sources, mint = minted
    token = mint(**{claim: value})

    assert reason(lambda: sources.verify(token, NOW)) == "malformed"


def test_node_and_pod_are_optional(
    minted: tuple[TrustSources, Callable[..., str]],
) -> None:
    sources, mint = minted
    token = mint(
        **{
            "kubernetes.io": {
                "namespace": "payments",
                "serviceaccount": {"name": "api", "uid": "sa-uid"},
                "secret": {"name": "api-token", "uid": "secret-uid"},
            }
        }
    )

    assert sources.verify(token, NOW).attributes == {
        "namespace": "payments",
        "service_account": "api",
        "service_account_uid": "sa-uid",
    }


def test_rejects_real_token_longer_than_max_lifetime() -> None:
    assert eks_sources(max_lifetime=86400).verify(real_token(), NOW).issued_at == IAT
    assert reason(lambda: eks_sources(max_lifetime=3600).verify(real_token(), NOW)) == (
        "lifetime_too_long"
    )


def test_max_lifetime_requires_iat(
    tmp_path: Path, cluster_key: rsa.RSAPrivateKey
) -> None:
    jwk = RSAAlgorithm.to_jwk(cluster_key.public_key(), as_dict=True)
    (tmp_path / "k.json").write_text(json.dumps({"keys": [jwk]}))
    sources = TrustSources(
        {
            "c": {
                "platform": "kubernetes",
                "issuer": "https://k",
                "jwks_file": str(tmp_path / "k.json"),
                "max_lifetime": 3600,
            }
        },
        issuer_url="https://issuer.test",
    )
    claims = {
        "iss": "https://k",
        "aud": "https://issuer.test",
        "sub": "system:serviceaccount:a:b",
        "exp": NOW + 60,
        "kubernetes.io": {"namespace": "a", "serviceaccount": {"name": "b"}},
    }
    token = jwt.encode(claims, cluster_key, algorithm="RS256")

    assert reason(lambda: sources.verify(token, NOW)) == "lifetime_too_long"
    claims["iat"] = NOW
    assert (
        sources.verify(jwt.encode(claims, cluster_key, "RS256"), NOW).issued_at == NOW
    )


def test_error_descriptions_never_carry_token_text() -> None:
    token = real_token()
    _, claims, _ = split(token)
    claims["iss"] = "https://attacker.example/<script>"
    tampered = reencode(token, claims=claims)

    with pytest.raises(EvidenceError) as info:
        eks_sources().verify(tampered, NOW)

    assert "attacker" not in str(info.value)
    assert str(info.value).isascii()


def test_config_names_source_and_key_on_error() -> None:
    with pytest.raises(ConfigError, match=r"trust_sources\.eks.*issuer"):
        TrustSources(
            {"eks": {"platform": "kubernetes", "jwks_file": str(K8S / "jwks.json")}},
            issuer_url="https://x",
        )
    with pytest.raises(ConfigError, match=r"trust_sources\.eks.*namespace"):
        eks_sources(namespace="hakawai")
