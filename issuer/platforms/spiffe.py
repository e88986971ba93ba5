"""SPIFFE IDs and the JWT-SVID rules that sit on top of plain JWT checks.

The SPIFFE-ID specification, section 2, fixes the ID syntax checked here. The
JWT-SVID specification restricts ``alg`` (section 2.1) and ``typ`` (section
2.3), makes ``sub`` the workload's SPIFFE ID (section 3.1) and requires
``aud`` and ``exp`` (sections 3.2, 3.3 and 4); section 6.2 takes the signing
keys from the bundle entries whose ``use`` is ``jwt-svid``. The bundle itself
is chosen by the trust domain the SVID resides in (SPIFFE Trust Domain and
Bundle, section 3), because a JWT-SVID need not carry ``iss``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "BUNDLE_KEY_USES",
    "JWT_SVID_ALGORITHMS",
    "SpiffeId",
    "check_typ",
    "parse_spiffe_id",
    "svid_attributes",
    "trust_domain_hint",
    "validate_trust_domain",
]

#: JWT-SVID section 2.1: the only ``alg`` values a JWT-SVID may carry.
JWT_SVID_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512"}
)
#: JWK ``use`` values taken from a SPIFFE bundle (JWT-SVID section 6.2). A key
#: without ``use`` is accepted as well, so that a plain JWK Set file works;
#: ``x509-svid`` keys are never used for JWTs.
BUNDLE_KEY_USES = frozenset({"jwt-svid"})

_SCHEME = "spiffe://"
# SPIFFE-ID section 2.1: lowercase letters, digits, dots, dashes, underscores.
# Upper case is refused rather than folded, so that one workload never has
# two spellings.
_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]+")
# SPIFFE-ID section 2.2: each path segment uses letters, digits, dots,
# dashes and underscores.
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")
# SPIFFE-ID section 2.3 bounds the whole ID at 2048 bytes and section 2.1
# bounds the trust domain name at 255 characters.
_MAX_ID_BYTES = 2048
_MAX_TRUST_DOMAIN = 255


@dataclass(frozen=True)
class SpiffeId:
    """A workload SPIFFE ID split into trust domain and path."""

    trust_domain: str
    path: str

    def __str__(self) -> str:
        return f"{_SCHEME}{self.trust_domain}{self.path}"


def validate_trust_domain(name: str) -> str:
    """Return ``name`` when it is a valid trust domain (SPIFFE-ID section 2.1).

    Raises ``ValueError`` otherwise.
    """
    if not 0 < len(name) <= _MAX_TRUST_DOMAIN or not _TRUST_DOMAIN.fullmatch(name):
        raise ValueError("not a SPIFFE trust domain name")
    return name


def parse_spiffe_id(value: str) -> SpiffeId:
    """Parse a workload SPIFFE ID (SPIFFE-ID section 2).

    The ID must have a non-empty path: an ID made of the trust domain alone
    names the domain, not a workload. No query, fragment, port or user info
    is allowed, no segment may be empty, ``.`` or ``..``. Raises
    ``ValueError``.
    """
    if len(value.encode("utf-8")) > _MAX_ID_BYTES or not value.startswith(_SCHEME):
        raise ValueError("not a SPIFFE ID")
    domain, slash, path = value[len(_SCHEME) :].partition("/")
    validate_trust_domain(domain)
    if not slash:
        raise ValueError("SPIFFE ID has no workload path")
    for segment in path.split("/"):
        if not _SEGMENT.fullmatch(segment) or segment in (".", ".."):
            raise ValueError("SPIFFE ID path is not valid")
    return SpiffeId(trust_domain=domain, path="/" + path)


def trust_domain_hint(sub: object) -> str | None:
    """The trust domain a ``sub`` claims, before any signature is checked.

    Used only to choose the bundle (SPIFFE Trust Domain and Bundle, section
    3); the full syntax is checked after the signature.
    """
    if not isinstance(sub, str) or not sub.startswith(_SCHEME):
        return None
    domain = sub[len(_SCHEME) :].partition("/")[0]
    return domain or None


def check_typ(header: dict[str, object]) -> None:
    """Apply JWT-SVID section 2.3: ``typ``, when set, is ``JWT`` or ``JOSE``.

    Raises ``ValueError``.
    """
    if "typ" in header and header["typ"] not in ("JWT", "JOSE"):
        raise ValueError("JWT-SVID typ must be JWT or JOSE")


def svid_attributes(spiffe_id: SpiffeId) -> dict[str, str]:
    """The attributes a verified JWT-SVID yields."""
    return {"spiffe_id": str(spiffe_id), "trust_domain": spiffe_id.trust_domain}
