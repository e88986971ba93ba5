"""Flask decorator, WSGI and ASGI middleware: tokens in, challenges out."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
from collections.abc import Callable
from typing import Any
from wsgiref.util import setup_testing_defaults

import pytest

from tests.verifier import (
    AUDIENCE,
    ISSUER,
    MAAL_3,
    MIAL_3,
    DPoPKey,
    FakeIssuer,
)
from verifier import TokenVerifier, VerifiedToken, VerifierError, requirement
from verifier.integrations import authenticate, error_response, read_credentials
from verifier.integrations.asgi import AssuranceMiddleware as ASGIMiddleware
from verifier.integrations.flask import current_token, require_assurance
from verifier.integrations.wsgi import AssuranceMiddleware as WSGIMiddleware
from verifier.requirements import PROBLEM_TYPE

try:
    # Module-level, so that FastAPI can resolve the string annotations of the
    # example endpoints below; the tests skip when it is absent.
    import fastapi
except ImportError:
    fastapi = None

ORIGIN = "https://api.test"


@pytest.fixture
def issuer() -> FakeIssuer:
    return FakeIssuer("ES256")


@pytest.fixture
def verifier(issuer: FakeIssuer) -> TokenVerifier:
    return TokenVerifier(ISSUER, AUDIENCE, jwks=issuer.jwks())


def _params(challenge: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = challenge.partition(" ")
    params = {}
    for part in rest.split(", ") if rest else []:
        name, _, value = part.partition("=")
        params[name] = value.strip('"')
    return scheme, params


# -- header parsing ----------------------------------------------------------


def test_reads_bearer_and_dpop_credentials() -> None:
    creds = read_credentials(["Bearer abc.def.ghi"], [])
    assert (creds.presentation, creds.token, creds.dpop_proof) == (
        "bearer",
        "abc.def.ghi",
        None,
    )
    creds = read_credentials(["dpop abc.def.ghi"], ["p.q.r"])
    assert (creds.presentation, creds.dpop_proof) == ("dpop", "p.q.r")


def test_header_faults_map_to_their_errors() -> None:
    from verifier import InvalidDPoPProof, InvalidRequest, MissingToken

    with pytest.raises(MissingToken):
        read_credentials([], [])
    with pytest.raises(MissingToken):
        read_credentials(["Basic dXNlcjpwYXNz"], [])
    with pytest.raises(InvalidRequest):
        read_credentials(["Bearer a", "Bearer b"], [])
    with pytest.raises(InvalidRequest):
        read_credentials(["Bearer a, Bearer b"], [])
    with pytest.raises(InvalidRequest):
        read_credentials(["Bearer "], [])
    with pytest.raises(InvalidDPoPProof):
        read_credentials(["DPoP a.b.c"], ["x", "y"])


# -- Flask -------------------------------------------------------------------


def _flask_app(verifier: TokenVerifier) -> Any:
    flask = pytest.importorskip("flask")
    app = flask.Flask("api")

    @app.get("/open")
    @require_assurance(verifier)
    def open_route() -> Any:
        return {"sub": current_token().sub}

    @app.get("/payments")
    @require_assurance(verifier, mial=2, dimensions="maal.boundary>=2")
    def payments() -> Any:
        return {"mial": current_token().mial}

    @app.get("/scoped")
    @require_assurance(verifier, scopes=["admin"])
    def scoped() -> Any:
        return {}

    return app.test_client()


def test_flask_lets_a_good_token_through(
    issuer: FakeIssuer, verifier: TokenVerifier
) -> None:
    client = _flask_app(verifier)

    resp = client.get("/open", headers={"Authorization": "Bearer " + issuer.mint()})

    assert resp.status_code == 200
    assert resp.get_json()["sub"] == issuer.claims()["sub"]


def test_flask_refuses_missing_token_with_both_challenges(
    verifier: TokenVerifier,
) -> None:
    client = _flask_app(verifier)

    resp = client.get("/open")

    assert resp.status_code == 401
    challenges = resp.headers.getlist("WWW-Authenticate")
    assert challenges[0] == "Bearer"
    scheme, params = _params(challenges[1])
    assert scheme == "DPoP"
    assert set(params["algs"].split()) == {"ES256", "EdDSA", "PS256", "RS256"}


def test_flask_refuses_invalid_token(
    issuer: FakeIssuer, verifier: TokenVerifier
) -> None:
    client = _flask_app(verifier)
    token = issuer.mint(issuer.claims(aud="https://other.test"))

    resp = client.get("/open", headers={"Authorization": "Bearer " + token})

    assert resp.status_code == 401
    scheme, params = _params(resp.headers["WWW-Authenticate"])
    assert (scheme, params["error"]) == ("Bearer", "invalid_token")
    assert resp.get_json()["error"] == "invalid_token"


def test_flask_answers_step_up_challenge_and_problem(
    issuer: FakeIssuer, verifier: TokenVerifier
) -> None:
    client = _flask_app(verifier)

    resp = client.get("/payments", headers={"Authorization": "Bearer " + issuer.mint()})

    assert resp.status_code == 401
    assert resp.mimetype == "application/problem+json"
    scheme, params = _params(resp.headers["WWW-Authenticate"])
    assert scheme == "Bearer"
    assert params["error"] == "insufficient_workload_assurance"
    assert params["min_mial"] == "2"
    assert params["min_assurance"] == "maal.boundary>=2"
    body = resp.get_json()
    assert body["type"] == PROBLEM_TYPE
    assert body["unmet"] == ["mial", "maal.boundary"]


def test_flask_accepts_dpop_bound_strong_token(
    issuer: FakeIssuer, verifier: TokenVerifier
) -> None:
    client = _flask_app(verifier)
    holder = DPoPKey()
    token = issuer.mint(
        issuer.claims(mial_vector=MIAL_3, maal_vector=MAAL_3, cnf={"jkt": holder.jkt})
    )
    proof = holder.proof("GET", "http://localhost/payments", token)

    resp = client.get(
        "/payments", headers={"Authorization": "DPoP " + token, "DPoP": proof}
    )

    assert resp.status_code == 200
    assert resp.get_json()["mial"] == 3


def test_flask_refuses_replayed_dpop_proof_with_dpop_challenge(
    issuer: FakeIssuer, verifier: TokenVerifier
) -> None:
    client = _flask_app(verifier)
    holder = DPoPKey()
    token = issuer.mint(issuer.claims(cnf={"jkt": holder.jkt}))
    proof = holder.proof("GET", "http://localhost/open", token)
    headers = {"Authorization": "DPoP " + token, "DPoP": proof}

    assert client.get("/open", headers=headers).status_code == 200
    resp = client.get("/open", headers=headers)

    assert resp.status_code == 401
    scheme, params = _params(resp.headers["WWW-Authenticate"])
    assert (scheme, params["error"]) == ("DPoP", "invalid_dpop_proof")


def test_flask_insufficient_scope(issuer: FakeIssuer, verifier: TokenVerifier) -> None:
    client = _flask_app(verifier)

    resp = client.get("/scoped", headers={"Authorization": "Bearer " + issuer.mint()})

    assert resp.status_code == 403
    _, params = _params(resp.headers["WWW-Authenticate"])
    assert params["error"] == "insufficient_scope"
    assert params["scope"] == "admin"


def test_flask_decorator_refuses_malformed_requirement(
    verifier: TokenVerifier,
) -> None:
    with pytest.raises(ValueError):
        require_assurance(verifier, dimensions="maal.nothing>=2")


def test_refusal_body_never_carries_operator_detail(
    issuer: FakeIssuer, verifier: TokenVerifier
) -> None:
    client = _flask_app(verifier)
    token = issuer.mint(issuer.claims(aud="https://other.test"))

    resp = client.get("/open", headers={"Authorization": "Bearer " + token})

    assert set(resp.get_json()) == {"error", "error_description"}
    assert token not in resp.get_data(as_text=True)


# -- WSGI --------------------------------------------------------------------


def _wsgi_call(
    app: Callable[..., Any], path: str, headers: dict[str, str]
) -> tuple[str, list[tuple[str, str]], bytes, dict[str, Any]]:
    environ: dict[str, Any] = {"PATH_INFO": path, "wsgi.input": io.BytesIO()}
    setup_testing_defaults(environ)
    for name, value in headers.items():
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    seen: dict[str, Any] = {}

    def start_response(status: str, hdrs: list[tuple[str, str]]) -> None:
        seen["status"], seen["headers"] = status, hdrs

    body = b"".join(app(environ, start_response))
    return seen["status"], seen["headers"], body, environ


def _inner_wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
    token = environ.get("wimse.token")
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps({"mial": token.mial if token else None}).encode()]


def test_wsgi_routes_public_and_protected_paths(
    issuer: FakeIssuer, verifier: TokenVerifier
) -> None:
    app = WSGIMiddleware(
        _inner_wsgi,
        verifier,
        routes={"/health": None, "/payments": requirement(mial=2)},
    )

    assert _wsgi_call(app, "/health", {})[0].startswith("200")
    status, _, body, environ = _wsgi_call(
        app, "/orders", {"Authorization": "Bearer " + issuer.mint()}
    )
    assert status.startswith("200")
    assert json.loads(body) == {"mial": 1}
    assert environ["wimse.token"].sub == issuer.claims()["sub"]

    status, headers, body, _ = _wsgi_call(
        app, "/payments", {"Authorization": "Bearer " + issuer.mint()}
    )
    assert status.startswith("401")
    assert dict(headers)["Content-Type"] == "application/problem+json"
    assert json.loads(body)["unmet"] == ["mial"]


def test_wsgi_refuses_missing_token(verifier: TokenVerifier) -> None:
    status, headers, _, _ = _wsgi_call(WSGIMiddleware(_inner_wsgi, verifier), "/", {})

    assert status == "401 Unauthorized"
    assert ("WWW-Authenticate", "Bearer") in headers


def test_wsgi_dpop_uses_the_request_url(
    issuer: FakeIssuer, verifier: TokenVerifier
) -> None:
    app = WSGIMiddleware(_inner_wsgi, verifier, public_url=ORIGIN)
    holder = DPoPKey()
    token = issuer.mint(issuer.claims(cnf={"jkt": holder.jkt}))

    ok = _wsgi_call(
        app,
        "/orders",
        {
            "Authorization": "DPoP " + token,
            "DPoP": holder.proof("GET", ORIGIN + "/orders", token),
        },
    )
    wrong = _wsgi_call(
        app,
        "/orders",
        {
            "Authorization": "DPoP " + token,
            "DPoP": holder.proof("GET", ORIGIN + "/other", token),
        },
    )

    assert ok[0].startswith("200")
    assert wrong[0].startswith("401")


def test_wsgi_key_source_fault_is_503(issuer: FakeIssuer) -> None:
    from tests.conftest import free_port

    url = f"http://127.0.0.1:{free_port()}"
    verifier = TokenVerifier(url, AUDIENCE, allow_http=True, timeout=1)
    app = WSGIMiddleware(_inner_wsgi, verifier)
    token = FakeIssuer("ES256", issuer=url).mint()

    status, headers, body, _ = _wsgi_call(
        app, "/", {"Authorization": "Bearer " + token}
    )

    assert status.startswith("503")
    assert "WWW-Authenticate" not in dict(headers)
    assert json.loads(body)["error"] == "temporarily_unavailable"


# -- ASGI --------------------------------------------------------------------


async def _inner_asgi(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await send({"type": "lifespan.startup.complete"})
        return
    token = scope["state"]["wimse_token"]
    body = json.dumps({"mial": token.mial, "maal": token.maal}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def _asgi_call(
    app: Any, path: str, headers: dict[str, str], kind: str = "http"
) -> list[dict[str, Any]]:
    scope = {
        "type": kind,
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "https" if kind == "http" else "wss",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        + [(b"host", b"api.test")],
        "server": ("api.test", 443),
        "state": {},
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect" if kind == "websocket" else "http.request"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent


def test_asgi_lets_good_token_through_and_shares_no_state(
    issuer: FakeIssuer, verifier: TokenVerifier
) -> None:
    app = ASGIMiddleware(_inner_asgi, verifier)

    sent = _asgi_call(app, "/orders", {"Authorization": "Bearer " + issuer.mint()})

    assert sent[0]["status"] == 200
    assert json.loads(sent[1]["body"]) == {"mial": 1, "maal": 1}


def test_asgi_step_up_challenge(issuer: FakeIssuer, verifier: TokenVerifier) -> None:
    app = ASGIMiddleware(_inner_asgi, verifier, require=requirement(mial=2, maal=2))

    sent = _asgi_call(app, "/orders", {"Authorization": "Bearer " + issuer.mint()})

    assert sent[0]["status"] == 401
    headers = dict(sent[0]["headers"])
    scheme, params = _params(headers[b"www-authenticate"].decode())
    assert (scheme, params["min_mial"], params["min_maal"]) == ("Bearer", "2", "2")
    assert headers[b"content-type"] == b"application/problem+json"
    assert json.loads(sent[1]["body"])["unmet"] == ["mial", "maal"]


def test_asgi_dpop_with_offload(issuer: FakeIssuer, verifier: TokenVerifier) -> None:
    app = ASGIMiddleware(_inner_asgi, verifier, offload=True)
    holder = DPoPKey()
    token = issuer.mint(
        issuer.claims(mial_vector=MIAL_3, maal_vector=MAAL_3, cnf={"jkt": holder.jkt})
    )
    proof = holder.proof("GET", ORIGIN + "/orders", token)

    sent = _asgi_call(app, "/orders", {"Authorization": "DPoP " + token, "DPoP": proof})

    assert sent[0]["status"] == 200
    assert json.loads(sent[1]["body"]) == {"mial": 3, "maal": 3}


def test_asgi_public_route_and_lifespan_pass_through(verifier: TokenVerifier) -> None:
    async def inner(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": []})

    app = ASGIMiddleware(inner, verifier, routes={"/health": None})

    assert _asgi_call(app, "/health", {})[0]["status"] == 204
    lifespan = ASGIMiddleware(_inner_asgi, verifier)
    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    async def receive() -> Any:
        return {"type": "lifespan.startup"}

    asyncio.run(lifespan({"type": "lifespan"}, receive, send))
    assert sent == [{"type": "lifespan.startup.complete"}]


def test_asgi_websocket_without_token_is_closed(verifier: TokenVerifier) -> None:
    app = ASGIMiddleware(_inner_asgi, verifier)

    sent = _asgi_call(app, "/stream", {}, kind="websocket")

    assert sent == [{"type": "websocket.close", "code": 1008}]


@dataclasses.dataclass
class _Answer:
    status_code: int
    raw_headers: list[tuple[bytes, bytes]]
    body: bytes

    @property
    def headers(self) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in self.raw_headers}

    def header_list(self, name: str) -> list[str]:
        return [v.decode() for k, v in self.raw_headers if k.decode() == name]

    def json(self) -> Any:
        return json.loads(self.body)


class _Client:
    """Drives an ASGI application over plain asyncio, as a server would."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def get(self, path: str, headers: dict[str, str] | None = None) -> _Answer:
        sent = _asgi_call(self.app, path, headers or {})
        start = sent[0]
        body = b"".join(m.get("body", b"") for m in sent[1:])
        return _Answer(start["status"], list(start["headers"]), body)


def test_fastapi_middleware_example(
    issuer: FakeIssuer, verifier: TokenVerifier
) -> None:
    if fastapi is None:
        pytest.skip("FastAPI is not installed")
    app = fastapi.FastAPI()
    app.add_middleware(
        ASGIMiddleware,
        verifier=verifier,
        require=requirement(),
        routes={"/payments": requirement(mial=2), "/health": None},
    )

    @app.get("/orders")
    def orders(request: fastapi.Request) -> dict[str, Any]:
        token = request.state.wimse_token
        return {"caller": token.sub, "mial": token.mial}

    @app.get("/payments")
    def payments(request: fastapi.Request) -> dict[str, Any]:
        return {"mial": request.state.wimse_token.mial}

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    client = _Client(app)
    weak = {"Authorization": "Bearer " + issuer.mint()}
    strong = {
        "Authorization": "Bearer "
        + issuer.mint(issuer.claims(mial_vector=MIAL_3, maal_vector=MAAL_3))
    }

    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/orders").status_code == 401
    assert client.get("/orders", headers=weak).json()["mial"] == 1
    refused = client.get("/payments", headers=weak)
    assert refused.status_code == 401
    assert refused.headers["content-type"] == "application/problem+json"
    assert 'min_mial="2"' in refused.headers["www-authenticate"]
    assert client.get("/payments", headers=strong).json() == {"mial": 3}


def test_fastapi_dependency_example(
    issuer: FakeIssuer, verifier: TokenVerifier
) -> None:
    if fastapi is None:
        pytest.skip("FastAPI is not installed")
    from fastapi.responses import Response

    app = fastapi.FastAPI()

    class Refused(Exception):
        def __init__(self, exc: VerifierError, authorization: list[str]) -> None:
            self.out = error_response(
                exc, authorization=authorization, dpop_algs=verifier.dpop.algorithms
            )

    @app.exception_handler(Refused)
    async def refused(request: fastapi.Request, exc: Refused) -> Response:
        response = Response(exc.out.body, status_code=exc.out.status)
        for name, value in exc.out.headers:
            response.headers.append(name, value)
        return response

    def assurance(**levels: Any) -> Callable[[fastapi.Request], VerifiedToken]:
        req = requirement(**levels)

        def dependency(request: fastapi.Request) -> VerifiedToken:
            authorization = request.headers.getlist("authorization")
            try:
                return authenticate(
                    verifier,
                    authorization=authorization,
                    dpop=request.headers.getlist("dpop"),
                    method=request.method,
                    url=str(request.url),
                    require=req,
                )
            except VerifierError as exc:
                raise Refused(exc, authorization) from None

        return dependency

    @app.get("/payments")
    def payments(
        token: VerifiedToken = fastapi.Depends(assurance(mial=2)),  # noqa: B008
    ) -> dict[str, Any]:
        return {"caller": token.sub, "mial": token.mial}

    client = _Client(app)
    holder = DPoPKey()
    strong = issuer.mint(
        issuer.claims(mial_vector=MIAL_3, maal_vector=MAAL_3, cnf={"jkt": holder.jkt})
    )
    proof = holder.proof("GET", ORIGIN + "/payments", strong)

    missing = client.get("/payments")
    assert missing.status_code == 401
    assert missing.header_list("www-authenticate")[0] == "Bearer"
    weak = client.get("/payments", headers={"Authorization": "Bearer " + issuer.mint()})
    assert weak.status_code == 401
    assert weak.json()["unmet"] == ["mial"]
    ok = client.get(
        "/payments", headers={"Authorization": "DPoP " + strong, "DPoP": proof}
    )
    assert ok.status_code == 200
    assert ok.json()["mial"] == 3
