"""The assessor: best evidence per dimension, declarations, caps, levels."""

from __future__ import annotations

from typing import Any

from issuer.assurance import (
    Assessment,
    Assessor,
    CredentialRating,
    EvidenceItem,
    Rating,
)
from issuer.assurance.rules import (
    CREDENTIAL_ONLY,
    bearer_boundary,
    governance_for,
    rate_client_credential,
)


def assess(**kwargs: Any) -> Assessment:
    defaults: dict[str, Any] = {
        "evidence": [],
        "credential": rate_client_credential("client_secret_basic"),
        "identity_floor": CREDENTIAL_ONLY,
        "boundary": bearer_boundary(),
        "governance": governance_for(300),
        "declared": {},
        "now": 1000,
    }
    defaults.update(kwargs)
    return Assessor().assess(**defaults)


def test_client_secret_alone_is_mial1_maal1() -> None:
    a = assess()
    assert (a.mial_level, a.maal_level) == (1, 1)
    assert a.maal["containment"] == 0
    assert a.evidence == []


def test_each_dimension_takes_the_best_evidence() -> None:
    one = EvidenceItem(
        "a", "sha-256:aa", 2000, {"identity_attestation": Rating(2, "a")}
    )
    two = EvidenceItem(
        "b",
        "sha-256:bb",
        1500,
        {"identity_attestation": Rating(1, "b"), "configuration": Rating(1, "b")},
    )
    a = assess(evidence=[one, two])
    assert a.mial["identity_attestation"] == 2
    assert a.mial["configuration"] == 1
    assert a.evidence_expiry == 1500
    assert a.claim("v1")["evidence"] == [
        {"kind": "a", "digest": "sha-256:aa"},
        {"kind": "b", "digest": "sha-256:bb"},
    ]


def test_declared_values_cap_at_one_and_never_lower() -> None:
    a = assess(declared={"mial.configuration": 3, "mial.identity_attestation": 0})
    assert a.mial["configuration"] == 1
    assert a.mial["identity_attestation"] == 1
    assert "declared" in a.reasons["mial.configuration"]


def test_recovery_is_capped_at_enrollment() -> None:
    cred = CredentialRating(
        "x",
        {
            "provenance": Rating(2, ""),
            "enrollment": Rating(1, ""),
            "recovery": Rating(3, ""),
        },
    )
    a = assess(credential=cred)
    assert a.maal["recovery"] == 1
    assert a.caps == ["maal.recovery capped at enrollment"]


def test_explain_names_the_next_level_gap() -> None:
    lines = assess().explain()
    assert "mial = 1, maal = 1" in lines
    assert any(
        line.startswith("mial 2 not reached") and "identity_attestation" in line
        for line in lines
    )
