"""Helpers for the verifier tests: a test issuer that mints tokens in the
real issuer's exact format, DPoP proofs, and a counting loopback server."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import get_default_algorithms

from verifier.keys import jwk_thumbprint

ISSUER = "https://issuer.test"
AUDIENCE = "https://api.test"
SCHEME = "urn:wimse-assurance:levels:1"

# What the real issuer stamps for plain client_credentials with a secret:
# MIAL-1 (credential only), MAAL-1 (static secret, bearer).
MIAL_1 = {
    "identity_attestation": 1,
    "deployment_environment": 0,
    "software_integrity": 0,
    "configuration": 0,
    "supply_chain": 0,
}
MAAL_1 = {
    "provenance": 1,
    "enrollment": 1,
    "containment": 0,
    "unlocking": 0,
    "boundary": 1,
    "reuse": 1,
    "recovery": 1,
    "governance": 2,
}
# A strong token: MIAL-3, MAAL-3 (DPoP-bound, per-instance key).
MIAL_3 = {
    "identity_attestation": 2,
    "deployment_environment": 1,
    "software_integrity": 2,
    "configuration": 2,
    "supply_chain": 2,
}
MAAL_3 = {
    "provenance": 2,
    "enrollment": 2,
    "containment": 1,
    "unlocking": 2,
    "boundary": 3,
    "reuse": 2,
    "recovery": 2,
    "governance": 2,
}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64json(value: Any) -> str:
    """Encode a JSON value, or raw JSON text given as ``str``, as base64url."""
    text = value if isinstance(value, str) else json.dumps(value)
    return b64url(text.encode("utf-8"))


def new_key(alg: str) -> Any:
    if alg.startswith("ES"):
        curve = {"ES256": ec.SECP256R1(), "ES384": ec.SECP384R1()}[alg]
        return ec.generate_private_key(curve)
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_jwk(key: Any, alg: str) -> dict[str, Any]:
    """The public JWK as the issuer publishes it: alg, use, RFC 7638 kid."""
    data: dict[str, Any] = get_default_algorithms()[alg].to_jwk(
        key.public_key(), as_dict=True
    )
    data["alg"] = alg
    data["use"] = "sig"
    data["kid"] = jwk_thumbprint(data)
    return data


@dataclass
class FakeIssuer:
    """Mints access tokens shaped exactly like ``issuer/access_token.py``."""

    alg: str = "ES256"
    issuer: str = ISSUER
    key: Any = None
    jwk: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.key is None:
            self.key = new_key(self.alg)
        self.jwk = public_jwk(self.key, self.alg)

    @property
    def kid(self) -> str:
        return str(self.jwk["kid"])

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.jwk]}

    def claims(
        self,
        *,
        mial_vector: Mapping[str, int] = MIAL_1,
        maal_vector: Mapping[str, int] = MAAL_1,
        now: int | None = None,
        lifetime: int = 300,
        **overrides: Any,
    ) -> dict[str, Any]:
        """Claims of RFC 9068 section 2.2 plus the assurance claims, levels
        computed from the vectors with the shared scheme tables."""
        from verifier.levels import load_scheme

        scheme = load_scheme(SCHEME)
        now = int(time.time()) if now is None else now
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": "spiffe://example.org/ns/pay/sa/api",
            "aud": AUDIENCE,
            "client_id": "client-1",
            "iat": now,
            "nbf": now,
            "exp": now + lifetime,
            "jti": secrets.token_urlsafe(16),
            "scope": "orders:read orders:write",
            "mial": scheme.mial.overall(mial_vector),
            "maal": scheme.maal.overall(maal_vector),
            "assurance_levels": {
                "scheme": SCHEME,
                "mial": dict(mial_vector),
                "maal": dict(maal_vector),
                "appraised_at": now,
                "credential": "client_secret",
                "evidence": [{"kind": "k8s_sa_token", "digest": "sha-256:" + "a" * 64}],
                "policy_version": "test-1",
            },
        }
        claims.update(overrides)
        return claims

    def mint(self, claims: Mapping[str, Any] | None = None, **headers: Any) -> str:
        """Sign ``claims`` (default: ``self.claims()``) with ``typ: at+jwt``."""
        head = {"kid": self.kid, "typ": "at+jwt"}
        head.update(headers)
        return jwt.encode(
            dict(claims if claims is not None else self.claims()),
            self.key,
            algorithm=self.alg,
            headers=head,
        )

    def sign_raw(self, header: Any, payload: Any) -> str:
        """Sign arbitrary header and payload (objects, or raw JSON text) with
        this issuer's key, bypassing PyJWT's own checks."""
        head = b64json(header)
        body = b64json(payload)
        algo = get_default_algorithms()[self.alg]
        sig = algo.sign(f"{head}.{body}".encode("ascii"), self.key)
        return f"{head}.{body}.{b64url(sig)}"


def ath(token: str) -> str:
    return b64url(hashlib.sha256(token.encode("ascii")).digest())


@dataclass
class DPoPKey:
    """A client's DPoP key making proofs (RFC 9449 section 4.2)."""

    alg: str = "ES256"
    key: Any = None

    def __post_init__(self) -> None:
        if self.key is None:
            self.key = new_key(self.alg)

    @property
    def jwk(self) -> dict[str, Any]:
        data: dict[str, Any] = get_default_algorithms()[self.alg].to_jwk(
            self.key.public_key(), as_dict=True
        )
        return data

    @property
    def jkt(self) -> str:
        return jwk_thumbprint(self.jwk)

    def proof(
        self,
        method: str,
        url: str,
        token: str | None,
        *,
        header: Mapping[str, Any] | None = None,
        drop: tuple[str, ...] = (),
        **claims: Any,
    ) -> str:
        body: dict[str, Any] = {
            "jti": secrets.token_urlsafe(12),
            "htm": method,
            "htu": url,
            "iat": int(time.time()),
        }
        if token is not None:
            body["ath"] = ath(token)
        body.update(claims)
        for name in drop:
            body.pop(name, None)
        head = {"typ": "dpop+jwt", "alg": self.alg, "jwk": self.jwk}
        head.update(header or {})
        return jwt.encode(body, self.key, algorithm=self.alg, headers=head)


@dataclass
class Reply:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


class CountingServer:
    """A loopback HTTP server answering configured JSON documents and
    counting requests per path."""

    def __init__(self) -> None:
        self.routes: dict[str, Reply | Callable[[], Reply]] = {}
        self.hits: dict[str, int] = {}
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                path = self.path.partition("?")[0]
                with server.lock:
                    server.hits[path] = server.hits.get(path, 0) + 1
                route = server.routes.get(path)
                reply = route() if callable(route) else route
                if reply is None:
                    reply = Reply(404, {"error": "not found"})
                data = json.dumps(reply.body).encode()
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            do_GET = _answer
            do_POST = _answer

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def count(self, path: str) -> int:
        with self.lock:
            return self.hits.get(path, 0)

    def total(self) -> int:
        with self.lock:
            return sum(self.hits.values())


@contextmanager
def counting_server() -> Iterator[CountingServer]:
    server = CountingServer()
    server.thread.start()
    try:
        yield server
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()
        server.thread.join(timeout=5)
