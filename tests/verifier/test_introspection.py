"""Introspection client (RFC 7662 section 2) against a loopback endpoint."""

from __future__ import annotations

import base64
import time
from typing import Any

import pytest

from tests.verifier import Reply, counting_server
from verifier import InactiveToken, InsecureTransport, IntrospectionError, Introspector


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def _introspector(url: str, clock: Clock | None = None, **kw: Any) -> Introspector:
    return Introspector(
        url + "/introspect",
        client_id="api client",
        client_secret="s3cr+t",
        allow_http=True,
        clock=clock or Clock(),
        **kw,
    )


def test_active_answer_is_returned_and_cached() -> None:
    clock = Clock()
    with counting_server() as server:
        exp = int(time.time()) + 600
        server.routes["/introspect"] = Reply(200, {"active": True, "exp": exp})
        client = _introspector(server.url, clock, cache_ttl=30)

        assert client.introspect("tok")["exp"] == exp
        assert client.introspect("tok")["active"] is True
        assert server.count("/introspect") == 1

        clock.now += 31
        client.introspect("tok")
        assert server.count("/introspect") == 2


def test_cache_never_outlives_the_token() -> None:
    clock = Clock()
    with counting_server() as server:
        now = int(time.time())
        server.routes["/introspect"] = Reply(200, {"active": True, "exp": now + 5})
        client = _introspector(server.url, clock, cache_ttl=300)

        client.introspect("tok", now=now)
        clock.now += 10
        client.introspect("tok", now=now)
        assert server.count("/introspect") == 2


def test_inactive_answer_raises() -> None:
    with counting_server() as server:
        server.routes["/introspect"] = Reply(200, {"active": False})
        client = _introspector(server.url)

        with pytest.raises(InactiveToken):
            client.introspect("tok")
        with pytest.raises(InactiveToken):
            client.introspect("tok")
        assert server.count("/introspect") == 1


def test_expired_active_answer_counts_as_inactive() -> None:
    with counting_server() as server:
        server.routes["/introspect"] = Reply(200, {"active": True, "exp": 10})
        with pytest.raises(InactiveToken):
            _introspector(server.url).introspect("tok")


@pytest.mark.parametrize(
    "reply",
    [
        Reply(401, {"error": "invalid_client"}),
        Reply(200, {"active": "true"}),
        Reply(200, ["active"]),
        Reply(500, {}),
    ],
)
def test_bad_answers_are_introspection_errors(reply: Reply) -> None:
    with counting_server() as server:
        server.routes["/introspect"] = reply

        with pytest.raises(IntrospectionError):
            _introspector(server.url).introspect("tok")


def test_sends_form_encoded_basic_credentials() -> None:
    seen: dict[str, Any] = {}
    with counting_server() as server:

        def answer() -> Reply:
            return Reply(200, {"active": False})

        server.routes["/introspect"] = answer
        client = _introspector(server.url)
        seen["auth"] = client._authorization

    decoded = base64.b64decode(seen["auth"].removeprefix("Basic ")).decode()
    assert decoded == "api+client:s3cr%2Bt"


def test_refuses_http_endpoint_without_allow_http() -> None:
    with pytest.raises(InsecureTransport):
        Introspector("http://127.0.0.1:9/introspect", client_id="a", client_secret="b")


def test_endpoint_is_discovered_from_metadata() -> None:
    with counting_server() as server:
        server.routes["/.well-known/oauth-authorization-server"] = Reply(
            200,
            {"issuer": server.url, "introspection_endpoint": server.url + "/ask"},
        )
        server.routes["/ask"] = Reply(200, {"active": True})
        client = Introspector(
            issuer=server.url, client_id="a", client_secret="b", allow_http=True
        )

        assert client.introspect("tok") == {"active": True}
        assert server.count("/ask") == 1
