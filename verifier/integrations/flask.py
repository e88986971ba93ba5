"""Flask integration: a route decorator demanding workload assurance.

Flask is imported when a decorated view runs, never at import time, so the
verifier installs and imports without it.

Example::

    verifier = TokenVerifier(issuer=ISSUER, audience="https://orders.example")

    @app.get("/orders")
    @require_assurance(verifier, mial=2, dimensions="maal.boundary>=2")
    def orders():
        return {"caller": current_token().sub}
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar, cast

from ..errors import VerifierError
from ..requirements import requirement
from ..token import TokenVerifier, VerifiedToken
from . import authenticate, environ_client_cert, error_response

__all__ = ["current_token", "require_assurance"]

F = TypeVar("F", bound=Callable[..., Any])

#: Name of the ``flask.g`` attribute holding the verified token.
G_ATTRIBUTE = "wimse_token"


def _default_client_cert(request: Any) -> bytes | None:
    return environ_client_cert(request.environ)


def require_assurance(
    verifier: TokenVerifier,
    *,
    mial: int = 0,
    maal: int = 0,
    dimensions: Mapping[str, int] | str | None = None,
    max_age: int | None = None,
    scopes: Iterable[str] = (),
    realm: str | None = None,
    public_url: str | None = None,
    client_cert: Callable[[Any], bytes | None] | None = None,
) -> Callable[[F], F]:
    """Decorate a Flask view so it runs only for a good enough token.

    ``mial``, ``maal``, ``dimensions`` (mapping or ``"maal.containment>=2"``
    text) and ``max_age`` form the route's requirement, checked on the
    effective levels; ``scopes`` must all be granted. ``public_url`` is the
    API's external origin (``https://api.example``) for DPoP ``htu``
    checks behind a proxy [None: Flask's ``request.url``]. ``client_cert``
    returns the TLS client certificate as DER [None: ``SSL_CLIENT_CERT``
    from the WSGI environ].

    A refusal answers 401/403 with a ``WWW-Authenticate`` challenge (RFC 6750
    section 3), a problem-details body for unmet levels (RFC 9457), or 503
    when keys cannot be had. Raises ``ValueError`` at decoration time for a
    malformed requirement.
    """
    req = requirement(mial, maal, dimensions, max_age)
    wanted = tuple(scopes)
    read_cert = client_cert or _default_client_cert

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            import flask

            request = flask.request
            authorization = request.headers.getlist("Authorization")
            dpop = request.headers.getlist("DPoP")
            url = request.base_url
            if public_url is not None:
                url = public_url.rstrip("/") + request.path
            try:
                verified = authenticate(
                    verifier,
                    authorization=authorization,
                    dpop=dpop,
                    method=request.method,
                    url=url,
                    client_cert_der=read_cert(request),
                    require=None if req.is_empty else req,
                    scopes=wanted,
                )
            except VerifierError as exc:
                out = error_response(
                    exc,
                    authorization=authorization,
                    realm=realm,
                    dpop_algs=verifier.dpop.algorithms,
                    scopes=wanted,
                )
                return flask.Response(out.body, status=out.status, headers=out.headers)
            setattr(flask.g, G_ATTRIBUTE, verified)
            return view(*args, **kwargs)

        return cast(F, wrapper)

    return decorate


def current_token() -> VerifiedToken:
    """Return the token verified for the current request.

    Raises ``RuntimeError`` outside a view decorated by
    ``require_assurance``.
    """
    import flask

    verified = flask.g.get(G_ATTRIBUTE)
    if not isinstance(verified, VerifiedToken):
        raise RuntimeError("no verified token: is the view decorated?")
    return verified
