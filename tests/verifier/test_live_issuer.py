"""End to end against a real ``wimse-issuer serve`` on a loopback port."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import requests

from tests.conftest import basic
from verifier import (
    InactiveToken,
    InsufficientAssurance,
    Introspector,
    TokenVerifier,
    requirement,
)
from verifier.integrations.flask import current_token, require_assurance

API = "https://api.test"


def _token(live: Any, client: dict[str, Any]) -> str:
    resp = requests.post(
        live.url + "/token",
        data={"grant_type": "client_credentials"},
        headers={"Authorization": basic(client["client_id"], client["client_secret"])},
        timeout=10,
    )
    assert resp.status_code == 200, resp.text
    token: str = resp.json()["access_token"]
    return token


@pytest.fixture
def live(live_issuer: Callable[..., Any]) -> Any:
    return live_issuer()


def test_verifies_a_real_client_credentials_token(live: Any) -> None:
    client = live.add_client("caller", "--audience", API)
    verifier = TokenVerifier(issuer=live.url, audience=API, allow_http=True)

    verified = verifier.verify(_token(live, client))

    assert verified.iss == live.url
    assert verified.client_id == client["client_id"]
    assert verified.mial == 1
    assert verified.maal == 1
    assert verified.maal_vector["boundary"] == 1
    assert verified.credential == "client_secret"


def test_mial_2_route_refuses_client_credentials_token(live: Any) -> None:
    client = live.add_client("caller", "--audience", API)
    verifier = TokenVerifier(issuer=live.url, audience=API, allow_http=True)

    with pytest.raises(InsufficientAssurance) as caught:
        verifier.verify(_token(live, client), require=requirement(mial=2))

    assert [s.item for s in caught.value.unmet] == ["mial"]
    assert 'min_mial="2"' in caught.value.www_authenticate()


def test_flask_api_answers_the_step_up_challenge(live: Any) -> None:
    flask = pytest.importorskip("flask")
    client = live.add_client("caller", "--audience", API)
    verifier = TokenVerifier(issuer=live.url, audience=API, allow_http=True)
    app = flask.Flask("orders")

    @app.get("/orders")
    @require_assurance(verifier, mial=1)
    def orders() -> Any:
        return {"sub": current_token().sub}

    @app.get("/payments")
    @require_assurance(verifier, mial=2)
    def payments() -> Any:
        return {}

    http = app.test_client()
    headers = {"Authorization": "Bearer " + _token(live, client)}

    assert http.get("/orders", headers=headers).status_code == 200
    refused = http.get("/payments", headers=headers)
    assert refused.status_code == 401
    assert (
        'error="insufficient_workload_assurance"' in refused.headers["WWW-Authenticate"]
    )
    assert refused.get_json()["unmet"] == ["mial"]


def test_introspection_sees_revocation(live: Any) -> None:
    caller = live.add_client("caller", "--audience", API)
    api = live.add_client("orders-api", "--audience", API, "--resource-server")
    introspector = Introspector(
        issuer=live.url,
        client_id=api["client_id"],
        client_secret=api["client_secret"],
        allow_http=True,
        cache_ttl=0,
    )
    verifier = TokenVerifier(
        issuer=live.url, audience=API, allow_http=True, introspection=introspector
    )
    token = _token(live, caller)

    assert verifier.verify(token).client_id == caller["client_id"]

    resp = requests.post(
        live.url + "/revoke",
        data={"token": token},
        headers={"Authorization": basic(caller["client_id"], caller["client_secret"])},
        timeout=10,
    )
    assert resp.status_code == 200
    with pytest.raises(InactiveToken):
        verifier.verify(token)
