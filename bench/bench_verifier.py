"""Verifier throughput against a bare PyJWT decode of the same tokens.

Run: ``python bench/bench_verifier.py [--tokens N] [--rounds R] [--alg ALG]``.

Mints N distinct access tokens shaped like the issuer's (RFC 9068 with the
assurance claims), then, in one process and one run, times:

- ``pyjwt``: ``jwt.decode(token, public_key, algorithms=[alg], audience=...,
  issuer=...)``, the least a relying party could do;
- ``verifier``: ``TokenVerifier.verify(token)`` with the same key as a JWK
  Set, doing every check of docs/verifier.md (strict parsing, claim types,
  level recomputation, relying-party observation).

Each side runs R rounds over all tokens, alternating, and the best round of
each is reported, which filters scheduler noise on small machines. The ratio
is verifier tokens/s divided by PyJWT tokens/s; the target is at least 0.9.
"""

from __future__ import annotations

import argparse
import gc
import secrets
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import get_default_algorithms

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from verifier import TokenVerifier
from verifier.keys import jwk_thumbprint
from verifier.levels import load_scheme

ISSUER = "https://issuer.bench"
AUDIENCE = "https://api.bench"
MIAL = {
    "identity_attestation": 2,
    "deployment_environment": 1,
    "software_integrity": 2,
    "configuration": 2,
    "supply_chain": 2,
}
MAAL = {
    "provenance": 2,
    "enrollment": 2,
    "containment": 1,
    "unlocking": 1,
    "boundary": 1,
    "reuse": 1,
    "recovery": 1,
    "governance": 2,
}


def _key(alg: str) -> Any:
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def mint(count: int, alg: str) -> tuple[list[str], Any, dict[str, Any]]:
    """Return ``count`` distinct tokens, the public key and its JWK Set."""
    key = _key(alg)
    jwk: dict[str, Any] = get_default_algorithms()[alg].to_jwk(
        key.public_key(), as_dict=True
    )
    jwk.update(alg=alg, use="sig")
    jwk["kid"] = jwk_thumbprint(jwk)
    scheme = load_scheme()
    now = int(time.time())
    tokens = []
    for i in range(count):
        claims = {
            "iss": ISSUER,
            "sub": f"spiffe://bench/ns/default/sa/workload-{i}",
            "aud": AUDIENCE,
            "client_id": f"client-{i % 50}",
            "iat": now,
            "nbf": now,
            "exp": now + 3600,
            "jti": secrets.token_urlsafe(16),
            "scope": "orders:read orders:write",
            "mial": scheme.mial.overall(MIAL),
            "maal": scheme.maal.overall(MAAL),
            "assurance_levels": {
                "scheme": scheme.id,
                "mial": MIAL,
                "maal": MAAL,
                "appraised_at": now,
                "credential": "k8s_sa_token",
                "evidence": [{"kind": "k8s_sa_token", "digest": "sha-256:" + "0" * 64}],
                "policy_version": "bench",
            },
        }
        headers = {"kid": jwk["kid"], "typ": "at+jwt"}
        tokens.append(jwt.encode(claims, key, algorithm=alg, headers=headers))
    return tokens, key.public_key(), {"keys": [jwk]}


def _time(fn: Callable[[str], object], tokens: list[str]) -> float:
    gc.collect()
    start = time.perf_counter()
    for token in tokens:
        fn(token)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print tokens/s of both sides and their ratio."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--alg", default="ES256", choices=["ES256", "EdDSA", "RS256"])
    args = parser.parse_args(argv)

    tokens, public_key, jwks = mint(args.tokens, args.alg)
    verifier = TokenVerifier(ISSUER, AUDIENCE, jwks=jwks)
    algorithms = [args.alg]

    def bare(token: str) -> object:
        return jwt.decode(
            token, public_key, algorithms=algorithms, audience=AUDIENCE, issuer=ISSUER
        )

    # Both paths must accept every token before anything is timed.
    for token in tokens[:10]:
        bare(token)
        verifier.verify(token)

    best = {"pyjwt": float("inf"), "verifier": float("inf")}
    for _ in range(args.rounds):
        best["pyjwt"] = min(best["pyjwt"], _time(bare, tokens))
        best["verifier"] = min(best["verifier"], _time(verifier.verify, tokens))

    rates = {name: len(tokens) / seconds for name, seconds in best.items()}
    print(f"{len(tokens)} distinct {args.alg} tokens, best of {args.rounds} rounds")
    for name, rate in rates.items():
        per_token = 1e6 / rate
        print(f"  {name:9s} {rate:9.0f} tokens/s  {per_token:6.1f} us/token")
    ratio = rates["verifier"] / rates["pyjwt"]
    print(f"  ratio     {ratio:.2f}x of bare PyJWT decode (target >= 0.90)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
