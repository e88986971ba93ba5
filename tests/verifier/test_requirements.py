"""Relying-party observation (LEVELS.md 3.4), requirements and the step-up
challenge (RFC 6750 section 3, RFC 9470 section 3, RFC 9457 section 3)."""

from __future__ import annotations

import time

import pytest

from tests.verifier import (
    AUDIENCE,
    ISSUER,
    MAAL_1,
    MAAL_3,
    MIAL_3,
    DPoPKey,
    FakeIssuer,
)
from verifier import (
    InsufficientAssurance,
    Requirement,
    Shortfall,
    TokenError,
    TokenVerifier,
    parse_requirement_items,
    requirement,
)
from verifier.dpop import DPoPVerifier
from verifier.requirements import PROBLEM_TYPE, lifetime_class

URL = "https://api.test/orders"


@pytest.fixture
def issuer() -> FakeIssuer:
    return FakeIssuer("ES256")


@pytest.fixture
def verifier(issuer: FakeIssuer) -> TokenVerifier:
    return TokenVerifier(ISSUER, AUDIENCE, jwks=issuer.jwks())


def _strong_bound(issuer: FakeIssuer, holder: DPoPKey, **kw: object) -> str:
    claims = issuer.claims(
        mial_vector=MIAL_3, maal_vector=MAAL_3, cnf={"jkt": holder.jkt}, **kw
    )
    return issuer.mint(claims)


# -- observation -------------------------------------------------------------


def test_bearer_presentation_lowers_boundary_to_one(
    issuer: FakeIssuer, verifier: TokenVerifier
) -> None:
    token = issuer.mint(issuer.claims(mial_vector=MIAL_3, maal_vector=MAAL_3))

    verified = verifier.verify(token)

    assert verified.asserted_maal == 3
    assert verified.maal_vector["boundary"] == 1
    assert verified.maal == 2
    assert verified.mial == 3
    assert [(a.item, a.asserted, a.effective) for a in verified.adjustments] == [
        ("maal.boundary", 3, 1)
    ]


def test_dpop_with_replay_cache_keeps_boundary_three(
    issuer: FakeIssuer, verifier: TokenVerifier
) -> None:
    holder = DPoPKey()
    token = _strong_bound(issuer, holder)
    proof = holder.proof("GET", URL, token)

    verified = verifier.verify(
        token, presentation="dpop", dpop_proof=proof, http_method="GET", http_url=URL
    )

    assert verified.presentation == "dpop"
    assert verified.maal_vector["boundary"] == 3
    assert verified.maal == 3
    assert verified.adjustments == ()


def test_dpop_without_replay_check_counts_as_two(issuer: FakeIssuer) -> None:
    verifier = TokenVerifier(
        ISSUER, AUDIENCE, jwks=issuer.jwks(), dpop=DPoPVerifier(check_replay=False)
    )
    holder = DPoPKey()
    token = _strong_bound(issuer, holder)
    proof = holder.proof("GET", URL, token)

    verified = verifier.verify(
        token, presentation="dpop", dpop_proof=proof, http_method="GET", http_url=URL
    )

    assert verified.maal_vector["boundary"] == 2


def test_dpop_with_a_long_proof_window_counts_as_two(issuer: FakeIssuer) -> None:
    verifier = TokenVerifier(
        ISSUER, AUDIENCE, jwks=issuer.jwks(), dpop=DPoPVerifier(max_age=300)
    )
    holder = DPoPKey()
    token = _strong_bound(issuer, holder)
    proof = holder.proof("GET", URL, token)

    verified = verifier.verify(
        token, presentation="dpop", dpop_proof=proof, http_method="GET", http_url=URL
    )

    assert verified.maal_vector["boundary"] == 2


def test_relying_party_never_raises_an_asserted_value(
    issuer: FakeIssuer, verifier: TokenVerifier
) -> None:
    holder = DPoPKey()
    token = issuer.mint(issuer.claims(cnf={"jkt": holder.jkt}))
    proof = holder.proof("GET", URL, token)

    verified = verifier.verify(
        token, presentation="dpop", dpop_proof=proof, http_method="GET", http_url=URL
    )

    assert verified.maal_vector["boundary"] == MAAL_1["boundary"]
    assert verified.maal == 1
    assert dict(verified.maal_vector) == MAAL_1


@pytest.mark.parametrize(
    ("lifetime", "governance", "maal"),
    [(3600, 2, 3), (86400, 2, 3), (2 * 86400, 1, 1), (100 * 86400, 0, 1)],
)
def test_lifetime_caps_governance(
    issuer: FakeIssuer, lifetime: int, governance: int, maal: int
) -> None:
    verifier = TokenVerifier(ISSUER, AUDIENCE, jwks=issuer.jwks())
    holder = DPoPKey()
    token = _strong_bound(issuer, holder, lifetime=lifetime)
    proof = holder.proof("GET", URL, token)

    verified = verifier.verify(
        token, presentation="dpop", dpop_proof=proof, http_method="GET", http_url=URL
    )

    assert verified.maal_vector["governance"] == governance
    assert verified.maal == maal


def test_registry_rating_caps_provenance(issuer: FakeIssuer) -> None:
    verifier = TokenVerifier(ISSUER, AUDIENCE, jwks=issuer.jwks(), provenance=1)
    token = issuer.mint(issuer.claims(mial_vector=MIAL_3, maal_vector=MAAL_3))

    verified = verifier.verify(token)

    assert verified.maal_vector["provenance"] == 1
    assert verified.maal == 1
    assert "maal.provenance" in {a.item for a in verified.adjustments}


def test_recovery_is_capped_at_enrollment(
    issuer: FakeIssuer, verifier: TokenVerifier
) -> None:
    maal = dict(MAAL_3, recovery=3, enrollment=2)
    token = issuer.mint(issuer.claims(maal_vector=maal))

    verified = verifier.verify(token)

    assert verified.asserted_maal_vector["recovery"] == 3
    assert verified.maal_vector["recovery"] == 2


@pytest.mark.parametrize(
    ("seconds", "rating"),
    [(1, 3), (3600, 3), (3601, 2), (86400, 2), (86401, 1), (90 * 86400, 1)],
)
def test_lifetime_classes(seconds: int, rating: int) -> None:
    assert lifetime_class(seconds) == rating
    assert lifetime_class(90 * 86400 + 1) == 0


# -- requirements ------------------------------------------------------------


def test_mial_1_token_fails_mial_2_requirement(
    issuer: FakeIssuer, verifier: TokenVerifier
) -> None:
    with pytest.raises(InsufficientAssurance) as caught:
        verifier.verify(issuer.mint(), require=requirement(mial=2))

    exc = caught.value
    assert isinstance(exc, TokenError)
    assert exc.error == "insufficient_workload_assurance"
    assert exc.status == 401
    assert exc.unmet == [Shortfall("mial", 2, 1)]
    assert exc.observed["mial"] == 1
    assert exc.required == {"mial": 2}


def test_requirement_is_checked_on_effective_levels(
    issuer: FakeIssuer, verifier: TokenVerifier
) -> None:
    token = issuer.mint(issuer.claims(mial_vector=MIAL_3, maal_vector=MAAL_3))

    with pytest.raises(InsufficientAssurance) as caught:
        verifier.verify(token, require=requirement(maal=3))

    assert caught.value.unmet == [Shortfall("maal", 3, 2)]


def test_dimension_requirement(issuer: FakeIssuer, verifier: TokenVerifier) -> None:
    req = requirement(dimensions="maal.containment>=2 mial.identity_attestation>=1")

    with pytest.raises(InsufficientAssurance) as caught:
        verifier.verify(issuer.mint(), require=req)

    assert [s.item for s in caught.value.unmet] == ["maal.containment"]
    assert caught.value.observed["maal.containment"] == 0
    assert caught.value.observed["mial.identity_attestation"] == 1


def test_max_age_requirement(issuer: FakeIssuer, verifier: TokenVerifier) -> None:
    now = int(time.time())
    claims = issuer.claims(now=now)
    claims["assurance_levels"]["appraised_at"] = now - 7200

    with pytest.raises(InsufficientAssurance) as caught:
        verifier.verify(issuer.mint(claims), require=requirement(max_age=3600), now=now)

    assert caught.value.unmet == [Shortfall("max_age", 3600, 7200)]
    assert caught.value.observed["appraisal_age"] == 7200


def test_met_requirement_returns_the_token(
    issuer: FakeIssuer, verifier: TokenVerifier
) -> None:
    token = issuer.mint(issuer.claims(mial_vector=MIAL_3, maal_vector=MAAL_3))
    req = requirement(mial=3, maal=2, dimensions={"mial.supply_chain": 2}, max_age=60)

    verified = verifier.verify(token, require=req)

    assert verified.require(req) is verified


def test_challenge_carries_the_whole_requirement(
    issuer: FakeIssuer, verifier: TokenVerifier
) -> None:
    req = requirement(mial=2, maal=3, dimensions={"maal.containment": 2}, max_age=3600)
    with pytest.raises(InsufficientAssurance) as caught:
        verifier.verify(issuer.mint(), require=req)

    challenge = caught.value.www_authenticate()

    assert challenge.startswith("Bearer ")
    params = dict(
        part.strip().split("=", 1) for part in challenge[len("Bearer ") :].split(", ")
    )
    assert params["error"] == '"insufficient_workload_assurance"'
    assert params["min_mial"] == '"2"'
    assert params["min_maal"] == '"3"'
    assert params["min_assurance"] == '"maal.containment>=2"'
    assert params["max_age"] == '"3600"'
    assert "error_description" in params


def test_challenge_uses_dpop_scheme_for_dpop_presentation(
    issuer: FakeIssuer, verifier: TokenVerifier
) -> None:
    holder = DPoPKey()
    token = issuer.mint(issuer.claims(cnf={"jkt": holder.jkt}))
    proof = holder.proof("GET", URL, token)

    with pytest.raises(InsufficientAssurance) as caught:
        verifier.verify(
            token,
            presentation="dpop",
            dpop_proof=proof,
            http_method="GET",
            http_url=URL,
            require=requirement(mial=2),
        )

    assert caught.value.www_authenticate().startswith("DPoP ")
    assert caught.value.www_authenticate("Bearer").startswith("Bearer ")


def test_problem_details_body(issuer: FakeIssuer, verifier: TokenVerifier) -> None:
    req = requirement(mial=3, dimensions={"maal.containment": 2})
    with pytest.raises(InsufficientAssurance) as caught:
        verifier.verify(issuer.mint(), require=req)

    problem = caught.value.problem()

    assert problem["type"] == PROBLEM_TYPE
    assert problem["title"] == "Insufficient workload assurance"
    assert problem["status"] == 401
    assert problem["required"] == {"mial": 3, "min": {"maal.containment": 2}}
    assert problem["observed"] == {"mial": 1, "maal": 1, "maal.containment": 0}
    assert problem["unmet"] == ["mial", "maal.containment"]


def test_shortfall_detail_stays_out_of_the_description(
    issuer: FakeIssuer, verifier: TokenVerifier
) -> None:
    with pytest.raises(InsufficientAssurance) as caught:
        verifier.verify(issuer.mint(), require=requirement(mial=2))

    assert caught.value.detail is not None
    assert caught.value.detail not in caught.value.description


# -- requirement syntax ------------------------------------------------------


def test_parse_requirement_items() -> None:
    req = parse_requirement_items(
        ["mial>=2", "maal.containment>=2 maal>=3", "max_age=600", "mial>=1"]
    )

    assert req == Requirement(2, 3, {"maal.containment": 2}, 600)


@pytest.mark.parametrize(
    "item",
    ["mial>=9", "maal.nothing>=1", "containment>=2", "mial=2", "max_age=-1", "x"],
)
def test_parse_requirement_items_refuses_malformed(item: str) -> None:
    with pytest.raises(ValueError):
        parse_requirement_items([item])


def test_requirement_helper_refuses_unknown_dimension() -> None:
    with pytest.raises(ValueError):
        requirement(dimensions={"maal.nothing": 2})
    with pytest.raises(ValueError):
        requirement(mial=5)


def test_compact_form_round_trips() -> None:
    req = requirement(mial=2, dimensions="maal.containment>=2", max_age=10)

    compact = req.compact()

    assert Requirement.parse(**compact) == req
