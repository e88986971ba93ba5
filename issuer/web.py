"""Flask wiring: parse HTTP, call ``IssuerService``, render JSON.

No issuance logic lives here. Every error response is JSON with an OAuth
``error`` code; nothing a client sends reaches a 500.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs

import orjson
from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from . import metrics
from .errors import InvalidRequest, OAuthError, PayloadTooLarge, ServerUnavailable
from .service import IssuerService, PresentedCertificate
from .storage import StoreUnavailable

__all__ = [
    "TokenFastPath",
    "create_app",
    "parse_form",
    "request_certificate",
    "run_form_endpoint",
]

log = logging.getLogger(__name__)

_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_FORM = "application/x-www-form-urlencoded"
_MAX_FIELDS = 64


_JSON_HEADERS = (("Content-Type", "application/json"),)


def _dumps(body: Mapping[str, Any]) -> bytes:
    return orjson.dumps(body)


def _json(
    body: Mapping[str, Any], status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    resp = Response(_dumps(body), status=status, mimetype="application/json")
    for name, value in (headers or {}).items():
        resp.headers[name] = value
    return resp


def _error(exc: OAuthError) -> Response:
    return _json(exc.body(), exc.status, {**_NO_STORE, **exc.headers()})


def parse_form(
    mimetype: str, content_length: int | None, query: bytes, raw: bytes
) -> dict[str, list[str]]:
    """The urlencoded body as name -> values (RFC 6749 appendix B).

    Raises ``InvalidRequest`` for a wrong content type, parameters in the
    query string, bad encoding or too many fields.
    """
    if not mimetype and not content_length and not query:
        # An empty POST (e.g. to /challenge) carries no parameters at all.
        return {}
    if mimetype != _FORM:
        raise InvalidRequest("content type must be application/x-www-form-urlencoded")
    if query:
        raise InvalidRequest("parameters must be sent in the request body")
    try:
        text = raw.decode("ascii")
        parsed = parse_qs(
            text,
            keep_blank_values=True,
            strict_parsing=False,
            encoding="utf-8",
            errors="strict",
            max_num_fields=_MAX_FIELDS,
        )
    except ValueError:
        raise InvalidRequest("body is not valid form encoding") from None
    # RFC 6749 section 3.1: parameters sent without a value are treated as
    # omitted.
    return {k: [v for v in vals if v != ""] for k, vals in parsed.items() if any(vals)}


def read_body(stream: Any, length: int | None, limit: int) -> bytes:
    """Read a request body of at most ``limit`` bytes.

    Without a Content-Length (chunked transfer coding) one byte more than the
    limit is read, so an oversized body is refused rather than cut short and
    parsed: a truncated form could silently drop a parameter.
    """
    if length is not None and length < 0:
        raise InvalidRequest("Content-Length is negative")
    if length is not None and length > limit:
        raise PayloadTooLarge("request body too large")
    try:
        if length is not None:
            return bytes(stream.read(length)) if length else b""
        raw = bytes(stream.read(limit + 1))
    except ValueError:
        # The server's chunked decoder refused the framing (cheroot raises
        # ValueError for a chunk size that is not hexadecimal).
        raise InvalidRequest("malformed chunked request body") from None
    if len(raw) > limit:
        raise PayloadTooLarge("request body too large")
    return raw


Handler = Callable[[Mapping[str, Sequence[str]]], tuple[int, dict[str, str], bytes]]
Form = Mapping[str, Sequence[str]]
Cert = PresentedCertificate | None


def run_form_endpoint(
    path: str, parse: Callable[[], dict[str, list[str]]], handler: Handler
) -> tuple[int, dict[str, str], bytes]:
    """Parse a form request, run ``handler`` and render every outcome.

    Shared by the Flask routes and the ``/token`` fast path, so both answer
    alike: OAuth errors as RFC 6749 section 5.2 JSON, an unreachable store
    as 503 with ``Retry-After``. Updates the request metrics.
    """
    started = time.perf_counter()
    try:
        return handler(parse())
    except OAuthError as exc:
        if exc.status >= 500 or exc.error == "invalid_client":
            # ``detail`` names the client and the failed check, never the
            # credential itself.
            fields = {"path": path, "error": exc.error, "reason": exc.detail}
            log.info("request refused", extra={"fields": fields})
        if path == "/token":
            metrics.labelled(metrics.REFUSED, exc.error).inc()
        return exc.status, {**_NO_STORE, **exc.headers()}, _dumps(exc.body())
    except StoreUnavailable as exc:
        log.warning(
            "store unavailable", extra={"fields": {"path": path, "cause": str(exc)}}
        )
        if path == "/token":
            metrics.labelled(metrics.REFUSED, ServerUnavailable.error).inc()
        err = ServerUnavailable("the issuer's store is unavailable; retry")
        return err.status, {**_NO_STORE, **err.headers()}, _dumps(err.body())
    finally:
        metrics.labelled(metrics.REQUEST_SECONDS, path).observe(
            time.perf_counter() - started
        )


def request_certificate(service: IssuerService, environ: Mapping[str, Any]) -> Cert:
    """The client certificate of a WSGI request (PEP 3333 environ), for
    every endpoint: a trusted proxy's ``mtls_proxy_header`` or the issuer's
    own handshake, as ``IssuerService.client_certificate`` decides.

    The issuer's TLS server (issuer/tlsserve.py) puts the verified peer
    certificate under ``SSL_CLIENT_CERT``, a key no request header can
    produce (headers arrive as ``HTTP_`` plus the name in upper case with
    hyphens turned into underscores); the service reads it only when the
    issuer terminates TLS.
    """
    header = service.settings.mtls_proxy_header
    key = "HTTP_" + header.upper().replace("-", "_") if header else ""
    return service.client_certificate(
        environ.get(key) if key else None,
        environ.get("REMOTE_ADDR"),
        environ.get("SSL_CLIENT_CERT"),
    )


class TokenFastPath:
    """WSGI middleware answering ``POST /token`` without Flask.

    The token endpoint is the hot path; Flask's request and response objects
    cost more than the issuance itself. Every other request goes to the
    Flask application.
    """

    def __init__(self, app: Flask, service: IssuerService) -> None:
        self.app = app
        self.service = service
        self.max_body = service.settings.max_body_bytes

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if (
            environ.get("PATH_INFO") != "/token"
            or environ.get("REQUEST_METHOD") != "POST"
        ):
            return self.app(environ, start_response)
        status, headers, body = run_form_endpoint(
            "/token",
            lambda: self._form(environ),
            lambda form: self._token(form, environ),
        )
        start_response(
            f"{status} {HTTPStatus(status).phrase}",
            [*_JSON_HEADERS, ("Content-Length", str(len(body))), *headers.items()],
        )
        return [body]

    def _form(self, environ: Mapping[str, Any]) -> dict[str, list[str]]:
        declared = environ.get("CONTENT_LENGTH")
        try:
            length = int(declared) if declared else None
        except ValueError:
            raise InvalidRequest("Content-Length is not a number") from None
        raw = read_body(environ["wsgi.input"], length, self.max_body)
        length = len(raw)
        mimetype = (environ.get("CONTENT_TYPE") or "").split(";")[0].strip().lower()
        query = (environ.get("QUERY_STRING") or "").encode("latin-1")
        return parse_form(mimetype, length, query, raw)

    def _token(
        self, form: Mapping[str, Sequence[str]], environ: Mapping[str, Any]
    ) -> tuple[int, dict[str, str], bytes]:
        dpop = environ.get("HTTP_DPOP")
        # WSGI folds repeated header fields into one comma-joined value; a
        # compact JWS has no comma, so splitting restores the fields and the
        # DPoP module refuses more than one (RFC 9449 section 4.3).
        # An empty DPoP field is still a DPoP field: refused, not ignored.
        proofs = dpop.split(",") if dpop is not None else []
        cert = request_certificate(self.service, environ)
        result = self.service.token(
            form, environ.get("HTTP_AUTHORIZATION"), dpop=proofs, client_cert=cert
        )
        return 200, {**_NO_STORE, **result.headers}, _dumps(result.body)


def create_app(service: IssuerService) -> Flask:
    """Build the Flask application around a ready ``IssuerService``.

    ``wsgi_app`` is wrapped in ``TokenFastPath``; the Flask routes below
    still serve ``/token`` for callers that use the Flask app directly
    (``app.test_client()``).
    """
    app = Flask("issuer")
    max_body = service.settings.max_body_bytes
    jwks_cache = f"public, max-age={service.settings.jwks_max_age}"

    def call(
        handler: Callable[[Form, str | None, Cert], Any],
    ) -> Response:
        authz = request.headers.get("Authorization")

        def parse() -> dict[str, list[str]]:
            raw = read_body(request.stream, request.content_length, max_body)
            return parse_form(
                (request.mimetype or "").lower(),
                len(raw),
                request.query_string,
                raw,
            )

        def run(form: Mapping[str, Sequence[str]]) -> tuple[int, dict[str, str], bytes]:
            result = handler(form, authz, request_certificate(service, request.environ))
            if isinstance(result, Response):
                return result.status_code, dict(result.headers), result.get_data()
            return 200, dict(_NO_STORE), _dumps(result)

        status, headers, body = run_form_endpoint(request.path, parse, run)
        resp = Response(body, status=status, mimetype="application/json")
        for name, value in headers.items():
            if name.lower() != "content-type":
                resp.headers[name] = value
        return resp

    @app.post("/token")
    def token() -> Response:
        def handle(form: Form, authz: str | None, cert: Cert) -> Response:
            result = service.token(
                form,
                authz,
                dpop=request.headers.getlist("DPoP"),
                client_cert=cert,
            )
            return _json(result.body, 200, {**_NO_STORE, **result.headers})

        return call(handle)

    @app.post("/challenge")
    def challenge() -> Response:
        def handle(form: Form, authz: str | None, cert: Cert) -> Any:
            return service.challenge(form, authz, client_cert=cert)

        return call(handle)

    @app.post("/tpm/activate")
    def tpm_activate() -> Response:
        def handle(form: Form, authz: str | None, cert: Cert) -> Any:
            return service.tpm_activate(form, authz, client_cert=cert)

        return call(handle)

    @app.post("/introspect")
    def introspect() -> Response:
        def handle(form: Form, authz: str | None, cert: Cert) -> Any:
            return service.introspect(form, authz, client_cert=cert)

        return call(handle)

    @app.post("/revoke")
    def revoke() -> Response:
        def handle(form: Form, authz: str | None, cert: Cert) -> Response:
            service.revoke(form, authz, client_cert=cert)
            return Response(status=200, headers=_NO_STORE)

        return call(handle)

    @app.get("/jwks.json")
    def jwks() -> Response:
        return _json(service.keyring.jwks(), 200, {"Cache-Control": jwks_cache})

    @app.get("/.well-known/oauth-authorization-server")
    def metadata() -> Response:
        return _json(service.metadata(), 200, {"Cache-Control": "public, max-age=300"})

    @app.get("/metrics")
    def metrics_endpoint() -> Response:
        return Response(metrics.render(), mimetype=metrics.CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    def healthz() -> Response:
        return _json({"status": "ok"})

    @app.get("/readyz")
    def readyz() -> Response:
        try:
            service.check_ready()
        except ServerUnavailable as exc:
            return _error(exc)
        return _json({"status": "ready"})

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        status = exc.code or 400
        code = {
            404: "not_found",
            405: "method_not_allowed",
            413: "invalid_request",
        }.get(status, "invalid_request")
        body = {"error": code, "error_description": (exc.name or "").lower()}
        return _json(body, status, _NO_STORE)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        # Only the type is logged: exception text may quote request data.
        log.error("unhandled error", extra={"fields": {"type": type(exc).__name__}})
        return _json({"error": "server_error"}, 500, _NO_STORE)

    app.wsgi_app = TokenFastPath(app.wsgi_app, service)  # type: ignore[method-assign,arg-type]
    return app
