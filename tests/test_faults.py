"""Faults: the database or Redis going away fails closed and recovers.

The tests start their own throwaway PostgreSQL cluster (initdb in a temp
directory, run as the postgres user) and their own redis-server on a free
port, and stop only those; the machine's shared servers are never touched.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from .conftest import free_port

TE_BODY = {"grant_type": "client_credentials"}


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        pytest.fail(f"PostgreSQL server binaries not found ({name})")
    return found[-1]


class ThrowawayPostgres:
    """A private PostgreSQL cluster on a free loopback port."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="wimse-pg-"))
        shutil.chown(self.dir, "postgres", "postgres")
        self.data = self.dir / "data"
        self.port = free_port()
        self._run(
            _pg_bin("initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres"
        )

    def _run(self, *cmd: str) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *cmd],
            check=True,
            capture_output=True,
            cwd=self.dir,
        )

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        opts = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.dir}"
        self._run(
            _pg_bin("pg_ctl"), "-D", str(self.data), "-o", opts, "-l",
            str(self.dir / "log"), "-w", "start",
        )  # fmt: skip

    def stop(self) -> None:
        self._run(_pg_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def destroy(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class ThrowawayRedis:
    """A private redis-server on a free loopback port, without persistence."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                import socket

                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None


@pytest.fixture(scope="module")
def postgres() -> Iterator[ThrowawayPostgres]:
    if os.geteuid() != 0:
        pytest.fail("the fault tests run as root to start PostgreSQL as postgres")
    pg = ThrowawayPostgres()
    pg.start()
    yield pg
    pg.destroy()


@pytest.fixture
def redis_server() -> Iterator[ThrowawayRedis]:
    server = ThrowawayRedis()
    server.start()
    yield server
    server.stop()


def _token(live: Any, reg: dict[str, Any]) -> requests.Response:
    return requests.post(
        live.url + "/token",
        data=TE_BODY,
        auth=(reg["client_id"], reg["client_secret"]),
        timeout=15,
    )


def _wait_for(check: Any, seconds: float = 20.0) -> Any:
    deadline = time.time() + seconds
    while True:
        result = check()
        if result or time.time() > deadline:
            return result
        time.sleep(0.2)


def test_database_outage_fails_closed_and_recovers(
    live_issuer: Any, postgres: ThrowawayPostgres
) -> None:
    live = live_issuer({"database_url": postgres.url})
    reg = live.add_client("outage", "--audience", "https://api.test")
    assert _token(live, reg).status_code == 200

    postgres.stop()
    try:
        resp = _token(live, reg)
        assert resp.status_code == 503
        assert resp.headers["Retry-After"]
        assert resp.json()["error"] == "temporarily_unavailable"
        assert "access_token" not in resp.text
        ready = requests.get(live.url + "/readyz", timeout=15)
        assert ready.status_code == 503
    finally:
        postgres.start()

    ok = _wait_for(lambda: _token(live, reg).status_code == 200)
    assert ok, "the issuer did not recover after the database came back"
    assert requests.get(live.url + "/readyz", timeout=15).status_code == 200
    # Every issued token has its audit record; the outage issued none.
    lines = live.cli("audit", "list", "--client", reg["client_id"]).stdout.splitlines()
    assert len(lines) >= 2
    assert "ok:" in live.cli("audit", "verify").stdout


def test_redis_outage_fails_closed_for_assertions_and_recovers(
    live_issuer: Any, redis_server: ThrowawayRedis, tmp_path: Path
) -> None:
    import json
    import secrets

    import jwt
    from cryptography.hazmat.primitives.asymmetric import ec
    from jwt.algorithms import ECAlgorithm

    from issuer.keys import jwk_thumbprint

    live = live_issuer({"redis_url": redis_server.url, "redis_prefix": "faults:"})
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    jwk["kid"] = jwk_thumbprint(jwk)
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [jwk]}))
    reg = live.add_client("k", "--audience", "https://api.test", "--jwks", str(jwks))

    def request() -> requests.Response:
        now = int(time.time())
        assertion = jwt.encode(
            {
                "iss": reg["client_id"],
                "sub": reg["client_id"],
                "aud": live.url,
                "iat": now,
                "exp": now + 60,
                "jti": secrets.token_urlsafe(8),
            },
            key,
            algorithm="ES256",
            headers={"kid": jwk["kid"]},
        )
        return requests.post(
            live.url + "/token",
            data={
                **TE_BODY,
                "client_assertion_type": (
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
                ),
                "client_assertion": assertion,
            },
            timeout=15,
        )

    assert request().status_code == 200
    redis_server.stop()
    resp = request()
    assert resp.status_code == 503
    assert resp.json()["error"] == "temporarily_unavailable"
    assert requests.get(live.url + "/readyz", timeout=15).status_code == 503
    redis_server.start()
    assert _wait_for(lambda: request().status_code == 200)
