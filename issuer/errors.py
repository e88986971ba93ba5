"""Errors that reach the wire, each carrying its OAuth ``error`` code and status.

RFC 6749 section 5.2 defines the token endpoint codes, RFC 8693 section 2.2.2
reuses them for token exchange, RFC 7009 section 2.2.1 adds
``unsupported_token_type``. ``description`` is the client-facing text and must
never carry secrets or raw evidence; ``detail`` is for the log and the audit
record only.
"""

from __future__ import annotations

import re

__all__ = [
    "AccessDenied",
    "EvidenceError",
    "InsufficientAssurance",
    "InvalidClient",
    "InvalidGrant",
    "InvalidRequest",
    "InvalidScope",
    "InvalidTarget",
    "OAuthError",
    "PayloadTooLarge",
    "RateLimited",
    "ServerUnavailable",
    "UnauthorizedClient",
    "UnsupportedGrantType",
    "UnsupportedTokenType",
]

# RFC 6749 section 5.2: error_description is limited to %x20-21 / %x23-5B /
# %x5D-7E, so quotes and backslashes are replaced rather than rejected.
_NOT_ALLOWED = re.compile(r"[^\x20\x21\x23-\x5b\x5d-\x7e]")


def _clean(text: str, limit: int = 300) -> str:
    return _NOT_ALLOWED.sub("?", text)[:limit]


class OAuthError(Exception):
    """Base of every error rendered as an OAuth error response."""

    error = "invalid_request"
    status = 400

    def __init__(self, description: str = "", *, detail: str | None = None) -> None:
        self.description = _clean(description)
        self.detail = detail if detail is not None else self.description
        super().__init__(self.description)

    def body(self) -> dict[str, str]:
        """Return the JSON body of RFC 6749 section 5.2."""
        out = {"error": self.error}
        if self.description:
            out["error_description"] = self.description
        return out

    def headers(self) -> dict[str, str]:
        """Return extra response headers (none by default)."""
        return {}


class InvalidRequest(OAuthError):
    error = "invalid_request"


class InvalidClient(OAuthError):
    """Client authentication failed (RFC 6749 section 5.2).

    ``basic`` marks a request that used HTTP Basic, which must be answered
    with 401 and a ``WWW-Authenticate`` header naming the scheme.
    """

    error = "invalid_client"
    status = 401

    def __init__(
        self, description: str = "", *, detail: str | None = None, basic: bool = False
    ) -> None:
        super().__init__(description, detail=detail)
        self.basic = basic

    def headers(self) -> dict[str, str]:
        if self.basic:
            return {"WWW-Authenticate": 'Basic realm="token", charset="UTF-8"'}
        return {}


class InvalidGrant(OAuthError):
    error = "invalid_grant"


class UnauthorizedClient(OAuthError):
    error = "unauthorized_client"


class UnsupportedGrantType(OAuthError):
    error = "unsupported_grant_type"


class InvalidScope(OAuthError):
    error = "invalid_scope"


class InvalidTarget(OAuthError):
    """RFC 8707 section 2 and RFC 8693 section 2.2.2."""

    error = "invalid_target"


class UnsupportedTokenType(OAuthError):
    """RFC 7009 section 2.2.1."""

    error = "unsupported_token_type"


class AccessDenied(OAuthError):
    error = "access_denied"
    status = 403


class InsufficientAssurance(OAuthError):
    """The evidence does not reach the levels the policy or the request demands.

    An extension code: RFC 6749 section 8.5 allows new error codes. The
    description names each failing item, what was required and what was found.
    """

    error = "insufficient_workload_assurance"
    status = 400


class ServerUnavailable(OAuthError):
    """A backing store is unreachable; the request failed closed."""

    error = "temporarily_unavailable"
    status = 503

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "5"}


class PayloadTooLarge(OAuthError):
    """The request body exceeds ``max_body_bytes`` (HTTP 413)."""

    error = "invalid_request"
    status = 413


class RateLimited(OAuthError):
    """A client sent more requests than its rate limit allows (HTTP 429).

    An extension code (RFC 6749 section 8.5); ``Retry-After`` says when to
    try again.
    """

    error = "rate_limited"
    status = 429

    def __init__(self, retry_after: float) -> None:
        super().__init__("too many requests for this client")
        self.retry_after = max(1, int(retry_after + 0.999))

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class EvidenceError(ValueError):
    """A platform token or other evidence failed verification.

    Raised by the verification modules, which know nothing of OAuth; the
    grant turns it into ``invalid_request`` as RFC 8693 section 2.2.2 asks
    for an unacceptable subject token. ``reason`` is a short fixed code that
    is safe to log and to show.
    """

    def __init__(self, reason: str, description: str) -> None:
        self.reason = reason
        super().__init__(description)
