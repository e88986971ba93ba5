"""ASGI middleware demanding workload assurance (ASGI 3, HTTP and WebSocket).

Usable with any ASGI framework without importing one; with FastAPI or
Starlette: ``app.add_middleware(AssuranceMiddleware, verifier=verifier,
require=requirement(mial=2))``. The verified token is stored in
``scope["state"]["wimse_token"]`` (Starlette's ``request.state.wimse_token``)
and ``scope["wimse.token"]``.

Verification is synchronous. It is CPU work except when the key set is
fetched, which happens at most once per cache period or refetch interval;
pass ``offload=True`` to run every verification in the default thread pool
instead of on the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from typing import Any

from ..errors import VerifierError
from ..levels import Requirement
from ..token import TokenVerifier, VerifiedToken
from . import authenticate, error_response, pem_to_der

__all__ = ["SCOPE_KEY", "STATE_KEY", "AssuranceMiddleware", "scope_url"]

#: Scope key and state key under which the verified token is stored.
SCOPE_KEY = "wimse.token"
STATE_KEY = "wimse_token"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
# RFC 6455 section 7.4.1: 1008 is "policy violation".
_WS_POLICY_VIOLATION = 1008


def _headers(scope: Scope, name: bytes) -> list[str]:
    return [
        value.decode("latin-1")
        for key, value in scope.get("headers", [])
        if key.lower() == name
    ]


def scope_url(scope: Scope, public_url: str | None = None) -> str:
    """Rebuild the URL the client addressed, without query.

    Uses ``raw_path`` when the server gives it (the bytes the DPoP ``htu``
    was computed over), the ``Host`` header, else ``scope["server"]``.
    ``ws``/``wss`` become ``http``/``https`` for comparison.
    """
    raw = scope.get("raw_path")
    if isinstance(raw, bytes | bytearray) and raw:
        path = bytes(raw).decode("latin-1").partition("?")[0]
    else:
        path = scope.get("root_path", "") + scope.get("path", "/")
    if public_url is not None:
        return public_url.rstrip("/") + path
    scheme = {"ws": "http", "wss": "https"}.get(scope.get("scheme", "http"))
    scheme = scheme or scope.get("scheme", "http")
    hosts = _headers(scope, b"host")
    if hosts:
        host = hosts[0]
    else:
        server = scope.get("server") or ("localhost", None)
        host = str(server[0])
        if server[1] is not None and server[1] != _DEFAULT_PORTS.get(scheme):
            host = f"{host}:{server[1]}"
    return f"{scheme}://{host}{path}"


def _tls_cert(scope: Scope) -> bytes | None:
    # The ASGI TLS extension hands over the verified client chain as PEM,
    # leaf first.
    tls = (scope.get("extensions") or {}).get("tls") or {}
    chain = tls.get("client_cert_chain") or []
    if not chain:
        return None
    try:
        return pem_to_der(chain[0])
    except ValueError:
        return None


class AssuranceMiddleware:
    """Refuses HTTP requests and WebSocket handshakes whose token misses the
    route's requirement; passes lifespan and other scopes through.

    Options (defaults in brackets):

    - ``require``: requirement of every path not in ``routes``
      [``Requirement()``: a valid token, no minimum levels];
    - ``routes``: path prefix to requirement, ``None`` marking a public
      prefix [empty];
    - ``scopes``: scopes every protected request must carry [none];
    - ``realm``: realm of the challenges [none];
    - ``public_url``: external origin for DPoP ``htu`` checks [None: from
      the scope];
    - ``client_cert``: returns the client certificate DER from the scope
      [the ASGI TLS extension];
    - ``offload``: verify in the default thread pool [False].
    """

    def __init__(
        self,
        app: ASGIApp,
        verifier: TokenVerifier,
        *,
        require: Requirement | None = None,
        routes: Mapping[str, Requirement | None] | None = None,
        scopes: Iterable[str] = (),
        realm: str | None = None,
        public_url: str | None = None,
        client_cert: Callable[[Scope], bytes | None] | None = None,
        offload: bool = False,
    ) -> None:
        self.app = app
        self.verifier = verifier
        self.require = require if require is not None else Requirement()
        self.routes = sorted((routes or {}).items(), key=lambda r: -len(r[0]))
        self.scopes = tuple(scopes)
        self.realm = realm
        self.public_url = public_url
        self.client_cert = client_cert or _tls_cert
        self.offload = offload

    def requirement_for(self, path: str) -> Requirement | None:
        """Return the requirement of ``path``; ``None`` means public."""
        for prefix, req in self.routes:
            if path.startswith(prefix):
                return req
        return self.require

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope.get("type")
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        req = self.requirement_for(scope.get("path", "/"))
        if req is None:
            await self.app(scope, receive, send)
            return

        authorization = _headers(scope, b"authorization")
        try:
            verified = await self._verify(scope, authorization, req)
        except VerifierError as exc:
            await self._refuse(scope, receive, send, exc, authorization)
            return

        # A copy, so that a state dict shared by the server across requests
        # never carries one request's token into another.
        scope = dict(scope)
        state = dict(scope.get("state") or {})
        state[STATE_KEY] = verified
        scope["state"] = state
        scope[SCOPE_KEY] = verified
        await self.app(scope, receive, send)

    async def _verify(
        self, scope: Scope, authorization: list[str], req: Requirement
    ) -> VerifiedToken:
        method = scope.get("method", "GET") if scope["type"] == "http" else "GET"

        def run() -> VerifiedToken:
            return authenticate(
                self.verifier,
                authorization=authorization,
                dpop=_headers(scope, b"dpop"),
                method=method,
                url=scope_url(scope, self.public_url),
                client_cert_der=self.client_cert(scope),
                require=None if req.is_empty else req,
                scopes=self.scopes,
            )

        if self.offload:
            return await asyncio.get_running_loop().run_in_executor(None, run)
        return run()

    async def _refuse(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        exc: VerifierError,
        authorization: list[str],
    ) -> None:
        if scope["type"] == "websocket":
            # Closing before accepting makes the server answer the handshake
            # with 403 (ASGI WebSocket spec, "Close - send event").
            await receive()
            await send({"type": "websocket.close", "code": _WS_POLICY_VIOLATION})
            return
        out = error_response(
            exc,
            authorization=authorization,
            realm=self.realm,
            dpop_algs=self.verifier.dpop.algorithms,
            scopes=self.scopes,
        )
        headers = [
            (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in out.headers
        ]
        headers.append((b"content-length", str(len(out.body)).encode("ascii")))
        await send(
            {"type": "http.response.start", "status": out.status, "headers": headers}
        )
        await send({"type": "http.response.body", "body": out.body})
