"""WSGI middleware demanding workload assurance (PEP 3333).

Wraps any WSGI application. Each request's path picks a requirement: the
longest matching prefix in ``routes``, else ``require``. A route mapped to
``None`` is public and passes without a token. The verified token is put in
``environ["wimse.token"]`` for the application.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ..errors import VerifierError
from ..levels import Requirement
from ..token import TokenVerifier, VerifiedToken
from . import authenticate, environ_client_cert, error_response

__all__ = ["ENVIRON_KEY", "AssuranceMiddleware", "request_url"]

#: The environ key under which the verified token is stored.
ENVIRON_KEY = "wimse.token"

# RFC 3986 section 3.3 pchar characters and "/" that need no encoding.
_PATH_SAFE = "/:@!$&'()*+,;=-._~"

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]


def request_url(environ: Mapping[str, Any], public_url: str | None = None) -> str:
    """Rebuild the URL the client addressed, without query (PEP 3333).

    With ``public_url`` (the external origin behind a proxy) only the path is
    taken from the request.
    """
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if isinstance(raw, str) and raw.startswith("/"):
        # The undecoded request target, as gunicorn and uWSGI provide it, is
        # exactly what the client's DPoP htu was computed over.
        path = raw.partition("?")[0]
    else:
        # PEP 3333 hands the path percent-decoded as latin-1 text; encoding
        # it again gives an equivalent URI for the normalised comparison.
        decoded = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
        path = urllib.parse.quote(decoded.encode("latin-1"), safe=_PATH_SAFE) or "/"
    if public_url is not None:
        return public_url.rstrip("/") + path
    scheme = environ.get("wsgi.url_scheme", "http")
    host = environ.get("HTTP_HOST")
    if not host:
        host = environ.get("SERVER_NAME", "localhost")
        port = environ.get("SERVER_PORT", "")
        if port and port != {"http": "80", "https": "443"}.get(scheme):
            host = f"{host}:{port}"
    return f"{scheme}://{host}{path}"


class AssuranceMiddleware:
    """Refuses requests whose token misses the route's requirement.

    Options (defaults in brackets):

    - ``require``: requirement of every path not in ``routes``
      [``Requirement()``: a valid token, no minimum levels];
    - ``routes``: path prefix to requirement, ``None`` marking a public
      prefix [empty];
    - ``scopes``: scopes every protected request must carry [none];
    - ``realm``: realm of the challenges [none];
    - ``public_url``: external origin for DPoP ``htu`` checks [None: from
      the environ];
    - ``client_cert``: returns the client certificate DER from the environ
      [``SSL_CLIENT_CERT`` as PEM].
    """

    def __init__(
        self,
        app: WSGIApp,
        verifier: TokenVerifier,
        *,
        require: Requirement | None = None,
        routes: Mapping[str, Requirement | None] | None = None,
        scopes: Iterable[str] = (),
        realm: str | None = None,
        public_url: str | None = None,
        client_cert: Callable[[Mapping[str, Any]], bytes | None] | None = None,
    ) -> None:
        self.app = app
        self.verifier = verifier
        self.require = require if require is not None else Requirement()
        # Longest prefix first, so "/admin/public" can open a hole in "/admin".
        self.routes = sorted((routes or {}).items(), key=lambda r: -len(r[0]))
        self.scopes = tuple(scopes)
        self.realm = realm
        self.public_url = public_url
        self.client_cert = client_cert or environ_client_cert

    def requirement_for(self, path: str) -> Requirement | None:
        """Return the requirement of ``path``; ``None`` means public."""
        for prefix, req in self.routes:
            if path.startswith(prefix):
                return req
        return self.require

    def __call__(self, environ: Environ, start_response: StartResponse) -> Any:
        path = environ.get("PATH_INFO", "") or "/"
        req = self.requirement_for(path)
        if req is None:
            return self.app(environ, start_response)
        authorization = _header(environ, "HTTP_AUTHORIZATION")
        try:
            verified = self._authenticate(environ, authorization, req)
        except VerifierError as exc:
            out = error_response(
                exc,
                authorization=authorization,
                realm=self.realm,
                dpop_algs=self.verifier.dpop.algorithms,
                scopes=self.scopes,
            )
            reason = _REASONS.get(out.status, "Error")
            start_response(f"{out.status} {reason}", out.headers)
            return [out.body]
        environ[ENVIRON_KEY] = verified
        return self.app(environ, start_response)

    def _authenticate(
        self, environ: Environ, authorization: list[str], req: Requirement
    ) -> VerifiedToken:
        return authenticate(
            self.verifier,
            authorization=authorization,
            dpop=_header(environ, "HTTP_DPOP"),
            method=environ.get("REQUEST_METHOD", "GET"),
            url=request_url(environ, self.public_url),
            client_cert_der=self.client_cert(environ),
            require=None if req.is_empty else req,
            scopes=self.scopes,
        )


def _header(environ: Mapping[str, Any], key: str) -> list[str]:
    # WSGI servers fold repeated headers into one comma-joined value, which
    # then fails the token68 syntax check, as a repeated header should.
    value = environ.get(key)
    return [value] if value else []


_REASONS = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    503: "Service Unavailable",
}
