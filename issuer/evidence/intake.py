"""Evidence sent with a token request: parsing, verification, combination.

Wire format (docs/evidence.md, "Sending evidence"): one ``evidence`` form
parameter per piece, each a JSON object ``{"kind": K, "value": V}``, and
``nonce`` holding the ``POST /challenge`` nonce when any piece must be
fresh. This module knows nothing of HTTP or OAuth errors; it raises
``EvidenceError`` and the service maps it to ``invalid_request``.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from verifier.keys import strict_json

from .. import metrics
from ..assurance.engine import EvidenceItem, Rating
from ..errors import EvidenceError
from . import VerifiedEvidence, ear, nitro, provenance, tpm
from .settings import EvidenceSettings

__all__ = ["FRESH_KINDS", "Intake", "IntakeResult", "parse_pieces"]

#: Kinds that must carry the challenge nonce.
FRESH_KINDS = frozenset({"tpm_quote", "tpm2_certify", "ear", "nitro_attestation"})
MAX_PIECES = 8
WARNING_CAP = Rating(1, "an attestation result with status warning caps MIAL at 2")


@dataclass(frozen=True)
class Piece:
    """One piece as sent: its kind, its value, and the value's size."""

    kind: str
    value: Any
    size: int


def parse_pieces(values: Sequence[str], max_bytes: int) -> list[Piece]:
    """Parse the ``evidence`` parameters; raises ``EvidenceError``."""
    if len(values) > MAX_PIECES:
        raise EvidenceError("too_many", f"at most {MAX_PIECES} pieces of evidence")
    pieces = []
    for text in values:
        if len(text) > max_bytes:
            raise EvidenceError("too_large", "a piece of evidence is too large")
        try:
            data = strict_json(text)
        except ValueError:
            raise EvidenceError("malformed", "evidence is not JSON") from None
        if not isinstance(data, dict) or set(data) != {"kind", "value"}:
            raise EvidenceError("malformed", 'evidence is {"kind": ..., "value": ...}')
        kind, value = data["kind"], data["value"]
        if not isinstance(kind, str) or not isinstance(value, str | dict):
            raise EvidenceError("malformed", "evidence kind or value has a wrong type")
        pieces.append(Piece(kind, value, len(text)))
    return pieces


@dataclass
class IntakeResult:
    """Verified evidence turned into what the assessor consumes."""

    items: list[EvidenceItem] = field(default_factory=list)
    caps: dict[str, Rating] = field(default_factory=dict)
    maal: dict[str, Rating] = field(default_factory=dict)
    summaries: list[dict[str, Any]] = field(default_factory=list)


class Intake:
    """Verifies the pieces of one request against the policy's evidence
    settings.

    ``bound_keys`` are the RFC 7638 thumbprints of the keys the client
    proved possession of in this request (its private_key_jwt key, its DPoP
    key); evidence that raises MAAL must bind one of them.
    """

    def __init__(self, settings: EvidenceSettings) -> None:
        self.settings = settings

    def verify(
        self,
        pieces: Sequence[Piece],
        *,
        nonce: str | None,
        bound_keys: set[str],
        now: float,
        require_nonce: bool = True,
        credential_keys: set[str] | None = None,
        audit: list[dict[str, Any]] | None = None,
    ) -> IntakeResult:
        """Verify every piece and combine; raises ``EvidenceError``.

        ``require_nonce`` False (dry runs on saved evidence only) verifies
        fresh kinds without a nonce, which caps their ratings at 2, and
        skips the key binding that MAAL ratings need. Key evidence must bind
        one of ``bound_keys`` (keys the client proved possession of: its
        authentication key, its DPoP key); its MAAL ratings count only for
        ``credential_keys`` (the authentication key), since MAAL rates the
        credential the client authenticated with. ``audit`` receives each
        verified piece's kind, digest and details as it is verified, so a
        refusal part-way still records what was checked.
        """
        credential_keys = bound_keys if credential_keys is None else credential_keys
        audit = [] if audit is None else audit
        for piece in pieces:
            self._verifier(piece.kind)  # an unaccepted kind is named first
        fresh = any(p.kind in FRESH_KINDS for p in pieces)
        if fresh and nonce is None and require_nonce:
            raise EvidenceError("nonce_missing", "this evidence needs a nonce")
        result = IntakeResult()
        verified: list[VerifiedEvidence] = []
        # A certify is checked against the AK of the quote in the same
        # request, so quotes go first.
        ordered = sorted(pieces, key=lambda p: p.kind != "tpm_quote")
        ak_public: bytes | None = None
        for piece in ordered:
            started = time.perf_counter()
            try:
                evidence = self._one(piece, nonce, ak_public, now)
            except (RecursionError, UnicodeError):
                # Parsers of nested or non-UTF-8 input fail this way; it is
                # malformed evidence, not a server fault.
                raise EvidenceError("malformed", "evidence is malformed") from None
            metrics.labelled(metrics.EVIDENCE_SECONDS, piece.kind).observe(
                time.perf_counter() - started
            )
            if piece.kind == "tpm_quote":
                ak_public = _ak_public(piece.value)
            verified.append(evidence)
            summary = {"kind": evidence.kind, "digest": evidence.digest}
            result.summaries.append(summary)
            audit.append({**summary, "details": dict(evidence.details)})
        _same_workload(verified)
        self._bind_provenance(verified)
        for evidence in verified:
            if not require_nonce and evidence.maal:
                # A saved bundle proves no key possession: drop MAAL ratings.
                evidence = dataclasses.replace(evidence, maal={})
            self._combine(evidence, bound_keys, credential_keys, result)
        return result

    def _verifier(self, kind: str) -> Callable[..., VerifiedEvidence]:
        s = self.settings
        table: dict[str, tuple[object | None, Callable[..., VerifiedEvidence]]] = {
            "tpm_quote": (s.tpm, tpm.verify_quote),
            "tpm2_certify": (s.tpm, tpm.verify_certify),
            "ear": (s.ear, ear.verify),
            "nitro_attestation": (s.nitro, nitro.verify),
            "slsa_provenance": (s.provenance, provenance.verify),
        }
        entry = table.get(kind)
        if entry is None or entry[0] is None:
            raise EvidenceError(
                "kind_not_accepted", f"evidence kind {kind} not accepted"
            )
        return entry[1]

    def _one(
        self, piece: Piece, nonce: str | None, ak_public: bytes | None, now: float
    ) -> VerifiedEvidence:
        verify = self._verifier(piece.kind)
        if piece.kind in ("tpm_quote", "tpm2_certify"):
            if not isinstance(piece.value, dict):
                raise EvidenceError("malformed", "a TPM bundle is a JSON object")
            expected = tpm.qualifying_data(nonce) if nonce is not None else None
            if piece.kind == "tpm_quote":
                return verify(
                    piece.value,
                    policy=self.settings.tpm,
                    expected_nonce=expected,
                    now=now,
                )
            if ak_public is None:
                raise EvidenceError(
                    "quote_missing", "a certify needs a quote by its AK"
                )
            return verify(
                piece.value,
                policy=self.settings.tpm,
                ak_public=ak_public,
                expected_nonce=expected,
                expected_key_thumbprint=None,
                now=now,
            )
        # A JSON object is digested in one canonical form (sorted keys, no
        # spaces), as the TPM module does; a string is digested as sent, so a
        # bundle sent as its file's text has the file's SHA-256.
        raw = (
            json.dumps(piece.value, sort_keys=True, separators=(",", ":"))
            if isinstance(piece.value, dict)
            else piece.value
        )
        if piece.kind == "slsa_provenance":
            return verify(
                raw, policy=self.settings.provenance, expected_nonce=None, now=now
            )
        policy = self.settings.ear if piece.kind == "ear" else self.settings.nitro
        expected_nonce = nonce.encode("ascii") if nonce is not None else None
        return verify(raw, policy=policy, expected_nonce=expected_nonce, now=now)

    def _bind_provenance(self, verified: Sequence[VerifiedEvidence]) -> None:
        """Provenance counts only for an artifact known to run here: one of
        its subjects must be a configured artifact digest or a ``sha256:``
        subject another piece reports. A public bundle alone proves nothing
        about the caller."""
        known = set(self.settings.artifact_digests)
        for evidence in verified:
            if evidence.kind != "slsa_provenance":
                known.update(s for s in evidence.subjects if s.startswith("sha256:"))
        for evidence in verified:
            if evidence.kind == "slsa_provenance" and not (
                set(evidence.subjects) & known
            ):
                raise EvidenceError(
                    "subject_mismatch",
                    "the provenance names no artifact known to run here",
                )

    @staticmethod
    def _combine(
        evidence: VerifiedEvidence,
        bound_keys: set[str],
        credential_keys: set[str],
        result: IntakeResult,
    ) -> None:
        if evidence.contraindicated:
            raise EvidenceError(
                "contraindicated", "an attestation result is contraindicated"
            )
        result.items.append(
            EvidenceItem(
                evidence.kind, evidence.digest, evidence.expires_at, evidence.mial
            )
        )
        for dim, cap in evidence.caps.items():
            current = result.caps.get(dim)
            if current is None or cap.value < current.value:
                result.caps[dim] = cap
        if evidence.details.get("status") == "warning":
            result.caps["configuration"] = min(
                result.caps.get("configuration", WARNING_CAP), WARNING_CAP,
                key=lambda r: r.value,
            )  # fmt: skip
        if evidence.maal:
            # MAAL ratings describe a key; they count only for a key the
            # client proved possession of in this very request.
            if evidence.bound_key is None or evidence.bound_key not in bound_keys:
                raise EvidenceError(
                    "key_mismatch", "the evidence binds a key the client did not use"
                )
            if evidence.bound_key not in credential_keys:
                # A hardware-held DPoP key protects the token, not the
                # credential that obtained it: recorded, not rated.
                return
            for dim, rating in evidence.maal.items():
                current = result.maal.get(dim)
                if current is None or rating.value > current.value:
                    result.maal[dim] = rating


def _ak_public(bundle: Any) -> bytes | None:
    value = bundle.get("ak_public") if isinstance(bundle, Mapping) else None
    if not isinstance(value, str):
        return None
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None


def _same_workload(verified: Sequence[VerifiedEvidence]) -> None:
    """Pieces that name workloads in the same namespace (``tpm-ak:``,
    ``sha256:`` ...) must share at least one name."""
    by_space: dict[str, list[set[str]]] = {}
    for evidence in verified:
        spaces: dict[str, set[str]] = {}
        for subject in evidence.subjects:
            spaces.setdefault(subject.partition(":")[0], set()).add(subject)
        for space, names in spaces.items():
            by_space.setdefault(space, []).append(names)
    for groups in by_space.values():
        common = set.intersection(*groups)
        if not common:
            raise EvidenceError(
                "subject_mismatch", "the pieces of evidence name different workloads"
            )
