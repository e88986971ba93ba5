"""Assurance engine: rates evidence and credentials, derives MIAL and MAAL.

Imports no web framework; ``docs/levels.md`` is its specification.
"""

from .engine import Assessment, Assessor, CredentialRating, EvidenceItem, Rating
from .rules import rate_client_credential, rate_platform_identity

__all__ = [
    "Assessment",
    "Assessor",
    "CredentialRating",
    "EvidenceItem",
    "Rating",
    "rate_client_credential",
    "rate_platform_identity",
]
