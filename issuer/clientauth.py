"""Client authentication at the token, introspection and revocation endpoints.

- ``client_secret_basic``: RFC 6749 section 2.3.1; client id and secret are
  form-urlencoded, joined by a colon, then base64 encoded.
- ``client_secret_post``: RFC 6749 section 2.3.1, in the request body.
- ``private_key_jwt``: RFC 7523 section 3 and RFC 7521 section 4.2, a JWT
  signed by a key registered for the client.
- ``tls_client_auth`` and ``self_signed_tls_client_auth``: RFC 8705 section
  2, the client certificate of the mutual-TLS connection, with ``client_id``
  in the body. A client registered with a SPIFFE ID as
  ``tls_client_auth_san_uri`` whose trust domain has a configured bundle is
  checked as an X.509-SVID against that bundle instead of the CA bundle.

A request must use exactly one method (RFC 6749 section 2.3). Every failure
is ``invalid_client``; the description never says whether the client exists.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

import jwt
from jwt.algorithms import get_default_algorithms

from .clients import Client, ClientRegistry
from .errors import EvidenceError, InvalidClient, InvalidRequest
from .keys import jwk_thumbprint
from .mtls import TlsClientAuth, X509Bundle, verify_x509_svid
from .platforms import PlatformIdentity
from .replay import ReplayStore

__all__ = ["ASSERTION_ALGORITHMS", "AuthenticatedClient", "ClientAuthenticator"]

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
SPIFFE_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-spiffe"
# RFC 8725 section 3.1: an explicit allow-list; never "none", never HMAC,
# since a client's registered key is public and must not double as a secret.
ASSERTION_ALGORITHMS = ("ES256", "ES384", "ES512", "EdDSA", "PS256", "PS384", "RS256")
_ALGS = get_default_algorithms()
_KTY_FOR_ALG = {"ES": "EC", "Ed": "OKP", "PS": "RSA", "RS": "RSA"}


@dataclass(frozen=True)
class AuthenticatedClient:
    """A client that proved possession of its credential, and how."""

    client: Client
    method: str
    #: RFC 7638 thumbprint of the key that signed a private_key_jwt assertion.
    key_thumbprint: str | None = None
    #: The SPIFFE ID of an X.509-SVID that authenticated the client.
    spiffe_id: str | None = None
    #: The verified JWT-SVID of a ``spiffe_jwt`` client assertion.
    identity: PlatformIdentity | None = None

    @property
    def credential(self) -> str:
        """The credential MAAL rates: the method, or ``x509_svid``."""
        return "x509_svid" if self.spiffe_id is not None else self.method


def _decode_segment(segment: str) -> dict[str, Any]:
    padded = segment + "=" * (-len(segment) % 4)
    try:
        value = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    except (ValueError, binascii.Error, UnicodeError, RecursionError):
        raise InvalidClient("client assertion is malformed") from None
    if not isinstance(value, dict):
        raise InvalidClient("client assertion is malformed")
    return value


def unknown_id(client_id: str) -> str:
    """How the log names a client id no client has: by a digest prefix and
    its length, never the text, since callers who mix up the fields send
    their secret (or id and secret joined) where the id belongs."""
    digest = hashlib.sha256(client_id.encode("utf-8", "replace")).hexdigest()
    return f"unknown client id (sha-256 {digest[:12]}, {len(client_id)} chars)"


class ClientAuthenticator:
    """Authenticates clients against the registry.

    ``audiences`` are the values a client assertion's ``aud`` may take: the
    issuer identifier and the token endpoint URL.
    """

    def __init__(
        self,
        registry: ClientRegistry,
        replay: ReplayStore,
        *,
        audiences: tuple[str, ...],
        max_assertion_lifetime: int,
        clock_skew: int,
        max_token_bytes: int,
        tls: TlsClientAuth | None = None,
        spiffe_bundles: tuple[X509Bundle, ...] = (),
    ) -> None:
        self.registry = registry
        self.tls = tls or TlsClientAuth()
        self.spiffe_bundles = spiffe_bundles
        self.replay = replay
        self.audiences = audiences
        self.max_lifetime = max_assertion_lifetime
        self.skew = clock_skew
        self.max_token_bytes = max_token_bytes
        self._keys: dict[tuple[str, str], Any] = {}
        #: Verifies a JWT-SVID (the service wires its trust sources here).
        self.svid_verifier: Callable[[str, float], PlatformIdentity] | None = None

    def authenticate(
        self,
        params: Mapping[str, str],
        authorization: str | None,
        *,
        client_cert: bytes | None = None,
        now: float | None = None,
    ) -> AuthenticatedClient:
        """Authenticate the request's client; raises ``InvalidClient`` or
        ``InvalidRequest`` (several methods at once).

        ``client_cert`` is the DER certificate of the mutual-TLS connection;
        it authenticates a request that names ``client_id`` and uses no other
        method (RFC 8705 section 2). Certificates are checked at ``now``
        (default: the current time).
        """
        basic = authorization is not None and authorization[:6].lower() == "basic "
        used = [
            name
            for name, present in (
                ("client_secret_basic", basic),
                ("client_secret_post", "client_secret" in params),
                ("private_key_jwt", "client_assertion" in params),
            )
            if present
        ]
        if len(used) > 1:
            raise InvalidRequest("use exactly one client authentication method")
        if not used and client_cert is not None and "client_id" in params:
            when = time.time() if now is None else now
            return self._check_certificate(params["client_id"], client_cert, when)
        if not used:
            raise InvalidClient(self._missing(params.get("client_id")), basic=False)
        method = used[0]
        if method == "client_secret_basic":
            client_id, secret = self._parse_basic(authorization or "")
            if params.get("client_id", client_id) != client_id:
                raise InvalidRequest("client_id differs from the authenticated client")
            return self._check_secret(client_id, secret, method, basic=True)
        if method == "client_secret_post":
            client_id = params.get("client_id", "")
            return self._check_secret(client_id, params["client_secret"], method)
        return self._check_assertion(params)

    @staticmethod
    def _parse_basic(header: str) -> tuple[str, str]:
        try:
            raw = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            raise InvalidClient("malformed Basic credentials", basic=True) from None
        client_id, sep, secret = raw.partition(":")
        if not sep or not client_id:
            raise InvalidClient("malformed Basic credentials", basic=True)
        return unquote_plus(client_id), unquote_plus(secret)

    def _missing(self, client_id: str | None) -> str:
        """What a request that authenticated no way at all is told: a client
        registered for a certificate (RFC 8705) is told it sent none, so a
        missing ``--cert`` is not mistaken for a wrong secret. Unknown
        clients get the generic text, so the answer reveals nothing more
        than the method a known ``client_id`` is registered for."""
        client = self._find(client_id or "")
        if client is not None and {
            "tls_client_auth",
            "self_signed_tls_client_auth",
        } & set(client.auth_methods):
            return "client certificate required (mutual TLS)"
        return "client authentication required"

    def _find(self, client_id: str) -> Client | None:
        """The registered client, or ``None``. Identifiers are generated
        URL-safe strings; anything else (empty, NUL, control characters,
        overlong) cannot name a client and does not reach the database."""
        if 0 < len(client_id) <= 64 and client_id.isprintable():
            return self.registry.get(client_id)
        return None

    def _usable(self, client_id: str, method: str, basic: bool = False) -> Client:
        client = self._find(client_id)
        if client is None:
            raise InvalidClient(
                "client authentication failed",
                detail=f"{unknown_id(client_id)} ({method})",
                basic=basic,
            )
        if client.disabled or method not in client.auth_methods:
            raise InvalidClient(
                "client authentication failed",
                detail=f"client {client_id!r}: disabled or other method ({method})",
                basic=basic,
            )
        return client

    def _check_secret(
        self, client_id: str, secret: str, method: str, basic: bool = False
    ) -> AuthenticatedClient:
        client = self._usable(client_id, method, basic)
        if len(secret) > 512 or not self.registry.check_secret(client, secret):
            raise InvalidClient(
                "client authentication failed",
                detail=f"client {client_id[:64]!r}: secret mismatch",
                basic=basic,
            )
        return AuthenticatedClient(client, method)

    def _check_certificate(
        self, client_id: str, der: bytes, now: float
    ) -> AuthenticatedClient:
        """RFC 8705 section 2.1 or 2.2, by the client's registered method."""
        found = self._find(client_id)
        method = "tls_client_auth"
        if found is not None and "self_signed_tls_client_auth" in found.auth_methods:
            method = "self_signed_tls_client_auth"
        client = self._usable(client_id, method)
        registered = client.tls_subject.get("tls_client_auth_san_uri", "")
        domain = registered.removeprefix("spiffe://").split("/")[0]
        svid = registered.startswith("spiffe://") and any(
            b.trust_domain == domain for b in self.spiffe_bundles
        )
        try:
            if svid:
                spiffe_id = str(verify_x509_svid(der, self.spiffe_bundles, now=now))
                if spiffe_id != registered:
                    raise InvalidClient(
                        "client authentication failed",
                        detail="SVID names another SPIFFE ID",
                    )
                return AuthenticatedClient(client, method, spiffe_id=spiffe_id)
            metadata = {**client.tls_subject, "jwks": client.jwks or {}}
            self.tls.authenticate(method, der, metadata, now=now)
        except InvalidClient as exc:
            # The client id goes to the operator's log with the failed check.
            raise InvalidClient(
                "client authentication failed",
                detail=f"client {client_id!r}: {exc.detail}",
            ) from None
        return AuthenticatedClient(client, method)

    def _check_jwt_svid(self, params: Mapping[str, str]) -> AuthenticatedClient:
        """A JWT-SVID as the client assertion (docs/platforms.md, "JWT-SVID
        client assertions"; after draft-schwenkschuster-oauth-spiffe-client-auth).

        The SVID is verified like a SPIFFE subject token: signature by the
        trust domain's bundle, ``aud`` the issuer, lifetime within the trust
        source's ``max_lifetime``. It may lack ``iss`` and ``jti`` and is
        reused until it expires, so it is not single-use; its ``sub`` must be
        the SPIFFE ID registered for ``client_id``.
        """
        client_id = params.get("client_id", "")
        client = self._usable(client_id, "spiffe_jwt")
        token = params["client_assertion"].strip()
        if self.svid_verifier is None or len(token) > self.max_token_bytes:
            raise InvalidClient("JWT-SVID client assertions are not configured")
        try:
            identity = self.svid_verifier(token, time.time())
        except EvidenceError as exc:
            raise InvalidClient(
                f"JWT-SVID rejected: {exc.reason}", detail=f"JWT-SVID: {exc}"
            ) from None
        if identity.platform != "spiffe" or identity.subject != client.subject:
            raise InvalidClient(
                "JWT-SVID does not name this client's SPIFFE ID",
                detail=f"client {client_id[:64]!r}: SVID for another SPIFFE ID",
            )
        return AuthenticatedClient(client, "spiffe_jwt", identity=identity)

    def _check_assertion(self, params: Mapping[str, str]) -> AuthenticatedClient:
        """RFC 7523 section 3 with the single-string ``aud`` of RFC 7521 4.2."""
        if params.get("client_assertion_type") == SPIFFE_ASSERTION_TYPE:
            return self._check_jwt_svid(params)
        if params.get("client_assertion_type") != ASSERTION_TYPE:
            raise InvalidClient("unsupported client_assertion_type")
        token = params["client_assertion"]
        if len(token) > self.max_token_bytes or token.count(".") != 2:
            raise InvalidClient("client assertion is malformed")
        header_b64, payload_b64, _ = token.split(".")
        header = _decode_segment(header_b64)
        unverified = _decode_segment(payload_b64)
        alg = header.get("alg")
        if alg not in ASSERTION_ALGORITHMS:
            raise InvalidClient("client assertion algorithm not allowed")
        if "crit" in header:
            raise InvalidClient("client assertion carries an unsupported crit header")
        client_id = unverified.get("sub")
        if not isinstance(client_id, str) or unverified.get("iss") != client_id:
            raise InvalidClient("client assertion iss and sub must be the client_id")
        if params.get("client_id", client_id) != client_id:
            raise InvalidRequest("client_id differs from the assertion subject")
        client = self._usable(client_id, "private_key_jwt")
        claims, jwk = self._verify_signature(token, header, client)
        self._check_claims(claims, client_id)
        return AuthenticatedClient(client, "private_key_jwt", jwk_thumbprint(jwk))

    def _verify_signature(
        self, token: str, header: Mapping[str, Any], client: Client
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        alg = str(header["alg"])
        kid = header.get("kid")
        keys = [
            k
            for k in (client.jwks or {}).get("keys", [])
            if k.get("kty") == _KTY_FOR_ALG[alg[:2]]
            and (kid is None or k.get("kid") == kid)
            and k.get("alg", alg) == alg
        ]
        if not keys:
            raise InvalidClient("no registered key matches the client assertion")
        for jwk in keys:
            key = self._parsed_key(alg, jwk)
            if key is None:
                continue
            try:
                claims: dict[str, Any] = jwt.decode(
                    token,
                    key,
                    algorithms=[alg],
                    options={
                        "verify_aud": False,
                        "verify_exp": False,
                        "verify_nbf": False,
                        "verify_iat": False,
                    },
                )
            except jwt.InvalidSignatureError:
                continue
            except jwt.InvalidTokenError:
                raise InvalidClient("client assertion is malformed") from None
            return claims, jwk
        raise InvalidClient("client assertion signature does not verify")

    def _parsed_key(self, alg: str, jwk: Mapping[str, Any]) -> Any:
        """The key object of a registered JWK, parsed once per process.

        Keyed by the JWK's canonical JSON, so a re-registered key is parsed
        anew; bounded, since registrations are few.
        """
        cache_key = (alg, json.dumps(jwk, sort_keys=True))
        if cache_key in self._keys:
            return self._keys[cache_key]
        try:
            key = _ALGS[alg].from_jwk(dict(jwk))
        except (jwt.InvalidKeyError, ValueError, KeyError, TypeError):
            key = None
        if len(self._keys) > 4096:
            self._keys.clear()
        self._keys[cache_key] = key
        return key

    def _check_claims(self, claims: Mapping[str, Any], client_id: str) -> None:
        now = time.time()
        aud = claims.get("aud")
        if not isinstance(aud, str) or aud not in self.audiences:
            raise InvalidClient(
                "client assertion aud must be one string: the issuer identifier"
            )
        exp = claims.get("exp")
        if type(exp) is not int:
            raise InvalidClient("client assertion needs an integer exp")
        if exp <= now - self.skew:
            raise InvalidClient("client assertion expired")
        if exp > now + self.max_lifetime + self.skew:
            raise InvalidClient("client assertion exp is too far ahead")
        for name in ("nbf", "iat"):
            value = claims.get(name)
            if value is None:
                continue
            if type(value) is not int:
                raise InvalidClient(f"client assertion {name} must be an integer")
            if value > now + self.skew:
                raise InvalidClient(f"client assertion {name} is in the future")
        jti = claims.get("jti")
        # Printable: no control characters, no lone surrogates (which have
        # no UTF-8 encoding for the replay key's digest).
        if not isinstance(jti, str) or not 0 < len(jti) <= 200 or not jti.isprintable():
            raise InvalidClient("client assertion needs a jti of printable text")
        # An assertion issued before the replay store started could have been
        # used already and forgotten; without iat its earliest possible issue
        # time is exp minus the longest accepted lifetime.
        iat = claims.get("iat")
        issued = iat if isinstance(iat, int) else exp - self.max_lifetime
        if issued < self.replay.started_at - self.skew:
            raise InvalidClient("client assertion predates the replay store")
        # Hashed, so any accepted jti fits the store's key column.
        key = "assertion:" + hashlib.sha256(f"{client_id}:{jti}".encode()).hexdigest()
        if not self.replay.use_once(key, exp + self.skew):
            raise InvalidClient("client assertion jti already used")
