"""Regression tests for the findings of the adversarial review."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from issuer.config import ConfigError, Settings
from issuer.errors import InvalidRequest
from issuer.web import create_app

from .conftest import (
    basic,
    read_until_closed,
    serving_worker_pids,
    wait_for_workers,
)

TE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"


@pytest.fixture
def oidc_service(make_service: Any, tmp_path: Path) -> tuple[Any, Any]:
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    jwk["kid"] = "k1"
    path = tmp_path / "oidc.json"
    path.write_text(json.dumps({"keys": [jwk]}))
    service = make_service(
        trust_sources={
            "ci": {
                "platform": "oidc",
                "issuer": "https://ci.test",
                "audience": "wimse",
                "jwks_file": str(path),
                "algorithms": ["ES256"],
            }
        }
    )
    return service, key


def oidc_token(key: Any, sub: str) -> str:
    now = int(time.time())
    return jwt.encode(
        {"iss": "https://ci.test", "aud": "wimse", "sub": sub, "iat": now,
         "exp": now + 300},
        key,
        algorithm="ES256",
        headers={"kid": "k1"},
    )  # fmt: skip


@pytest.mark.parametrize("sub", ["ab\ud800cd", "line\nbreak", "x" * 600, "nul\x00"])
def test_unprintable_or_overlong_subjects_are_refused_and_audited(
    oidc_service: tuple[Any, Any], sub: str
) -> None:
    service, key = oidc_service
    client, secret = service.clients.add("c", audiences=["https://api.test"])
    params = {
        "grant_type": [TE],
        "subject_token": [oidc_token(key, sub)],
        "subject_token_type": [JWT_TYPE],
    }
    with pytest.raises(InvalidRequest) as info:
        service.token(params, basic(client.client_id, secret))
    assert "malformed" in info.value.description
    record = service.audit.recent(limit=1)[0]
    assert (record["decision"], record["error"]) == ("refused", "invalid_request")


def test_concurrent_revocations_all_succeed(service: Any) -> None:
    client, secret = service.clients.add("r", audiences=["https://api.test"])
    auth = basic(client.client_id, secret)
    token = service.token({"grant_type": ["client_credentials"]}, auth).body[
        "access_token"
    ]
    app = create_app(service)
    statuses: list[int] = []

    def revoke() -> None:
        resp = app.test_client().post(
            "/revoke", data={"token": token}, headers={"Authorization": auth}
        )
        statuses.append(resp.status_code)

    threads = [threading.Thread(target=revoke) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [200] * 8


def test_registering_a_key_retires_the_secret(service: Any) -> None:
    client, secret = service.clients.add("s", audiences=["https://api.test"])
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    updated, _ = service.clients.update(client.client_id, jwks={"keys": [jwk]})
    assert updated.auth_methods == ("private_key_jwt",)
    assert not service.clients.check_secret(updated, secret)


def test_memory_replay_store_with_several_workers_is_refused() -> None:
    with pytest.raises(ConfigError):
        Settings(workers=2, replay_store="memory").validate()


def test_chunked_body_over_the_limit_is_refused_not_truncated(
    live_issuer: Any,
) -> None:
    live = live_issuer({"max_body_bytes": 2048})
    reg = live.add_client("chunky", "--audience", "https://api.test")
    body = ("grant_type=client_credentials&x=" + "a" * 2100 + "&min_mial=2").encode()
    host, port = live.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    auth = basic(reg["client_id"], reg["client_secret"])

    def chunks() -> Any:
        for i in range(0, len(body), 500):
            yield body[i : i + 500]

    conn.request(
        "POST",
        "/token",
        body=chunks(),
        headers={
            "Authorization": auth,
            "Content-Type": "application/x-www-form-urlencoded",
        },
        encode_chunked=True,
    )
    resp = conn.getresponse()
    assert resp.status == 413
    assert json.loads(resp.read())["error"] == "invalid_request"
    conn.close()


def test_metrics_add_up_across_workers(live_issuer: Any) -> None:
    live = live_issuer({"replay_store": "database"}, workers=2)
    reg = live.add_client("m", "--audience", "https://api.test")
    session = requests.Session()
    for _ in range(20):
        resp = session.post(
            live.url + "/token",
            data={"grant_type": "client_credentials"},
            auth=(reg["client_id"], reg["client_secret"]),
            timeout=10,
        )
        assert resp.status_code == 200
    line = (
        'wimse_tokens_issued_total{grant_type="client_credentials",maal="1",mial="1"}'
    )
    for _ in range(4):
        text = requests.get(live.url + "/metrics", timeout=10).text
        total = sum(
            float(row.split()[-1]) for row in text.splitlines() if row.startswith(line)
        )
        assert total == 20.0


def test_read_body_refuses_a_negative_length_and_broken_chunking() -> None:
    import io

    from issuer.errors import InvalidRequest
    from issuer.web import read_body

    with pytest.raises(InvalidRequest) as negative:
        read_body(io.BytesIO(b"x"), -5, 100)
    assert negative.value.error == "invalid_request"
    assert negative.value.status == 400

    class BrokenChunks:
        def read(self, size: int) -> bytes:
            raise ValueError("Bad chunked transfer size: b'zz'")

    with pytest.raises(InvalidRequest) as broken:
        read_body(BrokenChunks(), None, 100)
    assert str(broken.value.description) == "malformed chunked request body"


def test_negative_content_length_is_invalid_request_on_the_wire(
    live_issuer: Any,
) -> None:
    live = live_issuer()
    host, port = live.url.removeprefix("http://").split(":")
    for path in ("/token", "/introspect"):
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(
                f"POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                "Content-Type: application/x-www-form-urlencoded\r\n"
                "Content-Length: -5\r\n\r\n".encode()
            )
            answer = read_until_closed(sock)
        # granian refuses the header itself (400, its own body): never 413.
        assert answer.startswith(b"HTTP/1.1 400"), answer[:100]


def test_negative_content_length_reaching_the_app_is_invalid_request(
    service: Any,
) -> None:
    """Servers that pass the header through (cheroot, in TLS mode) get an
    OAuth error, never 413 or 500."""
    import io

    from issuer.web import create_app

    app = create_app(service)
    for path in ("/token", "/introspect"):
        environ = {
            "REQUEST_METHOD": "POST",
            "PATH_INFO": path,
            "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": "8080",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(b""),
            "wsgi.errors": io.StringIO(),
            "CONTENT_TYPE": "application/x-www-form-urlencoded",
            "CONTENT_LENGTH": "-5",
        }
        seen: list[str] = []
        body = b"".join(app(environ, lambda status, _h, seen=seen: seen.append(status)))
        if path == "/token":
            assert seen[0].startswith("400"), seen
            assert json.loads(body)["error"] == "invalid_request"
        else:
            # werkzeug reads an invalid Content-Length as none: an empty
            # form, refused for want of client authentication.
            assert seen[0].startswith("401"), seen
            assert json.loads(body)["error"] == "invalid_client"


def _worker_pids(main_pid: int) -> set[int]:
    children = Path(f"/proc/{main_pid}/task/{main_pid}/children").read_text()
    return {int(pid) for pid in children.split()}


def test_policy_gauge_shows_running_workers_only(live_issuer: Any) -> None:
    """The serve command's own process and a worker killed by a signal
    leave no ``wimse_policy_info`` series behind."""
    live = live_issuer({"replay_store": "database"}, workers=2)
    wait_for_workers(live, 2)
    workers = _worker_pids(live.process.pid)
    assert len(workers) == 2
    # Each worker writes its gauge when it starts.
    assert serving_worker_pids(live.url) == workers
    victim = min(workers)
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        now = _worker_pids(live.process.pid)
        if len(now) == 2 and victim not in now:
            break
        time.sleep(0.2)
    assert victim not in now and len(now) == 2
    # Any worker may answer; none reports the dead one.
    for _ in range(6):
        pids = serving_worker_pids(live.url)
        assert victim not in pids
        assert live.process.pid not in pids
        assert pids <= now
