"""Verification keys for platform tokens: pinned files and fetched JWK Sets.

A trust source holds exactly one key source. ``StaticKeys`` wraps keys read
once from a JWKS file (RFC 7517 section 5) or a PEM public key or certificate;
``RemoteJWKS`` fetches a JWK Set over HTTPS and caches it. Both hand out
``VerificationKey`` values that already know which JWS algorithms they may
verify, so a token's ``alg`` header can never pick a different algorithm
family than the key was made for (RFC 8725 section 3.1).

Only public keys are ever held: a JWK with private or symmetric members makes
the whole document unacceptable, since an issuer that publishes its private
key can no longer vouch for anything (RFC 7518 sections 6.2.2, 6.3.2 and 6.4
and RFC 8037 section 2 name those members).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import requests
import urllib3
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from jwt.api_jwk import PyJWK
from jwt.exceptions import PyJWTError

from issuer.config import ConfigError
from issuer.errors import EvidenceError

__all__ = [
    "FETCH_BUDGET",
    "MAX_JWKS_BYTES",
    "MIN_REFRESH_INTERVAL",
    "KeySource",
    "PublicKey",
    "RemoteJWKS",
    "StaticKeys",
    "VerificationKey",
    "keys_from_jwks",
    "load_jwks_file",
    "load_pem_file",
]

_log = logging.getLogger(__name__)

#: Seconds a whole fetch (connect, headers and body) may take.
FETCH_BUDGET = 5.0
#: Largest JWK Set body read from the network, bytes.
MAX_JWKS_BYTES = 1024 * 1024
#: Shortest time between two fetches of one URL, seconds; also the floor for
#: a ``Cache-Control: max-age`` that asks for less.
MIN_REFRESH_INTERVAL = 30.0

PublicKey = (
    rsa.RSAPublicKey
    | ec.EllipticCurvePublicKey
    | ed25519.Ed25519PublicKey
    | ed448.Ed448PublicKey
)

_PUBLIC_KEY_TYPES = (
    rsa.RSAPublicKey,
    ec.EllipticCurvePublicKey,
    ed25519.Ed25519PublicKey,
    ed448.Ed448PublicKey,
)

# RFC 7518 sections 6.3.2 (RSA), 6.2.2 (EC) and 6.4 (oct, where "k" is the
# secret itself), RFC 8037 section 2 (OKP).
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})

# PyJWT builds the key object from the JWK members alone; the name passed here
# only selects the parser for the key type. Which algorithms the key may then
# verify is decided by ``_algorithms_for`` below.
_PARSER_FOR_KTY = {"RSA": "RS256", "EC": "ES256", "OKP": "EdDSA"}

_EC_ALGORITHMS = {
    "secp256r1": "ES256",
    "secp384r1": "ES384",
    "secp521r1": "ES512",
}
_RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})

# RFC 7518 sections 3.3 and 3.5 require RSA keys of 2048 bits or more.
_MIN_RSA_BITS = 2048

_MAX_AGE = re.compile(r"(?:^|[\s,])max-age\s*=\s*\"?(\d+)\"?", re.IGNORECASE)
_NO_CACHE = re.compile(r"(?:^|[\s,])(?:no-store|no-cache)(?:$|[\s,=])", re.IGNORECASE)


@dataclass(frozen=True)
class VerificationKey:
    """One public key and the JWS algorithms it may verify.

    ``kid`` is ``None`` for a pinned PEM key without a configured key id;
    ``match_any`` marks such a key as the answer to every lookup.
    """

    kid: str | None
    key: PublicKey
    algorithms: frozenset[str]
    match_any: bool = False


class KeySource(Protocol):
    """Where a trust source gets its verification keys."""

    @property
    def managed(self) -> bool:
        """True only when the keys come from an https URL."""
        ...

    def find(self, kid: str | None, alg: str) -> VerificationKey:
        """Return the key for ``kid`` that may verify ``alg``.

        Raises ``EvidenceError`` with reason ``unknown_kid``,
        ``alg_not_allowed`` or ``fetch_failed``.
        """
        ...


def _algorithms_for(key: PublicKey, declared: object) -> frozenset[str]:
    """The JWS algorithms (RFC 7518 section 3.1) a key may verify.

    A JWK ``alg`` member narrows the set to that one algorithm, as RFC 7517
    section 4.4 intends; an ``alg`` that does not fit the key leaves it empty.
    """
    if isinstance(key, rsa.RSAPublicKey):
        fitting = _RSA_ALGORITHMS if key.key_size >= _MIN_RSA_BITS else frozenset()
    elif isinstance(key, ec.EllipticCurvePublicKey):
        name = _EC_ALGORITHMS.get(key.curve.name)
        fitting = frozenset({name}) if name else frozenset()
    else:
        fitting = frozenset({"EdDSA"})
    if declared is None:
        return fitting
    return fitting & {declared} if isinstance(declared, str) else frozenset()


def _public_key_from_jwk(jwk: Mapping[str, Any]) -> PublicKey | None:
    parser = _PARSER_FOR_KTY.get(str(jwk.get("kty")))
    if parser is None:
        return None
    try:
        key = PyJWK(dict(jwk), algorithm=parser).key
    except (PyJWTError, ValueError, TypeError):
        return None
    if isinstance(key, _PUBLIC_KEY_TYPES):
        return key
    return None


def _usable_for_signatures(jwk: Mapping[str, Any], uses: frozenset[str]) -> bool:
    use = jwk.get("use")
    if use is not None and use not in uses:
        return False
    ops = jwk.get("key_ops")
    return ops is None or (isinstance(ops, list) and "verify" in ops)


def keys_from_jwks(
    document: object, *, uses: frozenset[str] = frozenset({"sig"})
) -> list[VerificationKey]:
    """Read the usable public keys of a JWK Set (RFC 7517 section 5).

    Keys whose ``use`` is present and not in ``uses`` are skipped, as are key
    types and curves no JWS algorithm here can use and RSA keys below 2048
    bits. Raises ``ValueError`` when the document is not a JWK Set or any key
    carries private or symmetric members.
    """
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWK Set: no 'keys' array")
    entries: list[dict[str, Any]] = document["keys"]
    if not all(isinstance(jwk, dict) for jwk in entries):
        raise ValueError("not a JWK Set: a key is not an object")
    if any(_PRIVATE_MEMBERS & jwk.keys() for jwk in entries):
        raise ValueError("JWK Set holds private or symmetric key material")

    found: list[VerificationKey] = []
    for jwk in entries:
        kid = jwk.get("kid")
        if kid is not None and not isinstance(kid, str):
            continue
        if not _usable_for_signatures(jwk, uses):
            continue
        key = _public_key_from_jwk(jwk)
        if key is None:
            continue
        algorithms = _algorithms_for(key, jwk.get("alg"))
        if algorithms:
            found.append(VerificationKey(kid=kid, key=key, algorithms=algorithms))
    return found


def load_jwks_file(
    path: Path, *, uses: frozenset[str] = frozenset({"sig"})
) -> list[VerificationKey]:
    """Read a JWK Set file; raises ``ConfigError`` when it is unusable."""
    try:
        document = json.loads(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except (ValueError, RecursionError):
        raise ConfigError(f"{path} is not JSON") from None
    try:
        keys = keys_from_jwks(document, uses=uses)
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if not keys:
        raise ConfigError(f"{path} holds no usable signature verification key")
    return keys


def load_pem_file(path: Path, kid: str | None) -> VerificationKey:
    """Read one PEM public key or X.509 certificate (RFC 7468 sections 5, 13).

    Only the certificate's public key is used: its validity dates, issuer and
    extensions are not checked, because the key is pinned by configuration.
    Raises ``ConfigError``.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    key: object
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            key = x509.load_pem_x509_certificate(data).public_key()
        else:
            key = serialization.load_pem_public_key(data)
    except ValueError:
        raise ConfigError(f"{path} is not a PEM public key or certificate") from None
    if not isinstance(key, _PUBLIC_KEY_TYPES):
        raise ConfigError(f"{path} holds a key type no JWS algorithm here uses")
    algorithms = _algorithms_for(key, None)
    if not algorithms:
        raise ConfigError(f"{path} holds a key that is too short or of no JWS curve")
    return VerificationKey(
        kid=kid, key=key, algorithms=algorithms, match_any=kid is None
    )


def _select(
    keys: Iterable[VerificationKey], kid: str | None, alg: str
) -> VerificationKey:
    """Pick the key for a token header, or raise ``EvidenceError``.

    Without a ``kid`` only a source with exactly one key can answer; trying
    every key in turn would let a token choose among keys it should not know.
    """
    pool = list(keys)
    if len(pool) == 1 and (pool[0].match_any or kid is None):
        candidates = pool
    else:
        candidates = [k for k in pool if kid is not None and k.kid == kid]
    if not candidates:
        raise EvidenceError("unknown_kid", "No trusted key matches the token key id.")
    for key in candidates:
        if alg in key.algorithms:
            return key
    raise EvidenceError("alg_not_allowed", "The token algorithm does not fit its key.")


class StaticKeys:
    """Keys pinned by configuration; never refreshed, never managed."""

    def __init__(self, keys: Iterable[VerificationKey]) -> None:
        self._keys = tuple(keys)

    @property
    def managed(self) -> bool:
        """Always False: a pinned key does not rotate by itself."""
        return False

    def find(self, kid: str | None, alg: str) -> VerificationKey:
        """Return the pinned key for ``kid`` and ``alg`` (see ``KeySource``)."""
        return _select(self._keys, kid, alg)


class _FetchError(Exception):
    """A JWK Set fetch failed; the message names no key and no token."""


def _cache_ttl(header: str | None, configured: float) -> float:
    """Lifetime of a fetched set: the configured time or a shorter max-age.

    RFC 9111 section 5.2.2.1 defines ``max-age``; ``no-store`` and
    ``no-cache`` count as zero. The floor keeps a hostile or misconfigured
    server from turning every verification into a fetch.
    """
    if not header:
        return configured
    if _NO_CACHE.search(header):
        return MIN_REFRESH_INTERVAL
    match = _MAX_AGE.search(header)
    if match is None:
        return configured
    return max(min(float(match.group(1)), configured), MIN_REFRESH_INTERVAL)


def _read_body(response: requests.Response, deadline: float) -> bytes:
    length = response.headers.get("Content-Length")
    if length is not None and (not length.isdigit() or int(length) > MAX_JWKS_BYTES):
        raise _FetchError("JWK Set response is too large")
    # urllib3 before 2.3 has no read1; its read may wait for a full chunk.
    read = getattr(response.raw, "read1", None) or response.raw.read
    body = bytearray()
    while True:
        if time.monotonic() > deadline:
            raise _FetchError("JWK Set fetch took too long")
        # read1 makes at most one socket read, so the deadline is checked at
        # least once per read timeout even when the server trickles bytes.
        chunk = read(65536)
        if not chunk:
            return bytes(body)
        body += chunk
        if len(body) > MAX_JWKS_BYTES:
            raise _FetchError("JWK Set response is too large")


class RemoteJWKS:
    """A JWK Set fetched from a URL and cached (RFC 7517 section 5).

    The cache lives ``cache_seconds``, or less when the response carries a
    shorter ``Cache-Control: max-age``, and never less than 30 seconds. An
    unknown ``kid`` triggers a refetch at most once per 30 seconds, which is
    how a rotated-in key is picked up early. When a refetch fails the last
    good keys stay in use. Every fetch, whatever its outcome, waits at least
    30 seconds for the next one. Safe to share between threads: one lock
    guards the cache, and callers wait while a fetch is under way.

    ``clock`` measures cache age only; it is a monotonic clock, not the
    token validation time.
    """

    def __init__(
        self,
        url: str,
        *,
        ca_file: str | None = None,
        cache_seconds: float = 300.0,
        uses: frozenset[str] = frozenset({"sig"}),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        # A query string may carry an access key; the log gets the rest.
        self._url_for_log = urlsplit(url)._replace(query="", fragment="").geturl()
        self._verify: str | bool = ca_file if ca_file else True
        self._cache_seconds = float(cache_seconds)
        self._uses = uses
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: tuple[VerificationKey, ...] | None = None
        self._fresh_until = 0.0
        self._last_attempt: float | None = None
        self._worker: threading.Thread | None = None

    @property
    def managed(self) -> bool:
        """True when the URL is https, the only case that proves origin."""
        return self.url.lower().startswith("https://")

    def find(self, kid: str | None, alg: str) -> VerificationKey:
        """Return the key for ``kid`` and ``alg``, fetching when needed.

        Raises ``EvidenceError``: ``fetch_failed`` when no set was ever
        fetched, ``unknown_kid`` or ``alg_not_allowed`` otherwise.
        """
        with self._lock:
            now = self._clock()
            if now >= self._fresh_until and self._may_fetch(now):
                self._refresh(now)
            if self._keys is None:
                raise EvidenceError(
                    "fetch_failed", "The trusted key set is unavailable."
                )
            try:
                return _select(self._keys, kid, alg)
            except EvidenceError as exc:
                if exc.reason != "unknown_kid" or not self._may_fetch(now):
                    raise
            self._refresh(now)
            return _select(self._keys, kid, alg)

    def _may_fetch(self, now: float) -> bool:
        last = self._last_attempt
        return last is None or now - last >= MIN_REFRESH_INTERVAL

    def _refresh(self, now: float) -> None:
        self._last_attempt = now
        try:
            keys, ttl = self._fetch_within_budget()
        except _FetchError as exc:
            # The previous keys, if any, stay in use; the next attempt waits
            # for MIN_REFRESH_INTERVAL through _last_attempt.
            _log.warning(
                "JWK Set fetch failed",
                extra={
                    "fields": {
                        "jwks_url": self._url_for_log,
                        "error": str(exc),
                        "keeping_previous_keys": self._keys is not None,
                    }
                },
            )
            return
        self._keys = tuple(keys)
        self._fresh_until = now + ttl

    def _fetch_within_budget(self) -> tuple[list[VerificationKey], float]:
        """Run one fetch in a helper thread and wait at most the budget.

        ``requests`` bounds each socket operation, not the whole exchange; a
        server that trickles its headers could otherwise hold the lock, and
        every verification behind it, far longer than the budget. A helper
        thread that is still stuck is left to its own read timeouts, and no
        second one is started while it lives.
        """
        if self._worker is not None and self._worker.is_alive():
            raise _FetchError("a previous JWK Set fetch is still running")
        outcome: list[tuple[list[VerificationKey], float] | _FetchError] = []
        deadline = time.monotonic() + FETCH_BUDGET

        def work() -> None:
            try:
                outcome.append(self._fetch(deadline))
            except _FetchError as exc:
                outcome.append(exc)
            except Exception:
                # An exception escaping a helper thread would only reach
                # stderr; the caller must see a fetch failure instead.
                outcome.append(_FetchError("JWK Set fetch failed unexpectedly"))

        worker = threading.Thread(target=work, name="jwks-fetch", daemon=True)
        self._worker = worker
        worker.start()
        worker.join(FETCH_BUDGET)
        if not outcome:
            raise _FetchError("JWK Set fetch took too long")
        result = outcome[0]
        if isinstance(result, _FetchError):
            raise result
        return result

    def _fetch(self, deadline: float) -> tuple[list[VerificationKey], float]:
        try:
            with (
                requests.Session() as session,
                session.get(
                    self.url,
                    timeout=(FETCH_BUDGET, FETCH_BUDGET),
                    stream=True,
                    allow_redirects=False,
                    verify=self._verify,
                    headers={
                        "Accept": "application/jwk-set+json, application/json",
                        "Accept-Encoding": "identity",
                    },
                ) as response,
            ):
                if response.status_code != 200:
                    raise _FetchError(f"JWK Set URL answered {response.status_code}")
                encoding = response.headers.get("Content-Encoding", "identity")
                if encoding.strip().lower() != "identity":
                    raise _FetchError("JWK Set response is compressed")
                body = _read_body(response, deadline)
                cache_control = response.headers.get("Cache-Control")
        except (
            requests.RequestException,
            urllib3.exceptions.HTTPError,
            OSError,
        ) as exc:
            raise _FetchError(f"JWK Set fetch failed: {type(exc).__name__}") from None

        try:
            document = json.loads(body)
        except (ValueError, RecursionError):
            raise _FetchError("JWK Set response is not JSON") from None
        try:
            keys = keys_from_jwks(document, uses=self._uses)
        except ValueError as exc:
            raise _FetchError(str(exc)) from None
        # A set with nothing usable in it is far more often a publishing fault
        # than a deliberate revocation of every key, so it counts as a failed
        # fetch and the previous keys stay.
        if not keys:
            raise _FetchError("JWK Set holds no usable key")
        return keys, _cache_ttl(cache_control, self._cache_seconds)
