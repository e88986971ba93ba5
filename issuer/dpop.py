"""DPoP proofs at the authorization server (RFC 9449).

``DPoPVerifier.verify`` applies the checks of RFC 9449 section 4.3 to one
proof: a single well-formed JWS (step 2), the claims of section 4.2 (step 3),
``typ`` ``dpop+jwt`` (step 4), an asymmetric ``alg`` from the allow-list
(step 5, section 11.6), a signature that verifies with the ``jwk`` header
(step 6), a ``jwk`` without private members (step 7), ``htm`` and ``htu``
equal to the request's (steps 8 and 9), the server nonce (step 10, section
8), ``iat`` inside the accepted window (step 11, section 11.1) and ``ath``
when an access token accompanies the proof (step 12). Step 1, at most one
``DPoP`` header field, is the caller's; ``single_proof`` does it. Each
proof's ``jti`` is then recorded in the shared replay store (section 11.1).

Server nonces are stateless: a nonce is an issue time, eight random bytes
and an HMAC-SHA256 tag over both under a key derived from ``nonce_secret``.
Every process configured with the same secret accepts the nonces of every
other one, for ``nonce_lifetime`` seconds, with no shared state. A nonce is
not bound to a client or key; it bounds how far ahead a proof can be made
(section 11.2), while the ``jti`` store stops replays (section 11.1).
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import math
import re
import secrets
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import get_default_algorithms
from jwt.exceptions import PyJWTError

from verifier.dpop import access_token_hash
from verifier.dpop import normalize_htu as _normalize_htu
from verifier.keys import SUPPORTED_ALGORITHMS, strict_json

from .errors import OAuthError
from .keys import jwk_thumbprint
from .replay import DatabaseReplayStore, ReplayStore

__all__ = [
    "DEFAULT_ALGORITHMS",
    "SUPPORTED_ALGORITHMS",
    "DPoPProof",
    "DPoPVerifier",
    "InvalidDPoPProof",
    "UseDPoPNonce",
    "access_token_hash",
    "normalize_htu",
    "single_proof",
]

#: The ``alg`` values accepted unless configured otherwise.
DEFAULT_ALGORITHMS = ("ES256", "ES384", "EdDSA", "PS256", "RS256")

#: Longest accepted proof. A proof with an RSA-4096 key is about 2 KB; the
#: bound keeps a hostile header from costing parse time.
MAX_PROOF_CHARS = 8192
#: Longest accepted ``jti``. Section 11.1 asks servers to refuse needlessly
#: large values; only a digest of the ``jti`` is stored in any case.
MAX_JTI_CHARS = 256

_CURVE_FOR_ALG = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
_KTY_FOR_ALG = {"ES": "EC", "Ed": "OKP", "PS": "RSA", "RS": "RSA"}
_OKP_CURVES = frozenset({"Ed25519", "Ed448"})
_MIN_RSA_BITS = 2048
# The members that carry private or symmetric key material in any key type:
# RFC 7518 sections 6.2.2, 6.3.2 and 6.4.1, and RFC 8037 section 2.
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
# RFC 7638 section 3.2: the members a thumbprint is computed over.
_PUBLIC_MEMBERS = {
    "EC": ("crv", "x", "y"),
    "RSA": ("n", "e"),
    "OKP": ("crv", "x"),
}
_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")
# PyJWT's algorithm objects by name, built once.
_ALGORITHMS = get_default_algorithms()
# Client keys whose parsing and checks are cached (``_checked_key``).
_CHECKED_KEYS = 1024

_NONCE_LABEL = b"wimse-assurance dpop-nonce v1"
_NONCE_RANDOM = 8
_NONCE_TAG = 16
_NONCE_BYTES = 8 + _NONCE_RANDOM + _NONCE_TAG
_MIN_SECRET_BYTES = 32


class InvalidDPoPProof(OAuthError):
    """The DPoP proof is missing, malformed or fails a check (RFC 9449 section 5).

    Rendered as the ``invalid_dpop_proof`` error of RFC 9449 section 12.2.
    """

    error = "invalid_dpop_proof"
    status = 400


class UseDPoPNonce(OAuthError):
    """The proof lacks the server nonce or carries a stale or unknown one.

    RFC 9449 section 8: answered with 400 ``use_dpop_nonce`` and a
    ``DPoP-Nonce`` header holding the nonce the client is to use next.
    """

    error = "use_dpop_nonce"
    status = 400

    def __init__(
        self, description: str = "", *, nonce: str, detail: str | None = None
    ) -> None:
        super().__init__(description, detail=detail)
        self.nonce = nonce

    def headers(self) -> dict[str, str]:
        return {"DPoP-Nonce": self.nonce}


@dataclass(frozen=True)
class DPoPProof:
    """A proof that passed every check of RFC 9449 section 4.3.

    ``jkt`` is the RFC 7638 SHA-256 thumbprint of the proof key, the value of
    ``cnf.jkt`` in a bound token (RFC 9449 section 6.1). ``replay_checked``
    says the ``jti`` was recorded in a replay store that every instance of
    the issuer consults, so the proof cannot be used again anywhere;
    ``nonce_checked`` says the proof carried a valid server nonce. The two
    flags decide the boundary rating (docs/sender-constraints.md).
    """

    jkt: str
    jti: str
    iat: float
    replay_checked: bool
    nonce_checked: bool


def single_proof(header_values: list[str]) -> str:
    """Return the one DPoP proof of a request (RFC 9449 section 4.3, step 1).

    ``header_values`` holds the value of every ``DPoP`` header field. A
    value with a comma is two fields folded into one (RFC 9110 section 5.3),
    since a compact JWS contains no comma. Raises ``InvalidDPoPProof`` for
    no proof or more than one; a caller that treats DPoP as optional checks
    for an absent header before calling.
    """
    values = [v.strip() for v in header_values]
    if not values or not values[0]:
        raise InvalidDPoPProof("a DPoP proof is required")
    if len(values) > 1 or "," in values[0]:
        raise InvalidDPoPProof("send exactly one DPoP header")
    return values[0]


def normalize_htu(uri: str) -> str | None:
    """The RFC 9449 section 4.3 normal form of ``uri`` (RFC 3986 sections
    6.2.2 and 6.2.3, query and fragment dropped), or ``None`` for anything but
    an absolute ``http``/``https`` URI with a host and no user information.

    The normalisation is the verifier library's, so the issuer and relying
    parties compare ``htu`` alike.
    """
    try:
        return _normalize_htu(uri)
    except ValueError:
        return None


class DPoPVerifier:
    """Checks DPoP proofs at the token endpoint (RFC 9449 sections 4.3 and 8).

    - ``replay``: where each ``jti`` is recorded (keys ``dpop:<jkt>:<digest>``).
    - ``algorithms``: accepted ``alg`` values, a subset of
      ``SUPPORTED_ALGORITHMS``; default ``DEFAULT_ALGORITHMS``.
    - ``max_age``: seconds a proof is accepted after its ``iat``; default 60.
    - ``clock_skew``: seconds of leeway for client and instance clocks;
      default 5.
    - ``nonce_secret``: at least 32 bytes shared by every instance, or
      ``None`` for no server nonces.
    - ``require_nonce``: refuse proofs without a valid nonce; needs
      ``nonce_secret``.
    - ``nonce_lifetime``: seconds a nonce stays valid; default 300.
    - ``shared_replay``: whether ``replay`` is shared by every instance;
      default ``None``, meaning true exactly for a ``DatabaseReplayStore``.

    Raises ``ValueError`` for an invalid option.
    """

    def __init__(
        self,
        replay: ReplayStore,
        *,
        algorithms: Sequence[str] = DEFAULT_ALGORITHMS,
        max_age: int = 60,
        clock_skew: int = 5,
        nonce_secret: bytes | None,
        require_nonce: bool,
        nonce_lifetime: int = 300,
        shared_replay: bool | None = None,
    ) -> None:
        unknown = set(algorithms) - SUPPORTED_ALGORITHMS
        if not algorithms or unknown:
            raise ValueError(f"unsupported DPoP algorithms: {sorted(unknown)}")
        if max_age <= 0 or clock_skew < 0 or nonce_lifetime <= 0:
            raise ValueError("max_age and nonce_lifetime must be positive")
        if nonce_secret is not None and len(nonce_secret) < _MIN_SECRET_BYTES:
            raise ValueError("nonce_secret must be at least 32 bytes")
        if require_nonce and nonce_secret is None:
            raise ValueError("require_nonce needs a nonce_secret")
        self.replay = replay
        self.algorithms = tuple(algorithms)
        self.max_age = max_age
        self.clock_skew = clock_skew
        self.require_nonce = require_nonce
        self.nonce_lifetime = nonce_lifetime
        self.shared_replay = (
            isinstance(replay, DatabaseReplayStore)
            if shared_replay is None
            else shared_replay
        )
        # A key derived for this one purpose, so that a secret reused
        # elsewhere by mistake still yields tags valid only as DPoP nonces.
        self._nonce_key = (
            None
            if nonce_secret is None
            else hmac.new(nonce_secret, _NONCE_LABEL, hashlib.sha256).digest()
        )

    @property
    def uses_nonces(self) -> bool:
        """Whether this verifier issues and checks server nonces."""
        return self._nonce_key is not None

    def new_nonce(self, now: float) -> str:
        """Return a fresh server nonce for a ``DPoP-Nonce`` header (RFC 9449 8).

        Raises ``ValueError`` when no ``nonce_secret`` is configured.
        """
        if self._nonce_key is None:
            raise ValueError("no nonce_secret configured")
        body = struct.pack(">Q", int(now)) + secrets.token_bytes(_NONCE_RANDOM)
        return _b64url(body + self._nonce_tag(body))

    def verify(
        self,
        proof: str,
        *,
        htm: str,
        htu: str,
        access_token: str | None = None,
        now: float,
    ) -> DPoPProof:
        """Check ``proof`` for a request ``htm htu`` (RFC 9449 section 4.3).

        ``htu`` is the URI the issuer is reached at, its public URL rather
        than what a proxy forwarded. With ``access_token`` the proof must
        carry its ``ath``. The ``jti`` is recorded only once every other
        check passed. Raises ``InvalidDPoPProof``, ``UseDPoPNonce``, or
        ``ValueError`` when ``htu`` itself is not an HTTP URI.
        """
        expected_htu = normalize_htu(htu)
        if expected_htu is None:
            raise ValueError("htu is not an absolute http(s) URI")

        header, claims, signing_input, signature = _split(proof)
        alg = self._check_header(header)
        jkt = _verify_signature(alg, header["jwk"], signing_input, signature)

        jti, iat = _required_claims(claims)
        _check_request(claims, htm, expected_htu)
        nonce_checked = self._check_nonce(claims, now)
        self._check_time(iat, now)
        if access_token is not None:
            _check_ath(claims, access_token)

        self._use_once(jkt, jti, iat)
        return DPoPProof(
            jkt=jkt,
            jti=jti,
            iat=iat,
            replay_checked=self.shared_replay,
            nonce_checked=nonce_checked,
        )

    def _check_header(self, header: dict[str, Any]) -> str:
        """Steps 4 and 5: ``typ`` and an allow-listed asymmetric ``alg``."""
        if header.get("typ") != "dpop+jwt":
            raise InvalidDPoPProof("DPoP proof typ must be dpop+jwt")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise InvalidDPoPProof(
                "DPoP proof alg is not allowed", detail=f"alg {str(alg)[:20]!r}"
            )
        # RFC 7515 section 4.1.11: an extension the recipient does not
        # understand must make it reject the JWS, and none is understood here.
        if "crit" in header:
            raise InvalidDPoPProof("DPoP proof carries an unsupported crit header")
        if "jwk" not in header:
            raise InvalidDPoPProof("DPoP proof has no jwk header")
        return alg

    def _check_nonce(self, claims: dict[str, Any], now: float) -> bool:
        """Step 10 and RFC 9449 section 8; True when a valid nonce was present."""
        nonce = claims.get("nonce")
        if self._nonce_key is None:
            # This server never hands out nonces, so a proof's nonce is not
            # one it provided and section 4.3 step 10 does not apply.
            return False
        if nonce is None:
            if self.require_nonce:
                raise UseDPoPNonce(
                    "a DPoP nonce is required", nonce=self.new_nonce(now)
                )
            return False
        if not isinstance(nonce, str):
            raise InvalidDPoPProof("DPoP proof nonce must be a string")
        if not self._nonce_fresh(nonce, now):
            raise UseDPoPNonce(
                "DPoP nonce is stale or unknown", nonce=self.new_nonce(now)
            )
        return True

    def _nonce_fresh(self, nonce: str, now: float) -> bool:
        raw = _b64url_decode(nonce)
        if raw is None or len(raw) != _NONCE_BYTES:
            return False
        body, tag = raw[:-_NONCE_TAG], raw[-_NONCE_TAG:]
        if not hmac.compare_digest(tag, self._nonce_tag(body)):
            return False
        (issued,) = struct.unpack(">Q", body[:8])
        # The skew covers instances whose clocks disagree: a nonce made by a
        # peer slightly ahead must not look as if it came from the future.
        earliest = now - self.nonce_lifetime - self.clock_skew
        return bool(earliest <= issued <= now + self.clock_skew)

    def _nonce_tag(self, body: bytes) -> bytes:
        assert self._nonce_key is not None
        return hmac.new(self._nonce_key, body, hashlib.sha256).digest()[:_NONCE_TAG]

    def _check_time(self, iat: float, now: float) -> None:
        """Step 11: the proof was made within ``max_age`` (section 11.1)."""
        if iat > now + self.clock_skew:
            raise InvalidDPoPProof(
                "DPoP proof iat is in the future", detail=f"iat ahead by {iat - now}s"
            )
        if iat < now - self.max_age - self.clock_skew:
            raise InvalidDPoPProof(
                "DPoP proof is too old", detail=f"iat behind by {now - iat}s"
            )

    def _use_once(self, jkt: str, jti: str, iat: float) -> None:
        """Record the ``jti`` for as long as the proof could be accepted."""
        # A process-local store that started after the proof was made cannot
        # know whether the proof was used before. Refusing such proofs closes
        # that gap except for proofs from clients whose clocks run ahead; the
        # start is rounded down because iat is usually whole seconds.
        if iat < math.floor(self.replay.started_at):
            raise InvalidDPoPProof("DPoP proof predates the replay store")
        # Only a digest of the jti is stored, so the key has a fixed length
        # whatever the client sent (section 11.1 on memory exhaustion).
        digest = _b64url(hashlib.sha256(jti.encode("utf-8")).digest())
        expires_at = iat + self.max_age + self.clock_skew
        if not self.replay.use_once(f"dpop:{jkt}:{digest}", expires_at):
            raise InvalidDPoPProof("DPoP proof jti already used")


def _split(proof: str) -> tuple[dict[str, Any], dict[str, Any], bytes, bytes]:
    """Step 2: one compact JWS with JSON objects as header and payload."""
    if not isinstance(proof, str) or len(proof) > MAX_PROOF_CHARS:
        raise InvalidDPoPProof("DPoP proof is malformed")
    segments = proof.split(".")
    if len(segments) != 3:
        raise InvalidDPoPProof("DPoP proof is not a compact JWS")
    decoded = [_b64url_decode(s) for s in segments]
    header_raw, payload_raw, signature = decoded
    if header_raw is None or payload_raw is None or signature is None:
        raise InvalidDPoPProof("DPoP proof is not base64url encoded")
    header = _json_object(header_raw)
    claims = _json_object(payload_raw)
    signing_input = f"{segments[0]}.{segments[1]}".encode("ascii")
    return header, claims, signing_input, signature


def _verify_signature(
    alg: str, jwk: object, signing_input: bytes, signature: bytes
) -> str:
    """Steps 6 and 7; returns the RFC 7638 thumbprint of the ``jwk``."""
    public = _public_jwk(alg, jwk)
    key, jkt = _checked_key(alg, tuple(public.items()))
    if not _ALGORITHMS[alg].verify(signing_input, key, signature):
        raise InvalidDPoPProof("DPoP proof signature does not verify")
    return jkt


@functools.lru_cache(maxsize=_CHECKED_KEYS)
def _checked_key(alg: str, members: tuple[tuple[str, str], ...]) -> tuple[Any, str]:
    """The public key a jwk's public ``members`` encode, and its RFC 7638
    thumbprint, once they are found a valid, canonical key for ``alg``.

    A client signs every proof with the same key, so the parsing and checks
    are cached per key (the signature is still verified on every proof).
    Only keys that pass are cached, at most ``_CHECKED_KEYS`` of them, the
    least recently used going first.
    """
    public = dict(members)
    algorithm = _ALGORITHMS[alg]
    try:
        key = algorithm.from_jwk(public)
        canonical = algorithm.to_jwk(key, as_dict=True)
    except (PyJWTError, ValueError, TypeError, KeyError):
        raise InvalidDPoPProof("DPoP proof jwk is not a valid public key") from None
    # The thumbprint is computed over the members as sent; requiring them to
    # be the canonical encoding of the key gives each key exactly one jkt.
    if any(canonical.get(m) != public[m] for m in _PUBLIC_MEMBERS[public["kty"]]):
        raise InvalidDPoPProof("DPoP proof jwk is not canonically encoded")
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < _MIN_RSA_BITS:
        raise InvalidDPoPProof("DPoP proof RSA key is shorter than 2048 bits")
    return key, jwk_thumbprint(public)


def _public_jwk(alg: str, jwk: object) -> dict[str, Any]:
    """Step 7 and the key type ``alg`` calls for; returns the public members."""
    if not isinstance(jwk, dict):
        raise InvalidDPoPProof("DPoP proof jwk must be a JSON object")
    if _PRIVATE_MEMBERS & jwk.keys():
        raise InvalidDPoPProof("DPoP proof jwk contains a private key")
    kty = jwk.get("kty")
    if kty != _KTY_FOR_ALG[alg[:2]]:
        raise InvalidDPoPProof("DPoP proof jwk kty does not suit the alg")
    members = _PUBLIC_MEMBERS[kty]
    if not all(isinstance(jwk.get(m), str) for m in members):
        raise InvalidDPoPProof("DPoP proof jwk lacks a required member")
    crv = jwk.get("crv")
    if kty == "EC" and crv != _CURVE_FOR_ALG[alg]:
        raise InvalidDPoPProof("DPoP proof jwk curve does not suit the alg")
    if kty == "OKP" and crv not in _OKP_CURVES:
        raise InvalidDPoPProof("DPoP proof jwk curve is not supported")
    return {"kty": kty, **{m: jwk[m] for m in members}}


def _required_claims(claims: dict[str, Any]) -> tuple[str, float]:
    """Step 3: ``jti``, ``htm``, ``htu`` and ``iat`` present and typed."""
    jti = claims.get("jti")
    # Printable excludes control characters and lone surrogates, which have
    # no UTF-8 encoding for the replay key's digest.
    if (
        not isinstance(jti, str)
        or not 0 < len(jti) <= MAX_JTI_CHARS
        or not jti.isprintable()
    ):
        raise InvalidDPoPProof(
            "DPoP proof needs a jti of at most 256 printable characters"
        )
    for name in ("htm", "htu"):
        if not isinstance(claims.get(name), str):
            raise InvalidDPoPProof(f"DPoP proof needs a string {name}")
    iat = claims.get("iat")
    # RFC 7519 section 2: a NumericDate is a JSON number; bool is excluded
    # because Python counts it as an int.
    if (
        isinstance(iat, bool)
        or not isinstance(iat, int | float)
        or not math.isfinite(iat)
    ):
        raise InvalidDPoPProof("DPoP proof needs a numeric iat")
    return jti, float(iat)


def _check_request(claims: dict[str, Any], htm: str, expected_htu: str) -> None:
    """Steps 8 and 9. Methods are case-sensitive (RFC 9110 section 9.1)."""
    if claims["htm"] != htm:
        raise InvalidDPoPProof("DPoP proof htm does not match the request method")
    if normalize_htu(claims["htu"]) != expected_htu:
        raise InvalidDPoPProof("DPoP proof htu does not match the request URI")


def _check_ath(claims: dict[str, Any], access_token: str) -> None:
    """Step 12: ``ath`` is the hash of the presented access token."""
    ath = claims.get("ath")
    if not isinstance(ath, str):
        raise InvalidDPoPProof("DPoP proof needs ath with an access token")
    try:
        expected = access_token_hash(access_token)
    except UnicodeEncodeError:
        raise InvalidDPoPProof("access token is not ASCII") from None
    if not hmac.compare_digest(ath.encode("ascii", "replace"), expected.encode()):
        raise InvalidDPoPProof("DPoP proof ath does not match the access token")


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        value = strict_json(raw)
    except ValueError:
        raise InvalidDPoPProof("DPoP proof is not valid JSON") from None
    if not isinstance(value, dict):
        raise InvalidDPoPProof("DPoP proof header and payload must be objects")
    return value


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes | None:
    """Strict base64url without padding (RFC 7515 section 2), else ``None``."""
    if not _SEGMENT.fullmatch(text):
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    # Only the canonical encoding is accepted: unused trailing bits must be
    # zero, so that one byte string has exactly one spelling.
    return raw if _b64url(raw) == text else None
