"""Authlib's documented RFC 9068 path in a minimal Flask app.

A Flask ``AuthorizationServer`` with the client_credentials grant and a
``JWTBearerTokenGenerator`` subclass registered as the default token
generator, signing with one ES256 key. The single client is held in memory
(no database), authenticates with client_secret_basic, and its secret is
compared in constant time. Issued JWTs need no storage, so ``save_token``
keeps nothing.

Configured by the environment that ``bench/run.py`` sets:
``BENCH_CLIENT_ID``, ``BENCH_CLIENT_SECRET``, ``BENCH_AUDIENCE`` and
``BENCH_ISSUER``. ``AUTHLIB_INSECURE_TRANSPORT`` must be set, since the
bench speaks plain HTTP on the loopback.
"""

from __future__ import annotations

import hmac
import os
from typing import Any

from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import ClientMixin, grants
from authlib.oauth2.rfc9068 import JWTBearerTokenGenerator
from flask import Flask, Response, jsonify
from joserfc.jwk import ECKey

ISSUER = os.environ.get("BENCH_ISSUER", "http://127.0.0.1")
AUDIENCE = os.environ.get("BENCH_AUDIENCE", "https://api.bench")


class MemoryClient(ClientMixin):  # type: ignore[misc]
    """One registered client for the client_credentials grant."""

    def __init__(self, client_id: str, secret: str) -> None:
        self.client_id = client_id
        self.secret = secret

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> None:
        return None

    def get_allowed_scope(self, scope: str | None) -> str:
        return ""

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return False

    def check_client_secret(self, client_secret: str) -> bool:
        return hmac.compare_digest(client_secret.encode(), self.secret.encode())

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method == "client_secret_basic"

    def check_response_type(self, response_type: str) -> bool:
        return False

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == "client_credentials"


class BenchTokenGenerator(JWTBearerTokenGenerator):  # type: ignore[misc]
    """RFC 9068 tokens signed by a key made once at start."""

    def __init__(self, issuer: str) -> None:
        super().__init__(issuer=issuer, alg="ES256")
        self.key = ECKey.generate_key("P-256", private=True)

    def get_jwks(self) -> ECKey:
        return self.key

    def get_audiences(self, client: Any, user: Any, scope: Any) -> str:
        return AUDIENCE


_CLIENT = MemoryClient(
    os.environ.get("BENCH_CLIENT_ID", "bench"),
    os.environ.get("BENCH_CLIENT_SECRET", ""),
)


def _query_client(client_id: str) -> MemoryClient | None:
    return _CLIENT if client_id == _CLIENT.client_id else None


def _save_token(token: dict[str, Any], request: Any) -> None:
    return None


app = Flask("authlib_bench")
server = AuthorizationServer(app, query_client=_query_client, save_token=_save_token)
server.register_grant(grants.ClientCredentialsGrant)
server.register_token_generator("default", BenchTokenGenerator(ISSUER))


@app.post("/token")
def token() -> Response:
    return server.create_token_response()  # type: ignore[no-any-return]


@app.get("/healthz")
def healthz() -> Response:
    return jsonify(status="ok")
