"""Verification of attestation evidence sent with token requests.

Each evidence kind has a module of its own (``tpm``, ``ear``, ``nitro``,
``provenance``) whose ``verify`` function checks the evidence with real
cryptography against configured trust anchors and reference values and
returns a ``VerifiedEvidence``, or raises ``issuer.errors.EvidenceError``
with a short fixed ``reason``. None of them reads the clock: ``now`` is
passed in. ``docs/evidence.md`` states what each checks and rates.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..assurance.engine import Rating

__all__ = ["VerifiedEvidence", "digest_of"]


def digest_of(raw: bytes) -> str:
    """``sha-256:`` and the lowercase hex SHA-256 of ``raw``."""
    return "sha-256:" + hashlib.sha256(raw).hexdigest()


@dataclass(frozen=True)
class VerifiedEvidence:
    """The verified content of one piece of evidence.

    - ``kind``: evidence kind, e.g. ``tpm_quote``, ``tpm2_certify``, ``ear``,
      ``nitro_attestation``, ``slsa_provenance``.
    - ``digest``: ``digest_of`` the exact bytes received.
    - ``expires_at``: Unix time after which a token must not rest on it.
    - ``mial`` / ``maal``: ratings this evidence proves, by dimension name.
    - ``caps``: upper bounds it imposes (attestation-result warnings), by
      dimension name; ``contraindicated`` asks the issuer to refuse.
    - ``nonce``: the freshness nonce it carries, for the caller to match
      against the one it handed out (``None`` when the kind has none).
    - ``bound_key``: RFC 7638 thumbprint of the workload public key the
      evidence binds (certified TPM key, Nitro ``public_key``, EAR key
      attestation), when it binds one.
    - ``subjects``: workload identifiers it names (artifact digests, SPIFFE
      IDs...), used to check that several pieces describe one workload.
    - ``details``: short strings for the audit record (never raw evidence).
    """

    kind: str
    digest: str
    expires_at: int | None = None
    mial: Mapping[str, Rating] = field(default_factory=dict)
    maal: Mapping[str, Rating] = field(default_factory=dict)
    caps: Mapping[str, Rating] = field(default_factory=dict)
    contraindicated: bool = False
    nonce: bytes | None = None
    bound_key: str | None = None
    subjects: tuple[str, ...] = ()
    details: Mapping[str, str] = field(default_factory=dict)
