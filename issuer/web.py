"""Flask wiring: parse HTTP, call ``IssuerService``, render JSON.

No issuance logic lives here. Every error response is JSON with an OAuth
``error`` code; nothing a client sends reaches a 500.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import parse_qs

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from . import metrics
from .errors import InvalidRequest, OAuthError, ServerUnavailable
from .service import IssuerService
from .storage import StoreUnavailable

__all__ = ["create_app"]

log = logging.getLogger(__name__)

_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_FORM = "application/x-www-form-urlencoded"
_MAX_FIELDS = 64


def _json(
    body: Mapping[str, Any], status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    resp = Response(
        json.dumps(body, separators=(",", ":")),
        status=status,
        mimetype="application/json",
    )
    for name, value in (headers or {}).items():
        resp.headers[name] = value
    return resp


def _error(exc: OAuthError) -> Response:
    return _json(exc.body(), exc.status, {**_NO_STORE, **exc.headers()})


def _form() -> dict[str, list[str]]:
    """The urlencoded body as name -> values (RFC 6749 appendix B).

    Raises ``InvalidRequest`` for a wrong content type, parameters in the
    query string, bad encoding or too many fields.
    """
    mimetype = (request.mimetype or "").lower()
    if not mimetype and not request.content_length and not request.query_string:
        # An empty POST (e.g. to /challenge) carries no parameters at all.
        return {}
    if mimetype != _FORM:
        raise InvalidRequest("content type must be application/x-www-form-urlencoded")
    if request.query_string:
        raise InvalidRequest("parameters must be sent in the request body")
    raw = request.get_data(cache=False)
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


def create_app(service: IssuerService) -> Flask:
    """Build the Flask application around a ready ``IssuerService``."""
    app = Flask("issuer")
    app.config["MAX_CONTENT_LENGTH"] = service.settings.max_body_bytes
    jwks_cache = f"public, max-age={service.settings.jwks_max_age}"

    def call(handler: Any) -> Response:
        started = time.perf_counter()
        try:
            form = _form()
            return handler(form, request.headers.get("Authorization"))  # type: ignore[no-any-return]
        except OAuthError as exc:
            if exc.status >= 500 or exc.error == "invalid_client":
                log.info(
                    "request refused",
                    extra={"fields": {"path": request.path, "error": exc.error}},
                )
            if request.path == "/token":
                metrics.REFUSED.labels(exc.error).inc()
            return _error(exc)
        except StoreUnavailable as exc:
            log.warning(
                "store unavailable",
                extra={"fields": {"path": request.path, "cause": str(exc)}},
            )
            if request.path == "/token":
                metrics.REFUSED.labels(ServerUnavailable.error).inc()
            return _error(ServerUnavailable("the issuer's store is unavailable; retry"))
        finally:
            metrics.REQUEST_SECONDS.labels(request.path).observe(
                time.perf_counter() - started
            )

    @app.post("/token")
    def token() -> Response:
        def handle(form: Mapping[str, Sequence[str]], authz: str | None) -> Response:
            result = service.token(form, authz, dpop=request.headers.getlist("DPoP"))
            return _json(result.body, 200, {**_NO_STORE, **result.headers})

        return call(handle)

    @app.post("/challenge")
    def challenge() -> Response:
        def handle(form: Mapping[str, Sequence[str]], authz: str | None) -> Response:
            return _json(service.challenge(form, authz), 200, _NO_STORE)

        return call(handle)

    @app.post("/tpm/activate")
    def tpm_activate() -> Response:
        def handle(form: Mapping[str, Sequence[str]], authz: str | None) -> Response:
            return _json(service.tpm_activate(form, authz), 200, _NO_STORE)

        return call(handle)

    @app.post("/introspect")
    def introspect() -> Response:
        def handle(form: Mapping[str, Sequence[str]], authz: str | None) -> Response:
            return _json(service.introspect(form, authz), 200, _NO_STORE)

        return call(handle)

    @app.post("/revoke")
    def revoke() -> Response:
        def handle(form: Mapping[str, Sequence[str]], authz: str | None) -> Response:
            service.revoke(form, authz)
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

    return app
