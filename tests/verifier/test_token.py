"""TokenVerifier: RFC 9068 section 4 and RFC 8725 checks, claim types,
levels consistency, and the verified value it returns."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import time
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from tests.verifier import (
    AUDIENCE,
    ISSUER,
    MAAL_1,
    MIAL_1,
    MIAL_3,
    FakeIssuer,
    Reply,
    b64json,
    b64url,
    counting_server,
    new_key,
    public_jwk,
)
from verifier import (
    EvidenceRef,
    ExpiredToken,
    InvalidClaims,
    InvalidSignature,
    IssuedInFuture,
    LevelMismatch,
    MalformedToken,
    NestedToken,
    NotYetValid,
    TokenVerifier,
    UnknownCriticalHeader,
    UnknownKeyId,
    UnknownScheme,
    UnsupportedAlgorithm,
    VerifiedToken,
    VerifierError,
    WrongAudience,
    WrongIssuer,
    WrongTokenType,
)


@pytest.fixture
def issuer() -> FakeIssuer:
    return FakeIssuer("ES256")


@pytest.fixture
def verifier(issuer: FakeIssuer) -> TokenVerifier:
    return TokenVerifier(ISSUER, AUDIENCE, jwks=issuer.jwks())


def _header(issuer: FakeIssuer) -> dict[str, Any]:
    return {"alg": issuer.alg, "typ": "at+jwt", "kid": issuer.kid}


# -- accepted tokens ---------------------------------------------------------


@pytest.mark.parametrize("alg", ["ES256", "EdDSA", "RS256", "PS256"])
def test_accepts_issuer_format_for_each_algorithm(alg: str) -> None:
    issuer = FakeIssuer(alg)
    claims = issuer.claims()
    verified = TokenVerifier(ISSUER, AUDIENCE, jwks=issuer.jwks()).verify(
        issuer.mint(claims)
    )

    assert isinstance(verified, VerifiedToken)
    assert verified.sub == claims["sub"]
    assert verified.client_id == "client-1"
    assert verified.jti == claims["jti"]
    assert verified.aud == (AUDIENCE,)
    assert verified.scopes == frozenset({"orders:read", "orders:write"})
    assert verified.mial == 1
    assert verified.maal == 1
    assert dict(verified.mial_vector) == MIAL_1
    assert dict(verified.maal_vector) == MAAL_1
    assert verified.appraised_at == claims["assurance_levels"]["appraised_at"]
    assert verified.evidence == (EvidenceRef("k8s_sa_token", "sha-256:" + "a" * 64),)
    assert verified.credential == "client_secret"
    assert verified.policy_version == "test-1"
    assert verified.scheme == "urn:wimse-assurance:levels:1"
    assert verified.presentation == "bearer"


def test_verified_token_is_frozen_and_read_only(
    issuer: FakeIssuer, verifier: TokenVerifier
) -> None:
    verified = verifier.verify(issuer.mint())

    with pytest.raises(dataclasses.FrozenInstanceError):
        verified.mial = 4  # type: ignore[misc]
    with pytest.raises(TypeError):
        verified.claims["mial"] = 4  # type: ignore[index]
    with pytest.raises(TypeError):
        verified.mial_vector["identity_attestation"] = 3  # type: ignore[index]


def test_accepts_audience_array_containing_ours(
    issuer: FakeIssuer, verifier: TokenVerifier
) -> None:
    token = issuer.mint(issuer.claims(aud=["https://other.test", AUDIENCE]))

    assert verifier.verify(token).aud == ("https://other.test", AUDIENCE)


def test_accepts_any_of_several_configured_audiences(issuer: FakeIssuer) -> None:
    verifier = TokenVerifier(ISSUER, ["https://a.test", AUDIENCE], jwks=issuer.jwks())

    assert verifier.verify(issuer.mint()).aud == (AUDIENCE,)


@pytest.mark.parametrize("typ", ["at+jwt", "application/at+jwt", "AT+JWT"])
def test_accepts_access_token_types_case_insensitively(
    issuer: FakeIssuer, verifier: TokenVerifier, typ: str
) -> None:
    assert verifier.verify(issuer.mint(typ=typ)).header["typ"] == typ


def test_accepts_times_within_leeway(issuer: FakeIssuer) -> None:
    now = int(time.time())
    verifier = TokenVerifier(ISSUER, AUDIENCE, jwks=issuer.jwks(), leeway=30)
    claims = issuer.claims(now=now - 320, lifetime=300)
    token = issuer.mint(claims)

    assert verifier.verify(token, now=now).exp == now - 20
    future = issuer.claims(now=now + 20)
    assert verifier.verify(issuer.mint(future), now=now).iat == now + 20


def test_accepts_token_without_optional_claims(
    issuer: FakeIssuer, verifier: TokenVerifier
) -> None:
    claims = issuer.claims()
    del claims["scope"], claims["nbf"]
    for name in ("credential", "evidence", "policy_version"):
        del claims["assurance_levels"][name]

    verified = verifier.verify(issuer.mint(claims))

    assert verified.scopes == frozenset()
    assert verified.nbf is None
    assert verified.evidence == ()
    assert verified.credential is None


# -- header and algorithm ----------------------------------------------------


def test_rejects_alg_none(issuer: FakeIssuer, verifier: TokenVerifier) -> None:
    header = {"alg": "none", "typ": "at+jwt", "kid": issuer.kid}
    token = f"{b64json(header)}.{b64json(issuer.claims())}."

    with pytest.raises(UnsupportedAlgorithm):
        verifier.verify(token)


def test_rejects_hs256_signed_with_the_public_key_as_secret(
    issuer: FakeIssuer, verifier: TokenVerifier
) -> None:
    secret = issuer.key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    head = b64json({"alg": "HS256", "typ": "at+jwt", "kid": issuer.kid})
    body = b64json(issuer.claims())
    mac = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()

    with pytest.raises(UnsupportedAlgorithm):
        verifier.verify(f"{head}.{body}.{b64url(mac)}")


def test_rejects_es256_signature_with_r_and_s_zero(
    issuer: FakeIssuer, verifier: TokenVerifier
) -> None:
    head, body, _ = issuer.mint().split(".")

    with pytest.raises(InvalidSignature):
        verifier.verify(f"{head}.{body}.{b64url(bytes(64))}")


def test_rejects_signature_from_another_key(
    issuer: FakeIssuer, verifier: TokenVerifier
) -> None:
    impostor = FakeIssuer("ES256")
    header = {"alg": "ES256", "typ": "at+jwt", "kid": issuer.kid}

    with pytest.raises(InvalidSignature):
        verifier.verify(impostor.sign_raw(header, issuer.claims()))


def test_rejects_algorithm_the_key_is_not_published_for(
    issuer: FakeIssuer, verifier: TokenVerifier
) -> None:
    header = {"alg": "EdDSA", "typ": "at+jwt", "kid": issuer.kid}

    with pytest.raises(UnsupportedAlgorithm):
        verifier.verify(FakeIssuer("EdDSA").sign_raw(header, issuer.claims()))


def test_rejects_rs256_key_used_for_ps256() -> None:
    issuer = FakeIssuer("RS256")
    verifier = TokenVerifier(ISSUER, AUDIENCE, jwks=issuer.jwks())
    signer = FakeIssuer("PS256", key=issuer.key)
    header = {"alg": "PS256", "typ": "at+jwt", "kid": issuer.kid}

    with pytest.raises(UnsupportedAlgorithm):
        verifier.verify(signer.sign_raw(header, issuer.claims()))


def test_refuses_hmac_or_none_in_the_allow_list(issuer: FakeIssuer) -> None:
    for algs in (["HS256"], ["none"], ["ES256", "HS512"], []):
        with pytest.raises(ValueError):
            TokenVerifier(ISSUER, AUDIENCE, jwks=issuer.jwks(), algorithms=algs)


def test_rejects_algorithm_outside_a_narrowed_allow_list() -> None:
    issuer = FakeIssuer("RS256")
    verifier = TokenVerifier(
        ISSUER, AUDIENCE, jwks=issuer.jwks(), algorithms=["ES256", "RS256"]
    )
    eddsa = FakeIssuer("EdDSA")
    header = {"alg": "EdDSA", "typ": "at+jwt", "kid": issuer.kid}

    with pytest.raises(UnsupportedAlgorithm):
        verifier.verify(eddsa.sign_raw(header, issuer.claims()))


@pytest.mark.parametrize("typ", ["JWT", "jwt", "dpop+jwt", "at+jwt+x", None, 1])
def test_rejects_token_types_other_than_access_token(
    issuer: FakeIssuer, verifier: TokenVerifier, typ: Any
) -> None:
    header: dict[str, Any] = {"alg": "ES256", "kid": issuer.kid}
    if typ is not None:
        header["typ"] = typ

    with pytest.raises(WrongTokenType):
        verifier.verify(issuer.sign_raw(header, issuer.claims()))


def test_rejects_unknown_crit_header(
    issuer: FakeIssuer, verifier: TokenVerifier
) -> None:
    token = issuer.mint(crit=["urn:example:needed"], **{"urn:example:needed": 1})

    with pytest.raises(UnknownCriticalHeader):
        verifier.verify(token)


def test_rejects_nested_jwt(issuer: FakeIssuer, verifier: TokenVerifier) -> None:
    for cty in ("JWT", "jwt", "application/jwt"):
        with pytest.raises(NestedToken):
            verifier.verify(issuer.mint(cty=cty))


def test_rejects_unknown_kid(issuer: FakeIssuer, verifier: TokenVerifier) -> None:
    with pytest.raises(UnknownKeyId):
        verifier.verify(issuer.mint(kid="no-such-key"))


def test_rejects_kid_that_is_not_a_string(
    issuer: FakeIssuer, verifier: TokenVerifier
) -> None:
    header = {"alg": "ES256", "typ": "at+jwt", "kid": 7}

    with pytest.raises(MalformedToken):
        verifier.verify(issuer.sign_raw(header, issuer.claims()))


def test_never_fetches_jku_x5u_x5c_or_jwk_headers(verifier: TokenVerifier) -> None:
    attacker = FakeIssuer("ES256")
    with counting_server() as server:
        server.routes["/keys"] = Reply(200, attacker.jwks())
        server.routes["/cert"] = Reply(200, {})
        token = attacker.mint(
            jku=server.url + "/keys",
            x5u=server.url + "/cert",
            x5c=["MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"],
            jwk=attacker.jwk,
        )

        with pytest.raises(UnknownKeyId):
            verifier.verify(token)
        assert server.total() == 0


def test_ignores_jku_and_friends_on_a_genuine_token(
    issuer: FakeIssuer, verifier: TokenVerifier
) -> None:
    with counting_server() as server:
        token = issuer.mint(jku=server.url + "/keys", x5u=server.url + "/cert")

        assert verifier.verify(token).sub
        assert server.total() == 0


# -- shape and encoding ------------------------------------------------------


def b64url_decode(segment: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


@pytest.mark.parametrize(
    "cut",
    [
        lambda t: t[: t.rindex(".")],
        lambda t: t[: len(t) // 2],
        lambda t: t.split(".")[0],
        lambda t: "",
        lambda t: t + ".extra",
        lambda t: t.replace(".", "..", 1),
        lambda t: " " + t,
        lambda t: t[:10] + "=" + t[10:],
    ],
)
def test_rejects_truncated_or_misshapen_token(
    issuer: FakeIssuer, verifier: TokenVerifier, cut: Any
) -> None:
    with pytest.raises(MalformedToken):
        verifier.verify(cut(issuer.mint()))


def test_rejects_oversized_token(issuer: FakeIssuer, verifier: TokenVerifier) -> None:
    token = issuer.mint(issuer.claims(padding="x" * 17000))

    with pytest.raises(MalformedToken):
        verifier.verify(token)


def test_rejects_jwe_shaped_token(verifier: TokenVerifier) -> None:
    with pytest.raises(MalformedToken):
        verifier.verify("eyJhbGciOiJSU0EifQ.a.b.c.d")


def test_rejects_duplicate_claim_names(
    issuer: FakeIssuer, verifier: TokenVerifier
) -> None:
    body = json.dumps(issuer.claims())[:-1] + ', "sub": "spiffe://evil/admin"}'

    with pytest.raises(MalformedToken):
        verifier.verify(issuer.sign_raw(_header(issuer), body))


def test_rejects_duplicate_names_inside_assurance_levels(
    issuer: FakeIssuer, verifier: TokenVerifier
) -> None:
    text = json.dumps(issuer.claims())
    once = '"identity_attestation": 1'
    text = text.replace(once, once + ', "identity_attestation": 3')
    header = _header(issuer)

    with pytest.raises(MalformedToken):
        verifier.verify(issuer.sign_raw(header, text))


def test_rejects_duplicate_header_names(
    issuer: FakeIssuer, verifier: TokenVerifier
) -> None:
    header = f'{{"alg": "ES256", "typ": "JWT", "typ": "at+jwt", "kid": "{issuer.kid}"}}'

    with pytest.raises(MalformedToken):
        verifier.verify(issuer.sign_raw(header, issuer.claims()))


@pytest.mark.parametrize("payload", ["[1, 2]", '"text"', "NaN", '{"exp": NaN}'])
def test_rejects_payload_that_is_not_a_strict_json_object(
    issuer: FakeIssuer, verifier: TokenVerifier, payload: str
) -> None:
    header = {"alg": "ES256", "typ": "at+jwt", "kid": issuer.kid}

    with pytest.raises(MalformedToken):
        verifier.verify(issuer.sign_raw(header, payload))


def test_rejects_payload_that_is_not_utf8(
    issuer: FakeIssuer, verifier: TokenVerifier
) -> None:
    head = b64json({"alg": "ES256", "typ": "at+jwt", "kid": issuer.kid})
    body = b64url(json.dumps(issuer.claims()).encode("utf-16"))
    from jwt.algorithms import get_default_algorithms

    sig = get_default_algorithms()["ES256"].sign(f"{head}.{body}".encode(), issuer.key)

    with pytest.raises(MalformedToken):
        verifier.verify(f"{head}.{body}.{b64url(sig)}")


# -- claims ------------------------------------------------------------------


def test_rejects_another_audience(issuer: FakeIssuer, verifier: TokenVerifier) -> None:
    for aud in ("https://other.test", ["https://other.test"], AUDIENCE + "/"):
        with pytest.raises(WrongAudience):
            verifier.verify(issuer.mint(issuer.claims(aud=aud)))


def test_rejects_another_issuer(issuer: FakeIssuer, verifier: TokenVerifier) -> None:
    for iss in ("https://evil.test", ISSUER + "/", ISSUER.upper()):
        with pytest.raises(WrongIssuer):
            verifier.verify(issuer.mint(issuer.claims(iss=iss)))


def test_rejects_expired_token(issuer: FakeIssuer, verifier: TokenVerifier) -> None:
    now = int(time.time())
    token = issuer.mint(issuer.claims(now=now - 400, lifetime=300))

    with pytest.raises(ExpiredToken):
        verifier.verify(token, now=now)


def test_rejects_token_not_yet_valid(
    issuer: FakeIssuer, verifier: TokenVerifier
) -> None:
    now = int(time.time())
    token = issuer.mint(issuer.claims(now=now, nbf=now + 120))

    with pytest.raises(NotYetValid):
        verifier.verify(token, now=now)


def test_rejects_far_future_iat(issuer: FakeIssuer, verifier: TokenVerifier) -> None:
    now = int(time.time())
    claims = issuer.claims(now=now)
    claims["iat"] = now + 3600

    with pytest.raises(IssuedInFuture):
        verifier.verify(issuer.mint(claims), now=now)


def test_rejects_appraisal_after_issuance(
    issuer: FakeIssuer, verifier: TokenVerifier
) -> None:
    claims = issuer.claims()
    claims["assurance_levels"]["appraised_at"] = claims["iat"] + 3600

    with pytest.raises(IssuedInFuture):
        verifier.verify(issuer.mint(claims))


def test_rejects_exp_not_after_iat(issuer: FakeIssuer, verifier: TokenVerifier) -> None:
    claims = issuer.claims()
    claims["exp"] = claims["iat"]

    with pytest.raises(InvalidClaims):
        verifier.verify(issuer.mint(claims))


WRONG_TYPES = ["1767229200", True, 1767229200.0, 1767229200.5, 10**20, -1, None]


@pytest.mark.parametrize("value", WRONG_TYPES)
@pytest.mark.parametrize("name", ["exp", "iat", "nbf"])
def test_rejects_time_claim_of_wrong_json_type(
    issuer: FakeIssuer, verifier: TokenVerifier, name: str, value: Any
) -> None:
    claims = issuer.claims()
    claims[name] = value

    with pytest.raises(InvalidClaims):
        verifier.verify(issuer.mint(claims))


@pytest.mark.parametrize("value", ["1", True, False, 1.0, 1.5, 10**20, -1, 5, None])
@pytest.mark.parametrize("name", ["mial", "maal"])
def test_rejects_level_of_wrong_json_type_or_range(
    issuer: FakeIssuer, verifier: TokenVerifier, name: str, value: Any
) -> None:
    claims = issuer.claims()
    claims[name] = value

    with pytest.raises(InvalidClaims):
        verifier.verify(issuer.mint(claims))


def test_rejects_exp_written_as_exponent_float(
    issuer: FakeIssuer, verifier: TokenVerifier
) -> None:
    claims = issuer.claims()
    text = json.dumps(claims).replace(
        f'"exp": {claims["exp"]}', f'"exp": {claims["exp"] / 1e9}e9'
    )
    header = {"alg": "ES256", "typ": "at+jwt", "kid": issuer.kid}

    with pytest.raises(InvalidClaims):
        verifier.verify(issuer.sign_raw(header, text))


REQUIRED = ["iss", "sub", "aud", "client_id", "jti", "exp", "iat"]


@pytest.mark.parametrize("name", REQUIRED)
def test_rejects_missing_required_claim(
    issuer: FakeIssuer, verifier: TokenVerifier, name: str
) -> None:
    claims = issuer.claims()
    del claims[name]

    with pytest.raises(InvalidClaims):
        verifier.verify(issuer.mint(claims))


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("sub", 42),
        ("sub", ""),
        ("client_id", ["a"]),
        ("jti", None),
        ("aud", []),
        ("aud", [AUDIENCE, 3]),
        ("scope", ["orders:read"]),
        ("act", "someone"),
        ("cnf", "key"),
        ("assurance_levels", "high"),
    ],
)
def test_rejects_claim_of_wrong_json_type(
    issuer: FakeIssuer, verifier: TokenVerifier, name: str, value: Any
) -> None:
    claims = issuer.claims()
    claims[name] = value

    with pytest.raises(InvalidClaims):
        verifier.verify(issuer.mint(claims))


# -- assurance claims --------------------------------------------------------


def test_rejects_mial_that_disagrees_with_its_vector(
    issuer: FakeIssuer, verifier: TokenVerifier
) -> None:
    claims = issuer.claims()
    claims["mial"] = 3

    with pytest.raises(LevelMismatch):
        verifier.verify(issuer.mint(claims))


def test_rejects_maal_that_disagrees_with_its_vector(
    issuer: FakeIssuer, verifier: TokenVerifier
) -> None:
    claims = issuer.claims(mial_vector=MIAL_3)
    claims["maal"] = 0

    with pytest.raises(LevelMismatch):
        verifier.verify(issuer.mint(claims))


def test_rejects_vector_raised_without_its_level(
    issuer: FakeIssuer, verifier: TokenVerifier
) -> None:
    claims = issuer.claims()
    claims["assurance_levels"]["mial"] = dict(MIAL_3)

    with pytest.raises(LevelMismatch):
        verifier.verify(issuer.mint(claims))


def test_rejects_unknown_scheme(issuer: FakeIssuer, verifier: TokenVerifier) -> None:
    claims = issuer.claims()
    claims["assurance_levels"]["scheme"] = "urn:example:levels:9"

    with pytest.raises(UnknownScheme):
        verifier.verify(issuer.mint(claims))


@pytest.mark.parametrize(
    "change",
    [
        lambda v: v.pop("configuration"),
        lambda v: v.update(extra=1),
        lambda v: v.update(configuration=4),
        lambda v: v.update(configuration=-1),
        lambda v: v.update(configuration=True),
        lambda v: v.update(configuration=1.0),
        lambda v: v.update(configuration="1"),
    ],
)
def test_rejects_malformed_vector(
    issuer: FakeIssuer, verifier: TokenVerifier, change: Any
) -> None:
    claims = issuer.claims()
    change(claims["assurance_levels"]["mial"])

    with pytest.raises(InvalidClaims):
        verifier.verify(issuer.mint(claims))


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("appraised_at", "0"),
        ("appraised_at", 1.0),
        ("appraised_at", True),
        ("evidence", {"kind": "x"}),
        ("evidence", [{"kind": "x"}]),
        ("evidence", ["x"]),
        ("credential", 1),
        ("policy_version", ["v1"]),
        ("scheme", 1),
    ],
)
def test_rejects_malformed_assurance_member(
    issuer: FakeIssuer, verifier: TokenVerifier, name: str, value: Any
) -> None:
    claims = issuer.claims()
    claims["assurance_levels"][name] = value

    with pytest.raises(InvalidClaims):
        verifier.verify(issuer.mint(claims))


def test_header_cache_does_not_leak_between_headers(issuer: FakeIssuer) -> None:
    verifier = TokenVerifier(ISSUER, AUDIENCE, jwks=issuer.jwks())
    assert verifier.verify(issuer.mint()).sub
    with pytest.raises(WrongTokenType):
        verifier.verify(issuer.mint(typ="JWT"))
    assert verifier.verify(issuer.mint()).sub


def test_rejects_token_given_as_non_string(verifier: TokenVerifier) -> None:
    with pytest.raises(MalformedToken):
        verifier.verify(b"abc.def.ghi")  # type: ignore[arg-type]


def test_static_jwks_with_several_keys_picks_by_kid() -> None:
    first, second = FakeIssuer("ES256"), FakeIssuer("EdDSA")
    verifier = TokenVerifier(ISSUER, AUDIENCE, jwks={"keys": [first.jwk, second.jwk]})

    assert verifier.verify(first.mint()).sub
    assert verifier.verify(second.mint()).sub


def test_public_jwk_helper_matches_issuer_shape() -> None:
    jwk = public_jwk(new_key("ES256"), "ES256")

    assert set(jwk) == {"kty", "crv", "x", "y", "alg", "use", "kid"}


def test_refusals_log_nothing_and_never_quote_the_token(
    issuer: FakeIssuer, verifier: TokenVerifier, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    caplog.set_level(logging.DEBUG)
    bad = [
        issuer.mint(issuer.claims(aud="https://other.test")),
        issuer.mint(typ="JWT"),
        issuer.mint(kid="unknown"),
        issuer.mint()[:-5],
    ]
    for token in bad:
        with pytest.raises(VerifierError) as caught:
            verifier.verify(token)
        body = token.split(".")[1]
        assert body not in str(caught.value)
        assert body not in repr(caught.value.args)
    verifier.verify(issuer.mint())

    assert caplog.records == []
