"""The scheme tables, overall levels and requirements (verifier.levels)."""

from __future__ import annotations

import pytest

from verifier.levels import Requirement, Shortfall, load_scheme

SCHEME = load_scheme()
MIAL = SCHEME.mial
MAAL = SCHEME.maal


def mial(**values: int) -> dict[str, int]:
    return {d: values.get(d, 0) for d in MIAL.dimensions}


def maal(**values: int) -> dict[str, int]:
    return {d: values.get(d, 0) for d in MAAL.dimensions}


@pytest.mark.parametrize(
    ("vector", "level"),
    [
        (mial(), 0),
        (mial(identity_attestation=1), 1),
        (mial(identity_attestation=2), 2),
        (mial(identity_attestation=3, deployment_environment=3), 2),
        (
            mial(
                identity_attestation=2,
                software_integrity=2,
                configuration=2,
                supply_chain=2,
            ),
            3,
        ),
        (mial(**dict.fromkeys(MIAL.dimensions, 2)), 4),
        (mial(**dict.fromkeys(MIAL.dimensions, 3)), 4),
        # One weak dimension caps the level even when others are high.
        (
            mial(
                identity_attestation=3,
                software_integrity=3,
                configuration=1,
                supply_chain=3,
                deployment_environment=3,
            ),
            2,
        ),
        # Stop at the first failing row: identity 0 means MIAL-0 whatever else.
        (mial(software_integrity=3, configuration=3, supply_chain=3), 0),
    ],
)
def test_mial_overall_known_answers(vector: dict[str, int], level: int) -> None:
    assert MIAL.overall(vector) == level


@pytest.mark.parametrize(
    ("vector", "level"),
    [
        (maal(), 0),
        (maal(provenance=1), 1),
        (maal(provenance=1, enrollment=1, containment=0, governance=2), 1),
        (
            maal(
                provenance=2,
                enrollment=2,
                containment=1,
                unlocking=1,
                boundary=1,
                reuse=1,
                recovery=2,
                governance=2,
            ),
            2,
        ),
        (
            maal(
                provenance=2,
                enrollment=2,
                containment=1,
                unlocking=1,
                boundary=2,
                reuse=2,
                recovery=2,
                governance=2,
            ),
            3,
        ),
        (
            maal(
                provenance=3,
                enrollment=3,
                containment=3,
                unlocking=2,
                boundary=3,
                reuse=2,
                recovery=3,
                governance=2,
            ),
            4,
        ),
    ],
)
def test_maal_overall_known_answers(vector: dict[str, int], level: int) -> None:
    assert MAAL.overall(vector) == level


def test_shortfalls_name_each_failing_dimension() -> None:
    gaps = MIAL.shortfalls(mial(identity_attestation=2, configuration=2), 3)
    assert {g.item for g in gaps} == {"mial.software_integrity", "mial.supply_chain"}
    assert all(g.required == 2 and g.found == 0 for g in gaps)


def test_rows_are_nested_and_check_vector_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError):
        MIAL.check_vector({"identity_attestation": 1})
    with pytest.raises(ValueError):
        MIAL.check_vector({**mial(), "identity_attestation": True})
    with pytest.raises(ValueError):
        MIAL.check_vector({**mial(), "identity_attestation": 4})
    with pytest.raises(ValueError):
        MIAL.check_vector([1, 2])
    assert MIAL.check_vector(mial(identity_attestation=2))["identity_attestation"] == 2


def test_unknown_scheme_is_refused() -> None:
    with pytest.raises(KeyError):
        load_scheme("urn:other:levels:9")


def test_requirement_parses_compact_form() -> None:
    req = Requirement.parse(
        "2", "1", "maal.containment>=2 mial.deployment_environment>=1", "3600"
    )
    assert req.min_mial == 2 and req.min_maal == 1
    assert req.dimensions == {
        "maal.containment": 2,
        "mial.deployment_environment": 1,
    }
    assert req.max_age == 3600
    assert req.compact()["min_assurance"] == (
        "maal.containment>=2 mial.deployment_environment>=1"
    )


@pytest.mark.parametrize(
    "args",
    [
        ("5", None, None),
        ("-1", None, None),
        ("two", None, None),
        (None, "1.5", None),
        (None, None, "maal.containment>2"),
        (None, None, "maal.nothing>=1"),
        (None, None, "maal.containment>=4"),
        (None, None, "containment>=1"),
    ],
)
def test_requirement_rejects_malformed_input(args: tuple[str | None, ...]) -> None:
    with pytest.raises(ValueError):
        Requirement.parse(*args)


def test_requirement_combines_to_the_strictest() -> None:
    a = Requirement(1, 2, {"maal.containment": 1}, 600)
    b = Requirement(2, 0, {"maal.containment": 2, "mial.configuration": 1}, None)
    both = a.combine(b)
    assert (both.min_mial, both.min_maal, both.max_age) == (2, 2, 600)
    assert both.dimensions == {"maal.containment": 2, "mial.configuration": 1}


def test_unmet_lists_levels_dimensions_and_age() -> None:
    req = Requirement(2, 1, {"maal.containment": 2}, 60)
    unmet = req.unmet(1, 1, {"mial": mial(), "maal": maal(containment=1)}, 120)
    assert unmet == [
        Shortfall("mial", 2, 1),
        Shortfall("maal.containment", 2, 1),
        Shortfall("max_age", 60, 120),
    ]
    assert req.unmet(2, 1, {"maal": maal(containment=2)}, 10) == []
