"""Issuer throughput and latency with wrk, one run, on this machine.

Usage: ``python bench/bench_issuer.py [--duration 10] [--connections 8]
[--workers 1]``. Needs ``wrk`` (Debian package ``wrk``).

Starts a real ``wimse-issuer serve`` in a temporary home, registers a client,
and measures:

- client_credentials with client_secret_basic;
- token exchange of a Kubernetes service-account token (signed at start by a
  throwaway cluster key, verified against a pinned JWKS file).

Every request does the full work: client authentication, evidence
verification, assurance evaluation, policy, signing, and the audit record
committed before the response. Prints tokens/s, p50 and p99 per scenario.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from pathlib import Path

import jwt
import requests
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import free_port, start_issuer, stop_issuer  # noqa: E402

K8S_ISSUER = "https://k8s.bench.test"


def cluster(home: Path) -> tuple[rsa.RSAPrivateKey, Path]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    jwk.update(kid="bench", alg="RS256")
    path = home / "cluster-jwks.json"
    path.write_text(json.dumps({"keys": [jwk]}))
    return key, path


def sa_token(key: rsa.RSAPrivateKey) -> str:
    now = int(time.time())
    claims = {
        "iss": K8S_ISSUER,
        "sub": "system:serviceaccount:bench:api",
        "aud": ["wimse-issuer"],
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


def lua_script(path: Path, body: str, authorization: str) -> Path:
    script = path.with_suffix(".lua")
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = {json.dumps(body)}\n"
        'wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"\n'
        f'wrk.headers["Authorization"] = {json.dumps(authorization)}\n'
    )
    return script


def run_wrk(
    url: str, script: Path, duration: int, connections: int
) -> dict[str, float]:
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{duration}s",
            "--latency",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if found is None:
        raise RuntimeError("wrk printed no Requests/sec line")
    rps = float(found.group(1))
    lat = dict(re.findall(r"^\s+(50|99)%\s+([\d.]+\w+)", out, re.M))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": rps,
        "p50_ms": to_ms(lat["50"]),
        "p99_ms": to_ms(lat["99"]),
        "errors": float(errors.group(1)) if errors else 0.0,
    }


def to_ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(\w+)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: apt-get install wrk")

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        key, jwks_path = cluster(home)
        config = {
            "trust_sources": {
                "cluster": {
                    "platform": "kubernetes",
                    "issuer": K8S_ISSUER,
                    "audience": "wimse-issuer",
                    "jwks_file": str(jwks_path),
                }
            }
        }
        live = start_issuer(home, config, workers=args.workers)
        try:
            reg = live.add_client("bench", "--audience", "https://api.bench")
            auth = (
                "Basic "
                + base64.b64encode(
                    f"{reg['client_id']}:{reg['client_secret']}".encode()
                ).decode()
            )
            te_body = urllib.parse.urlencode(
                {
                    "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
                    "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
                    "subject_token": sa_token(key),
                }
            )
            scenarios = {
                "client_credentials (secret_basic)": "grant_type=client_credentials",
                "token exchange (k8s token)": te_body,
            }
            url = live.url + "/token"
            for body in scenarios.values():  # warm up and check each works
                resp = requests.post(
                    url,
                    data=body,
                    headers={
                        "Authorization": auth,
                        "Content-Type": "application/x-www-form-urlencoded",
                    },
                    timeout=10,
                )
                resp.raise_for_status()
            print(
                f"workers={args.workers} connections={args.connections} "
                f"duration={args.duration}s cpus={os.cpu_count()}"
            )
            header = ("scenario", "tokens/s", "p50 ms", "p99 ms", "errors")
            print("{:40} {:>10} {:>8} {:>8} {:>7}".format(*header))
            for name, body in scenarios.items():
                script = lua_script(home / f"s{free_port()}", body, auth)
                r = run_wrk(url, script, args.duration, args.connections)
                print(
                    f"{name:40} {r['rps']:>10.0f} {r['p50_ms']:>8.2f} "
                    f"{r['p99_ms']:>8.2f} {r['errors']:>7.0f}"
                )
        finally:
            stop_issuer(live)


if __name__ == "__main__":
    main()
