"""What the bench's clients present: Basic headers, a Kubernetes token,
single-use client assertions and DPoP proofs.

Assertions (RFC 7523 section 3) and DPoP proofs (RFC 9449 section 4.2) may
be used once each, so they are made in bulk before a run and written one per
line for ``cycle.lua``.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

__all__ = [
    "ASSERTION_TYPE",
    "K8S_ISSUER",
    "ClientKey",
    "basic",
    "cluster",
    "dpop_proofs",
    "sa_token",
    "token_exchange_body",
    "write_assertion_bodies",
]

K8S_ISSUER = "https://k8s.bench.test"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
TOKEN_TYPE_JWT = "urn:ietf:params:oauth:token-type:jwt"
# Below the issuer's default max_assertion_lifetime (300 s), so every
# assertion made before the run is still acceptable at its end.
ASSERTION_LIFETIME = 240


def basic(client_id: str, secret: str) -> str:
    """An RFC 6749 section 2.3.1 Basic header."""
    raw = f"{urllib.parse.quote_plus(client_id)}:{urllib.parse.quote_plus(secret)}"
    return "Basic " + base64.b64encode(raw.encode()).decode()


def cluster(home: Path) -> tuple[rsa.RSAPrivateKey, Path]:
    """A throwaway cluster key and the JWKS file the issuer pins for it."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    jwk.update(kid="bench", alg="RS256")
    path = home / "cluster-jwks.json"
    path.write_text(json.dumps({"keys": [jwk]}))
    return key, path


def sa_token(key: rsa.RSAPrivateKey, audience: str = "wimse-issuer") -> str:
    """A projected service-account token as the kubelet would mount it."""
    now = int(time.time())
    claims = {
        "iss": K8S_ISSUER,
        "sub": "system:serviceaccount:bench:api",
        "aud": [audience],
        "iat": now,
        "nbf": now,
        "exp": now + 3600,
        "kubernetes.io": {
            "namespace": "bench",
            "serviceaccount": {"name": "api", "uid": str(uuid.uuid4())},
            "pod": {"name": "api-1", "uid": str(uuid.uuid4())},
            "node": {"name": "node-1", "uid": str(uuid.uuid4())},
        },
    }
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": "bench"})


def token_exchange_body(subject_token: str) -> str:
    """An RFC 8693 section 2.1 request body for a JWT subject token."""
    return urllib.parse.urlencode(
        {
            "grant_type": TOKEN_EXCHANGE,
            "subject_token_type": TOKEN_TYPE_JWT,
            "subject_token": subject_token,
        }
    )


class ClientKey:
    """An ES256 key pair standing for a client or a DPoP holder."""

    def __init__(self, kid: str) -> None:
        self.kid = kid
        self.private = ec.generate_private_key(ec.SECP256R1())
        self.public_jwk: dict[str, Any] = ECAlgorithm.to_jwk(
            self.private.public_key(), as_dict=True
        )

    def write_jwks(self, path: Path) -> Path:
        """Write the public JWKS a client registers for private_key_jwt."""
        jwk = {**self.public_jwk, "kid": self.kid, "alg": "ES256", "use": "sig"}
        path.write_text(json.dumps({"keys": [jwk]}))
        return path


def write_assertion_bodies(
    path: Path, key: ClientKey, client_id: str, audience: str, count: int
) -> Path:
    """Write ``count`` client_credentials bodies, each with its own assertion."""
    now = int(time.time())
    head = urllib.parse.urlencode(
        {"grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE}
    )
    headers = {"kid": key.kid}
    with path.open("w") as out:
        for _ in range(count):
            claims = {
                "iss": client_id,
                "sub": client_id,
                "aud": audience,
                "iat": now,
                "exp": now + ASSERTION_LIFETIME,
                "jti": secrets.token_urlsafe(16),
            }
            assertion = jwt.encode(
                claims, key.private, algorithm="ES256", headers=headers
            )
            out.write(f"{head}&client_assertion={assertion}\n")
    return path


def dpop_proofs(
    path: Path, key: ClientKey, htu: str, count: int, nonce: str | None = None
) -> Path:
    """Write ``count`` DPoP proofs for ``POST htu``, one per line."""
    now = int(time.time())
    headers = {"typ": "dpop+jwt", "jwk": key.public_jwk}
    with path.open("w") as out:
        for _ in range(count):
            claims: dict[str, Any] = {
                "jti": secrets.token_urlsafe(16),
                "htm": "POST",
                "htu": htu,
                "iat": now,
            }
            if nonce is not None:
                claims["nonce"] = nonce
            proof = jwt.encode(claims, key.private, algorithm="ES256", headers=headers)
            out.write(proof + "\n")
    return path
