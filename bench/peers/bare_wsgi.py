"""The limit reference: a token endpoint as a bare WSGI callable, no framework.

It does only the work every issuance needs and nothing else: parse the form
body, check the Basic client secret (HMAC-SHA256 digest compared in constant
time), build RFC 9068 claims, sign them with ES256 through PyJWT, and commit
one audit row to SQLite (WAL, ``synchronous=NORMAL``, as the issuer's
embedded store). No assurance evaluation, no policy, no client lookup in a
database: the client lives in memory.

Configured by the environment that ``bench/run.py`` sets:

- ``BENCH_CLIENT_ID`` and ``BENCH_CLIENT_SECRET``: the one client.
- ``BENCH_AUDIENCE``: the ``aud`` of every token.
- ``BENCH_DB``: the SQLite file for audit rows.
- ``BENCH_ISSUER``: the ``iss`` claim.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs, unquote_plus

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

StartResponse = Callable[[str, list[tuple[str, str]]], Any]

ISSUER = os.environ.get("BENCH_ISSUER", "http://127.0.0.1")
AUDIENCE = os.environ.get("BENCH_AUDIENCE", "https://api.bench")
DB_PATH = os.environ.get("BENCH_DB", "bare-audit.db")
LIFETIME = 300

_HMAC_KEY = secrets.token_bytes(32)
_CLIENTS = {
    os.environ.get("BENCH_CLIENT_ID", "bench"): hmac.new(
        _HMAC_KEY,
        os.environ.get("BENCH_CLIENT_SECRET", "").encode(),
        hashlib.sha256,
    ).digest()
}
_KEY = ec.generate_private_key(ec.SECP256R1())
_HEADERS = {"typ": "at+jwt", "kid": "bare"}
_JSON = [
    ("Content-Type", "application/json"),
    ("Cache-Control", "no-store"),
    ("Pragma", "no-cache"),
]
_INSERT = (
    "INSERT INTO audit (time, client_id, subject, decision, jti, audience, "
    "expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_local = threading.local()


def _connection() -> sqlite3.Connection:
    # One connection per server thread: sqlite3 connections are not shared.
    conn: sqlite3.Connection | None = getattr(_local, "conn", None)
    if conn is None:
        conn = sqlite3.connect(DB_PATH, timeout=5, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA busy_timeout=5000")
        conn.execute("PRAGMA synchronous=NORMAL")
        _local.conn = conn
    return conn


def _create_table() -> None:
    _connection().execute(
        "CREATE TABLE IF NOT EXISTS audit (id INTEGER PRIMARY KEY, time REAL, "
        "client_id TEXT, subject TEXT, decision TEXT, jti TEXT, audience TEXT, "
        "expires_at REAL)"
    )


def _reply(
    start_response: StartResponse, status: str, body: dict[str, Any]
) -> Iterable[bytes]:
    data = json.dumps(body, separators=(",", ":")).encode()
    start_response(status, [*_JSON, ("Content-Length", str(len(data)))])
    return [data]


def _client(authorization: str) -> str | None:
    """The client id when the Basic credentials match, else ``None``."""
    if authorization[:6].lower() != "basic ":
        return None
    try:
        raw = base64.b64decode(authorization[6:], validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    client_id, _, secret = raw.partition(":")
    client_id, secret = unquote_plus(client_id), unquote_plus(secret)
    expected = _CLIENTS.get(client_id)
    digest = hmac.new(_HMAC_KEY, secret.encode(), hashlib.sha256).digest()
    if expected is None or not hmac.compare_digest(digest, expected):
        return None
    return client_id


def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """WSGI entry: ``POST /token`` (client_credentials) and ``GET /healthz``."""
    path = environ.get("PATH_INFO", "")
    if path == "/healthz":
        return _reply(start_response, "200 OK", {"status": "ok"})
    if path != "/token" or environ.get("REQUEST_METHOD") != "POST":
        return _reply(start_response, "404 Not Found", {"error": "not_found"})

    length = int(environ.get("CONTENT_LENGTH") or 0)
    form = parse_qs(environ["wsgi.input"].read(length).decode("ascii"))
    if form.get("grant_type") != ["client_credentials"]:
        return _reply(
            start_response, "400 Bad Request", {"error": "unsupported_grant_type"}
        )
    client_id = _client(environ.get("HTTP_AUTHORIZATION", ""))
    if client_id is None:
        return _reply(start_response, "401 Unauthorized", {"error": "invalid_client"})

    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "sub": client_id,
        "aud": AUDIENCE,
        "client_id": client_id,
        "iat": now,
        "nbf": now,
        "exp": now + LIFETIME,
        "jti": secrets.token_urlsafe(16),
    }
    token = jwt.encode(claims, _KEY, algorithm="ES256", headers=_HEADERS)

    conn = _connection()
    conn.execute("BEGIN")
    conn.execute(
        _INSERT,
        (
            time.time(),
            client_id,
            client_id,
            "issued",
            claims["jti"],
            AUDIENCE,
            claims["exp"],
        ),
    )
    conn.execute("COMMIT")

    body = {"access_token": token, "token_type": "Bearer", "expires_in": LIFETIME}
    return _reply(start_response, "200 OK", body)


_create_table()
