"""Token introspection for relying parties that want revocation checks
(RFC 7662 section 2).

A JWT access token verifies offline until it expires; introspection asks
the issuer whether it is still active, so a revoked token is refused
within ``cache_ttl`` seconds. Answers are cached by the SHA-256 of the
token, never by the token itself.
"""

from __future__ import annotations

import base64
import hashlib
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

from .errors import InactiveToken, IntrospectionError, InvalidMetadata
from .keys import check_url, fetch_json, fetch_metadata

__all__ = ["Introspector"]


class Introspector:
    """Asks the issuer's introspection endpoint whether a token is active.

    Options (defaults in brackets):

    - ``endpoint``: the introspection URL [read from the issuer's RFC 8414
      metadata ``introspection_endpoint`` when ``issuer`` is given];
    - ``client_id``, ``client_secret``: the relying party's own client,
      sent with ``client_secret_basic`` (RFC 6749 section 2.3.1);
    - ``allow_http``: accept plain http URLs, for loopback tests [False];
    - ``cache_ttl``: seconds an answer is reused, never past the token's
      ``exp`` [30];
    - ``max_entries``: cached answers kept at most [10 000];
    - ``timeout``: seconds per request [5].
    """

    def __init__(
        self,
        endpoint: str | None = None,
        *,
        client_id: str,
        client_secret: str,
        issuer: str | None = None,
        allow_http: bool = False,
        cache_ttl: float = 30.0,
        max_entries: int = 10_000,
        timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        ca_file: str | None = None,
    ) -> None:
        if endpoint is None and issuer is None:
            raise ValueError("give endpoint or issuer")
        if endpoint is not None:
            check_url(endpoint, allow_http=allow_http, what="introspection endpoint")
        self.endpoint = endpoint
        self.issuer = issuer
        self.allow_http = allow_http
        self.cache_ttl = cache_ttl
        self.max_entries = max_entries
        self.timeout = timeout
        self.clock = clock
        self.ca_file = ca_file
        # RFC 6749 section 2.3.1: form-urlencode both parts before base64.
        pair = (
            f"{urllib.parse.quote_plus(client_id)}:"
            f"{urllib.parse.quote_plus(client_secret)}"
        )
        self._authorization = "Basic " + base64.b64encode(pair.encode()).decode()
        self._cache: dict[str, tuple[float, dict[str, Any] | None]] = {}
        self._lock = threading.Lock()

    def introspect(self, token: str, *, now: float | None = None) -> dict[str, Any]:
        """Return the issuer's answer for an active token (RFC 7662 section 2.2).

        Raises ``InactiveToken`` when the issuer says ``active: false`` (or
        the answer's ``exp`` has passed) and ``IntrospectionError`` when the
        endpoint cannot be reached or answers anything but a JSON object with
        a boolean ``active``.
        """
        wall = time.time() if now is None else now
        key = hashlib.sha256(token.encode("utf-8")).hexdigest()
        mono = self.clock()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > mono:
            answer = cached[1]
        else:
            answer = self._ask(token, wall)
            self._remember(key, answer, mono, wall)
        if answer is None:
            raise InactiveToken()
        return dict(answer)

    def _ask(self, token: str, now: float) -> dict[str, Any] | None:
        endpoint = self._endpoint()
        body = urllib.parse.urlencode(
            {"token": token, "token_type_hint": "access_token"}
        ).encode("ascii")
        document, _ = fetch_json(
            endpoint,
            allow_http=self.allow_http,
            timeout=self.timeout,
            method="POST",
            body=body,
            headers={
                "Authorization": self._authorization,
                "Content-Type": "application/x-www-form-urlencoded",
            },
            error=IntrospectionError,
            ca_file=self.ca_file,
        )
        if not isinstance(document, dict) or type(document.get("active")) is not bool:
            raise IntrospectionError(detail="answer lacks a boolean active member")
        if not document["active"]:
            return None
        exp = document.get("exp")
        if type(exp) is int and exp <= now:
            return None
        return document

    def _remember(
        self, key: str, answer: Mapping[str, Any] | None, mono: float, wall: float
    ) -> None:
        ttl = self.cache_ttl
        if answer is not None and type(answer.get("exp")) is int:
            ttl = min(ttl, answer["exp"] - wall)
        if ttl <= 0:
            return
        with self._lock:
            if len(self._cache) >= self.max_entries:
                # Dropping everything is crude but bounded; the cost is one
                # extra request per token afterwards.
                self._cache.clear()
            self._cache[key] = (mono + ttl, None if answer is None else dict(answer))

    def _endpoint(self) -> str:
        if self.endpoint is not None:
            return self.endpoint
        assert self.issuer is not None
        try:
            metadata = fetch_metadata(
                self.issuer,
                allow_http=self.allow_http,
                timeout=self.timeout,
                ca_file=self.ca_file,
            )
        except InvalidMetadata as exc:
            raise IntrospectionError(detail=exc.detail) from None
        endpoint = metadata.get("introspection_endpoint")
        if not isinstance(endpoint, str):
            raise IntrospectionError(detail="metadata has no introspection_endpoint")
        check_url(endpoint, allow_http=self.allow_http, what="introspection endpoint")
        self.endpoint = endpoint
        return endpoint
