"""Two issuer instances sharing PostgreSQL and Redis on this machine.

Each test run creates its own database and Redis key prefix and removes
them afterwards; the shared servers are never stopped.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import psycopg
import pytest
import redis
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm
from sqlalchemy import select

from issuer.config import Settings
from issuer.keys import jwk_thumbprint
from issuer.service import IssuerService
from issuer.storage import Database, StoreUnavailable, UsedJti

from .conftest import basic

PG = "host=127.0.0.1 port=5432 user=postgres dbname=test"
REDIS = "redis://127.0.0.1:6379/0"


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    name = "wimse_test_" + secrets.token_hex(6)
    with psycopg.connect(PG, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


@pytest.fixture
def prefix() -> Iterator[str]:
    value = "wimse-test-" + secrets.token_hex(6) + ":"
    yield value
    client = redis.Redis.from_url(REDIS)
    keys = list(client.scan_iter(match=value + "*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def instances(
    pg_url: str, prefix: str, tmp_path: Path
) -> Iterator[list[IssuerService]]:
    """Two services: one database, one Redis, one keys folder, one issuer id."""
    built = []
    for _ in range(2):
        settings = Settings(
            home=str(tmp_path),
            issuer_url="https://issuer.shared.test",
            database_url=pg_url,
            redis_url=REDIS,
            redis_prefix=prefix,
        ).validate()
        built.append(IssuerService(settings))
    yield built
    for service in built:
        service.close()


def test_token_from_one_instance_is_active_on_the_other_until_revoked(
    instances: list[IssuerService],
) -> None:
    one, two = instances
    client, secret = one.clients.add("shared", audiences=["https://api.test"])
    auth = basic(client.client_id, secret)
    token = two.token({"grant_type": ["client_credentials"]}, auth).body["access_token"]
    assert one.introspect({"token": [token]}, auth)["active"] is True
    one.revoke({"token": [token]}, auth)
    assert two.introspect({"token": [token]}, auth) == {"active": False}


def test_assertion_used_on_one_instance_is_refused_on_the_other(
    instances: list[IssuerService],
) -> None:
    from issuer.errors import InvalidClient

    one, two = instances
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    jwk["kid"] = jwk_thumbprint(jwk)
    client, _ = one.clients.add("k", jwks={"keys": [jwk]}, audiences=["https://a.test"])
    now = int(time.time())
    assertion = jwt.encode(
        {
            "iss": client.client_id,
            "sub": client.client_id,
            "aud": "https://issuer.shared.test",
            "iat": now,
            "exp": now + 60,
            "jti": secrets.token_urlsafe(8),
        },
        key,
        algorithm="ES256",
        headers={"kid": jwk["kid"]},
    )
    params: dict[str, Any] = {
        "grant_type": ["client_credentials"],
        "client_assertion_type": [
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
        ],
        "client_assertion": [assertion],
    }
    assert one.token(params, None).jti
    with pytest.raises(InvalidClient):
        two.token(params, None)


def test_audit_trail_is_complete_across_instances(
    instances: list[IssuerService],
) -> None:
    one, two = instances
    client, secret = one.clients.add("audited", audiences=["https://api.test"])
    auth = basic(client.client_id, secret)
    jtis = [
        svc.token({"grant_type": ["client_credentials"]}, auth).jti
        for svc in (one, two, one)
    ]
    for jti in jtis:
        assert one.audit.by_jti(jti)["client_id"] == client.client_id
    count, problems = two.audit.verify(two.keyring)
    assert problems == []
    assert count >= 3


def test_challenge_nonce_from_one_instance_is_single_use_on_both(
    instances: list[IssuerService],
) -> None:
    one, two = instances
    client, secret = one.clients.add("nonce", audiences=["https://api.test"])
    nonce = one.challenge({}, basic(client.client_id, secret))["nonce"]
    now = time.time()
    assert two.db.consume_nonce(client.client_id, nonce, now)
    assert not one.db.consume_nonce(client.client_id, nonce, now)


def test_readiness_checks_postgres_and_redis(instances: list[IssuerService]) -> None:
    instances[0].check_ready()


def test_two_issuer_processes_share_state(
    live_issuer: Any, pg_url: str, prefix: str, tmp_path: Path
) -> None:
    """Two real servers on different ports, one issuer identifier, one
    database, one Redis, one keys folder."""
    import requests

    home = tmp_path / "shared-home"
    home.mkdir()
    config = {
        "issuer_url": "https://issuer.shared.test",
        "database_url": pg_url,
        "redis_url": REDIS,
        "redis_prefix": prefix,
    }
    one = live_issuer(config, home=home)
    two = live_issuer(config, home=home)
    assert one.url != two.url
    reg = one.add_client("procs", "--audience", "https://api.test")
    auth = (reg["client_id"], reg["client_secret"])
    resp = requests.post(
        two.url + "/token",
        data={"grant_type": "client_credentials"},
        auth=auth,
        timeout=10,
    )
    token = resp.json()["access_token"]
    assert jwt.decode(token, options={"verify_signature": False})["iss"] == (
        "https://issuer.shared.test"
    )

    def active(live: Any) -> bool:
        body = requests.post(
            live.url + "/introspect", data={"token": token}, auth=auth, timeout=10
        ).json()
        return bool(body["active"])

    assert active(one) and active(two)
    resp = requests.post(
        one.url + "/revoke", data={"token": token}, auth=auth, timeout=10
    )
    assert resp.status_code == 200
    assert not active(two)
    assert one.cli("audit", "verify").returncode == 0


@pytest.fixture(params=["sqlite", "postgresql"])
def replay_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """The ``used_jtis`` store on either database."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'replay.db'}"
    else:
        url = request.getfixturevalue("pg_url")
    db = Database(url)
    db.migrate()
    try:
        yield db
    finally:
        db.dispose()


def test_database_key_is_used_once_until_it_expires(replay_db: Database) -> None:
    key, stale = secrets.token_hex(8), secrets.token_hex(8)
    now = time.time()
    assert replay_db.use_once(key, now + 60)
    assert not replay_db.use_once(key, now + 60)
    assert not replay_db.use_once(key, now + 3600)
    # A key whose time is up may be taken again, once.
    assert replay_db.use_once(stale, now - 1)
    assert replay_db.use_once(stale, now + 60)
    assert not replay_db.use_once(stale, now + 60)


def test_database_key_race_has_one_winner(replay_db: Database) -> None:
    key = secrets.token_hex(8)
    barrier = threading.Barrier(8)
    results: list[bool] = []

    def take() -> None:
        barrier.wait()
        results.append(replay_db.use_once(key, time.time() + 60))

    threads = [threading.Thread(target=take) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 7 + [True]


def test_database_keys_past_their_time_are_swept(replay_db: Database) -> None:
    now = time.time()
    expired = [secrets.token_hex(8) for _ in range(20)]
    for key in expired:
        replay_db.use_once(key, now - 10)
    # Every 64th key (by hash) sweeps: find one that does.
    sweeper = next(
        k for k in (secrets.token_hex(8) for _ in range(10_000)) if hash(k) % 64 == 0
    )
    assert replay_db.use_once(sweeper, now + 60)
    with replay_db.session() as s:
        kept = s.scalars(select(UsedJti.key).where(UsedJti.key.in_(expired))).all()
    assert kept == []


def test_database_replay_store_unreachable_is_unavailable() -> None:
    db = Database("postgresql+psycopg://postgres@127.0.0.1:1/none")
    try:
        with pytest.raises(StoreUnavailable):
            db.use_once("k", time.time() + 60)
    finally:
        db.dispose()
