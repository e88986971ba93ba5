"""Requirements on a verified token, the relying party's own observations,
and the step-up challenge.

The relying party only lowers what the issuer asserted, never raises it
(docs/levels.md, adjustments; ../shared/LEVELS.md section 3.4):

- ``maal.boundary`` becomes at most what the presentation showed: 1 for an
  audience-restricted bearer token, 2 for a checked DPoP proof or client
  certificate, 3 when the proof cannot be replayed (DPoP ``jti`` checked in
  a replay cache with a proof lifetime of at most 60 s, or a live mTLS
  handshake);
- ``maal.governance`` becomes at most the lifetime class of ``exp - iat``;
- ``maal.provenance`` becomes at most the relying party's own registry
  rating of the issuer, when it has one;
- ``maal.recovery`` is capped at ``maal.enrollment``.

The overall levels are then recomputed from the lowered vectors before any
requirement is compared. A shortfall raises ``InsufficientAssurance``, which
renders as an RFC 6750 section 3 / RFC 9470 section 3 challenge and an
RFC 9457 problem-details body.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import TokenError, render_challenge
from .levels import LevelTable, Requirement, Scheme, Shortfall, load_scheme

__all__ = [
    "PROBLEM_TYPE",
    "Adjustment",
    "InsufficientAssurance",
    "Observation",
    "effective_levels",
    "enforce",
    "lifetime_class",
    "parse_requirement_items",
    "requirement",
]

PROBLEM_TYPE = "urn:wimse-assurance:problem:insufficient-workload-assurance"
PROBLEM_TITLE = "Insufficient workload assurance"

_HOUR = 3600
_DAY = 86400
_NINETY_DAYS = 90 * _DAY


def lifetime_class(seconds: int) -> int:
    """Return the governance rating a token lifetime allows (docs/levels.md).

    At most 1 h gives 3, at most 24 h gives 2, at most 90 days gives 1,
    anything longer 0.
    """
    if seconds <= _HOUR:
        return 3
    if seconds <= _DAY:
        return 2
    if seconds <= _NINETY_DAYS:
        return 1
    return 0


@dataclass(frozen=True)
class Observation:
    """What the relying party saw itself while checking one presentation.

    ``boundary`` is the observed presentation rating (0..3) and
    ``boundary_reason`` says why; ``lifetime`` is ``exp - iat`` in seconds;
    ``provenance`` is the relying party's registry rating of the issuer, or
    ``None`` when it keeps none.
    """

    boundary: int
    boundary_reason: str
    lifetime: int
    provenance: int | None = None


@dataclass(frozen=True)
class Adjustment:
    """One dimension the relying party lowered, and why."""

    item: str
    asserted: int
    effective: int
    reason: str


# Overall levels of the same vectors repeat across requests; caching them by
# value keeps the hot path free of the row scan. Bounded, then cleared.
_OVERALL: dict[tuple[str, str, tuple[int, ...]], int] = {}
_OVERALL_MAX = 4096


def overall(scheme: Scheme, table: LevelTable, vector: Mapping[str, int]) -> int:
    """Return ``table.overall(vector)``, memoised by value."""
    key = (scheme.id, table.kind, tuple(vector[d] for d in table.dimensions))
    level = _OVERALL.get(key)
    if level is None:
        if len(_OVERALL) >= _OVERALL_MAX:
            _OVERALL.clear()
        level = _OVERALL[key] = table.overall(vector)
    return level


def effective_levels(
    scheme: Scheme,
    mial_vector: Mapping[str, int],
    maal_vector: Mapping[str, int],
    observation: Observation,
) -> tuple[int, int, dict[str, int], tuple[Adjustment, ...]]:
    """Lower the asserted MAAL vector by what was observed; recompute levels.

    Returns the effective ``mial``, ``maal``, the effective MAAL vector and
    the adjustments made (LEVELS.md section 3.4). The MIAL vector is never
    changed here: nothing the relying party sees bears on identity.
    """
    maal = dict(maal_vector)
    changes: list[Adjustment] = []

    def lower(dim: str, bound: int, reason: str) -> None:
        if maal[dim] > bound:
            changes.append(Adjustment(f"maal.{dim}", maal[dim], bound, reason))
            maal[dim] = bound

    lower("recovery", maal["enrollment"], "recovery is capped at enrollment")
    lower("boundary", observation.boundary, observation.boundary_reason)
    lower(
        "governance",
        lifetime_class(observation.lifetime),
        f"token lifetime is {observation.lifetime}s",
    )
    if observation.provenance is not None:
        lower("provenance", observation.provenance, "relying party's issuer rating")

    mial = overall(scheme, scheme.mial, mial_vector)
    maal_level = overall(scheme, scheme.maal, maal)
    return mial, maal_level, maal, tuple(changes)


class InsufficientAssurance(TokenError):
    """The token verified, but its effective levels miss a requirement.

    ``requirement`` is what was demanded, ``observed`` the effective values
    compared, ``unmet`` the ``Shortfall`` of each failing item. ``scheme``
    is the authentication scheme the token came with (``Bearer`` or
    ``DPoP``), used by ``www_authenticate()``. Status 401 with error
    ``insufficient_workload_assurance`` (LEVELS.md section 3.9 (a)).
    """

    error = "insufficient_workload_assurance"
    status = 401
    default_description = "workload assurance below resource requirement"

    def __init__(
        self,
        requirement: Requirement,
        observed: Mapping[str, int],
        unmet: list[Shortfall],
        *,
        scheme: str = "Bearer",
    ) -> None:
        self.requirement = requirement
        self.observed = dict(observed)
        self.unmet = list(unmet)
        self.scheme = scheme
        detail = "; ".join(s.describe() for s in unmet)
        super().__init__(detail=detail)

    @property
    def required(self) -> dict[str, Any]:
        """The requirement as the JSON object of LEVELS.md section 3.8."""
        req = self.requirement
        out: dict[str, Any] = {}
        if req.min_mial:
            out["mial"] = req.min_mial
        if req.min_maal:
            out["maal"] = req.min_maal
        dims = {k: v for k, v in sorted(req.dimensions.items()) if v}
        if dims:
            out["min"] = dims
        if req.max_age is not None:
            out["max_age"] = req.max_age
        return out

    def www_authenticate(
        self, scheme: str | None = None, realm: str | None = None
    ) -> str:
        """Render the step-up challenge (RFC 6750 section 3, RFC 9470 section 3).

        Carries ``error``, ``error_description`` and the whole requirement in
        its compact form: ``min_mial``, ``min_maal``, ``min_assurance`` and
        ``max_age``, each only when demanded, so the client can ask the
        issuer for a token that meets all of it at once.
        """
        params: list[tuple[str, str]] = []
        if realm is not None:
            params.append(("realm", realm))
        params.append(("error", self.error))
        params.append(("error_description", self.description))
        params.extend(self.requirement.compact().items())
        return render_challenge(scheme or self.scheme, params)

    def problem(self) -> dict[str, Any]:
        """Return the RFC 9457 section 3 problem-details object.

        Members: ``type``, ``title``, ``status``, ``detail``, plus the
        extensions ``required``, ``observed`` and ``unmet`` (the item names,
        in the order checked). Serve it as ``application/problem+json``.
        """
        return {
            "type": PROBLEM_TYPE,
            "title": PROBLEM_TITLE,
            "status": self.status,
            "detail": self.description,
            "required": self.required,
            "observed": dict(self.observed),
            "unmet": [s.item for s in self.unmet],
        }


def enforce(
    req: Requirement,
    *,
    mial: int,
    maal: int,
    vectors: Mapping[str, Mapping[str, int]],
    appraisal_age: int | None,
    scheme: str = "Bearer",
) -> None:
    """Raise ``InsufficientAssurance`` unless the effective values meet ``req``.

    ``vectors`` maps ``"mial"`` and ``"maal"`` to the effective per-dimension
    ratings; ``appraisal_age`` is the seconds since the appraisal (compared
    only when ``req.max_age`` is set).
    """
    unmet = req.unmet(mial, maal, vectors, appraisal_age)
    if not unmet:
        return
    observed: dict[str, int] = {"mial": mial, "maal": maal}
    for item in sorted(req.dimensions):
        kind, _, dim = item.partition(".")
        observed[item] = vectors.get(kind, {}).get(dim, 0)
    if req.max_age is not None and appraisal_age is not None:
        observed["appraisal_age"] = appraisal_age
    raise InsufficientAssurance(req, observed, unmet, scheme=scheme)


def requirement(
    mial: int = 0,
    maal: int = 0,
    dimensions: Mapping[str, int] | str | None = None,
    max_age: int | None = None,
    *,
    scheme: Scheme | None = None,
) -> Requirement:
    """Build a ``Requirement`` from keyword values, checking them.

    ``dimensions`` is either a mapping such as ``{"maal.containment": 2}`` or
    the compact text ``"maal.containment>=2 mial.configuration>=2"``. Raises
    ``ValueError`` for unknown dimensions or out-of-range values.
    """
    scheme = scheme or load_scheme()
    if isinstance(dimensions, str):
        parsed = Requirement.parse(min_assurance=dimensions, scheme=scheme)
        dims = dict(parsed.dimensions)
    else:
        dims = dict(dimensions or {})
    data: dict[str, object] = {"min_mial": mial, "min_maal": maal, "min": dims}
    if max_age is not None:
        data["max_age"] = max_age
    return Requirement.from_mapping(data, scheme)


def parse_requirement_items(
    items: Iterable[str], *, scheme: Scheme | None = None
) -> Requirement:
    """Parse items such as ``mial>=2``, ``maal.containment>=2``,
    ``max_age=3600`` (as the CLI's repeated ``--require``) into one
    ``Requirement``.

    Raises ``ValueError`` naming the first malformed item.
    """
    scheme = scheme or load_scheme()
    out = Requirement()
    for raw in items:
        for item in raw.split():
            name, sep, value = item.partition(">=")
            if sep and name == "mial":
                one = Requirement.parse(min_mial=value, scheme=scheme)
            elif sep and name == "maal":
                one = Requirement.parse(min_maal=value, scheme=scheme)
            elif sep:
                one = Requirement.parse(min_assurance=item, scheme=scheme)
            elif item.startswith("max_age="):
                one = Requirement.parse(max_age=item[len("max_age=") :], scheme=scheme)
            else:
                raise ValueError(f"requirement item not understood: {item}")
            out = out.combine(one)
    return out
