"""Issuer settings: defaults, then a TOML file, then ``WIMSE_ISSUER_*`` variables.

Every key is listed once in ``docs/configuration.md``. Command-line flags of
``wimse-issuer serve`` override all three.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ConfigError", "Settings", "load_settings"]

ENV_PREFIX = "WIMSE_ISSUER_"
SIGNING_ALGORITHMS = ("ES256", "EdDSA", "PS256", "RS256")
# RFC 9110 section 5.1: a field name is a token; letters, digits and hyphens
# suffice for a proxy header and map unambiguously to a WSGI environ key.
_HEADER_NAME = re.compile(r"\A[A-Za-z0-9-]{1,64}\Z")


class ConfigError(ValueError):
    """The configuration file or an environment variable is invalid."""


@dataclass
class Settings:
    """Typed issuer options; each documents its default."""

    #: Folder holding the database and ``keys/``. Default: the current directory.
    home: str = "."
    #: Listen address for ``serve``. Default 127.0.0.1.
    host: str = "127.0.0.1"
    #: Listen port for ``serve``. Default 8080.
    port: int = 8080
    #: Issuer identifier (RFC 8414). Default ``http://HOST:PORT``.
    issuer_url: str = ""
    #: SQLAlchemy URL. Default: SQLite file ``wimse-issuer.db`` in ``home``.
    database_url: str = ""
    #: Signing algorithm for new keys: ES256, EdDSA, PS256 or RS256. Default ES256.
    signing_alg: str = "ES256"
    #: Access token lifetime when the client asks for none, seconds. Default 300.
    token_lifetime: int = 300
    #: Longest access token lifetime, seconds (at most 86400). Default 3600.
    max_token_lifetime: int = 3600
    #: Allowed clock skew when checking presented tokens, seconds. Default 60.
    clock_skew: int = 60
    #: Longest accepted client assertion lifetime (exp - now), seconds. Default 300.
    max_assertion_lifetime: int = 300
    #: JWKS ``Cache-Control: max-age``, seconds; a new key waits this long
    #: before it signs. Default 300.
    jwks_max_age: int = 300
    #: How long an old client secret stays valid after rotation, seconds.
    #: Default 86400.
    secret_grace_period: int = 86400
    #: Largest accepted request body, bytes. Default 524288.
    max_body_bytes: int = 524288
    #: Largest accepted piece of attestation evidence, bytes. Default 131072.
    max_evidence_bytes: int = 131072
    #: Largest accepted token or assertion, bytes. Default 16384.
    max_token_bytes: int = 16384
    #: Policy file (TOML). Default: none, which demands MIAL-0 and MAAL-0.
    policy_file: str = ""
    #: Trust sources for token exchange, by name (see docs/configuration.md).
    trust_sources: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Lifetime of a ``POST /challenge`` nonce, seconds. Default 120.
    nonce_lifetime: int = 120
    #: Most outstanding nonces per client; older ones are dropped. Default 16.
    max_outstanding_nonces: int = 16
    #: Requests per second each client may send to /token and /challenge,
    #: per worker; 0 disables the limit. Default 0.
    rate_limit: int = 0
    #: Burst size of the rate limit. Default 20.
    rate_limit_burst: int = 20
    #: Seconds a client registration is cached per process; a disable,
    #: delete or secret rotation takes effect within this time. 0 disables
    #: the cache. Default 1.
    client_cache_seconds: float = 1.0
    #: Require a server nonce in every DPoP proof (RFC 9449 section 8).
    #: Default false.
    dpop_require_nonce: bool = False
    #: Longest accepted age of a DPoP proof, seconds. Default 60.
    dpop_max_age: int = 60
    #: Python threads per worker process for ``serve``. Default 4.
    threads: int = 4
    #: Number of server worker processes for ``serve``. Default 1.
    workers: int = 1
    #: Where single-use ids are kept: ``memory``, ``database``, ``redis`` or
    #: ``auto`` (redis when ``redis_url`` is set, else memory for one worker
    #: on SQLite, else the database). Default auto.
    replay_store: str = "auto"
    #: Redis URL for the shared replay store, e.g. ``redis://127.0.0.1:6379/0``.
    #: Default: none.
    redis_url: str = ""
    #: Prefix of every Redis key this deployment writes. Default ``wimse:``.
    redis_prefix: str = "wimse:"
    #: PEM CA bundle that ``tls_client_auth`` certificates must chain to
    #: (RFC 8705 section 2.1). Default: none, so only
    #: ``self_signed_tls_client_auth`` and SPIFFE bundles authenticate.
    mtls_ca_file: str = ""
    #: SPIFFE trust domain -> PEM bundle file of its X.509-SVID roots.
    #: Default: none.
    spiffe_bundles: dict[str, str] = field(default_factory=dict)
    #: Request header in which a TLS-terminating proxy forwards the client
    #: certificate, e.g. ``X-SSL-Client-Cert``. Default: none (proxy mode off).
    mtls_proxy_header: str = ""
    #: Format of that header: ``pem-urlencoded`` (nginx
    #: ``$ssl_client_escaped_cert``) or ``rfc9440``. Default pem-urlencoded.
    mtls_proxy_header_format: str = "pem-urlencoded"
    #: Networks of the proxies whose certificate header is believed, e.g.
    #: ``["127.0.0.1/32"]``. Default: none.
    mtls_trusted_proxies: list[str] = field(default_factory=list)
    #: Server certificate chain (PEM, leaf first) with which ``serve``
    #: terminates TLS itself. Default: none (plain HTTP on granian).
    tls_cert_file: str = ""
    #: Private key (PEM, unencrypted) of ``tls_cert_file``. Default: none.
    tls_key_file: str = ""
    #: PEM CAs a client certificate must chain to in the TLS handshake, in
    #: addition to ``mtls_ca_file`` and the ``spiffe_bundles`` roots.
    #: Default: none.
    tls_client_ca_file: str = ""

    @property
    def terminates_tls(self) -> bool:
        """True when ``serve`` terminates TLS itself (``tls_cert_file`` set)."""
        return bool(self.tls_cert_file)

    @property
    def home_path(self) -> Path:
        """``home`` as an absolute path."""
        return Path(self.home).resolve()

    @property
    def keys_dir(self) -> Path:
        """The ``keys/`` folder inside ``home``."""
        return self.home_path / "keys"

    def resolved_database_url(self) -> str:
        """The database URL, defaulting to a SQLite file in ``home``."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.home_path / 'wimse-issuer.db'}"

    def resolved_replay_store(self) -> str:
        """``memory``, ``database`` or ``redis``, resolving ``auto``."""
        if self.replay_store != "auto":
            return self.replay_store
        if self.redis_url:
            return "redis"
        single = self.workers == 1 and self.resolved_database_url().startswith("sqlite")
        return "memory" if single else "database"

    def resolved_issuer_url(self) -> str:
        """The issuer identifier, defaulting to ``http://HOST:PORT``, or
        ``https://HOST:PORT`` when the issuer terminates TLS."""
        if self.issuer_url:
            return self.issuer_url.rstrip("/")
        scheme = "https" if self.terminates_tls else "http"
        return f"{scheme}://{self.host}:{self.port}"

    def validate(self) -> Settings:
        """Check ranges and return self; raises ``ConfigError``."""
        if self.signing_alg not in SIGNING_ALGORITHMS:
            raise ConfigError(f"signing_alg must be one of {SIGNING_ALGORITHMS}")
        if not 0 < self.max_token_lifetime <= 86400:
            raise ConfigError("max_token_lifetime must be 1..86400 seconds")
        if not 0 < self.token_lifetime <= self.max_token_lifetime:
            raise ConfigError("token_lifetime must be 1..max_token_lifetime")
        for name in ("clock_skew", "jwks_max_age", "secret_grace_period"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must not be negative")
        if not 0 < self.max_assertion_lifetime <= 3600:
            raise ConfigError("max_assertion_lifetime must be 1..3600 seconds")
        if not 0 < self.port < 65536:
            raise ConfigError("port must be 1..65535")
        if not 0 < self.nonce_lifetime <= 3600:
            raise ConfigError("nonce_lifetime must be 1..3600 seconds")
        if not 0 < self.max_outstanding_nonces <= 1000:
            raise ConfigError("max_outstanding_nonces must be 1..1000")
        if self.rate_limit < 0 or self.rate_limit_burst < 1:
            raise ConfigError("rate_limit must be >= 0 and rate_limit_burst >= 1")
        if not 0 <= self.client_cache_seconds <= 60:
            raise ConfigError("client_cache_seconds must be 0..60")
        if not 0 < self.dpop_max_age <= 300:
            raise ConfigError("dpop_max_age must be 1..300 seconds")
        if not 1 <= self.threads <= 64:
            raise ConfigError("threads must be 1..64")
        if self.workers < 1:
            raise ConfigError("workers must be at least 1")
        if self.replay_store not in ("auto", "memory", "database", "redis"):
            raise ConfigError("replay_store must be auto, memory, database or redis")
        if self.replay_store == "redis" and not self.redis_url:
            raise ConfigError("replay_store redis needs redis_url")
        if self.replay_store == "memory" and self.workers > 1:
            raise ConfigError(
                "replay_store memory cannot be shared by several workers; "
                "use database or redis"
            )
        self._validate_mtls()
        self._validate_tls()
        url = self.resolved_issuer_url()
        if not url.startswith(("http://", "https://")) or "?" in url or "#" in url:
            raise ConfigError("issuer_url must be an http(s) URL without query")
        return self

    def _validate_mtls(self) -> None:
        # Imported here: issuer.mtls reaches issuer.platforms, which imports
        # this module.
        from .mtls import HEADER_FORMATS, parse_trusted_proxies

        if self.mtls_proxy_header_format not in HEADER_FORMATS:
            raise ConfigError(
                f"mtls_proxy_header_format must be one of {HEADER_FORMATS}"
            )
        if self.mtls_proxy_header and not _HEADER_NAME.match(self.mtls_proxy_header):
            raise ConfigError("mtls_proxy_header must be an HTTP header name")
        if self.mtls_proxy_header and not self.mtls_trusted_proxies:
            raise ConfigError("mtls_proxy_header needs mtls_trusted_proxies")
        try:
            parse_trusted_proxies(self.mtls_trusted_proxies)
        except ValueError as exc:
            raise ConfigError(f"mtls_trusted_proxies: {exc}") from None
        for domain, path in self.spiffe_bundles.items():
            if not isinstance(path, str) or not path:
                raise ConfigError(f"spiffe_bundles.{domain} must name a file")

    def _validate_tls(self) -> None:
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ConfigError("tls_cert_file and tls_key_file must be set together")
        if self.tls_client_ca_file and not self.tls_cert_file:
            raise ConfigError("tls_client_ca_file needs tls_cert_file and tls_key_file")
        if self.tls_cert_file and self.workers > 1:
            raise ConfigError(
                "workers must be 1 when the issuer terminates TLS (tls_cert_file); "
                "for more processes run several instances or a TLS proxy in front"
            )
        for name in ("tls_cert_file", "tls_key_file", "tls_client_ca_file"):
            path = getattr(self, name)
            if not path:
                continue
            if os.path.exists(path) and not os.path.isfile(path):
                raise ConfigError(f"{name} {path} is not a file")
            # Opened, not only stat'ed, so that a permission problem shows
            # here with the key's name rather than later in the TLS layer.
            try:
                with open(path, "rb"):
                    pass
            except OSError as exc:
                raise ConfigError(
                    f"cannot read {name} {path}: {exc.strerror}"
                ) from None


_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}


def _coerce(name: str, value: object) -> object:
    kind = _FIELDS[name].type
    if kind == "int":
        if isinstance(value, bool):
            raise ConfigError(f"{name} must be an integer")
        try:
            return int(value)  # type: ignore[call-overload]
        except (TypeError, ValueError):
            raise ConfigError(f"{name} must be an integer") from None
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name} must be true or false")
    if kind == "float":
        if isinstance(value, bool):
            raise ConfigError(f"{name} must be a number")
        try:
            return float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise ConfigError(f"{name} must be a number") from None
    if kind == "str":
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a string")
        return value
    if kind == "list[str]":
        # An environment variable gives a comma-separated list.
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{name} must be a list of strings")
        return value
    if not isinstance(value, dict):
        raise ConfigError(f"{name} must be a table")
    return value


def load_settings(
    config_file: str | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
) -> Settings:
    """Load settings: defaults, then ``config_file``, then the environment.

    ``WIMSE_ISSUER_CONFIG`` names the file when ``config_file`` is ``None``.
    ``overrides`` (command-line flags) win over all. Raises ``ConfigError``.
    """
    env = os.environ if environ is None else environ
    values: dict[str, object] = {}
    path = config_file or env.get(ENV_PREFIX + "CONFIG")
    if path:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(
                f"cannot read config file {path}: {exc.strerror}"
            ) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        unknown = set(data) - set(_FIELDS)
        if unknown:
            raise ConfigError(f"unknown configuration keys {sorted(unknown)}")
        values.update(data)
    for name, fld in _FIELDS.items():
        raw = env.get(ENV_PREFIX + name.upper())
        if raw is not None and not str(fld.type).startswith("dict"):
            values[name] = raw
    for name, value in (overrides or {}).items():
        if value is not None:
            values[name] = value
    coerced = {name: _coerce(name, value) for name, value in values.items()}
    return Settings(**coerced).validate()  # type: ignore[arg-type]
