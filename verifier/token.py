"""Verification of JWT access tokens carrying workload assurance levels.

``TokenVerifier.verify`` implements the resource-server checks of RFC 9068
section 4 under the rules of RFC 8725 section 3, then the assurance checks
of docs/levels.md, then the sender constraints (RFC 9449 section 7, RFC 8705
section 3). It returns a ``VerifiedToken`` or raises; it never returns a
bool.

The JWS is parsed here rather than by ``jwt.decode`` so that every rule is
ours and enforced once: strict base64url, UTF-8 JSON without duplicate
member names, explicit ``typ``, no unknown ``crit``, no nested token, an
algorithm allow-list tied to the key type. The signature itself is checked
by PyJWT's algorithm objects with the key parsed once from the JWK Set.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from jwt.algorithms import Algorithm, get_default_algorithms

from .dpop import DPoPProof, DPoPVerifier
from .errors import (
    CertificateMismatch,
    ExpiredToken,
    InactiveToken,
    InvalidClaims,
    InvalidDPoPProof,
    InvalidSignature,
    IssuedInFuture,
    LevelMismatch,
    MalformedToken,
    NestedToken,
    NotYetValid,
    ProofRequired,
    UnknownCriticalHeader,
    UnknownScheme,
    UnsupportedAlgorithm,
    WrongAudience,
    WrongIssuer,
    WrongTokenType,
)
from .introspection import Introspector
from .keys import (
    SUPPORTED_ALGORITHMS,
    KeySource,
    RemoteKeySource,
    StaticKeySource,
    b64url_decode,
    check_url,
    strict_json,
)
from .levels import Requirement, Scheme, load_scheme
from .requirements import Adjustment, Observation, effective_levels, enforce, overall

__all__ = [
    "DEFAULT_ALGORITHMS",
    "EvidenceRef",
    "TokenVerifier",
    "VerifiedToken",
]

DEFAULT_ALGORITHMS = ("ES256", "EdDSA", "PS256", "RS256")

# RFC 9068 section 4: "at+jwt" or its full media type; media types compare
# without regard to case (RFC 7515 section 4.1.9).
_ACCESS_TOKEN_TYPES = frozenset({"at+jwt", "application/at+jwt"})
_NESTED_TYPES = frozenset({"jwt", "application/jwt"})
# The signature segment may be empty so that an unsigned token is refused
# for its algorithm (``none``), the real fault, rather than for its shape.
_COMPACT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
# I-JSON (RFC 7493 section 2.2): integers beyond 2**53 do not survive every
# JSON parser, so a time or level outside that range is refused.
_MAX_SAFE_INT = 2**53 - 1
_HEADER_CACHE_MAX = 256
_PRESENTATIONS = frozenset({"bearer", "dpop"})


@dataclass(frozen=True)
class EvidenceRef:
    """One entry of ``assurance_levels.evidence``: its kind and digest."""

    kind: str
    digest: str


@dataclass(frozen=True)
class VerifiedToken:
    """An access token that passed every check, with its assurance levels.

    ``mial``, ``maal`` and the two vectors are the *effective* values: what
    the issuer asserted, lowered by what this relying party observed
    (presentation, lifetime, its own issuer rating). They are what a
    decision should rest on. ``asserted_maal`` and ``asserted_maal_vector``
    keep the token's own values (the MIAL side is never lowered, so
    ``mial`` always equals the claim). ``adjustments`` lists each lowering.

    ``claims`` and ``header`` are read-only views of the decoded JSON.
    ``presentation`` is ``"bearer"``, ``"dpop"`` or ``"mtls"``.
    """

    claims: Mapping[str, Any]
    header: Mapping[str, Any]
    iss: str
    sub: str
    aud: tuple[str, ...]
    client_id: str
    jti: str
    iat: int
    nbf: int | None
    exp: int
    scopes: frozenset[str]
    scheme: str
    mial: int
    maal: int
    mial_vector: Mapping[str, int]
    maal_vector: Mapping[str, int]
    asserted_maal: int
    asserted_maal_vector: Mapping[str, int]
    appraised_at: int
    evidence: tuple[EvidenceRef, ...]
    credential: str | None
    policy_version: str | None
    presentation: str
    adjustments: tuple[Adjustment, ...]
    dpop: DPoPProof | None = None
    actor: Mapping[str, Any] | None = None

    @property
    def vectors(self) -> dict[str, Mapping[str, int]]:
        """The effective vectors keyed ``"mial"`` and ``"maal"``."""
        return {"mial": self.mial_vector, "maal": self.maal_vector}

    @property
    def auth_scheme(self) -> str:
        """The HTTP authentication scheme for challenges: ``DPoP`` or
        ``Bearer`` (RFC 9449 section 7.1)."""
        return "DPoP" if self.presentation == "dpop" else "Bearer"

    def appraisal_age(self, now: float | None = None) -> int:
        """Seconds since ``assurance_levels.appraised_at`` (never negative)."""
        now = time.time() if now is None else now
        return max(0, int(now) - self.appraised_at)

    def require(
        self, requirement: Requirement, *, now: float | None = None
    ) -> VerifiedToken:
        """Check ``requirement`` against the effective levels; return self.

        Raises ``InsufficientAssurance`` listing every unmet item.
        """
        enforce(
            requirement,
            mial=self.mial,
            maal=self.maal,
            vectors=self.vectors,
            appraisal_age=self.appraisal_age(now),
            scheme=self.auth_scheme,
        )
        return self

    def has_scopes(self, *scopes: str) -> bool:
        """Tell whether every one of ``scopes`` was granted. A plain query,
        not a security check: use it to branch, not to refuse."""
        return all(s in self.scopes for s in scopes)


@dataclass(frozen=True)
class _Request:
    presentation: str
    dpop_proof: str | None
    method: str | None
    url: str | None
    client_cert_der: bytes | None


@dataclass(frozen=True)
class _Header:
    alg: str
    kid: str | None
    algorithm: Algorithm
    values: Mapping[str, Any]


class TokenVerifier:
    """Verifies access tokens from one issuer for one resource server.

    Options (defaults in brackets):

    - ``issuer``: the issuer identifier, compared exactly with ``iss``.
    - ``audience``: this resource server's identifier, or several; ``aud``
      must name one of them.
    - ``jwks``: a JWK Set mapping or a ``KeySource`` for offline or pinned
      keys [None: keys from the issuer's metadata ``jwks_uri``].
    - ``jwks_uri``: fetch keys from here instead of discovering it [None].
    - ``allow_http``: accept plain http issuer and key URLs, for loopback
      development only [False].
    - ``leeway``: clock skew allowed on ``exp``, ``nbf`` and ``iat`` [30].
    - ``algorithms``: accepted JWS algorithms [ES256, EdDSA, PS256, RS256];
      ``none`` and HMAC are impossible.
    - ``max_token_bytes``: size cap of a token [16384].
    - ``dpop``: the ``DPoPVerifier`` for DPoP-bound tokens [a new one with
      an in-memory replay cache].
    - ``provenance``: this relying party's registry rating of the issuer
      (0..3), which caps ``maal.provenance`` [None: no cap].
    - ``introspection``: an ``Introspector`` asked after local checks, for
      revocation [None].
    - ``timeout``: seconds per metadata or key set request [5].
    - ``ca_file``: PEM CA bundle that checks the issuer's https certificate
      instead of the system's, for an issuer under a private CA [None].

    Raises ``ValueError`` for a disallowed algorithm and ``InsecureTransport``
    for a refused URL.
    """

    def __init__(
        self,
        issuer: str,
        audience: str | Sequence[str],
        *,
        jwks: Mapping[str, Any] | KeySource | None = None,
        jwks_uri: str | None = None,
        allow_http: bool = False,
        leeway: int = 30,
        algorithms: Iterable[str] = DEFAULT_ALGORITHMS,
        max_token_bytes: int = 16384,
        dpop: DPoPVerifier | None = None,
        provenance: int | None = None,
        introspection: Introspector | None = None,
        timeout: float = 5.0,
        ca_file: str | None = None,
    ) -> None:
        algs = frozenset(algorithms)
        if not algs or not algs <= SUPPORTED_ALGORITHMS:
            raise ValueError(
                f"algorithms must come from {sorted(SUPPORTED_ALGORITHMS)}"
            )
        audiences = (audience,) if isinstance(audience, str) else tuple(audience)
        if not audiences or not all(isinstance(a, str) and a for a in audiences):
            raise ValueError("audience must be one or more non-empty strings")
        if provenance is not None and not 0 <= provenance <= 3:
            raise ValueError("provenance must be 0..3")
        self.issuer = issuer
        self.audiences = frozenset(audiences)
        self.leeway = leeway
        self.algorithms = algs
        self.max_token_bytes = max_token_bytes
        self.dpop = dpop or DPoPVerifier()
        self.provenance = provenance
        self.introspection = introspection
        self.keys = self._key_source(jwks, jwks_uri, allow_http, timeout, ca_file)
        self._algs = {name: get_default_algorithms()[name] for name in algs}
        self._headers: dict[str, _Header] = {}

    def _key_source(
        self,
        jwks: Mapping[str, Any] | KeySource | None,
        jwks_uri: str | None,
        allow_http: bool,
        timeout: float,
        ca_file: str | None,
    ) -> KeySource:
        if jwks is not None and jwks_uri is not None:
            raise ValueError("give jwks or jwks_uri, not both")
        if isinstance(jwks, Mapping):
            return StaticKeySource(jwks, self.algorithms)
        if jwks is not None:
            return jwks
        check_url(self.issuer, allow_http=allow_http, what="issuer")
        return RemoteKeySource(
            issuer=None if jwks_uri else self.issuer,
            jwks_uri=jwks_uri,
            allow_http=allow_http,
            algorithms=self.algorithms,
            timeout=timeout,
            ca_file=ca_file,
        )

    # -- the one public operation ------------------------------------------

    def verify(
        self,
        token: str,
        *,
        presentation: str = "bearer",
        require: Requirement | None = None,
        dpop_proof: str | None = None,
        http_method: str | None = None,
        http_url: str | None = None,
        client_cert_der: bytes | None = None,
        now: float | None = None,
    ) -> VerifiedToken:
        """Verify ``token`` as presented in one request (RFC 9068 section 4).

        ``presentation`` is the Authorization scheme it came with:
        ``"bearer"`` (RFC 6750) or ``"dpop"`` (RFC 9449 section 7.1, then
        ``dpop_proof``, ``http_method`` and ``http_url`` are needed).
        ``client_cert_der`` is the TLS client certificate, if any (RFC 8705).
        ``require`` is checked against the effective levels.

        Raises a ``TokenError`` subclass for a refused token (see
        docs/verifier.md), ``InsufficientAssurance`` for an unmet
        requirement, and ``KeySourceError`` subclasses when keys cannot be
        had.
        """
        if presentation not in _PRESENTATIONS:
            raise ValueError("presentation must be 'bearer' or 'dpop'")
        now = time.time() if now is None else now

        header, signing_input, signature, body_b64 = self._parse(token)
        key = self.keys.key_for(header.kid)
        if header.alg not in key.algorithms:
            raise UnsupportedAlgorithm(detail="alg does not fit the key")
        try:
            valid = header.algorithm.verify(signing_input, key.key, signature)
        except (ValueError, TypeError):
            # A signature of impossible length or encoding is simply invalid.
            valid = False
        if not valid:
            raise InvalidSignature()

        claims = _load_object(body_b64, "payload")
        fields = self._check_claims(claims, now)
        scheme, levels = _check_levels(claims, fields["iat"], self.leeway)

        boundary, reason, kind, proof = self._sender_constraint(
            token,
            claims,
            _Request(presentation, dpop_proof, http_method, http_url, client_cert_der),
            now,
        )
        if self.introspection is not None:
            answer = self.introspection.introspect(token, now=now)
            if answer.get("jti", fields["jti"]) != fields["jti"]:
                raise InactiveToken(detail="introspection answered for another jti")

        observation = Observation(
            boundary, reason, fields["exp"] - fields["iat"], self.provenance
        )
        mial, maal, maal_vector, changes = effective_levels(
            scheme, levels.mial_vector, levels.maal_vector, observation
        )
        verified = VerifiedToken(
            claims=MappingProxyType(claims),
            header=header.values,
            iss=fields["iss"],
            sub=fields["sub"],
            aud=fields["aud"],
            client_id=fields["client_id"],
            jti=fields["jti"],
            iat=fields["iat"],
            nbf=fields["nbf"],
            exp=fields["exp"],
            scopes=fields["scopes"],
            scheme=scheme.id,
            mial=mial,
            maal=maal,
            mial_vector=MappingProxyType(levels.mial_vector),
            maal_vector=MappingProxyType(maal_vector),
            asserted_maal=levels.maal,
            asserted_maal_vector=MappingProxyType(levels.maal_vector),
            appraised_at=levels.appraised_at,
            evidence=levels.evidence,
            credential=levels.credential,
            policy_version=levels.policy_version,
            presentation=kind,
            adjustments=changes,
            dpop=proof,
            actor=fields["act"],
        )
        if require is not None:
            verified.require(require, now=now)
        return verified

    # -- steps -------------------------------------------------------------

    def _parse(self, token: str) -> tuple[_Header, bytes, bytes, str]:
        """Split the compact JWS and check its header (RFC 7515 section 5.2)."""
        if not isinstance(token, str):
            raise MalformedToken(detail="token is not a string")
        if len(token) > self.max_token_bytes:
            raise MalformedToken(detail="token larger than the configured cap")
        if not _COMPACT.fullmatch(token):
            raise MalformedToken(detail="not a compact JWS of three segments")
        head_b64, body_b64, sig_b64 = token.split(".")
        try:
            signature = b64url_decode(sig_b64)
        except ValueError:
            raise MalformedToken(detail="signature is not base64url") from None

        header = self._headers.get(head_b64)
        if header is None:
            header = self._check_header(_load_object(head_b64, "header"))
            # Tokens from one key share their header byte for byte, so the
            # checked header is cached by its encoding.
            if len(self._headers) >= _HEADER_CACHE_MAX:
                self._headers.clear()
            self._headers[head_b64] = header
        signing_input = token[: len(head_b64) + 1 + len(body_b64)].encode("ascii")
        return header, signing_input, signature, body_b64

    def _check_header(self, values: dict[str, Any]) -> _Header:
        """RFC 9068 section 4, RFC 8725 sections 3.1, 3.10 and 3.11.

        ``jku``, ``x5u``, ``x5c`` and ``jwk`` are ignored: keys come only
        from the configured issuer, never from the token (RFC 8725 section
        3.10).
        """
        alg = values.get("alg")
        if not isinstance(alg, str):
            raise MalformedToken(detail="alg missing")
        if alg not in self.algorithms:
            raise UnsupportedAlgorithm(detail="alg not on the allow-list")
        typ = values.get("typ")
        if not isinstance(typ, str) or typ.lower() not in _ACCESS_TOKEN_TYPES:
            raise WrongTokenType()
        if "crit" in values:
            # No JWS extension is implemented here, so any critical one is
            # unknown (RFC 7515 section 4.1.11).
            raise UnknownCriticalHeader()
        cty = values.get("cty")
        if isinstance(cty, str) and cty.lower() in _NESTED_TYPES:
            raise NestedToken()
        if values.get("b64", True) is not True:
            raise MalformedToken(detail="unencoded payloads are not accepted")
        kid = values.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise MalformedToken(detail="kid is not a string")
        return _Header(alg, kid, self._algs[alg], MappingProxyType(values))

    def _check_claims(self, claims: dict[str, Any], now: float) -> dict[str, Any]:
        """RFC 9068 sections 2.2 and 4: required claims, types, iss, aud, times."""
        iss = _string(claims, "iss")
        if iss != self.issuer:
            raise WrongIssuer()
        aud = _audience(claims)
        if self.audiences.isdisjoint(aud):
            raise WrongAudience()

        exp = _numeric_date(claims, "exp")
        iat = _numeric_date(claims, "iat")
        nbf = _numeric_date(claims, "nbf") if "nbf" in claims else None
        if now >= exp + self.leeway:
            raise ExpiredToken()
        if nbf is not None and nbf > now + self.leeway:
            raise NotYetValid()
        if iat > now + self.leeway:
            raise IssuedInFuture()
        if exp <= iat:
            raise InvalidClaims(detail="exp is not after iat")

        scope = claims.get("scope")
        if scope is not None and not isinstance(scope, str):
            raise InvalidClaims(detail="scope is not a string")
        act = claims.get("act")
        if act is not None and not isinstance(act, dict):
            raise InvalidClaims(detail="act is not an object")
        cnf = claims.get("cnf")
        if cnf is not None and not isinstance(cnf, dict):
            raise InvalidClaims(detail="cnf is not an object")
        return {
            "iss": iss,
            "sub": _string(claims, "sub"),
            "aud": aud,
            "client_id": _string(claims, "client_id"),
            "jti": _string(claims, "jti"),
            "exp": exp,
            "iat": iat,
            "nbf": nbf,
            "scopes": frozenset(scope.split()) if scope else frozenset(),
            "act": None if act is None else MappingProxyType(act),
        }

    def _sender_constraint(
        self,
        token: str,
        claims: Mapping[str, Any],
        request: _Request,
        now: float,
    ) -> tuple[int, str, str, DPoPProof | None]:
        """RFC 9449 section 7.1 and RFC 8705 section 3; returns the observed
        boundary, its reason, the presentation kind and the DPoP proof."""
        cnf = claims.get("cnf") or {}
        jkt = cnf.get("jkt")
        x5t = cnf.get("x5t#S256")
        if jkt is not None and not isinstance(jkt, str):
            raise InvalidClaims(detail="cnf.jkt is not a string")
        if x5t is not None and not isinstance(x5t, str):
            raise InvalidClaims(detail="cnf.x5t#S256 is not a string")

        boundary, reason, kind = 1, "bearer token restricted to its audience", "bearer"
        proof = None
        if jkt is not None:
            if request.presentation != "dpop" or request.dpop_proof is None:
                raise ProofRequired(detail="DPoP-bound token without a DPoP proof")
            if request.method is None or request.url is None:
                raise ValueError("a DPoP presentation needs http_method and http_url")
            proof = self.dpop.verify(
                request.dpop_proof,
                method=request.method,
                url=request.url,
                access_token=token,
                jkt=jkt,
                now=now,
            )
            kind = "dpop"
            if proof.non_replayable:
                boundary, reason = 3, "DPoP proof checked against the replay cache"
            else:
                boundary, reason = 2, "DPoP proof checked, replay window open"
        elif request.presentation == "dpop":
            # RFC 9449 section 7.1: the DPoP scheme is for DPoP-bound tokens.
            raise InvalidDPoPProof(detail="token is not DPoP-bound")

        if x5t is not None:
            if request.client_cert_der is None:
                raise ProofRequired(detail="certificate-bound token without a cert")
            thumb = _b64url(hashlib.sha256(request.client_cert_der).digest())
            if not hmac.compare_digest(thumb, x5t):
                raise CertificateMismatch()
            if kind == "bearer":
                kind = "mtls"
            boundary, reason = 3, "client certificate of the live TLS handshake"
        return boundary, reason, kind, proof


# -- claim readers ----------------------------------------------------------


@dataclass(frozen=True)
class _Levels:
    mial: int
    maal: int
    mial_vector: dict[str, int]
    maal_vector: dict[str, int]
    appraised_at: int
    evidence: tuple[EvidenceRef, ...]
    credential: str | None
    policy_version: str | None


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _load_object(segment: str, what: str) -> dict[str, Any]:
    try:
        value = strict_json(b64url_decode(segment))
    except (ValueError, RecursionError):
        raise MalformedToken(detail=f"{what} is not strict UTF-8 JSON") from None
    if not isinstance(value, dict):
        raise MalformedToken(detail=f"{what} is not a JSON object")
    return value


def _string(claims: Mapping[str, Any], name: str) -> str:
    value = claims.get(name)
    if not isinstance(value, str) or not value:
        raise InvalidClaims(detail=f"{name} missing or not a string")
    return value


def _numeric_date(claims: Mapping[str, Any], name: str) -> int:
    # RFC 7519 section 2 allows fractions, RFC 9068 tokens never use them:
    # a float, a bool or a string here is a malformed or forged token.
    value = claims.get(name)
    if type(value) is not int or not 0 <= value <= _MAX_SAFE_INT:
        raise InvalidClaims(detail=f"{name} missing or not an integer time")
    return value


def _audience(claims: Mapping[str, Any]) -> tuple[str, ...]:
    aud = claims.get("aud")
    if isinstance(aud, str) and aud:
        return (aud,)
    if isinstance(aud, list) and aud and all(isinstance(a, str) and a for a in aud):
        return tuple(aud)
    raise InvalidClaims(detail="aud missing or not a string or array of strings")


def _level(claims: Mapping[str, Any], name: str, top: int) -> int:
    value = claims.get(name)
    if type(value) is not int or not 0 <= value <= top:
        raise InvalidClaims(detail=f"{name} missing or not an integer 0..{top}")
    return value


def _optional_string(data: Mapping[str, Any], name: str) -> str | None:
    value = data.get(name)
    if value is not None and not isinstance(value, str):
        raise InvalidClaims(detail=f"assurance_levels.{name} is not a string")
    return value


def _evidence(data: Mapping[str, Any]) -> tuple[EvidenceRef, ...]:
    raw = data.get("evidence", [])
    if not isinstance(raw, list):
        raise InvalidClaims(detail="assurance_levels.evidence is not an array")
    out = []
    for item in raw:
        if not isinstance(item, dict):
            raise InvalidClaims(detail="evidence entry is not an object")
        kind, digest = item.get("kind"), item.get("digest")
        if not isinstance(kind, str) or not isinstance(digest, str):
            raise InvalidClaims(detail="evidence entry lacks kind or digest")
        out.append(EvidenceRef(kind, digest))
    return tuple(out)


def _check_levels(
    claims: Mapping[str, Any], iat: int, leeway: int
) -> tuple[Scheme, _Levels]:
    """docs/levels.md, token claims: scheme known, vectors well-formed, and
    ``mial``/``maal`` equal to the levels the vectors yield."""
    data = claims.get("assurance_levels")
    if not isinstance(data, dict):
        raise InvalidClaims(detail="assurance_levels missing or not an object")
    scheme_id = data.get("scheme")
    if not isinstance(scheme_id, str):
        raise InvalidClaims(detail="assurance_levels.scheme missing")
    try:
        scheme = load_scheme(scheme_id)
    except KeyError:
        raise UnknownScheme() from None

    mial = _level(claims, "mial", scheme.mial.top)
    maal = _level(claims, "maal", scheme.maal.top)
    try:
        mial_vector = scheme.mial.check_vector(data.get("mial"))
        maal_vector = scheme.maal.check_vector(data.get("maal"))
    except ValueError as exc:
        raise InvalidClaims(detail=f"assurance_levels: {exc}") from None
    if overall(scheme, scheme.mial, mial_vector) != mial:
        raise LevelMismatch(detail="mial differs from its vector")
    if overall(scheme, scheme.maal, maal_vector) != maal:
        raise LevelMismatch(detail="maal differs from its vector")

    appraised_at = data.get("appraised_at")
    if type(appraised_at) is not int or not 0 <= appraised_at <= _MAX_SAFE_INT:
        raise InvalidClaims(detail="assurance_levels.appraised_at not an integer")
    if appraised_at > iat + leeway:
        raise IssuedInFuture(detail="appraisal later than issuance")

    return scheme, _Levels(
        mial,
        maal,
        mial_vector,
        maal_vector,
        appraised_at,
        _evidence(data),
        _optional_string(data, "credential"),
        _optional_string(data, "policy_version"),
    )
