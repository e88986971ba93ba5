"""DPoP proofs at a resource server (RFC 9449 sections 4.3 and 7.1).

``DPoPVerifier.verify`` runs every check of section 4.3 that applies to a
protected resource: one well-formed proof, ``typ`` ``dpop+jwt``, an
asymmetric allow-listed ``alg``, a public ``jwk`` header, a valid signature,
``htm`` and ``htu`` matching the request, ``iat`` in the accepted window,
``ath`` equal to the hash of the presented access token, the key thumbprint
equal to the token's ``cnf.jkt`` (section 6.1), and ``jti`` not seen before
(section 11.1).

The replay cache here lives in process memory. Several processes serving
one API each keep their own, so a proof could be replayed once per process
within its lifetime; pass a shared ``ReplayCache`` to close that gap.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import heapq
import hmac
import re
import threading
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from jwt.algorithms import get_default_algorithms
from jwt.exceptions import PyJWTError

from .errors import InvalidDPoPProof, ReplayedDPoPProof
from .keys import (
    SUPPORTED_ALGORITHMS,
    VerificationKey,
    b64url_decode,
    parse_jwk,
    strict_json,
)

__all__ = [
    "NON_REPLAYABLE_MAX_AGE",
    "DPoPProof",
    "DPoPVerifier",
    "MemoryReplayCache",
    "ReplayCache",
    "access_token_hash",
    "normalize_htu",
]

#: The longest proof lifetime that still counts as non-replayable for the
#: boundary dimension (docs/levels.md, boundary 3).
NON_REPLAYABLE_MAX_AGE = 60

_COMPACT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_MAX_JTI = 256
_UNRESERVED = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
)
_PCT = re.compile(r"%([0-9A-Fa-f]{2})")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def access_token_hash(token: str) -> str:
    """Return the ``ath`` value of an access token: base64url SHA-256 of its
    ASCII bytes (RFC 9449 section 4.2)."""
    digest = hashlib.sha256(token.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _pct_normalize(match: re.Match[str]) -> str:
    char = chr(int(match.group(1), 16))
    return char if char in _UNRESERVED else "%" + match.group(1).upper()


def _remove_dot_segments(path: str) -> str:
    # RFC 3986 section 5.2.4, for absolute paths.
    out: list[str] = []
    segments = path.split("/")
    last = len(segments) - 1
    for i, seg in enumerate(segments):
        if seg in (".", ".."):
            if seg == ".." and len(out) > 1:
                out.pop()
            if i == last:
                out.append("")
            continue
        out.append(seg)
    return "/".join(out)


@functools.lru_cache(maxsize=256)
def normalize_htu(url: str) -> str:
    """Normalise an HTTP URI for ``htu`` comparison (RFC 9449 section 4.3).

    Applies RFC 3986 section 6.2.2 syntax-based normalisation (case of scheme
    and host, percent-encoding case, unreserved characters decoded, dot
    segments removed) and section 6.2.3 scheme-based normalisation (default
    port dropped, empty path as ``/``); drops query and fragment. Raises
    ``ValueError`` for anything but an absolute http(s) URI without user info.
    Results are cached for the 256 URIs last seen (a client sends the same
    few); a refused URI is not cached.
    """
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise ValueError("htu is not an absolute http(s) URI")
    if parts.username is not None:
        raise ValueError("htu carries user info")
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    port = parts.port
    netloc = host if port in (None, _DEFAULT_PORTS[scheme]) else f"{host}:{port}"
    path = _remove_dot_segments(_PCT.sub(_pct_normalize, parts.path or "/"))
    return f"{scheme}://{netloc}{path or '/'}"


class ReplayCache(Protocol):
    """Remembers proof identifiers until they expire (RFC 9449 section 11.1)."""

    def use(self, key: str, expires_at: float, now: float) -> None:
        """Record ``key`` until ``expires_at``.

        Raises ``ReplayedDPoPProof`` when ``key`` is already recorded and not
        expired at ``now``.
        """
        ...


class MemoryReplayCache:
    """A thread-safe in-process ``ReplayCache`` holding at most
    ``max_entries`` live identifiers (default 100 000).

    When it is full of identifiers that have not expired, new proofs are
    refused: forgetting a live identifier would allow its replay.
    """

    def __init__(self, max_entries: int = 100_000) -> None:
        self.max_entries = max_entries
        self._seen: dict[str, float] = {}
        self._expiry: list[tuple[float, str]] = []
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._seen)

    def use(self, key: str, expires_at: float, now: float) -> None:
        """Record ``key``; raise ``ReplayedDPoPProof`` if it is live already."""
        with self._lock:
            self._purge(now)
            if key in self._seen:
                raise ReplayedDPoPProof()
            if len(self._seen) >= self.max_entries:
                raise InvalidDPoPProof(
                    "the DPoP proof cannot be accepted now; retry",
                    detail="replay cache full",
                )
            self._seen[key] = expires_at
            heapq.heappush(self._expiry, (expires_at, key))

    def _purge(self, now: float) -> None:
        heap = self._expiry
        while heap and heap[0][0] <= now:
            _, key = heapq.heappop(heap)
            if self._seen.get(key, now + 1) <= now:
                del self._seen[key]


@dataclass(frozen=True)
class DPoPProof:
    """A DPoP proof that passed every check.

    ``jkt`` is the RFC 7638 thumbprint of its key; ``replay_checked`` says
    whether its ``jti`` went through a replay cache; ``max_age`` is the
    longest proof age the verifier accepted.
    """

    jti: str
    htm: str
    htu: str
    iat: int
    jkt: str
    replay_checked: bool
    max_age: int

    @property
    def non_replayable(self) -> bool:
        """True when the proof counts as non-replayable for ``maal.boundary``
        (docs/levels.md, boundary 3)."""
        return self.replay_checked and self.max_age <= NON_REPLAYABLE_MAX_AGE


class DPoPVerifier:
    """Checks DPoP proofs presented with access tokens (RFC 9449 section 7.1).

    Options (defaults in brackets):

    - ``algorithms``: accepted proof algorithms [ES256, EdDSA, PS256, RS256];
      only asymmetric ones are possible.
    - ``max_age``: seconds a proof is accepted after its ``iat`` [60].
    - ``future_skew``: seconds ``iat`` may lie ahead of our clock [5].
    - ``replay_cache``: where ``jti`` values are remembered [a new
      ``MemoryReplayCache``].
    - ``check_replay``: set False to skip the replay check [True]; proofs
      then never count as non-replayable.
    - ``max_proof_bytes``: size cap of a proof [8192].
    """

    def __init__(
        self,
        *,
        algorithms: Iterable[str] = ("ES256", "EdDSA", "PS256", "RS256"),
        max_age: int = 60,
        future_skew: int = 5,
        replay_cache: ReplayCache | None = None,
        check_replay: bool = True,
        max_proof_bytes: int = 8192,
    ) -> None:
        algs = frozenset(algorithms)
        if not algs or not algs <= SUPPORTED_ALGORITHMS:
            raise ValueError(
                f"DPoP algorithms must come from {sorted(SUPPORTED_ALGORITHMS)}"
            )
        self.algorithms = algs
        self.max_age = max_age
        self.future_skew = future_skew
        self.check_replay = check_replay
        self.replay_cache: ReplayCache = replay_cache or MemoryReplayCache()
        self.max_proof_bytes = max_proof_bytes
        self._algs = {name: get_default_algorithms()[name] for name in algs}

    def verify(
        self,
        proof: str,
        *,
        method: str,
        url: str,
        access_token: str,
        jkt: str,
        now: float,
    ) -> DPoPProof:
        """Check ``proof`` for a request and the access token sent with it.

        ``method`` and ``url`` are those of the request as received; ``jkt``
        is the token's ``cnf.jkt``. Returns the verified ``DPoPProof`` or
        raises ``InvalidDPoPProof`` (``ReplayedDPoPProof`` for a reused
        ``jti``).
        """
        header, payload, jwk, signing_input, signature = self._parse(proof)
        alg = header["alg"]
        key = self._key(jwk, alg)
        if not self._algs[alg].verify(signing_input, key.key, signature):
            raise InvalidDPoPProof(detail="signature does not verify")

        jti, htm, htu, iat, ath = self._claims(payload)
        if htm != method:
            raise InvalidDPoPProof(detail="htm does not match the request method")
        try:
            same_uri = normalize_htu(htu) == normalize_htu(url)
        except ValueError:
            same_uri = False
        if not same_uri:
            raise InvalidDPoPProof(detail="htu does not match the request URI")
        if iat > now + self.future_skew:
            raise InvalidDPoPProof(detail="iat is in the future")
        if iat < now - self.max_age:
            raise InvalidDPoPProof(detail="proof is too old")
        try:
            expected_ath = access_token_hash(access_token)
        except UnicodeEncodeError:
            raise InvalidDPoPProof(detail="access token is not ASCII") from None
        if not hmac.compare_digest(ath, expected_ath):
            raise InvalidDPoPProof(detail="ath does not match the access token")
        if not hmac.compare_digest(key.thumbprint, jkt):
            raise InvalidDPoPProof(detail="proof key is not the token's cnf.jkt")

        # The replay check comes last so that only fully valid proofs take a
        # place in the cache; garbage cannot fill it.
        if self.check_replay:
            expires = max(iat, now) + self.max_age + self.future_skew
            self.replay_cache.use(f"{key.thumbprint}:{jti}", expires, now)
        return DPoPProof(
            jti, htm, htu, iat, key.thumbprint, self.check_replay, self.max_age
        )

    def _parse(
        self, proof: str
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], bytes, bytes]:
        if len(proof) > self.max_proof_bytes or not _COMPACT.fullmatch(proof):
            raise InvalidDPoPProof(detail="proof is not a compact JWS")
        head_b64, body_b64, sig_b64 = proof.split(".")
        try:
            header = strict_json(b64url_decode(head_b64))
            payload = strict_json(b64url_decode(body_b64))
            signature = b64url_decode(sig_b64)
        except ValueError:
            raise InvalidDPoPProof(detail="proof is not valid JSON/base64url") from None
        if not isinstance(header, dict) or not isinstance(payload, dict):
            raise InvalidDPoPProof(detail="proof header or body is not an object")
        typ = header.get("typ")
        if not isinstance(typ, str) or typ.lower() != "dpop+jwt":
            raise InvalidDPoPProof(detail="typ is not dpop+jwt")
        if "crit" in header:
            raise InvalidDPoPProof(detail="crit is not supported")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise InvalidDPoPProof(detail="alg not accepted")
        jwk = header.get("jwk")
        if not isinstance(jwk, dict):
            raise InvalidDPoPProof(detail="jwk header missing")
        signing_input = f"{head_b64}.{body_b64}".encode("ascii")
        return header, payload, jwk, signing_input, signature

    @staticmethod
    def _key(jwk: dict[str, Any], alg: str) -> VerificationKey:
        # parse_jwk refuses private members, unknown key types, short RSA
        # keys and a key type that does not fit alg (RFC 9449 section 4.3).
        try:
            return parse_jwk(jwk, frozenset({alg}))
        except (ValueError, TypeError, KeyError, PyJWTError):
            raise InvalidDPoPProof(detail="jwk header is not a usable key") from None

    @staticmethod
    def _claims(payload: dict[str, Any]) -> tuple[str, str, str, int, str]:
        jti = payload.get("jti")
        htm = payload.get("htm")
        htu = payload.get("htu")
        iat = payload.get("iat")
        ath = payload.get("ath")
        if not isinstance(jti, str) or not 0 < len(jti) <= _MAX_JTI:
            raise InvalidDPoPProof(detail="jti missing or malformed")
        if not isinstance(htm, str) or not isinstance(htu, str):
            raise InvalidDPoPProof(detail="htm or htu missing")
        if type(iat) is not int:
            raise InvalidDPoPProof(detail="iat missing or not an integer")
        if not isinstance(ath, str):
            raise InvalidDPoPProof(detail="ath missing")
        return jti, htm, htu, iat, ath
