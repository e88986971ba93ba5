"""Issuer keys: RFC 8414 metadata, JWK Set fetching and caching, key parsing.

Keys are parsed once, when a key set arrives, into ``VerificationKey``
values holding a ready ``cryptography`` public key and the algorithms it may
verify; the hot path of token verification is then one dict lookup.

Fetching uses ``urllib.request`` only (the verifier installs with PyJWT and
cryptography alone), follows no redirects, bounds time and size, and refuses
plain http unless ``allow_http=True``.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from jwt.exceptions import PyJWTError

from .errors import (
    InsecureTransport,
    InvalidKeySet,
    InvalidMetadata,
    KeyFetchError,
    KeySourceError,
    UnknownKeyId,
)

__all__ = [
    "SUPPORTED_ALGORITHMS",
    "KeySource",
    "RemoteKeySource",
    "StaticKeySource",
    "VerificationKey",
    "b64url_decode",
    "check_url",
    "fetch_json",
    "fetch_metadata",
    "jwk_thumbprint",
    "metadata_url",
    "parse_jwk",
    "parse_jwks",
    "strict_json",
]

#: Every asymmetric JWS algorithm the library can verify (RFC 7518 section
#: 3.1, RFC 8037 section 3.1). HMAC and ``none`` are absent on purpose: a
#: relying party never shares a secret with the issuer (RFC 8725 section 3.2).
SUPPORTED_ALGORITHMS = frozenset(
    {
        "ES256",
        "ES384",
        "ES512",
        "EdDSA",
        "PS256",
        "PS384",
        "PS512",
        "RS256",
        "RS384",
        "RS512",
    }
)

_EC_CURVES = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
_RSA_ALGS = frozenset({"PS256", "PS384", "PS512", "RS256", "RS384", "RS512"})
_RSA_MIN_BITS = 2048
# Private members of RFC 7518 section 6 keys; a published key carrying one
# is an operator mistake and is not used.
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_THUMBPRINT_MEMBERS = {
    "EC": ("crv", "kty", "x", "y"),
    "RSA": ("e", "kty", "n"),
    "OKP": ("crv", "kty", "x"),
}

MAX_DOCUMENT_BYTES = 256 * 1024
WELL_KNOWN = "/.well-known/oauth-authorization-server"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """Return the RFC 7638 section 3 SHA-256 thumbprint of a public JWK.

    Raises ``ValueError`` for an unsupported ``kty`` or a required member
    that is missing or not a string.
    """
    members = _THUMBPRINT_MEMBERS.get(jwk.get("kty"))  # type: ignore[arg-type]
    if members is None:
        raise ValueError("unsupported kty")
    subset: dict[str, str] = {}
    for name in members:
        value = jwk.get(name)
        if not isinstance(value, str):
            raise ValueError(f"JWK member {name} missing or not a string")
        subset[name] = value
    canonical = json.dumps(subset, separators=(",", ":"), sort_keys=True)
    return _b64url(hashlib.sha256(canonical.encode("utf-8")).digest())


@dataclass(frozen=True)
class VerificationKey:
    """A parsed public key and the JWS algorithms it may verify.

    ``key`` is a ``cryptography`` public key object, ``thumbprint`` its
    RFC 7638 thumbprint, ``kid`` the key id published with it (if any).
    """

    kid: str | None
    kty: str
    algorithms: frozenset[str]
    key: Any
    thumbprint: str


def parse_jwk(jwk: Mapping[str, Any], allowed: frozenset[str]) -> VerificationKey:
    """Parse one public JWK (RFC 7517 section 4) into a ``VerificationKey``.

    The algorithms a key may verify follow from its type and curve and, when
    present, its ``alg`` member, intersected with ``allowed``: an EC P-256 key
    only ever verifies ES256, whatever a token header says (RFC 8725 section
    3.1). Raises ``ValueError`` when the key is private, of an unsupported
    type, too small, or fits no allowed algorithm.
    """
    if any(member in jwk for member in _PRIVATE_MEMBERS):
        raise ValueError("key set holds private key material")
    use = jwk.get("use")
    if use is not None and use != "sig":
        raise ValueError("key is not a signature key")
    kid = jwk.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise ValueError("kid is not a string")
    kty = jwk.get("kty")
    data = dict(jwk)
    key: Any

    if kty == "EC":
        alg = _EC_CURVES.get(jwk.get("crv"))  # type: ignore[arg-type]
        if alg is None:
            raise ValueError("unsupported curve")
        algs = frozenset({alg})
        key = ECAlgorithm.from_jwk(data)
    elif kty == "OKP":
        if jwk.get("crv") != "Ed25519":
            raise ValueError("unsupported curve")
        algs = frozenset({"EdDSA"})
        key = OKPAlgorithm.from_jwk(data)
    elif kty == "RSA":
        algs = _RSA_ALGS
        key = RSAAlgorithm.from_jwk(data)
        if key.key_size < _RSA_MIN_BITS:
            raise ValueError("RSA key shorter than 2048 bits")
    else:
        raise ValueError("unsupported kty")

    declared = jwk.get("alg")
    if declared is not None:
        algs = algs & {declared}
    algs = algs & allowed
    if not algs:
        raise ValueError("key fits no allowed algorithm")
    public = key.public_key() if hasattr(key, "private_bytes") else key
    return VerificationKey(kid, str(kty), algs, public, jwk_thumbprint(jwk))


def parse_jwks(
    jwks: Mapping[str, Any], allowed: frozenset[str]
) -> dict[str | None, VerificationKey]:
    """Parse a JWK Set (RFC 7517 section 5) into keys by ``kid``.

    Keys that cannot be used (private, encryption-only, unsupported) are
    skipped. Keys without a ``kid`` are kept under ``None`` only when the set
    holds a single key. Raises ``InvalidKeySet`` when the set is malformed,
    repeats a ``kid``, or leaves no usable key.
    """
    keys = jwks.get("keys") if isinstance(jwks, Mapping) else None
    if not isinstance(keys, list):
        raise InvalidKeySet(detail="JWK Set has no keys array")
    out: dict[str | None, VerificationKey] = {}
    for entry in keys:
        if not isinstance(entry, Mapping):
            raise InvalidKeySet(detail="JWK Set entry is not an object")
        try:
            parsed = parse_jwk(entry, allowed)
        except (ValueError, TypeError, KeyError, PyJWTError):
            # One unusable key (a future algorithm, an encryption key) must
            # not take the usable ones down with it.
            continue
        if parsed.kid in out:
            raise InvalidKeySet(detail="JWK Set repeats a kid")
        out[parsed.kid] = parsed
    if None in out and len(out) > 1:
        del out[None]
    if not out:
        raise InvalidKeySet(detail="JWK Set holds no usable signature key")
    return out


# -- fetching -------------------------------------------------------------


def check_url(url: str, *, allow_http: bool, what: str = "URL") -> None:
    """Refuse anything but an absolute https URL (or http with ``allow_http``).

    Raises ``InsecureTransport``. URLs with user info or a fragment are
    refused too: neither belongs in an issuer or key set location.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise InsecureTransport(detail=f"{what} is not an absolute http(s) URL")
    if parts.scheme == "http" and not allow_http:
        raise InsecureTransport(detail=f"{what} uses plain http; allow_http is off")
    if parts.username is not None or parts.fragment:
        raise InsecureTransport(detail=f"{what} has user info or a fragment")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # A redirect could lead a key fetch to another host (or to plain http);
    # metadata and key sets are fetched from exactly the configured place.
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


@functools.lru_cache(maxsize=16)
def _opener(ca_file: str | None) -> urllib.request.OpenerDirector:
    """The URL opener: no redirects; with ``ca_file``, https servers are
    checked against that PEM CA bundle instead of the system's."""
    if ca_file is None:
        return urllib.request.build_opener(_NoRedirect())
    context = ssl.create_default_context(cafile=ca_file)
    return urllib.request.build_opener(
        _NoRedirect(), urllib.request.HTTPSHandler(context=context)
    )


def _why(exc: BaseException) -> str:
    """A short reason for a failed fetch, e.g. the certificate check that
    failed; never request data."""
    reason = getattr(exc, "reason", None)
    cause = reason if isinstance(reason, BaseException) else exc
    message = getattr(cause, "verify_message", None) or getattr(cause, "strerror", None)
    name = type(cause).__name__
    return f"{name}: {str(message)[:120]}" if message else name


def _max_age(cache_control: str | None) -> int | None:
    """Return the ``max-age`` of a Cache-Control header (RFC 9111 section
    5.2.2.1), 0 for ``no-store``/``no-cache``, ``None`` when absent."""
    if not cache_control:
        return None
    for part in cache_control.split(","):
        name, _, value = part.strip().partition("=")
        name = name.strip().lower()
        if name in ("no-store", "no-cache"):
            return 0
        if name == "max-age":
            value = value.strip().strip('"')
            if value.isdigit() and len(value) <= 10:
                return int(value)
    return None


def fetch_json(
    url: str,
    *,
    allow_http: bool,
    timeout: float = 5.0,
    max_bytes: int = MAX_DOCUMENT_BYTES,
    method: str = "GET",
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    error: type[KeySourceError] = KeyFetchError,
    ca_file: str | None = None,
) -> tuple[Any, int | None]:
    """Fetch a JSON document; return it with its Cache-Control max-age.

    ``ca_file`` is a PEM CA bundle for servers with a private CA. Raises
    ``InsecureTransport`` for a refused URL and ``error`` (by default
    ``KeyFetchError``) for network faults (the detail names the cause, such
    as a failed certificate check), non-200 answers, redirects, oversize or
    non-JSON bodies. Duplicate member names are refused.
    """
    check_url(url, allow_http=allow_http)
    request = urllib.request.Request(url, data=body, method=method)  # noqa: S310
    request.add_header("Accept", "application/json")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with _opener(ca_file).open(request, timeout=timeout) as response:
            status = response.status
            raw = response.read(max_bytes + 1)
            cache_control = response.headers.get("Cache-Control")
    except urllib.error.HTTPError as exc:
        raise error(detail=f"{url} answered HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise error(detail=f"{url} unreachable ({_why(exc)})") from None
    if status != 200:
        raise error(detail=f"{url} answered HTTP {status}")
    if len(raw) > max_bytes:
        raise error(detail=f"{url} answered more than {max_bytes} bytes")
    try:
        document = strict_json(raw)
    except ValueError:
        raise error(detail=f"{url} did not answer JSON") from None
    return document, _max_age(cache_control)


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        # RFC 8259 section 4 leaves duplicates to the parser; taking the last
        # (as Python does) lets two parsers read different claims from one
        # token, so they are refused outright (RFC 7515 section 5.2).
        raise ValueError("duplicate member name")
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# One decoder, built once: constructing a JSONDecoder per call costs more
# than decoding a token header.
_STRICT_DECODER = json.JSONDecoder(
    object_pairs_hook=_unique_members, parse_constant=_no_constant
)


def strict_json(raw: bytes | str) -> Any:
    """Decode UTF-8 JSON, refusing duplicate member names and NaN/Infinity.

    Bytes must be UTF-8 (RFC 8725 section 3.7); other encodings that
    ``json.loads`` would guess are refused. Raises ``ValueError``.
    """
    text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    try:
        return _STRICT_DECODER.decode(text)
    except RecursionError:
        # Deeply nested arrays exhaust the parser's recursion; a token never
        # legitimately nests like that.
        raise ValueError("JSON nested too deeply") from None


def b64url_decode(segment: str) -> bytes:
    """Decode unpadded base64url (RFC 7515 section 2).

    The caller has already checked the alphabet; a length that no encoding
    produces raises ``ValueError``.
    """
    if len(segment) % 4 == 1:
        raise ValueError("impossible base64url length")
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def metadata_url(issuer: str) -> str:
    """Return the RFC 8414 section 3.1 metadata URL of ``issuer``.

    The well-known suffix goes between host and path:
    ``https://a.example/t1`` gives
    ``https://a.example/.well-known/oauth-authorization-server/t1``.
    """
    parts = urllib.parse.urlsplit(issuer)
    path = parts.path.rstrip("/")
    return urllib.parse.urlunsplit(
        (parts.scheme, parts.netloc, WELL_KNOWN + path, "", "")
    )


def fetch_metadata(
    issuer: str, *, allow_http: bool, timeout: float = 5.0, ca_file: str | None = None
) -> dict[str, Any]:
    """Fetch and check the issuer's RFC 8414 metadata.

    Raises ``InvalidMetadata`` unless the document is an object whose
    ``issuer`` is identical to ``issuer`` (RFC 8414 section 3.3), and
    ``KeyFetchError`` or ``InsecureTransport`` as ``fetch_json`` does.
    """
    check_url(issuer, allow_http=allow_http, what="issuer")
    if urllib.parse.urlsplit(issuer).query:
        raise InsecureTransport(detail="issuer has a query component")
    document, _ = fetch_json(
        metadata_url(issuer), allow_http=allow_http, timeout=timeout, ca_file=ca_file
    )
    if not isinstance(document, dict):
        raise InvalidMetadata(detail="metadata is not a JSON object")
    if document.get("issuer") != issuer:
        raise InvalidMetadata(detail="metadata names another issuer")
    return document


# -- key sources ----------------------------------------------------------


class KeySource(Protocol):
    """Where a verifier finds the issuer's public keys."""

    def key_for(self, kid: str | None) -> VerificationKey:
        """Return the key with ``kid``; raise ``UnknownKeyId`` when there is
        none, or a ``KeySourceError`` when keys cannot be obtained."""
        ...


class StaticKeySource:
    """A fixed JWK Set, for offline use or pinned keys.

    Raises ``InvalidKeySet`` at construction when the set is unusable.
    """

    def __init__(
        self,
        jwks: Mapping[str, Any],
        algorithms: frozenset[str] = SUPPORTED_ALGORITHMS,
    ) -> None:
        self._keys = parse_jwks(jwks, algorithms)

    def key_for(self, kid: str | None) -> VerificationKey:
        """Return the key with ``kid`` or raise ``UnknownKeyId``."""
        key = self._keys.get(kid)
        if key is None:
            raise UnknownKeyId()
        return key


class RemoteKeySource:
    """The issuer's JWK Set, fetched over https and cached.

    Either ``jwks_uri`` is given, or it is read from the issuer's RFC 8414
    metadata on first use. Cache rules:

    - a key set is kept for its Cache-Control ``max-age``, bounded to
      ``min_ttl``..``max_ttl`` seconds; ``default_ttl`` when the header is
      absent;
    - a ``kid`` not in the cache triggers a refetch at most once per
      ``refetch_interval`` seconds, however many requests name unknown ids;
    - when a fetch fails, the last good keys stay in use and the next
      attempt waits ``refetch_interval`` seconds.

    ``clock`` is a monotonic clock, replaceable in tests.
    """

    def __init__(
        self,
        *,
        issuer: str | None = None,
        jwks_uri: str | None = None,
        allow_http: bool = False,
        algorithms: frozenset[str] = SUPPORTED_ALGORITHMS,
        timeout: float = 5.0,
        default_ttl: float = 300.0,
        min_ttl: float = 30.0,
        max_ttl: float = 86400.0,
        refetch_interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        ca_file: str | None = None,
    ) -> None:
        if issuer is None and jwks_uri is None:
            raise ValueError("give issuer or jwks_uri")
        if jwks_uri is not None:
            check_url(jwks_uri, allow_http=allow_http, what="jwks_uri")
        if issuer is not None:
            check_url(issuer, allow_http=allow_http, what="issuer")
        self.issuer = issuer
        self.jwks_uri = jwks_uri
        self.allow_http = allow_http
        self.algorithms = algorithms
        self.timeout = timeout
        self.default_ttl = default_ttl
        self.min_ttl = min_ttl
        self.max_ttl = max_ttl
        self.refetch_interval = refetch_interval
        self.clock = clock
        self.ca_file = ca_file
        self.metadata: dict[str, Any] | None = None
        self._keys: dict[str | None, VerificationKey] = {}
        self._expires = float("-inf")
        self._last_attempt = float("-inf")
        self._lock = threading.Lock()

    def key_for(self, kid: str | None) -> VerificationKey:
        """Return the key with ``kid``, fetching per the cache rules.

        Raises ``UnknownKeyId`` when the key set lacks it after the allowed
        refetch, ``KeyFetchError`` (or another ``KeySourceError``) when no key
        set could ever be fetched.
        """
        now = self.clock()
        if now >= self._expires:
            self._refresh(now, expired=True)
        key = self._keys.get(kid)
        if key is None and now >= self._last_attempt + self.refetch_interval:
            self._refresh(now, expired=False)
            key = self._keys.get(kid)
        if key is None:
            # Another thread may be fetching right now (it set the last
            # attempt time, so this one did not fetch); wait for that fetch
            # and look again rather than refuse a key it is bringing.
            with self._lock:
                key = self._keys.get(kid)
        if key is None:
            if not self._keys:
                raise KeyFetchError(detail="no key set fetched yet")
            raise UnknownKeyId()
        return key

    def refresh(self) -> None:
        """Fetch the key set now, regardless of cache state.

        Raises ``KeySourceError`` subclasses when the fetch fails; the keys
        held before stay in use.
        """
        with self._lock:
            self._fetch(self.clock())

    def _refresh(self, now: float, *, expired: bool) -> None:
        with self._lock:
            # Another thread may have fetched while this one waited for the
            # lock; the conditions are checked again under it.
            if expired and now < self._expires:
                return
            if not expired and now < self._last_attempt + self.refetch_interval:
                return
            try:
                self._fetch(now)
            except (KeyFetchError, InvalidKeySet, InvalidMetadata, InsecureTransport):
                # The next attempt waits one interval, so an issuer outage
                # cannot make every request wait for a timeout.
                self._expires = now + self.refetch_interval
                if not self._keys:
                    raise
                # Otherwise the last good keys stay in use: an outage must
                # not turn into refusing every valid token.

    def _fetch(self, now: float) -> None:
        self._last_attempt = now
        uri = self._resolve_jwks_uri()
        document, max_age = fetch_json(
            uri, allow_http=self.allow_http, timeout=self.timeout, ca_file=self.ca_file
        )
        if not isinstance(document, dict):
            raise InvalidKeySet(detail="key set is not a JSON object")
        self._keys = parse_jwks(document, self.algorithms)
        ttl = self.default_ttl if max_age is None else float(max_age)
        ttl = min(max(ttl, self.min_ttl), self.max_ttl)
        self._expires = now + ttl

    def _resolve_jwks_uri(self) -> str:
        if self.jwks_uri is not None:
            return self.jwks_uri
        assert self.issuer is not None
        metadata = fetch_metadata(
            self.issuer,
            allow_http=self.allow_http,
            timeout=self.timeout,
            ca_file=self.ca_file,
        )
        uri = metadata.get("jwks_uri")
        if not isinstance(uri, str):
            raise InvalidMetadata(detail="metadata has no jwks_uri")
        check_url(uri, allow_http=self.allow_http, what="jwks_uri")
        self.metadata = metadata
        self.jwks_uri = uri
        return uri
