"""Combine ratings into per-dimension vectors and overall levels.

The rules are those of ``docs/levels.md``:

- each MIAL dimension takes the best rating any verified piece of evidence
  proves; a dimension nothing proves is 0;
- what the operator declared at registration counts, capped at 1;
- MAAL rates the primary credential (the subject token in a token
  exchange, the client's own credential otherwise) together with how the
  issued token is bound (``boundary``) and its lifecycle (``governance``);
- recovery is capped at enrollment;
- the overall levels come from the scheme's minimum rows
  (``verifier.levels``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from verifier.levels import Scheme, load_scheme

__all__ = ["Assessment", "Assessor", "CredentialRating", "EvidenceItem", "Rating"]

DECLARED_CAP = 1


@dataclass(frozen=True)
class Rating:
    """A dimension's value and the reason for it, in words."""

    value: int
    reason: str


@dataclass(frozen=True)
class EvidenceItem:
    """One verified piece of evidence and the MIAL ratings it proves.

    ``ratings`` maps MIAL dimension names to ratings; ``expires_at`` bounds
    the lifetime of any token issued on it.
    """

    kind: str
    digest: str
    expires_at: int | None
    ratings: Mapping[str, Rating]

    def summary(self) -> dict[str, str]:
        """The ``{"kind", "digest"}`` entry of ``assurance_levels.evidence``."""
        return {"kind": self.kind, "digest": self.digest}


@dataclass(frozen=True)
class CredentialRating:
    """MAAL ratings of the credential the workload authenticated with.

    ``ratings`` covers provenance, enrollment, containment, unlocking, reuse
    and recovery; boundary and governance come from the issued token.
    """

    kind: str
    ratings: Mapping[str, Rating]


@dataclass
class Assessment:
    """The outcome of one appraisal."""

    scheme: Scheme
    mial: dict[str, int]
    maal: dict[str, int]
    reasons: dict[str, str]
    mial_level: int
    maal_level: int
    evidence: list[EvidenceItem]
    credential: str
    appraised_at: int
    caps: list[str] = field(default_factory=list)

    @property
    def evidence_expiry(self) -> int | None:
        """The earliest expiry among the evidence, or ``None``."""
        times = [e.expires_at for e in self.evidence if e.expires_at is not None]
        return min(times) if times else None

    def vectors(self) -> dict[str, dict[str, int]]:
        """Both per-dimension vectors, keyed ``mial`` and ``maal``."""
        return {"mial": self.mial, "maal": self.maal}

    def claim(self, policy_version: str) -> dict[str, Any]:
        """The ``assurance_levels`` token claim (docs/levels.md, token claims)."""
        return {
            "scheme": self.scheme.id,
            "mial": dict(self.mial),
            "maal": dict(self.maal),
            "appraised_at": self.appraised_at,
            "credential": self.credential,
            "evidence": [e.summary() for e in self.evidence],
            "policy_version": policy_version,
        }

    def explain(self) -> list[str]:
        """One line per dimension: value and reason, then the ``verdict``."""
        lines = []
        for kind, vector in (("mial", self.mial), ("maal", self.maal)):
            for dim, value in vector.items():
                lines.append(f"{kind}.{dim} = {value}: {self.reasons[f'{kind}.{dim}']}")
        return lines + self.verdict()

    def verdict(self) -> list[str]:
        """The overall levels and, for each kind below its top, what keeps it
        from the next level. The per-dimension reasons are in ``reasons``."""
        lines = [f"mial = {self.mial_level}, maal = {self.maal_level}"]
        for kind, level, vector in (
            ("mial", self.mial_level, self.mial),
            ("maal", self.maal_level, self.maal),
        ):
            table = self.scheme.table(kind)  # type: ignore[arg-type]
            if level < table.top:
                gaps = table.shortfalls(vector, level + 1)
                text = "; ".join(s.describe() for s in gaps)
                lines.append(f"{kind} {level + 1} not reached: {text}")
        return lines


class Assessor:
    """Applies the rating rules of one scheme."""

    def __init__(self, scheme: Scheme | None = None) -> None:
        self.scheme = scheme or load_scheme()

    def assess(
        self,
        *,
        evidence: Sequence[EvidenceItem],
        credential: CredentialRating,
        identity_floor: Rating,
        boundary: Rating,
        governance: Rating,
        declared: Mapping[str, int],
        now: int,
        caps: Mapping[str, Rating] | None = None,
    ) -> Assessment:
        """Rate every dimension and derive both overall levels.

        ``identity_floor`` is what client authentication alone proves about
        identity (credential-only, MIAL identity_attestation 1). ``declared``
        maps items such as ``"mial.configuration"`` to operator-declared
        values, which are capped at 1. ``caps`` maps MIAL dimension names to
        upper bounds from attestation results (warnings, contraindications);
        they apply last, so nothing raises a capped dimension again.
        """
        reasons: dict[str, str] = {}
        mial: dict[str, int] = {}
        for dim in self.scheme.mial.dimensions:
            best = Rating(0, "no verified evidence")
            if dim == "identity_attestation":
                best = identity_floor
            for item in evidence:
                rating = item.ratings.get(dim)
                if rating is not None and rating.value > best.value:
                    best = rating
            mial[dim], reasons[f"mial.{dim}"] = best.value, best.reason

        maal: dict[str, int] = {}
        for dim in self.scheme.maal.dimensions:
            if dim == "boundary":
                rating = boundary
            elif dim == "governance":
                rating = governance
            else:
                rating = credential.ratings.get(dim, Rating(0, "not rated"))
            maal[dim], reasons[f"maal.{dim}"] = rating.value, rating.reason

        self._apply_declared(declared, mial, maal, reasons)

        applied = []
        for dim, cap in (caps or {}).items():
            if dim in mial and cap.value < mial[dim]:
                mial[dim] = cap.value
                reasons[f"mial.{dim}"] += f"; capped at {cap.value}: {cap.reason}"
                applied.append(f"mial.{dim} capped at {cap.value}")

        caps_list = applied
        if maal["recovery"] > maal["enrollment"]:
            maal["recovery"] = maal["enrollment"]
            reasons["maal.recovery"] += "; capped at enrollment"
            caps_list.append("maal.recovery capped at enrollment")

        return Assessment(
            scheme=self.scheme,
            mial=mial,
            maal=maal,
            reasons=reasons,
            mial_level=self.scheme.mial.overall(mial),
            maal_level=self.scheme.maal.overall(maal),
            evidence=list(evidence),
            credential=credential.kind,
            appraised_at=now,
            caps=caps_list,
        )

    @staticmethod
    def _apply_declared(
        declared: Mapping[str, int],
        mial: dict[str, int],
        maal: dict[str, int],
        reasons: dict[str, str],
    ) -> None:
        vectors = {"mial": mial, "maal": maal}
        for item, value in declared.items():
            kind, _, dim = item.partition(".")
            vector = vectors.get(kind)
            if vector is None or dim not in vector:
                continue
            capped = min(value, DECLARED_CAP)
            if capped > vector[dim]:
                vector[dim] = capped
                reasons[item] = "declared by the operator at registration (caps at 1)"
