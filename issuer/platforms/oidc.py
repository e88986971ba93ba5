"""Verification of platform-issued JWTs presented as RFC 8693 subject tokens.

Kubernetes projected service account tokens, GitHub Actions OIDC tokens and
any other OpenID-Connect-style issuer are all JWTs (RFC 7519) signed with JWS
(RFC 7515) by an issuer named in ``iss``; SPIFFE JWT-SVIDs follow the same
rules with the additions in ``spiffe.py``. ``TrustSources`` holds the
configured issuers and turns a token into a ``PlatformIdentity`` or raises
``EvidenceError`` with a fixed ``reason``.

The checks follow RFC 8725 (JWT Best Current Practices): the algorithm is
taken from an allow-list and must fit the key (section 3.1), the signature is
checked before any claim is trusted (section 3.3), ``iss`` and ``aud`` are
matched exactly (sections 3.8 and 3.9). Header parameters that name keys
(``jku``, ``x5u``, ``x5c``, ``jwk``) are never read (section 3.10): a key
chosen by the token would let any token vouch for itself, and a URL chosen
by the token would make the issuer fetch whatever an attacker names.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from jwt.api_jws import PyJWS
from jwt.exceptions import (
    InvalidAlgorithmError,
    InvalidKeyError,
    InvalidSignatureError,
    PyJWTError,
)

from issuer.config import ConfigError
from issuer.errors import EvidenceError
from issuer.platforms import spiffe
from issuer.platforms.keysource import (
    KeySource,
    RemoteJWKS,
    StaticKeys,
    VerificationKey,
    load_jwks_file,
    load_pem_file,
)
from verifier.keys import strict_json

__all__ = [
    "DEFAULT_ALGORITHMS",
    "EVIDENCE_KINDS",
    "PlatformIdentity",
    "TrustSources",
]

#: Evidence kind reported for each platform.
EVIDENCE_KINDS = {
    "kubernetes": "k8s_sa_token",
    "github_actions": "github_oidc",
    "spiffe": "spiffe_jwt_svid",
    "oidc": "oidc_token",
}
#: Algorithms a trust source accepts when its ``algorithms`` key is absent.
DEFAULT_ALGORITHMS = ("RS256", "ES256")

# RFC 7518 sections 3.3 to 3.5 and RFC 8037 section 3.1: the asymmetric
# signature algorithms. "none" and the HMAC family never appear here: no
# platform shares a secret with this issuer, and an HMAC keyed with a public
# key is the algorithm confusion RFC 8725 section 2.1 describes.
_SIGNATURE_ALGORITHMS = frozenset(
    {
        "RS256",
        "RS384",
        "RS512",
        "PS256",
        "PS384",
        "PS512",
        "ES256",
        "ES384",
        "ES512",
        "EdDSA",
    }
)

_CONFIG_KEYS = frozenset(
    {
        "platform",
        "issuer",
        "trust_domain",
        "audience",
        "jwks_file",
        "pem_file",
        "kid",
        "jwks_url",
        "allow_http",
        "algorithms",
        "max_lifetime",
        "ca_file",
        "cache_seconds",
    }
)
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")
_KEY_SOURCE_KEYS = ("jwks_file", "pem_file", "jwks_url")
_DEFAULT_CACHE_SECONDS = 300
_MAX_CACHE_SECONDS = 86400

# GitHub's OIDC token claims copied into attributes when present (GitHub docs,
# "About security hardening with OpenID Connect", token claims).
_GITHUB_CLAIMS = (
    "repository",
    "repository_owner",
    "workflow_ref",
    "job_workflow_ref",
    "ref",
    "sha",
    "workflow_sha",
    "event_name",
    "runner_environment",
)

# The signature check only; claims are checked here, after it, with the
# caller's pinned time. Short RSA keys raise instead of warning.
_JWS = PyJWS(options={"enforce_minimum_key_length": True})


@dataclass(frozen=True)
class PlatformIdentity:
    """A verified platform token, reduced to what the issuer needs.

    ``digest`` identifies the exact token text and is what may be logged;
    ``keys_managed`` is True only when the keys came from an https URL.
    """

    source: str
    platform: str
    evidence_kind: str
    subject: str
    issuer: str
    expires_at: int
    issued_at: int | None
    digest: str
    attributes: dict[str, str]
    keys_managed: bool


@dataclass(frozen=True)
class _Source:
    name: str
    platform: str
    issuer: str | None
    trust_domain: str | None
    audience: str
    algorithms: frozenset[str]
    max_lifetime: int | None
    keys: KeySource


@dataclass(frozen=True)
class _Token:
    text: str
    header: dict[str, Any]
    claims: dict[str, Any]


# Configuration.


def _get_str(table: Mapping[str, object], key: str, where: str) -> str | None:
    value = table.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: {key} must be a non-empty string")
    return value


def _get_positive_int(table: Mapping[str, object], key: str, where: str) -> int | None:
    value = table.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{where}: {key} must be a positive integer")
    return value


def _get_algorithms(
    table: Mapping[str, object], where: str, platform: str
) -> frozenset[str]:
    value = table.get("algorithms", list(DEFAULT_ALGORITHMS))
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where}: algorithms must be a non-empty list")
    for alg in value:
        if not isinstance(alg, str):
            raise ConfigError(f"{where}: algorithms must hold strings")
        if alg.lower() == "none" or alg.upper().startswith("HS"):
            raise ConfigError(f"{where}: algorithms must not contain {alg}")
        if alg not in _SIGNATURE_ALGORITHMS:
            raise ConfigError(f"{where}: algorithms has unknown algorithm {alg}")
        if platform == "spiffe" and alg not in spiffe.JWT_SVID_ALGORITHMS:
            raise ConfigError(f"{where}: algorithms: JWT-SVIDs cannot use {alg}")
    return frozenset(value)


def _resolve(path: str) -> Path:
    return Path(path).expanduser().resolve()


def _check_url(url: str, allow_http: bool, where: str) -> None:
    parts = urlsplit(url)
    if parts.scheme == "http" and not allow_http:
        raise ConfigError(f"{where}: jwks_url must be https (or set allow_http)")
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ConfigError(f"{where}: jwks_url must be an http(s) URL")
    if parts.username is not None or parts.password is not None or parts.fragment:
        raise ConfigError(f"{where}: jwks_url must not carry credentials or fragment")


def _remote_options_only_with_url(table: Mapping[str, object], where: str) -> None:
    for key in ("allow_http", "ca_file", "cache_seconds"):
        if key in table and "jwks_url" not in table:
            raise ConfigError(f"{where}: {key} applies only to jwks_url")
    if "kid" in table and "pem_file" not in table:
        raise ConfigError(f"{where}: kid applies only to pem_file")


def _build_remote(
    url: str, table: Mapping[str, object], where: str, platform: str
) -> RemoteJWKS:
    allow_http = table.get("allow_http", False)
    if not isinstance(allow_http, bool):
        raise ConfigError(f"{where}: allow_http must be true or false")
    _check_url(url, allow_http, where)

    ca_file = _get_str(table, "ca_file", where)
    ca_path = str(_resolve(ca_file)) if ca_file else None
    if ca_path is not None:
        try:
            ssl.create_default_context(cafile=ca_path)
        except (OSError, ssl.SSLError):
            raise ConfigError(
                f"{where}: ca_file is not a readable PEM CA bundle"
            ) from None

    cache = _get_positive_int(table, "cache_seconds", where) or _DEFAULT_CACHE_SECONDS
    if not 30 <= cache <= _MAX_CACHE_SECONDS:
        raise ConfigError(f"{where}: cache_seconds must be 30..{_MAX_CACHE_SECONDS}")
    uses = spiffe.BUNDLE_KEY_USES if platform == "spiffe" else frozenset({"sig"})
    return RemoteJWKS(url, ca_file=ca_path, cache_seconds=cache, uses=uses)


def _load_pinned(
    kind: str, path: str, table: Mapping[str, object], where: str, platform: str
) -> list[VerificationKey]:
    try:
        if kind == "pem_file":
            return [load_pem_file(_resolve(path), _get_str(table, "kid", where))]
        uses = spiffe.BUNDLE_KEY_USES if platform == "spiffe" else frozenset({"sig"})
        return load_jwks_file(_resolve(path), uses=uses)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {kind}: {exc}") from None


def _build_keys(
    table: Mapping[str, object], where: str, platform: str, algorithms: frozenset[str]
) -> KeySource:
    chosen = [key for key in _KEY_SOURCE_KEYS if key in table]
    if len(chosen) != 1:
        raise ConfigError(f"{where}: set exactly one of {', '.join(_KEY_SOURCE_KEYS)}")
    _remote_options_only_with_url(table, where)
    kind = chosen[0]
    location = _get_str(table, kind, where) or ""
    if kind == "jwks_url":
        return _build_remote(location, table, where, platform)

    keys = _load_pinned(kind, location, table, where, platform)
    if not any(key.algorithms & algorithms for key in keys):
        raise ConfigError(f"{where}: no pinned key fits the configured algorithms")
    return StaticKeys(keys)


def _build_source(name: str, table: object, issuer_url: str) -> _Source:
    where = f"trust_sources.{name}"
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where} must be a table")
    unknown = sorted(set(table) - _CONFIG_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]}")

    platform = _get_str(table, "platform", where)
    if platform not in EVIDENCE_KINDS:
        raise ConfigError(
            f"{where}: platform must be one of {', '.join(EVIDENCE_KINDS)}"
        )
    issuer = _get_str(table, "issuer", where)
    trust_domain = _get_str(table, "trust_domain", where)
    if platform == "spiffe":
        if issuer is not None:
            raise ConfigError(f"{where}: issuer does not apply to spiffe")
        if trust_domain is None:
            raise ConfigError(f"{where}: trust_domain is required for spiffe")
        try:
            spiffe.validate_trust_domain(trust_domain)
        except ValueError:
            raise ConfigError(
                f"{where}: trust_domain is not a trust domain name"
            ) from None
    else:
        if trust_domain is not None:
            raise ConfigError(f"{where}: trust_domain applies only to spiffe")
        if issuer is None:
            raise ConfigError(f"{where}: issuer is required")

    algorithms = _get_algorithms(table, where, platform)
    return _Source(
        name=name,
        platform=platform,
        issuer=issuer,
        trust_domain=trust_domain,
        audience=_get_str(table, "audience", where) or issuer_url,
        algorithms=algorithms,
        max_lifetime=_get_positive_int(table, "max_lifetime", where),
        keys=_build_keys(table, where, platform, algorithms),
    )


# Parsing (RFC 7515 section 5.2, steps 1 to 7).


class _NonCanonical(ValueError):
    """Valid base64url whose unused final bits are not zero."""


def _b64url(segment: str) -> bytes:
    # RFC 7515 section 2 uses base64url without padding. A final character
    # with unused bits set decodes to the same bytes as the canonical one;
    # refusing it keeps one text per token, so the digest of a token cannot
    # be changed without changing what was signed.
    if len(segment) % 4 == 1 or not _BASE64URL.fullmatch(segment):
        raise ValueError("not base64url")
    try:
        data = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except binascii.Error:
        raise ValueError("not base64url") from None
    if base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii") != segment:
        raise _NonCanonical("non-canonical base64url")
    return data


def _json_object(segment: str, part: str) -> dict[str, Any]:
    try:
        value = strict_json(_b64url(segment))
    except ValueError:
        raise EvidenceError(
            "malformed", f"The token {part} is not valid base64url JSON."
        ) from None
    if not isinstance(value, dict):
        raise EvidenceError("malformed", f"The token {part} is not a JSON object.")
    return value


def _parse(token: str, max_bytes: int) -> _Token:
    if not isinstance(token, str):
        raise EvidenceError("malformed", "The token is not a string.")
    # Every character takes at least one byte, so counting characters stops
    # oversized input before any other work; past the ASCII check below the
    # two counts are equal.
    if len(token) > max_bytes:
        raise EvidenceError("too_large", "The token is larger than allowed.")
    if not token.isascii():
        raise EvidenceError("malformed", "The token is not ASCII.")

    parts = token.split(".")
    if len(parts) != 3:
        raise EvidenceError("malformed", "The token is not a compact JWS.")
    header = _json_object(parts[0], "header")
    claims = _json_object(parts[1], "payload")
    try:
        _b64url(parts[2])
    except _NonCanonical:
        # The text differs from the encoding of any signature the issuer
        # produced; it is judged with the signature, after the key lookup.
        pass
    except ValueError:
        raise EvidenceError(
            "malformed", "The token signature is not base64url."
        ) from None
    return _Token(text=token, header=header, claims=claims)


def _check_header(header: Mapping[str, Any]) -> tuple[str, str | None]:
    """Return ``alg`` and ``kid`` after the header-only checks.

    RFC 8725 section 3.1: "none" and HMAC are refused whatever the
    configuration says. RFC 7515 section 4.1.11: a ``crit`` header lists
    extensions the recipient must understand, and none is understood here.
    """
    alg = header.get("alg")
    if not isinstance(alg, str):
        raise EvidenceError("malformed", "The token header has no alg.")
    if alg not in _SIGNATURE_ALGORITHMS:
        raise EvidenceError("alg_not_allowed", "The token algorithm is not allowed.")
    if "crit" in header:
        raise EvidenceError(
            "unsupported_crit", "The token has critical header extensions."
        )
    # RFC 7797 section 6 makes b64 valid only inside crit, refused just above.
    if "b64" in header:
        raise EvidenceError("malformed", "The token uses an unencoded payload.")
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise EvidenceError("malformed", "The token kid is not a string.")
    return alg, kid


def _check_signature(token: _Token, key: VerificationKey, alg: str) -> None:
    """Verify the JWS signature (RFC 7515 section 5.2, steps 7 and 8)."""
    try:
        _b64url(token.text.rsplit(".", 1)[1])
    except ValueError:
        raise EvidenceError(
            "bad_signature", "The token signature does not verify."
        ) from None
    try:
        _JWS.decode_complete(token.text, key=key.key, algorithms=[alg])
    except InvalidSignatureError:
        raise EvidenceError(
            "bad_signature", "The token signature does not verify."
        ) from None
    except InvalidAlgorithmError:
        raise EvidenceError(
            "alg_not_allowed", "The token algorithm is not allowed."
        ) from None
    except InvalidKeyError:
        raise EvidenceError(
            "bad_signature", "The trusted key cannot verify this token."
        ) from None
    except PyJWTError:
        raise EvidenceError("malformed", "The token is not a valid JWS.") from None


# Claims (RFC 7519 section 4.1).


def _int_claim(claims: Mapping[str, Any], name: str) -> int | None:
    value = claims.get(name)
    if value is None:
        return None
    # NumericDate allows fractions (RFC 7519 section 2); none of the platforms
    # here emits them, and refusing them keeps every comparison exact.
    if isinstance(value, bool) or not isinstance(value, int):
        raise EvidenceError("malformed", f"The {name} claim is not an integer.")
    return value


def _str_claim(claims: Mapping[str, Any], name: str) -> str | None:
    value = claims.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise EvidenceError("malformed", f"The {name} claim is not a string.")
    return value


def _check_times(
    claims: Mapping[str, Any], source: _Source, now: float, skew: int
) -> tuple[int, int | None]:
    """Check ``exp``, ``nbf`` and ``iat`` (RFC 7519 sections 4.1.4 to 4.1.6)."""
    exp = _int_claim(claims, "exp")
    nbf = _int_claim(claims, "nbf")
    iat = _int_claim(claims, "iat")
    if exp is None:
        raise EvidenceError("malformed", "The token has no exp claim.")
    if now >= exp + skew:
        raise EvidenceError("expired", "The token has expired.")
    if nbf is not None and now < nbf - skew:
        raise EvidenceError("not_yet_valid", "The token is not valid yet.")
    if iat is not None and iat > now + skew:
        raise EvidenceError("issued_in_future", "The token was issued in the future.")
    if source.max_lifetime is not None:
        if iat is None:
            raise EvidenceError(
                "lifetime_too_long", "The token has no iat to bound its lifetime."
            )
        if exp - iat > source.max_lifetime:
            raise EvidenceError(
                "lifetime_too_long", "The token lifetime is longer than allowed."
            )
    return exp, iat


def _check_audience(claims: Mapping[str, Any], expected: str) -> None:
    """Check ``aud`` (RFC 7519 section 4.1.3, RFC 8725 section 3.9)."""
    aud = claims.get("aud")
    if aud is None:
        raise EvidenceError("wrong_audience", "The token has no audience.")
    values = [aud] if isinstance(aud, str) else aud
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise EvidenceError(
            "malformed", "The aud claim is not a string or string array."
        )
    if expected not in values:
        raise EvidenceError(
            "wrong_audience", "The token is meant for another audience."
        )


def _string_attributes(
    claims: Mapping[str, Any], names: tuple[str, ...]
) -> dict[str, str]:
    out: dict[str, str] = {}
    for name in names:
        value = _str_claim(claims, name)
        if value is not None:
            out[name] = value
    return out


def _named_object(
    container: Mapping[str, Any], key: str
) -> tuple[str, str | None] | None:
    """``name`` and ``uid`` of a ``kubernetes.io`` member such as ``pod``."""
    value = container.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise EvidenceError(
            "malformed", f"The kubernetes.io {key} member is not an object."
        )
    name = _str_claim(value, "name")
    if not name:
        raise EvidenceError("malformed", f"The kubernetes.io {key} member has no name.")
    return name, _str_claim(value, "uid")


def _kubernetes_attributes(claims: Mapping[str, Any], subject: str) -> dict[str, str]:
    """Map the ``kubernetes.io`` claim of a projected service account token.

    Kubernetes (service account token volume projection, TokenRequest API)
    puts the namespace and the service account, pod, node or secret the
    token is bound to in this claim, and sets ``sub`` to
    ``system:serviceaccount:NAMESPACE:NAME``; the two must agree.
    """
    k8s = claims.get("kubernetes.io")
    if not isinstance(k8s, dict):
        raise EvidenceError("malformed", "The token has no kubernetes.io claim.")
    namespace = _str_claim(k8s, "namespace")
    account = _named_object(k8s, "serviceaccount")
    if not namespace or account is None:
        raise EvidenceError(
            "malformed", "The kubernetes.io claim lacks namespace or account."
        )
    if subject != f"system:serviceaccount:{namespace}:{account[0]}":
        raise EvidenceError("malformed", "The sub claim does not match kubernetes.io.")

    out = {"namespace": namespace, "service_account": account[0]}
    if account[1] is not None:
        out["service_account_uid"] = account[1]
    pod = _named_object(k8s, "pod")
    if pod is not None:
        out["pod"] = pod[0]
        if pod[1] is not None:
            out["pod_uid"] = pod[1]
    node = _named_object(k8s, "node")
    if node is not None:
        out["node"] = node[0]
    return out


def _subject(claims: Mapping[str, Any]) -> str:
    """The ``sub`` claim (RFC 7519 section 4.1.2), required and non-empty."""
    subject = _str_claim(claims, "sub")
    if not subject:
        raise EvidenceError("malformed", "The token has no sub claim.")
    # The subject becomes the access token's sub and an audit field: no
    # control characters, no lone surrogates (not encodable as UTF-8), and a
    # bounded length.
    if len(subject) > 255 or not subject.isprintable():
        raise EvidenceError("malformed", "The sub claim is not a printable string.")
    try:
        subject.encode("utf-8")
    except UnicodeEncodeError:
        raise EvidenceError(
            "malformed", "The sub claim is not valid Unicode."
        ) from None
    return subject


def _spiffe_identity(subject: str, source: _Source) -> tuple[str, dict[str, str]]:
    """Issuer and attributes of a JWT-SVID (JWT-SVID section 3.1)."""
    try:
        svid = spiffe.parse_spiffe_id(subject)
    except ValueError:
        raise EvidenceError("malformed", "The sub claim is not a SPIFFE ID.") from None
    if svid.trust_domain != source.trust_domain:
        raise EvidenceError("unknown_issuer", "The SPIFFE trust domain is not trusted.")
    return f"spiffe://{svid.trust_domain}", spiffe.svid_attributes(svid)


class TrustSources:
    """The configured platform issuers and the verification of their tokens.

    ``config`` maps each trust source name to its table (see
    ``docs/platforms.md``). ``audience`` defaults to ``issuer_url``;
    ``clock_skew`` (default 60 s) is the leeway for ``exp``, ``nbf`` and
    ``iat``; tokens above ``max_token_bytes`` (default 16384) are refused
    unparsed. Pinned key files are read here; key URLs are fetched on first
    use. Raises ``ConfigError`` naming the source and key.
    """

    def __init__(
        self,
        config: Mapping[str, Mapping[str, object]],
        *,
        issuer_url: str,
        clock_skew: int = 60,
        max_token_bytes: int = 16384,
    ) -> None:
        if (
            isinstance(clock_skew, bool)
            or not isinstance(clock_skew, int)
            or clock_skew < 0
        ):
            raise ConfigError("clock_skew must be a non-negative integer")
        if isinstance(max_token_bytes, bool) or not isinstance(max_token_bytes, int):
            raise ConfigError("max_token_bytes must be a positive integer")
        if max_token_bytes <= 0:
            raise ConfigError("max_token_bytes must be a positive integer")
        if not isinstance(config, Mapping):
            raise ConfigError("trust_sources must be a table")
        if not isinstance(issuer_url, str) or not issuer_url:
            raise ConfigError("issuer_url must be a non-empty string")
        self._skew = clock_skew
        self._max_bytes = max_token_bytes
        self._sources: dict[str, _Source] = {}
        self._by_issuer: dict[str, _Source] = {}
        self._by_trust_domain: dict[str, _Source] = {}
        for name, table in config.items():
            if not isinstance(name, str) or not name:
                raise ConfigError("trust_sources: a source name is empty")
            self._add(_build_source(name, table, issuer_url))

    def _add(self, source: _Source) -> None:
        where = f"trust_sources.{source.name}"
        # Choosing the source from the unverified token is only safe when the
        # choice is unambiguous: one issuer, one trust domain, one source.
        if source.issuer is not None:
            if source.issuer in self._by_issuer:
                raise ConfigError(f"{where}: issuer is already used by another source")
            self._by_issuer[source.issuer] = source
        if source.trust_domain is not None:
            if source.trust_domain in self._by_trust_domain:
                raise ConfigError(
                    f"{where}: trust_domain is already used by another source"
                )
            self._by_trust_domain[source.trust_domain] = source
        self._sources[source.name] = source

    def names(self) -> list[str]:
        """The configured trust source names, sorted."""
        return sorted(self._sources)

    def verify(self, token: str, now: float) -> PlatformIdentity:
        """Verify ``token`` at time ``now`` (seconds since the epoch).

        Applies RFC 7515 section 5.2 and RFC 7519 section 7.2 with the
        restrictions of RFC 8725 section 3, plus the JWT-SVID rules for
        SPIFFE sources. ``now`` is the only clock used for token validity.
        Raises ``EvidenceError``; its ``reason`` is one of ``too_large``,
        ``malformed``, ``alg_not_allowed``, ``unsupported_crit``,
        ``unknown_issuer``, ``unknown_kid``, ``fetch_failed``,
        ``bad_signature``, ``expired``, ``not_yet_valid``,
        ``issued_in_future``, ``lifetime_too_long`` or ``wrong_audience``.
        """
        parsed = _parse(token, self._max_bytes)
        alg, kid = _check_header(parsed.header)
        source = self._select(parsed.claims)
        if alg not in source.algorithms:
            raise EvidenceError(
                "alg_not_allowed", "The token algorithm is not allowed here."
            )
        if source.platform == "spiffe":
            try:
                spiffe.check_typ(parsed.header)
            except ValueError:
                raise EvidenceError(
                    "malformed", "The JWT-SVID typ is not JWT or JOSE."
                ) from None

        key = source.keys.find(kid, alg)
        _check_signature(parsed, key, alg)

        return self._identity(parsed, source, now)

    def _select(self, claims: Mapping[str, Any]) -> _Source:
        """Choose the trust source from the still unverified claims.

        ``iss`` names the issuer (RFC 7519 section 4.1.1); a JWT-SVID may
        lack it, so the trust domain of its ``sub`` names the bundle instead.
        Nothing else is read before the signature is checked.
        """
        iss = _str_claim(claims, "iss")
        if iss is not None and iss in self._by_issuer:
            return self._by_issuer[iss]
        domain = spiffe.trust_domain_hint(claims.get("sub"))
        if domain is not None and domain in self._by_trust_domain:
            return self._by_trust_domain[domain]
        raise EvidenceError("unknown_issuer", "The token issuer is not trusted.")

    def _identity(self, token: _Token, source: _Source, now: float) -> PlatformIdentity:
        claims = token.claims
        exp, iat = _check_times(claims, source, now, self._skew)
        _check_audience(claims, source.audience)

        if source.platform == "spiffe":
            subject = _subject(claims)
            issuer, attributes = _spiffe_identity(subject, source)
        else:
            # RFC 8725 section 3.8: the issuer the keys belong to must be the
            # issuer the token names, compared exactly.
            iss = _str_claim(claims, "iss")
            if iss is None or iss != source.issuer:
                raise EvidenceError(
                    "unknown_issuer", "The token issuer is not trusted."
                )
            subject = _subject(claims)
            issuer = iss
            attributes = self._attributes(source.platform, claims, subject)

        return PlatformIdentity(
            source=source.name,
            platform=source.platform,
            evidence_kind=EVIDENCE_KINDS[source.platform],
            subject=subject,
            issuer=issuer,
            expires_at=exp,
            issued_at=iat,
            digest="sha-256:" + hashlib.sha256(token.text.encode("ascii")).hexdigest(),
            attributes=attributes,
            keys_managed=source.keys.managed,
        )

    @staticmethod
    def _attributes(
        platform: str, claims: Mapping[str, Any], subject: str
    ) -> dict[str, str]:
        if platform == "kubernetes":
            return _kubernetes_attributes(claims, subject)
        if platform == "github_actions":
            return _string_attributes(claims, _GITHUB_CLAIMS)
        return {}
