"""Verification of platform-issued JWTs used as RFC 8693 subject tokens.

``TrustSources`` is built from the ``[trust_sources.NAME]`` tables of the
configuration and verifies Kubernetes projected service account tokens,
GitHub Actions OIDC tokens, SPIFFE JWT-SVIDs and generic OIDC-style JWTs,
returning a ``PlatformIdentity`` or raising ``issuer.errors.EvidenceError``.
See ``docs/platforms.md``.
"""

from issuer.platforms.oidc import (
    DEFAULT_ALGORITHMS,
    EVIDENCE_KINDS,
    PlatformIdentity,
    TrustSources,
)

__all__ = [
    "DEFAULT_ALGORITHMS",
    "EVIDENCE_KINDS",
    "PlatformIdentity",
    "TrustSources",
]
