"""Verifier library for relying parties of the wimse-assurance issuer.

Verify RFC 9068 access tokens carrying machine assurance levels, demand
levels per route, and answer shortfalls with a step-up challenge::

    from verifier import TokenVerifier, requirement

    verifier = TokenVerifier(issuer="https://issuer.example", audience="https://api")
    token = verifier.verify(raw, require=requirement(mial=2))

Installs with PyJWT and cryptography only; web framework glue lives under
``verifier.integrations`` and imports its framework lazily.
"""

from __future__ import annotations

from .dpop import DPoPProof, DPoPVerifier, MemoryReplayCache, ReplayCache
from .errors import (
    CertificateMismatch,
    ExpiredToken,
    InactiveToken,
    InsecureTransport,
    InsufficientScope,
    IntrospectionError,
    InvalidClaims,
    InvalidDPoPProof,
    InvalidKeySet,
    InvalidMetadata,
    InvalidRequest,
    InvalidSignature,
    IssuedInFuture,
    KeyFetchError,
    KeySourceError,
    LevelMismatch,
    MalformedToken,
    MissingToken,
    NestedToken,
    NotYetValid,
    ProofRequired,
    ReplayedDPoPProof,
    TokenError,
    UnknownCriticalHeader,
    UnknownKeyId,
    UnknownScheme,
    UnsupportedAlgorithm,
    VerifierError,
    WrongAudience,
    WrongIssuer,
    WrongTokenType,
)
from .introspection import Introspector
from .keys import KeySource, RemoteKeySource, StaticKeySource, VerificationKey
from .levels import Requirement, Shortfall, load_scheme
from .requirements import (
    Adjustment,
    InsufficientAssurance,
    Observation,
    parse_requirement_items,
    requirement,
)
from .token import EvidenceRef, TokenVerifier, VerifiedToken

__all__ = [
    "Adjustment",
    "CertificateMismatch",
    "DPoPProof",
    "DPoPVerifier",
    "EvidenceRef",
    "ExpiredToken",
    "InactiveToken",
    "InsecureTransport",
    "InsufficientAssurance",
    "InsufficientScope",
    "IntrospectionError",
    "Introspector",
    "InvalidClaims",
    "InvalidDPoPProof",
    "InvalidKeySet",
    "InvalidMetadata",
    "InvalidRequest",
    "InvalidSignature",
    "IssuedInFuture",
    "KeyFetchError",
    "KeySource",
    "KeySourceError",
    "LevelMismatch",
    "MalformedToken",
    "MemoryReplayCache",
    "MissingToken",
    "NestedToken",
    "NotYetValid",
    "Observation",
    "ProofRequired",
    "RemoteKeySource",
    "ReplayCache",
    "ReplayedDPoPProof",
    "Requirement",
    "Shortfall",
    "StaticKeySource",
    "TokenError",
    "TokenVerifier",
    "UnknownCriticalHeader",
    "UnknownKeyId",
    "UnknownScheme",
    "UnsupportedAlgorithm",
    "VerificationKey",
    "VerifiedToken",
    "VerifierError",
    "WrongAudience",
    "WrongIssuer",
    "WrongTokenType",
    "load_scheme",
    "parse_requirement_items",
    "requirement",
]
