"""Operations: metrics, rate limits, policy reload, readiness."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from issuer.ratelimit import RateLimiter
from issuer.web import create_app

from .conftest import basic


def test_metrics_count_issued_and_refused(client_app: Any, service: Any) -> None:
    client, secret = service.clients.add("m", audiences=["https://api.test"])
    auth = {"Authorization": basic(client.client_id, secret)}
    client_app.post("/token", data={"grant_type": "client_credentials"}, headers=auth)
    client_app.post("/token", data={"grant_type": "password"}, headers=auth)
    client_app.post("/token", data={"grant_type": "client_credentials"})
    text = client_app.get("/metrics").get_data(as_text=True)
    assert (
        'wimse_tokens_issued_total{grant_type="client_credentials",maal="1",mial="1"}'
        in text
    )
    assert 'wimse_token_requests_refused_total{error="unsupported_grant_type"}' in text
    assert 'wimse_token_requests_refused_total{error="invalid_client"}' in text
    assert 'wimse_request_seconds_bucket{endpoint="/token"' in text
    assert 'wimse_policy_info{version="none"} 1.0' in text


def _sample(text: str, line: str) -> float:
    rows = [r for r in text.splitlines() if r.startswith(line + " ")]
    return float(rows[0].split()[-1]) if rows else 0.0


def test_metrics_count_every_request_exactly(client_app: Any, service: Any) -> None:
    """The token endpoint keeps its labelled metric children; every request
    still counts once."""
    client, secret = service.clients.add("e", audiences=["https://api.test"])
    auth = {"Authorization": basic(client.client_id, secret)}
    issued = (
        'wimse_tokens_issued_total{grant_type="client_credentials",maal="1",mial="1"}'
    )
    refused = 'wimse_token_requests_refused_total{error="invalid_scope"}'
    timed = 'wimse_request_seconds_count{endpoint="/token"}'
    before = client_app.get("/metrics").get_data(as_text=True)
    for _ in range(3):
        client_app.post(
            "/token", data={"grant_type": "client_credentials"}, headers=auth
        )
    for _ in range(2):
        client_app.post(
            "/token",
            data={"grant_type": "client_credentials", "scope": "nope"},
            headers=auth,
        )
    after = client_app.get("/metrics").get_data(as_text=True)
    assert _sample(after, issued) - _sample(before, issued) == 3.0
    assert _sample(after, refused) - _sample(before, refused) == 2.0
    assert _sample(after, timed) - _sample(before, timed) == 5.0


def test_rate_limit_answers_429_with_retry_after(make_service: Any) -> None:
    service = make_service(rate_limit=1, rate_limit_burst=2)
    app = create_app(service).test_client()
    client, secret = service.clients.add("r", audiences=["https://api.test"])
    auth = {"Authorization": basic(client.client_id, secret)}
    codes = [
        app.post("/token", data={"grant_type": "client_credentials"}, headers=auth)
        for _ in range(3)
    ]
    assert [r.status_code for r in codes] == [200, 200, 429]
    assert codes[2].get_json()["error"] == "rate_limited"
    assert int(codes[2].headers["Retry-After"]) >= 1
    assert app.post("/challenge", headers=auth).status_code == 429


def test_token_bucket_refills() -> None:
    limiter = RateLimiter(rate=2, burst=1)
    assert limiter.allow("a", now=0.0) == 0
    assert limiter.allow("a", now=0.1) > 0
    assert limiter.allow("b", now=0.1) == 0
    assert limiter.allow("a", now=0.6) == 0
    assert RateLimiter(0, 1).allow("a") == 0


def test_policy_reloads_without_restart(make_service: Any, tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text('version = "one"\n[default]\nmin_mial = 1\n')
    service = make_service(policy_file=str(policy))
    client, secret = service.clients.add("p", audiences=["https://api.test"])
    auth = basic(client.client_id, secret)
    params = {"grant_type": ["client_credentials"]}
    assert service.token(params, auth).body["access_token"]

    policy.write_text('version = "two"\n[default]\nmin_mial = 2\n')
    os.utime(policy, ns=(time.time_ns(), time.time_ns() + 10**9))
    service._policy_checked = 0.0  # skip the once-a-second throttle
    from issuer.errors import InsufficientAssurance

    try:
        service.token(params, auth)
    except InsufficientAssurance as exc:
        assert "(policy two)" in exc.description
    else:
        raise AssertionError("the reloaded policy was not applied")
    assert service.audit.recent(limit=1)[0]["policy_version"] == "two"

    # A broken file keeps the policy in force.
    policy.write_text("version = \n")
    os.utime(policy, ns=(time.time_ns(), time.time_ns() + 2 * 10**9))
    service._policy_checked = 0.0
    service.reload_policy_if_changed()
    assert service.policy.version == "two"


def test_sqlite_connections_use_wal_and_small_checkpoints(service: Any) -> None:
    from issuer.storage import WAL_AUTOCHECKPOINT_PAGES

    with service.db.engine.connect() as conn:
        pragmas = [
            conn.exec_driver_sql(f"PRAGMA {name}").scalar()
            for name in ("journal_mode", "synchronous", "wal_autocheckpoint")
        ]
    # synchronous 1 is NORMAL.
    assert pragmas == ["wal", 1, WAL_AUTOCHECKPOINT_PAGES]
    assert WAL_AUTOCHECKPOINT_PAGES == 250


def test_a_fresh_home_folder_is_created(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from issuer.cli import main

    home = tmp_path / "not" / "yet"
    result = CliRunner().invoke(
        main, ["--home", str(home), "client", "add", "x", "--audience", "https://a"]
    )
    assert result.exit_code == 0, result.output
    assert (home / "wimse-issuer.db").is_file()
    assert oct(home.stat().st_mode & 0o777) == "0o700"


def test_migrations_build_the_schema_the_models_declare(tmp_path: Path) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from issuer.storage import Base, Database

    db = Database(f"sqlite:///{tmp_path / 'issuer.db'}")
    db.migrate()
    with db.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    db.dispose()
