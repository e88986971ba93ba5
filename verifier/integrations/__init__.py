"""Web framework glue, none of it a hard dependency.

This module holds the framework-free part every integration shares:
reading the ``Authorization`` and ``DPoP`` headers (RFC 6750 section 2.1,
RFC 9449 section 7.1), calling ``TokenVerifier.verify``, and turning a
refusal into status, headers and body (RFC 6750 section 3, RFC 9457
section 3). ``flask``, ``wsgi`` and ``asgi`` import their framework only
when used.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import (
    InsufficientScope,
    InvalidDPoPProof,
    InvalidRequest,
    MissingToken,
    TokenError,
    VerifierError,
    render_challenge,
)
from ..levels import Requirement
from ..requirements import InsufficientAssurance
from ..token import TokenVerifier, VerifiedToken

__all__ = [
    "Credentials",
    "ErrorResponse",
    "authenticate",
    "environ_client_cert",
    "error_response",
    "pem_to_der",
    "read_credentials",
]

# RFC 6750 section 2.1 (b64token) and RFC 9449 section 7.1 (token68).
_TOKEN68 = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_PEM = re.compile(
    r"-----BEGIN CERTIFICATE-----([A-Za-z0-9+/=\s]+)-----END CERTIFICATE-----"
)


@dataclass(frozen=True)
class Credentials:
    """The access token of a request, how it came, and its DPoP proof."""

    presentation: str
    token: str
    dpop_proof: str | None


@dataclass(frozen=True)
class ErrorResponse:
    """A refusal ready to send: status, headers and body bytes."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes


def read_credentials(authorization: Sequence[str], dpop: Sequence[str]) -> Credentials:
    """Read the token from the ``Authorization`` header values.

    Raises ``MissingToken`` when there is none (or only another scheme),
    ``InvalidRequest`` when the header repeats or is malformed (RFC 6750
    section 3.1), and ``InvalidDPoPProof`` when ``DPoP`` repeats (RFC 9449
    section 4.3).
    """
    if not authorization:
        raise MissingToken()
    if len(authorization) > 1:
        raise InvalidRequest(detail="Authorization header repeated")
    scheme, _, value = authorization[0].strip().partition(" ")
    presentation = scheme.lower()
    if presentation not in ("bearer", "dpop"):
        raise MissingToken(detail="no Bearer or DPoP credentials")
    value = value.strip()
    if not _TOKEN68.fullmatch(value):
        raise InvalidRequest(detail="Authorization credentials malformed")
    if len(dpop) > 1:
        raise InvalidDPoPProof(detail="DPoP header repeated")
    proof = dpop[0].strip() if dpop else None
    return Credentials(presentation, value, proof)


def environ_client_cert(environ: Mapping[str, Any]) -> bytes | None:
    """The verified TLS client certificate a WSGI server put in the environ
    (``SSL_CLIENT_CERT``, PEM) as DER, or ``None``.

    A request header of that name would arrive as ``HTTP_SSL_CLIENT_CERT``
    and is never read.
    """
    pem = environ.get("SSL_CLIENT_CERT")
    if not pem:
        return None
    try:
        return pem_to_der(pem)
    except ValueError:
        return None


def pem_to_der(pem: str | bytes) -> bytes:
    """Return the DER bytes of the first certificate in a PEM text.

    Raises ``ValueError`` when there is none.
    """
    text = pem.decode("ascii", "replace") if isinstance(pem, bytes) else pem
    match = _PEM.search(text)
    if match is None:
        raise ValueError("no PEM certificate")
    try:
        return base64.b64decode("".join(match.group(1).split()), validate=True)
    except binascii.Error:
        raise ValueError("PEM certificate is not base64") from None


def authenticate(
    verifier: TokenVerifier,
    *,
    authorization: Sequence[str],
    dpop: Sequence[str] = (),
    method: str,
    url: str,
    client_cert_der: bytes | None = None,
    require: Requirement | None = None,
    scopes: Iterable[str] = (),
) -> VerifiedToken:
    """Verify the request's token and check the route's demands.

    ``authorization`` and ``dpop`` are all values of those headers;
    ``method`` and ``url`` describe the request as the client addressed it.
    Returns the ``VerifiedToken`` or raises a ``VerifierError``:
    ``InsufficientScope`` for a missing scope (RFC 6750 section 3.1),
    ``InsufficientAssurance`` for unmet levels.
    """
    creds = read_credentials(authorization, dpop)
    verified = verifier.verify(
        creds.token,
        presentation=creds.presentation,
        dpop_proof=creds.dpop_proof,
        http_method=method,
        http_url=url,
        client_cert_der=client_cert_der,
    )
    missing = [s for s in scopes if s not in verified.scopes]
    if missing:
        raise InsufficientScope(detail="missing scopes: " + " ".join(missing))
    if require is not None:
        verified.require(require)
    return verified


def _scheme_for(authorization: Sequence[str]) -> str:
    if authorization and authorization[0].strip().lower().startswith("dpop "):
        return "DPoP"
    return "Bearer"


def error_response(
    exc: VerifierError,
    *,
    authorization: Sequence[str] = (),
    realm: str | None = None,
    dpop_algs: Iterable[str] = (),
    scopes: Iterable[str] = (),
) -> ErrorResponse:
    """Render a refusal: RFC 6750 section 3 challenge, JSON or RFC 9457 body.

    The challenge uses the scheme the client used (``DPoP`` or ``Bearer``).
    A request without credentials gets one challenge per scheme, the DPoP
    one listing ``dpop_algs`` (RFC 9449 section 7.1). Key and fetch faults
    answer 503 without a challenge. Only client-safe descriptions are sent;
    ``exc.detail`` never is.
    """
    scheme = _scheme_for(authorization)
    headers: list[tuple[str, str]] = [("Cache-Control", "no-store")]
    algs = " ".join(sorted(dpop_algs))

    if isinstance(exc, InsufficientAssurance):
        headers.append(("WWW-Authenticate", exc.www_authenticate(scheme, realm)))
        headers.append(("Content-Type", "application/problem+json"))
        return ErrorResponse(exc.status, headers, _json(exc.problem()))

    body = {"error": exc.error, "error_description": exc.description}
    headers.append(("Content-Type", "application/json"))
    if isinstance(exc, MissingToken):
        headers.append(("WWW-Authenticate", exc.www_authenticate("Bearer", realm)))
        if algs:
            params = [] if realm is None else [("realm", realm)]
            challenge = render_challenge("DPoP", [*params, ("algs", algs)])
            headers.append(("WWW-Authenticate", challenge))
        return ErrorResponse(exc.status, headers, _json(body))
    if isinstance(exc, InsufficientScope):
        params = [] if realm is None else [("realm", realm)]
        params += [("error", exc.error), ("error_description", exc.description)]
        wanted = " ".join(scopes)
        if wanted:
            params.append(("scope", wanted))
        headers.append(("WWW-Authenticate", render_challenge(scheme, params)))
        return ErrorResponse(exc.status, headers, _json(body))
    if isinstance(exc, TokenError):
        if isinstance(exc, InvalidDPoPProof):
            scheme = "DPoP"
        headers.append(("WWW-Authenticate", exc.www_authenticate(scheme, realm)))
        return ErrorResponse(exc.status, headers, _json(body))
    if exc.status == 401:
        # UnknownKeyId: a key-branch fault the caller answers for.
        params = [] if realm is None else [("realm", realm)]
        params += [("error", exc.error), ("error_description", exc.description)]
        headers.append(("WWW-Authenticate", render_challenge(scheme, params)))
    return ErrorResponse(exc.status, headers, _json(body))


def _json(data: object) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode("utf-8")
