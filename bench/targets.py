"""The targets of one bench run and the scenarios each one answers.

A ``Target`` is a started server with its scenarios; ``stop`` ends it. A
``Scenario`` makes the ``Load`` for one measurement: fixed requests are the
same every time, single-use ones (client assertions, DPoP proofs) are made
fresh, in the number asked for, just before each use.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from credentials import (
    K8S_ISSUER,
    ClientKey,
    basic,
    cluster,
    dpop_proofs,
    sa_token,
    token_exchange_body,
    write_assertion_bodies,
)
from loadgen import Load
from servers import (
    NodeUnavailable,
    Server,
    as_server,
    install_oidc_provider,
    start_node_provider,
    start_ours,
    start_python_peer,
)

__all__ = [
    "STARTERS",
    "Options",
    "Scenario",
    "Target",
    "start_bare",
    "start_our_issuer",
]

AUDIENCE = "https://api.bench"
CC_BODY = "grant_type=client_credentials"


@dataclass
class Scenario:
    """One row of the table.

    ``make(count, tag)`` returns the load; ``single_use`` names the values a
    load consumes (one per request), or is ``None`` for fixed requests.
    """

    key: str
    label: str
    make: Callable[[int, str], Load]
    single_use: str | None = None


@dataclass
class Target:
    """A started server, its scenarios, and rows it cannot measure."""

    name: str
    stop: Callable[[], None] = lambda: None
    scenarios: list[Scenario] = field(default_factory=list)
    skipped: list[tuple[str, str, str]] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    #: The main server process, for the profiler.
    pid: int = 0


@dataclass(frozen=True)
class Options:
    """Settings shared by the starters."""

    #: Granian blocking threads per worker for the Python peers; keep it
    #: equal to what ``wimse-issuer serve`` uses (issuer/cli.py). Default 4.
    peer_threads: int = 4


def _fixed(load: Load) -> Callable[[int, str], Load]:
    return lambda _count, _tag: load


# -- our issuer ----------------------------------------------------------


def _issuer_config(jwks_path: Path) -> dict[str, Any]:
    return {
        "trust_sources": {
            "cluster": {
                "platform": "kubernetes",
                "issuer": K8S_ISSUER,
                "audience": "wimse-issuer",
                "jwks_file": str(jwks_path),
            }
        }
    }


def start_our_issuer(
    tmp: Path, workers: int, extended: bool, threads: int | None = None
) -> Target:
    """Our issuer with ``workers`` (and ``threads`` per worker, else its
    default); ``extended`` adds private_key_jwt and DPoP. The first
    scenario is client_credentials with client_secret_basic."""
    name = f"ours{workers}"
    home = tmp / name
    home.mkdir()
    cluster_key, jwks_path = cluster(home)
    config = _issuer_config(jwks_path)
    if threads is not None:
        config["threads"] = threads
    live = start_ours(home, config, workers)
    server = as_server(live, name)
    target = Target(name, stop=server.stop, pid=server.pid)
    try:
        reg = live.add_client("bench", "--audience", AUDIENCE)
        auth = {"Authorization": basic(reg["client_id"], reg["client_secret"])}
        url = live.url + "/token"
        prefix = f"ours {workers}w"
        target.scenarios.append(
            Scenario(
                f"{name}-cc",
                f"{prefix} client_credentials (secret_basic)",
                _fixed(Load(url, CC_BODY, auth)),
            )
        )
        if extended:
            target.scenarios.append(_private_key_jwt(tmp, live, url, prefix))
        te = token_exchange_body(sa_token(cluster_key))
        target.scenarios.append(
            Scenario(
                f"{name}-te",
                f"{prefix} token exchange (k8s token)",
                _fixed(Load(url, te, auth)),
            )
        )
        if extended:
            _add_dpop(target, tmp, live.url, url, auth, prefix)
    except BaseException:
        server.stop()
        raise
    return target


def _private_key_jwt(tmp: Path, live: Any, url: str, prefix: str) -> Scenario:
    key = ClientKey("bench-jwt")
    jwks = key.write_jwks(tmp / "client-jwks.json")
    reg = live.add_client("bench-jwt", "--audience", AUDIENCE, "--jwks", str(jwks))
    client_id = reg["client_id"]

    def make(count: int, tag: str) -> Load:
        path = tmp / f"assertions-{tag}.txt"
        write_assertion_bodies(path, key, client_id, live.url, count)
        return Load(url, "-", {}, values=path)

    return Scenario(
        "ours1-pkjwt",
        f"{prefix} client_credentials (private_key_jwt)",
        make,
        single_use="client assertions",
    )


def _add_dpop(
    target: Target,
    tmp: Path,
    base: str,
    url: str,
    auth: dict[str, str],
    prefix: str,
) -> None:
    key_name, label = "ours1-dpop", f"{prefix} client_credentials + DPoP"
    meta = requests.get(base + "/.well-known/oauth-authorization-server", timeout=10)
    algs = meta.json().get("dpop_signing_alg_values_supported") or []
    if "ES256" not in algs:
        target.skipped.append(
            (
                key_name,
                label,
                "skipped: the issuer's metadata has no "
                "dpop_signing_alg_values_supported with ES256 (DPoP is not "
                "integrated at the token endpoint)",
            )
        )
        return
    htu = meta.json().get("token_endpoint", url)
    key = ClientKey("bench-dpop")
    nonce = _dpop_nonce(url, auth, key, htu, tmp)

    def make(count: int, tag: str) -> Load:
        path = dpop_proofs(tmp / f"dpop-{tag}.txt", key, htu, count, nonce)
        return Load(url, CC_BODY, auth, values=path, field="DPoP")

    target.scenarios.append(Scenario(key_name, label, make, "DPoP proofs"))


def _dpop_nonce(
    url: str, auth: dict[str, str], key: ClientKey, htu: str, tmp: Path
) -> str | None:
    """The server's DPoP nonce when it demands one (RFC 9449 section 8)."""
    proof = dpop_proofs(tmp / "dpop-nonce.txt", key, htu, 1).read_text().strip()
    resp = requests.post(url, data=CC_BODY, headers={**auth, "DPoP": proof}, timeout=10)
    if resp.status_code == 400 and resp.headers.get("DPoP-Nonce"):
        return resp.headers["DPoP-Nonce"]
    return None


def start_ours_one(tmp: Path, options: Options) -> Target:
    return start_our_issuer(tmp, 1, extended=True)


def start_ours_two(tmp: Path, options: Options) -> Target:
    return start_our_issuer(tmp, 2, extended=False)


# -- peers ---------------------------------------------------------------


def _peer(
    name: str, key: str, label: str, start: Callable[[dict[str, str]], Server]
) -> Target:
    secret = secrets.token_urlsafe(32)
    env = {
        "BENCH_CLIENT_ID": "bench",
        "BENCH_CLIENT_SECRET": secret,
        "BENCH_AUDIENCE": AUDIENCE,
        "BENCH_ISSUER": "http://127.0.0.1",
    }
    try:
        server = start(env)
    except (RuntimeError, NodeUnavailable) as exc:
        return Target(name, skipped=[(key, label, f"skipped: {exc}")])
    auth = {"Authorization": basic("bench", secret)}
    load = Load(server.url + "/token", CC_BODY, auth)
    scenarios = [Scenario(key, label, _fixed(load))]
    return Target(name, stop=server.stop, scenarios=scenarios, pid=server.pid)


def start_bare(tmp: Path, options: Options) -> Target:
    def start(env: dict[str, str]) -> Server:
        env["BENCH_DB"] = str(tmp / "bare-audit.db")
        log = tmp / "bare.log"
        return start_python_peer(
            "bare", "bare_wsgi:app", env, log, options.peer_threads
        )

    return _peer("bare", "bare", "bare WSGI reference, 1w (granian)", start)


def start_authlib(tmp: Path, options: Options) -> Target:
    def start(env: dict[str, str]) -> Server:
        # The bench speaks plain HTTP on the loopback.
        env["AUTHLIB_INSECURE_TRANSPORT"] = "1"
        log = tmp / "authlib.log"
        return start_python_peer(
            "authlib", "authlib_app:app", env, log, options.peer_threads
        )

    label = "Authlib JWTBearerTokenGenerator, 1w (granian)"
    return _peer("authlib", "authlib", label, start)


def start_node(tmp: Path, options: Options) -> Target:
    folder = tmp / "node"
    label = "node oidc-provider 9, 1 process"
    try:
        version = install_oidc_provider(folder)
    except NodeUnavailable as exc:
        return Target("node", skipped=[("node", label, f"skipped: {exc}")])

    def start(env: dict[str, str]) -> Server:
        return start_node_provider(folder, env, tmp / "node.log")

    target = _peer("node", "node", f"node oidc-provider {version}, 1 process", start)
    target.versions["oidc-provider"] = version
    return target


STARTERS: dict[str, Callable[[Path, Options], Target]] = {
    "ours": start_ours_one,
    "ours2": start_ours_two,
    "bare": start_bare,
    "authlib": start_authlib,
    "node": start_node,
}
