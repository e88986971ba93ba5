"""Machine step-up, end to end: an API protected by the verifier library
refuses a MIAL-1 token, the workload reads the challenge, exchanges its
platform token at the real issuer for a MIAL-2 token, and gets in."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask, jsonify
from werkzeug.serving import make_server

from verifier import TokenVerifier
from verifier.integrations.flask import current_token, require_assurance

from .test_live_server import K8S_ISSUER, _cluster, sa_token

TE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
API = "https://orders.test"


def challenge_params(header: str) -> dict[str, str]:
    """The auth-params of a WWW-Authenticate challenge (RFC 9110 11.6.1)."""
    return dict(re.findall(r'([a-z_]+)="([^"]*)"', header))


@pytest.fixture
def api(live_issuer: Any, tmp_path: Path) -> Iterator[dict[str, Any]]:
    key, kid, jwks_path = _cluster(tmp_path)
    live = live_issuer(
        {
            "trust_sources": {
                "cluster": {
                    "platform": "kubernetes",
                    "issuer": K8S_ISSUER,
                    "audience": "wimse-issuer",
                    "jwks_file": str(jwks_path),
                }
            }
        }
    )
    verifier = TokenVerifier(issuer=live.url, audience=API, allow_http=True)
    app = Flask("orders")

    @app.get("/orders")
    @require_assurance(verifier, mial=2)
    def orders() -> Any:
        token = current_token()
        return jsonify(sub=token.sub, mial=token.mial)

    server = make_server("127.0.0.1", 0, app)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield {
            "live": live,
            "url": f"http://127.0.0.1:{server.server_port}",
            "platform_token": sa_token(key, kid, "wimse-issuer"),
        }
    finally:
        server.shutdown()
        thread.join(timeout=5)
        server.server_close()


def test_api_refuses_mial1_then_accepts_after_step_up(api: dict[str, Any]) -> None:
    live = api["live"]
    reg = live.add_client("orders-client", "--audience", API)
    auth = (reg["client_id"], reg["client_secret"])

    weak = requests.post(
        live.url + "/token",
        data={"grant_type": "client_credentials"},
        auth=auth,
        timeout=10,
    ).json()["access_token"]
    refused = requests.get(
        api["url"] + "/orders", headers={"Authorization": f"Bearer {weak}"}, timeout=10
    )
    assert refused.status_code == 401
    params = challenge_params(refused.headers["WWW-Authenticate"])
    assert params["error"] == "insufficient_workload_assurance"
    assert params["min_mial"] == "2"
    problem = refused.json()
    assert problem["unmet"] == ["mial"]
    assert problem["observed"]["mial"] == 1

    # Step up: the challenge's parameters go straight into the token request.
    step_up = {k: v for k, v in params.items() if k.startswith("min_")}
    strong = requests.post(
        live.url + "/token",
        data={
            "grant_type": TE,
            "subject_token": api["platform_token"],
            "subject_token_type": JWT_TYPE,
            "resource": API,
            **step_up,
        },
        auth=auth,
        timeout=10,
    )
    assert strong.status_code == 200, strong.text
    accepted = requests.get(
        api["url"] + "/orders",
        headers={"Authorization": f"Bearer {strong.json()['access_token']}"},
        timeout=10,
    )
    assert accepted.status_code == 200
    assert accepted.json() == {"sub": "system:serviceaccount:payments:api", "mial": 2}


def test_issuer_refuses_a_step_up_it_cannot_meet(api: dict[str, Any]) -> None:
    live = api["live"]
    reg = live.add_client("greedy", "--audience", API)
    resp = requests.post(
        live.url + "/token",
        data={
            "grant_type": TE,
            "subject_token": api["platform_token"],
            "subject_token_type": JWT_TYPE,
            "min_assurance": "mial.supply_chain>=2",
        },
        auth=(reg["client_id"], reg["client_secret"]),
        timeout=10,
    )
    assert resp.status_code == 400
    body = resp.json()
    assert body["error"] == "insufficient_workload_assurance"
    assert "mial.supply_chain is 0, 2 required" in body["error_description"]
