"""Client registry: registration, secrets, and the read-only view the issuer uses.

Secrets are generated here (256 random bits) and stored only as an
HMAC-SHA-256 under the issuer's secret-hashing key: for high-entropy random
secrets a slow password hash adds no strength but would cap throughput.
Comparison is constant time. Rotation keeps the previous secret valid for a
grace period.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import bindparam, select

from verifier.levels import load_scheme

from .keys import SecretHasher
from .mtls import SUBJECT_METADATA, validate_tls_client_metadata
from .platforms.spiffe import parse_spiffe_id
from .storage import ClientRecord, Database

__all__ = [
    "AUTH_METHODS",
    "GRANT_TYPES",
    "Client",
    "ClientRegistry",
    "RegistrationError",
    "validate_client_jwks",
]

GRANT_CLIENT_CREDENTIALS = "client_credentials"
GRANT_TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"  # noqa: S105
GRANT_TYPES = (GRANT_CLIENT_CREDENTIALS, GRANT_TOKEN_EXCHANGE)
AUTH_METHODS = (
    "client_secret_basic",
    "client_secret_post",
    "private_key_jwt",
    "tls_client_auth",
    "self_signed_tls_client_auth",
)
_SCOPE_TOKEN = re.compile(r"\A[\x21\x23-\x5b\x5d-\x7e]+\Z")
_PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}


_TABLE = ClientRecord.__table__
_CLIENT_COLUMNS = (
    "client_id", "name", "auth_methods", "grant_types", "scopes", "audiences",
    "subject", "subject_patterns", "declared", "resource_server", "dpop_bound",
    "disabled", *SUBJECT_METADATA,
    "jwks", "secret_hash", "previous_secret_hash", "previous_secret_expires_at",
)  # fmt: skip
_SELECT_CLIENT = select(*(_TABLE.c[name] for name in _CLIENT_COLUMNS)).where(
    _TABLE.c.client_id == bindparam("cid")
)


class RegistrationError(ValueError):
    """A registration or update request is invalid."""


@dataclass(frozen=True)
class Client:
    """What the token endpoint needs to know about a client."""

    client_id: str
    name: str
    auth_methods: tuple[str, ...]
    grant_types: tuple[str, ...]
    scopes: tuple[str, ...]
    audiences: tuple[str, ...]
    subject: str
    subject_patterns: tuple[str, ...]
    declared: dict[str, int]
    resource_server: bool
    dpop_bound: bool
    disabled: bool
    jwks: dict[str, Any] | None
    secret_hash: str | None = field(repr=False)
    previous_secret_hash: str | None = field(repr=False)
    previous_secret_expires_at: float | None
    #: The RFC 8705 section 2.1.2 subject parameter of a ``tls_client_auth``
    #: client, as ``{name: value}``; empty for other clients.
    tls_subject: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_record(cls, rec: ClientRecord) -> Client:
        return cls.from_row({c: getattr(rec, c) for c in _CLIENT_COLUMNS})

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Client:
        """Build from a ``clients`` table row (JSON columns still as text)."""
        return cls(
            client_id=row["client_id"],
            name=row["name"],
            auth_methods=tuple(json.loads(row["auth_methods"])),
            grant_types=tuple(json.loads(row["grant_types"])),
            scopes=tuple(json.loads(row["scopes"])),
            audiences=tuple(json.loads(row["audiences"])),
            subject=row["subject"],
            subject_patterns=tuple(json.loads(row["subject_patterns"] or "[]")),
            declared={
                str(k): int(v) for k, v in json.loads(row["declared"] or "{}").items()
            },
            resource_server=bool(row["resource_server"]),
            dpop_bound=bool(row["dpop_bound"]),
            disabled=bool(row["disabled"]),
            jwks=json.loads(row["jwks"]) if row["jwks"] else None,
            secret_hash=row["secret_hash"],
            previous_secret_hash=row["previous_secret_hash"],
            previous_secret_expires_at=row["previous_secret_expires_at"],
            tls_subject={
                name: row[name] for name in SUBJECT_METADATA if row[name] is not None
            },
        )

    def public_view(self) -> dict[str, Any]:
        """Registration data without secret hashes."""
        return {
            "client_id": self.client_id,
            "name": self.name,
            "token_endpoint_auth_methods": list(self.auth_methods),
            "grant_types": list(self.grant_types),
            "scopes": list(self.scopes),
            "audiences": list(self.audiences),
            "subject": self.subject,
            "subject_patterns": list(self.subject_patterns),
            "declared": self.declared,
            "resource_server": self.resource_server,
            "dpop_bound_access_tokens": self.dpop_bound,
            **self.tls_subject,
            "disabled": self.disabled,
            "jwks": self.jwks,
            "has_secret": self.secret_hash is not None,
            "previous_secret_valid_until": self.previous_secret_expires_at,
        }


def validate_client_jwks(jwks: object) -> dict[str, Any]:
    """Check a client's JWK Set for private_key_jwt; return it.

    Every key must be an asymmetric public key (EC, RSA or OKP) with no
    private members. Raises ``RegistrationError``.
    """
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
        raise RegistrationError("jwks must be an object with a keys array")
    if not jwks["keys"] or len(jwks["keys"]) > 20:
        raise RegistrationError("jwks must hold 1 to 20 keys")
    for key in jwks["keys"]:
        if not isinstance(key, dict):
            raise RegistrationError("each JWK must be an object")
        if key.get("kty") not in ("EC", "RSA", "OKP"):
            raise RegistrationError("only EC, RSA and OKP public keys are accepted")
        if _PRIVATE_MEMBERS & set(key):
            raise RegistrationError("a JWK holds private key material")
    return jwks


def _auth_methods(
    jwks: object, tls_auth: Mapping[str, str] | None, self_signed_tls: bool
) -> list[str]:
    """The token endpoint auth methods a new client registers for."""
    if tls_auth is not None:
        if jwks is not None or self_signed_tls:
            raise RegistrationError("tls_client_auth takes no jwks")
        unknown = set(tls_auth) - set(SUBJECT_METADATA)
        if unknown:
            raise RegistrationError(f"unknown tls_client_auth parameters {unknown}")
        try:
            validate_tls_client_metadata(tls_auth)
        except ValueError as exc:
            raise RegistrationError(str(exc)) from None
        return ["tls_client_auth"]
    if self_signed_tls:
        if jwks is None:
            raise RegistrationError("self_signed_tls_client_auth needs jwks")
        return ["self_signed_tls_client_auth"]
    if jwks is not None:
        return ["private_key_jwt"]
    return ["client_secret_basic", "client_secret_post"]


def _check_declared(values: dict[str, int]) -> dict[str, int]:
    """Operator declarations: known dimensions, values 0 or 1 (docs/levels.md
    section 2: what is merely declared never counts above 1)."""
    scheme = load_scheme()
    for item, value in values.items():
        if not scheme.has_dimension(item):
            raise RegistrationError(f"unknown dimension {item}")
        if type(value) is not int or value not in (0, 1):
            raise RegistrationError(f"{item}: declared values are 0 or 1")
    return dict(values)


def _check_tokens(kind: str, values: list[str]) -> list[str]:
    for value in values:
        if not _SCOPE_TOKEN.match(value):
            raise RegistrationError(f"invalid {kind} {value!r}")
    return list(dict.fromkeys(values))


class ClientRegistry:
    """Client records in the database, and secret checks."""

    def __init__(
        self,
        db: Database,
        hasher: SecretHasher,
        grace_period: int,
        cache_seconds: float = 0.0,
    ) -> None:
        self._db = db
        self._hasher = hasher
        # Lookups on the token path are cached briefly: a change (disable,
        # secret rotation, delete) reaches every process within this bound.
        self._cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, Client | None]] = {}
        self._grace = grace_period

    def _hash(self, secret: str) -> str:
        return self._hasher.hash(secret)

    def check_secret(
        self, client: Client, secret: str, now: float | None = None
    ) -> bool:
        """Compare ``secret`` with the current and, in its grace period, the
        previous secret, in constant time. A current secret hashed under an
        older hashing key is re-hashed under the newest one."""
        now = time.time() if now is None else now
        ok, rehash = self._hasher.verify(secret, client.secret_hash)
        in_grace = (
            client.previous_secret_expires_at is not None
            and client.previous_secret_expires_at > now
        )
        prev_ok, _ = self._hasher.verify(secret, client.previous_secret_hash)
        if ok and rehash:
            self._rehash(client.client_id, secret)
        return ok or (prev_ok and in_grace)

    def _rehash(self, client_id: str, secret: str) -> None:
        with self._db.session() as s:
            rec = s.get(ClientRecord, client_id)
            if rec is not None:
                rec.secret_hash = self._hash(secret)
        self._cache.pop(client_id, None)

    def get(self, client_id: str) -> Client | None:
        """The client, or ``None`` when unknown (cached ``cache_seconds``)."""
        if self._cache_seconds <= 0:
            return self._load(client_id)
        now = time.monotonic()
        hit = self._cache.get(client_id)
        if hit is not None and hit[0] > now:
            return hit[1]
        client = self._load(client_id)
        if len(self._cache) > 10000:
            self._cache.clear()
        self._cache[client_id] = (now + self._cache_seconds, client)
        return client

    def _load(self, client_id: str) -> Client | None:
        with self._db.connection() as conn:
            row = conn.execute(_SELECT_CLIENT, {"cid": client_id}).mappings().first()
        return Client.from_row(dict(row)) if row is not None else None

    def all(self) -> list[Client]:
        """All clients, by name."""
        with self._db.session() as s:
            recs = s.scalars(select(ClientRecord).order_by(ClientRecord.name)).all()
            return [Client.from_record(r) for r in recs]

    def add(
        self,
        name: str,
        *,
        jwks: dict[str, Any] | None = None,
        grant_types: list[str] | None = None,
        scopes: list[str] | None = None,
        audiences: list[str] | None = None,
        subject: str | None = None,
        subject_patterns: list[str] | None = None,
        declared: dict[str, int] | None = None,
        resource_server: bool = False,
        dpop_bound: bool = False,
        tls_auth: Mapping[str, str] | None = None,
        self_signed_tls: bool = False,
        spiffe_id: str | None = None,
        owner: str = "",
    ) -> tuple[Client, str | None]:
        """Register a client; return it and its secret (shown only here).

        A client registered with ``jwks`` authenticates with private_key_jwt,
        or with ``self_signed_tls`` by a certificate holding one of those keys
        (RFC 8705 section 2.2); with ``tls_auth``, one RFC 8705 section 2.1.2
        subject parameter, by a CA-issued certificate. Such clients get no
        secret. With ``spiffe_id`` the client authenticates with a JWT-SVID
        for that SPIFFE ID as its client assertion (docs/platforms.md,
        "JWT-SVID client assertions"), which also becomes its token ``sub``.
        Raises ``RegistrationError``.
        """
        if not name or len(name) > 200:
            raise RegistrationError("name must be 1..200 characters")
        if spiffe_id is not None:
            if jwks is not None or tls_auth is not None or self_signed_tls:
                raise RegistrationError("a SPIFFE ID client takes no other credential")
            try:
                parse_spiffe_id(spiffe_id)
            except ValueError as exc:
                raise RegistrationError(f"invalid SPIFFE ID: {exc}") from None
            subject = spiffe_id
        methods = (
            ["spiffe_jwt"]
            if spiffe_id is not None
            else _auth_methods(jwks, tls_auth, self_signed_tls)
        )
        client_id = secrets.token_urlsafe(18)
        uses_secret = methods[0].startswith("client_secret")
        secret = secrets.token_urlsafe(32) if uses_secret else None
        now = time.time()
        rec = ClientRecord(
            client_id=client_id,
            name=name,
            secret_hash=self._hash(secret) if secret else None,
            jwks=json.dumps(validate_client_jwks(jwks)) if jwks is not None else None,
            auth_methods=json.dumps(methods),
            created_at=now,
            updated_at=now,
            owner=owner,
            **(tls_auth or {}),
        )
        self._apply(
            rec,
            grant_types=grant_types if grant_types is not None else list(GRANT_TYPES),
            scopes=scopes or [],
            audiences=audiences or [],
            subject=subject or f"client:{client_id}",
            subject_patterns=subject_patterns or [],
            declared=declared or {},
            resource_server=resource_server,
            dpop_bound=dpop_bound,
        )
        with self._db.session() as s:
            s.add(rec)
        return Client.from_record(rec), secret

    def _apply(self, rec: ClientRecord, **changes: Any) -> None:
        for name, value in changes.items():
            if value is None:
                continue
            if name == "grant_types":
                unknown = set(value) - set(GRANT_TYPES)
                if unknown:
                    raise RegistrationError(f"unknown grant types {sorted(unknown)}")
                rec.grant_types = json.dumps(list(dict.fromkeys(value)))
            elif name == "scopes":
                rec.scopes = json.dumps(_check_tokens("scope", value))
            elif name == "audiences":
                rec.audiences = json.dumps(_check_tokens("audience", value))
            elif name == "subject_patterns":
                rec.subject_patterns = json.dumps(list(value))
            elif name == "declared":
                rec.declared = json.dumps(_check_declared(value))
            elif name == "jwks":
                # Registering a key moves the client to private_key_jwt; its
                # secrets stop working at once. A self-signed certificate
                # client (RFC 8705 section 2.2) keeps its method: new keys
                # are how its certificates rotate.
                rec.jwks = json.dumps(validate_client_jwks(value))
                if "self_signed_tls_client_auth" not in json.loads(rec.auth_methods):
                    rec.auth_methods = json.dumps(["private_key_jwt"])
                rec.secret_hash = None
                rec.previous_secret_hash = None
                rec.previous_secret_expires_at = None
            else:
                setattr(rec, name, value)

    def update(
        self, client_id: str, *, rotate_secret: bool = False, **changes: Any
    ) -> tuple[Client, str | None]:
        """Change a client; with ``rotate_secret`` return the new secret.

        The previous secret stays valid for the grace period. Raises
        ``KeyError`` for an unknown client and ``RegistrationError``.
        """
        secret = None
        with self._db.session() as s:
            rec = s.get(ClientRecord, client_id)
            if rec is None:
                raise KeyError(client_id)
            self._apply(rec, **changes)
            if rotate_secret:
                if rec.secret_hash is None:
                    raise RegistrationError("this client authenticates with a key")
                secret = secrets.token_urlsafe(32)
                rec.previous_secret_hash = rec.secret_hash
                rec.previous_secret_expires_at = float(int(time.time()) + self._grace)
                rec.secret_hash = self._hash(secret)
            rec.updated_at = time.time()
            client = Client.from_record(rec)
        self._cache.pop(client_id, None)
        return client, secret

    def delete(self, client_id: str) -> None:
        """Remove a client; its audit records stay. Raises ``KeyError``."""
        with self._db.session() as s:
            rec = s.get(ClientRecord, client_id)
            if rec is None:
                raise KeyError(client_id)
            s.delete(rec)
        self._cache.pop(client_id, None)
