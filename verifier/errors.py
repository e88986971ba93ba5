"""Exceptions of the verifier library.

One root, ``VerifierError``, with two branches:

- ``TokenError``: the presented token, its proof or the request carrying it
  is not acceptable. Each class carries the OAuth ``error`` code and the HTTP
  status a resource server answers with (RFC 6750 section 3.1, RFC 9449
  section 7.1).
- ``KeySourceError``: the keys (or the introspection answer) needed to judge
  a token could not be obtained. Apart from ``UnknownKeyId``, these are the
  relying party's trouble, not the caller's, and map to 503.

``description`` is short text safe to send to the client; ``detail`` is for
operators (logs, debugging) and never goes on the wire from this library.
Neither ever holds a token.

``InsufficientAssurance``, the step-up exception, is a ``TokenError`` defined
in ``verifier.requirements`` next to the code that raises it.
"""

from __future__ import annotations

__all__ = [
    "CertificateMismatch",
    "ExpiredToken",
    "InactiveToken",
    "InsecureTransport",
    "InsufficientScope",
    "IntrospectionError",
    "InvalidClaims",
    "InvalidDPoPProof",
    "InvalidKeySet",
    "InvalidMetadata",
    "InvalidRequest",
    "InvalidSignature",
    "IssuedInFuture",
    "KeyFetchError",
    "KeySourceError",
    "LevelMismatch",
    "MalformedToken",
    "MissingToken",
    "NestedToken",
    "NotYetValid",
    "ProofRequired",
    "ReplayedDPoPProof",
    "TokenError",
    "UnknownCriticalHeader",
    "UnknownKeyId",
    "UnknownScheme",
    "UnsupportedAlgorithm",
    "VerifierError",
    "WrongAudience",
    "WrongIssuer",
    "WrongTokenType",
]


class VerifierError(Exception):
    """Root of every exception this library raises on purpose.

    ``error`` is the OAuth error code and ``status`` the HTTP status a
    resource server should answer with; ``description`` is client-safe text
    and ``detail`` operator-only text.
    """

    error: str = "invalid_token"
    status: int = 401
    default_description: str = "the access token is not acceptable"

    def __init__(self, description: str | None = None, *, detail: str | None = None):
        self.description = description or self.default_description
        self.detail = detail
        super().__init__(self.description)

    def __str__(self) -> str:
        if self.detail:
            return f"{self.description} ({self.detail})"
        return self.description


# -- token branch ---------------------------------------------------------


class TokenError(VerifierError):
    """The token, its proof of possession or its presentation is refused.

    RFC 6750 section 3.1 ``invalid_token`` with status 401 unless a subclass
    says otherwise.
    """

    def www_authenticate(self, scheme: str = "Bearer", realm: str | None = None) -> str:
        """Render the RFC 6750 section 3 challenge for this error.

        ``scheme`` is ``Bearer`` or ``DPoP`` (RFC 9449 section 7.1). The
        description is reduced to the characters RFC 6750 allows.
        """
        params: list[tuple[str, str]] = []
        if realm is not None:
            params.append(("realm", realm))
        params.append(("error", self.error))
        params.append(("error_description", self.description))
        return render_challenge(scheme, params)


class MissingToken(TokenError):
    """The request carries no access token (RFC 6750 section 3.1).

    Its challenge names no error code, as that section asks.
    """

    default_description = "an access token is required"

    def www_authenticate(self, scheme: str = "Bearer", realm: str | None = None) -> str:
        """Render a challenge without error code (RFC 6750 section 3.1)."""
        params = [] if realm is None else [("realm", realm)]
        return render_challenge(scheme, params)


class InvalidRequest(TokenError):
    """The Authorization or DPoP header is malformed or repeated.

    RFC 6750 section 3.1 ``invalid_request``, status 400.
    """

    error = "invalid_request"
    status = 400
    default_description = "the request's authorization headers are malformed"


class MalformedToken(TokenError):
    """Not a compact JWS we accept: bad encoding, bad JSON, duplicate member
    names, wrong shape, or larger than the configured cap."""

    default_description = "the access token is malformed"


class UnsupportedAlgorithm(TokenError):
    """The ``alg`` header is not on the allow-list or does not fit the key
    (RFC 8725 sections 3.1 and 3.2)."""

    default_description = "the access token's signing algorithm is not accepted"


class WrongTokenType(TokenError):
    """The ``typ`` header is not ``at+jwt`` (RFC 9068 section 4, RFC 8725
    section 3.11)."""

    default_description = "the token is not a JWT access token"


class UnknownCriticalHeader(TokenError):
    """The ``crit`` header names an extension we do not implement (RFC 7515
    section 4.1.11)."""

    default_description = "the access token needs an unsupported extension"


class NestedToken(TokenError):
    """The token is a nested JWT (``cty: JWT``), which access tokens never are."""

    default_description = "nested tokens are not accepted"


class InvalidSignature(TokenError):
    """The signature does not verify with the issuer's key."""

    default_description = "the access token's signature is invalid"


class InvalidClaims(TokenError):
    """A claim is missing, of the wrong JSON type, or out of range."""

    default_description = "the access token's claims are invalid"


class ExpiredToken(InvalidClaims):
    """``exp`` has passed, leeway included."""

    default_description = "the access token has expired"


class NotYetValid(InvalidClaims):
    """``nbf`` is still in the future, leeway included."""

    default_description = "the access token is not valid yet"


class IssuedInFuture(InvalidClaims):
    """``iat`` (or the appraisal time) is later than now plus the leeway."""

    default_description = "the access token was issued in the future"


class WrongAudience(InvalidClaims):
    """``aud`` names none of this resource server's identifiers (RFC 9068
    section 4, RFC 8725 section 3.9)."""

    default_description = "the access token is meant for another audience"


class WrongIssuer(InvalidClaims):
    """``iss`` is not exactly the configured issuer (RFC 8725 section 3.8)."""

    default_description = "the access token comes from another issuer"


class UnknownScheme(InvalidClaims):
    """``assurance_levels.scheme`` names a level scheme this version lacks."""

    default_description = "the access token uses an unknown assurance scheme"


class LevelMismatch(InvalidClaims):
    """``mial`` or ``maal`` differs from the level its vector yields."""

    default_description = "the access token's levels disagree with its vectors"


class ProofRequired(TokenError):
    """A sender-constrained token came without its proof: a DPoP-bound token
    without a DPoP proof, or a certificate-bound one without a certificate."""

    default_description = "the access token must be presented with its proof"


class InvalidDPoPProof(TokenError):
    """The DPoP proof fails a check of RFC 9449 section 4.3 or section 7.1.

    Error code ``invalid_dpop_proof`` (RFC 9449 section 7.1).
    """

    error = "invalid_dpop_proof"
    default_description = "the DPoP proof is invalid"


class ReplayedDPoPProof(InvalidDPoPProof):
    """The DPoP proof's ``jti`` was seen before (RFC 9449 section 11.1)."""

    default_description = "the DPoP proof was already used"


class CertificateMismatch(TokenError):
    """The client certificate is not the one the token is bound to (RFC 8705
    section 3)."""

    default_description = "the client certificate does not match the token"


class InactiveToken(TokenError):
    """Introspection reports the token inactive: revoked, or unknown to the
    issuer (RFC 7662 section 2.2)."""

    default_description = "the access token is not active"


class InsufficientScope(TokenError):
    """The token lacks a scope the route demands (RFC 6750 section 3.1)."""

    error = "insufficient_scope"
    status = 403
    default_description = "the access token lacks a required scope"


# -- key and fetch branch -------------------------------------------------


class KeySourceError(VerifierError):
    """The keys or answers needed to judge a token could not be obtained.

    The resource server answers 503: the caller is not at fault.
    """

    error = "temporarily_unavailable"
    status = 503
    default_description = "the token cannot be checked right now"


class UnknownKeyId(KeySourceError):
    """No key in the issuer's key set has the token's ``kid``, even after the
    rate-limited refetch. The caller is answered as for an invalid token."""

    error = "invalid_token"
    status = 401
    default_description = "the access token names an unknown key"


class KeyFetchError(KeySourceError):
    """Metadata or the key set could not be fetched, and no earlier copy is
    available."""

    default_description = "the issuer's keys could not be fetched"


class InvalidKeySet(KeySourceError):
    """The key set is not a JWK Set holding at least one usable public key."""

    default_description = "the issuer's key set is invalid"


class InvalidMetadata(KeySourceError):
    """The issuer's RFC 8414 metadata is malformed or names another issuer
    (RFC 8414 section 3.3)."""

    default_description = "the issuer's metadata is invalid"


class InsecureTransport(KeySourceError):
    """An issuer, key set or introspection URL uses plain http without
    ``allow_http=True``, or is not an absolute http(s) URL."""

    default_description = "the issuer's URL is not acceptable"


class IntrospectionError(KeySourceError):
    """The introspection endpoint could not be reached or answered badly."""

    default_description = "the token could not be introspected"


# -- challenge rendering --------------------------------------------------


def _quoted(value: str) -> str:
    # RFC 6750 section 3 limits error_description and the other values to
    # printable ASCII without '"' and '\'; replacing the rest keeps the header
    # valid whatever a description says.
    text = "".join(c if " " <= c <= "~" and c not in '"\\' else "?" for c in value)
    return f'"{text}"'


def render_challenge(scheme: str, params: list[tuple[str, str]]) -> str:
    """Render one ``WWW-Authenticate`` challenge (RFC 9110 section 11.6.1)."""
    if not params:
        return scheme
    return scheme + " " + ", ".join(f"{k}={_quoted(v)}" for k, v in params)
