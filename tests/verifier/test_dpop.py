"""DPoP at the resource server (RFC 9449 sections 4.3, 6.1, 7.1, 11.1) and
certificate-bound tokens (RFC 8705 section 3)."""

from __future__ import annotations

import base64
import datetime
import hashlib
import time
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.verifier import AUDIENCE, ISSUER, MAAL_3, MIAL_3, DPoPKey, FakeIssuer, b64url
from verifier import (
    CertificateMismatch,
    InvalidDPoPProof,
    ProofRequired,
    ReplayedDPoPProof,
    TokenVerifier,
)
from verifier.dpop import (
    DPoPVerifier,
    MemoryReplayCache,
    access_token_hash,
    normalize_htu,
)
from verifier.keys import jwk_thumbprint

URL = "https://api.test/orders"

# RFC 9449 section 7.1, figure 13: a proof for a protected resource request,
# its access token, and the thumbprint of its key (section 6.1, figure 9).
RFC_PROOF = (
    "eyJ0eXAiOiJkcG9wK2p3dCIsImFsZyI6IkVTMjU2IiwiandrIjp7Imt0eSI6IkVDIiwieCI6Imw4"
    "dEZyaHgtMzR0VjNoUklDUkRZOXpDa0RscEJoRjQyVVFVZldWQVdCRnMiLCJ5IjoiOVZFNGpmX09r"
    "X282NHpiVFRsY3VOSmFqSG10NnY5VERWclUwQ2R2R1JEQSIsImNydiI6IlAtMjU2In19.eyJqdGk"
    "iOiJlMWozVl9iS2ljOC1MQUVCIiwiaHRtIjoiR0VUIiwiaHR1IjoiaHR0cHM6Ly9yZXNvdXJjZS5"
    "leGFtcGxlLm9yZy9wcm90ZWN0ZWRyZXNvdXJjZSIsImlhdCI6MTU2MjI2MjYxOCwiYXRoIjoiZlV"
    "IeU8ycjJaM0RaNTNFc05yV0JiMHhXWG9hTnk1OUlpS0NBcWtzbVFFbyJ9.2oW9RP35yRqzhrtNP8"
    "6L-Ey71EOptxRimPPToA1plemAgR6pxHF8y6-yqyVnmcw6Fy1dqd-jfxSYoMxhAJpLjA"
)
RFC_TOKEN = "Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU"
RFC_JKT = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"
RFC_JWK = {
    "kty": "EC",
    "x": "l8tFrhx-34tV3hRICRDY9zCkDlpBhF42UQUfWVAWBFs",
    "y": "9VE4jf_Ok_o64zbTTlcuNJajHmt6v9TDVrU0CdvGRDA",
    "crv": "P-256",
}


@pytest.fixture
def issuer() -> FakeIssuer:
    return FakeIssuer("ES256")


@pytest.fixture
def verifier(issuer: FakeIssuer) -> TokenVerifier:
    return TokenVerifier(ISSUER, AUDIENCE, jwks=issuer.jwks())


@pytest.fixture
def holder() -> DPoPKey:
    return DPoPKey()


@pytest.fixture
def bound(issuer: FakeIssuer, holder: DPoPKey) -> str:
    return issuer.mint(issuer.claims(cnf={"jkt": holder.jkt}))


def present(
    verifier: TokenVerifier,
    token: str,
    proof: str | None,
    method: str = "GET",
    url: str = URL,
    **kw: Any,
) -> Any:
    return verifier.verify(
        token,
        presentation="dpop",
        dpop_proof=proof,
        http_method=method,
        http_url=url,
        **kw,
    )


# -- known answers -----------------------------------------------------------


def test_rfc9449_thumbprint_and_ath_vectors() -> None:
    assert jwk_thumbprint(RFC_JWK) == RFC_JKT
    assert access_token_hash(RFC_TOKEN) == "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo"


def test_rfc9449_resource_request_proof_verifies() -> None:
    proof = DPoPVerifier().verify(
        RFC_PROOF,
        method="GET",
        url="https://resource.example.org/protectedresource",
        access_token=RFC_TOKEN,
        jkt=RFC_JKT,
        now=1562262618,
    )

    assert proof.jti == "e1j3V_bKic8-LAEB"
    assert proof.jkt == RFC_JKT
    assert proof.non_replayable


def test_rfc9449_proof_refused_for_another_token() -> None:
    with pytest.raises(InvalidDPoPProof):
        DPoPVerifier().verify(
            RFC_PROOF,
            method="GET",
            url="https://resource.example.org/protectedresource",
            access_token="another-token",
            jkt=RFC_JKT,
            now=1562262618,
        )


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("HTTPS://API.Test:443/orders?x=1#f", "https://api.test/orders"),
        ("http://api.test:80", "http://api.test/"),
        ("https://api.test:8443/a/./b/../c", "https://api.test:8443/a/c"),
        ("https://api.test/%7euser/%2f", "https://api.test/~user/%2F"),
        ("https://[::1]:9000/x", "https://[::1]:9000/x"),
    ],
)
def test_normalize_htu(given: str, expected: str) -> None:
    assert normalize_htu(given) == expected


@pytest.mark.parametrize("bad", ["/orders", "ftp://api.test/x", "https://u@api.test/"])
def test_normalize_htu_refuses_non_http_uris(bad: str) -> None:
    with pytest.raises(ValueError):
        normalize_htu(bad)


# -- accepted ----------------------------------------------------------------


@pytest.mark.parametrize("alg", ["ES256", "EdDSA", "RS256", "PS256"])
def test_accepts_valid_proof(
    issuer: FakeIssuer, verifier: TokenVerifier, alg: str
) -> None:
    holder = DPoPKey(alg)
    token = issuer.mint(issuer.claims(cnf={"jkt": holder.jkt}))

    verified = present(verifier, token, holder.proof("GET", URL, token))

    assert verified.dpop is not None
    assert verified.dpop.jkt == holder.jkt
    assert verified.presentation == "dpop"


def test_htu_compared_after_normalisation_without_query(
    verifier: TokenVerifier, holder: DPoPKey, bound: str
) -> None:
    proof = holder.proof("POST", "https://API.test:443/orders", bound)

    assert present(verifier, bound, proof, "POST", URL + "?page=2").sub


# -- refused -----------------------------------------------------------------


def test_rejects_bearer_presentation_of_dpop_bound_token(
    verifier: TokenVerifier, bound: str
) -> None:
    with pytest.raises(ProofRequired):
        verifier.verify(bound)


def test_rejects_dpop_presentation_without_proof(
    verifier: TokenVerifier, bound: str
) -> None:
    with pytest.raises(ProofRequired):
        present(verifier, bound, None)


def test_rejects_dpop_scheme_for_unbound_token(
    issuer: FakeIssuer, verifier: TokenVerifier, holder: DPoPKey
) -> None:
    token = issuer.mint()

    with pytest.raises(InvalidDPoPProof):
        present(verifier, token, holder.proof("GET", URL, token))


def test_rejects_replayed_proof(
    verifier: TokenVerifier, holder: DPoPKey, bound: str
) -> None:
    proof = holder.proof("GET", URL, bound)
    present(verifier, bound, proof)

    with pytest.raises(ReplayedDPoPProof):
        present(verifier, bound, proof)


def test_rejects_proof_for_another_url(
    verifier: TokenVerifier, holder: DPoPKey, bound: str
) -> None:
    proof = holder.proof("GET", "https://api.test/admin", bound)

    with pytest.raises(InvalidDPoPProof) as caught:
        present(verifier, bound, proof)
    assert type(caught.value) is InvalidDPoPProof


def test_rejects_proof_for_another_host(
    verifier: TokenVerifier, holder: DPoPKey, bound: str
) -> None:
    proof = holder.proof("GET", "https://other.test/orders", bound)

    with pytest.raises(InvalidDPoPProof):
        present(verifier, bound, proof)


def test_rejects_proof_for_another_method(
    verifier: TokenVerifier, holder: DPoPKey, bound: str
) -> None:
    proof = holder.proof("POST", URL, bound)

    with pytest.raises(InvalidDPoPProof):
        present(verifier, bound, proof, "GET")


def test_rejects_proof_without_ath(
    verifier: TokenVerifier, holder: DPoPKey, bound: str
) -> None:
    with pytest.raises(InvalidDPoPProof):
        present(verifier, bound, holder.proof("GET", URL, None))


def test_rejects_proof_with_ath_of_another_token(
    issuer: FakeIssuer, verifier: TokenVerifier, holder: DPoPKey, bound: str
) -> None:
    other = issuer.mint(issuer.claims(cnf={"jkt": holder.jkt}))

    with pytest.raises(InvalidDPoPProof):
        present(verifier, bound, holder.proof("GET", URL, other))


def test_rejects_proof_from_another_key(verifier: TokenVerifier, bound: str) -> None:
    thief = DPoPKey()

    with pytest.raises(InvalidDPoPProof):
        present(verifier, bound, thief.proof("GET", URL, bound))


@pytest.mark.parametrize("offset", [-120, 60])
def test_rejects_proof_outside_the_iat_window(
    verifier: TokenVerifier, holder: DPoPKey, bound: str, offset: int
) -> None:
    proof = holder.proof("GET", URL, bound, iat=int(time.time()) + offset)

    with pytest.raises(InvalidDPoPProof):
        present(verifier, bound, proof)


@pytest.mark.parametrize("name", ["jti", "htm", "htu", "iat"])
def test_rejects_proof_missing_a_claim(
    verifier: TokenVerifier, holder: DPoPKey, bound: str, name: str
) -> None:
    with pytest.raises(InvalidDPoPProof):
        present(verifier, bound, holder.proof("GET", URL, bound, drop=(name,)))


@pytest.mark.parametrize(
    "claims",
    [{"iat": "now"}, {"iat": 1.5}, {"jti": ""}, {"jti": "x" * 300}, {"htu": 7}],
)
def test_rejects_proof_with_malformed_claims(
    verifier: TokenVerifier, holder: DPoPKey, bound: str, claims: dict[str, Any]
) -> None:
    with pytest.raises(InvalidDPoPProof):
        present(verifier, bound, holder.proof("GET", URL, bound, **claims))


def test_rejects_proof_with_wrong_typ(
    verifier: TokenVerifier, holder: DPoPKey, bound: str
) -> None:
    proof = holder.proof("GET", URL, bound, header={"typ": "JWT"})

    with pytest.raises(InvalidDPoPProof):
        present(verifier, bound, proof)


def test_rejects_proof_with_private_key_in_jwk(
    verifier: TokenVerifier, holder: DPoPKey, bound: str
) -> None:
    private = holder.jwk
    private["d"] = b64url(
        holder.key.private_numbers().private_value.to_bytes(32, "big")
    )
    proof = holder.proof("GET", URL, bound, header={"jwk": private})

    with pytest.raises(InvalidDPoPProof):
        present(verifier, bound, proof)


def test_rejects_hmac_proof(verifier: TokenVerifier, bound: str) -> None:
    import jwt

    body = {"jti": "j", "htm": "GET", "htu": URL, "iat": int(time.time())}
    proof = jwt.encode(
        body,
        "k" * 32,
        algorithm="HS256",
        headers={"typ": "dpop+jwt", "jwk": {"kty": "oct", "k": "aw"}},
    )

    with pytest.raises(InvalidDPoPProof):
        present(verifier, bound, proof)


def test_rejects_proof_with_bad_signature(
    verifier: TokenVerifier, holder: DPoPKey, bound: str
) -> None:
    head, body, _ = holder.proof("GET", URL, bound).split(".")

    with pytest.raises(InvalidDPoPProof):
        present(verifier, bound, f"{head}.{body}.{b64url(bytes(64))}")


@pytest.mark.parametrize("proof", ["", "a.b", "a.b.c", "x" * 9000])
def test_rejects_malformed_proof(
    verifier: TokenVerifier, bound: str, proof: str
) -> None:
    with pytest.raises(InvalidDPoPProof):
        present(verifier, bound, proof)


# -- replay cache ------------------------------------------------------------


def test_replay_cache_forgets_expired_entries() -> None:
    cache = MemoryReplayCache()
    cache.use("a", expires_at=100.0, now=50.0)

    with pytest.raises(ReplayedDPoPProof):
        cache.use("a", expires_at=160.0, now=99.0)
    cache.use("a", expires_at=200.0, now=101.0)
    assert len(cache) == 1


def test_full_replay_cache_refuses_rather_than_forgets() -> None:
    cache = MemoryReplayCache(max_entries=2)
    cache.use("a", 100.0, 0.0)
    cache.use("b", 100.0, 0.0)

    with pytest.raises(InvalidDPoPProof) as caught:
        cache.use("c", 100.0, 1.0)
    assert type(caught.value) is InvalidDPoPProof
    with pytest.raises(ReplayedDPoPProof):
        cache.use("a", 100.0, 1.0)
    cache.use("c", 200.0, 100.0)


def test_invalid_proofs_take_no_place_in_the_replay_cache(
    issuer: FakeIssuer, holder: DPoPKey, bound: str
) -> None:
    cache = MemoryReplayCache()
    verifier = TokenVerifier(
        ISSUER, AUDIENCE, jwks=issuer.jwks(), dpop=DPoPVerifier(replay_cache=cache)
    )
    for _ in range(5):
        with pytest.raises(InvalidDPoPProof):
            present(verifier, bound, holder.proof("GET", "https://x.test/", bound))

    assert len(cache) == 0


# -- certificate-bound tokens (RFC 8705) -------------------------------------


def _certificate() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "workload")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.DER)


def _x5t(der: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()


def test_accepts_certificate_bound_token_with_its_certificate(
    issuer: FakeIssuer, verifier: TokenVerifier
) -> None:
    der = _certificate()
    token = issuer.mint(issuer.claims(cnf={"x5t#S256": _x5t(der)}))

    verified = verifier.verify(token, client_cert_der=der)

    assert verified.presentation == "mtls"
    assert verified.maal_vector["boundary"] == 1


def test_live_certificate_keeps_boundary_three(
    issuer: FakeIssuer, verifier: TokenVerifier
) -> None:
    der = _certificate()
    claims = issuer.claims(
        mial_vector=MIAL_3, maal_vector=MAAL_3, cnf={"x5t#S256": _x5t(der)}
    )

    verified = verifier.verify(issuer.mint(claims), client_cert_der=der)

    assert verified.maal_vector["boundary"] == 3
    assert verified.maal == 3


def test_rejects_certificate_bound_token_with_another_certificate(
    issuer: FakeIssuer, verifier: TokenVerifier
) -> None:
    token = issuer.mint(issuer.claims(cnf={"x5t#S256": _x5t(_certificate())}))

    with pytest.raises(CertificateMismatch):
        verifier.verify(token, client_cert_der=_certificate())


def test_rejects_certificate_bound_token_without_certificate(
    issuer: FakeIssuer, verifier: TokenVerifier
) -> None:
    token = issuer.mint(issuer.claims(cnf={"x5t#S256": _x5t(_certificate())}))

    with pytest.raises(ProofRequired):
        verifier.verify(token)
