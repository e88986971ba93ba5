"""POST /challenge: client-bound, single-use, short-lived nonces."""

from __future__ import annotations

import time
from typing import Any

import pytest

from .conftest import basic


@pytest.fixture
def two_clients(service: Any) -> tuple[str, str]:
    a, a_secret = service.clients.add("a", audiences=["https://api.test"])
    b, b_secret = service.clients.add("b", audiences=["https://api.test"])
    return basic(a.client_id, a_secret), basic(b.client_id, b_secret)


def test_challenge_returns_nonce_and_lifetime(
    client_app: Any, two_clients: Any
) -> None:
    resp = client_app.post(
        "/challenge", data={}, headers={"Authorization": two_clients[0]}
    )
    assert resp.status_code == 200
    assert resp.headers["Cache-Control"] == "no-store"
    body = resp.get_json()
    assert set(body) == {"nonce", "expires_in"}
    assert body["expires_in"] == 120
    assert len(body["nonce"]) >= 43


def test_challenge_requires_client_authentication(client_app: Any) -> None:
    resp = client_app.post("/challenge", data={})
    assert resp.status_code == 401
    assert resp.get_json()["error"] == "invalid_client"


def test_nonce_is_single_use_and_bound_to_its_client(
    service: Any, two_clients: Any
) -> None:
    nonce = service.challenge({}, two_clients[0])["nonce"]
    a_id = service.clients.all()[0].client_id
    b_id = service.clients.all()[1].client_id
    now = time.time()
    assert not service.db.consume_nonce(b_id, nonce, now)
    assert service.db.consume_nonce(a_id, nonce, now)
    assert not service.db.consume_nonce(a_id, nonce, now)


def test_nonce_expires(service: Any, two_clients: Any) -> None:
    nonce = service.challenge({}, two_clients[0])["nonce"]
    cid = service.clients.all()[0].client_id
    assert not service.db.consume_nonce(cid, nonce, time.time() + 121)


def test_outstanding_nonces_are_capped_per_client(make_service: Any, home: Any) -> None:
    service = make_service(max_outstanding_nonces=3)
    client, secret = service.clients.add("c", audiences=["https://api.test"])
    auth = basic(client.client_id, secret)
    t0 = time.time()
    nonces = [service.challenge({}, auth, now=t0 + i)["nonce"] for i in range(5)]
    now = t0 + 5
    # The two oldest were dropped to keep three outstanding.
    assert [service.db.consume_nonce(client.client_id, n, now) for n in nonces] == [
        False,
        False,
        True,
        True,
        True,
    ]


def test_metadata_names_the_challenge_endpoint(client_app: Any) -> None:
    meta = client_app.get("/.well-known/oauth-authorization-server").get_json()
    assert meta["challenge_endpoint"] == "https://issuer.test/challenge"
