"""Signing keys: generation into ``keys/``, RFC 7638 key ids, JWKS, rotation.

Layout under ``keys/signing/``: one PKCS#8 PEM per key named ``<kid>.pem``
(mode 0600) and ``state.json`` listing each key's algorithm and the time it
starts signing (``not_before``). The newest key whose ``not_before`` has
passed signs. A key is retired when a newer one starts signing and stays
published until every token it signed has expired (the newer key's
``not_before`` plus the longest token lifetime and the clock skew).

Rotation therefore never needs the processes to talk to each other: each one
re-reads ``state.json`` when its modification time changes (checked at most
once a second), and a new key is published one JWKS max-age before it signs,
so caches have it before any token does.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import get_default_algorithms

__all__ = [
    "KeyRing",
    "SecretHasher",
    "SigningKey",
    "jwk_thumbprint",
    "load_or_create_secret",
]

_SIGNERS = get_default_algorithms()

#: Seconds between checks of ``state.json`` by a running process.
RELOAD_INTERVAL = 1
#: Extra seconds a new key waits before signing, for clock differences.
PUBLISH_MARGIN = 1

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey

# RFC 7638 section 3.2: the required members of each key type, which alone
# (sorted, no whitespace) are hashed.
_THUMBPRINT_MEMBERS = {
    "EC": ("crv", "kty", "x", "y"),
    "RSA": ("e", "kty", "n"),
    "OKP": ("crv", "kty", "x"),
}


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def jwk_thumbprint(jwk: dict[str, Any]) -> str:
    """Return the RFC 7638 SHA-256 thumbprint of a public JWK, base64url.

    Raises ``KeyError`` for an unsupported ``kty`` or a missing member.
    """
    members = _THUMBPRINT_MEMBERS[jwk["kty"]]
    canonical = json.dumps(
        {m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True
    )
    return _b64url(hashlib.sha256(canonical.encode("utf-8")).digest())


def _generate(alg: str) -> PrivateKey:
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    return rsa.generate_private_key(public_exponent=65537, key_size=3072)


def public_jwk(key: PrivateKey, alg: str) -> dict[str, Any]:
    """Return the public JWK of ``key`` with ``alg`` and ``use`` set."""
    algo = get_default_algorithms()[alg]
    jwk: dict[str, Any] = algo.to_jwk(key.public_key(), as_dict=True)
    jwk["alg"] = alg
    jwk["use"] = "sig"
    jwk["kid"] = jwk_thumbprint(jwk)
    return jwk


def _file_version(path: Path) -> tuple[int, int]:
    """What tells a key file's writes apart: every write replaces the file
    (``_write_private``: a new inode), and two writes within one tick of
    the file clock can share a modification time."""
    st = path.stat()
    return st.st_ino, st.st_mtime_ns


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class SecretHasher:
    """Keyed hashes of client secrets, under rotatable keys in ``keys/``.

    ``secret-hmac.json`` lists the hashing keys, newest first. A stored hash
    names the key it was made with (``hmac-sha256:<key id>:<hex>``), so
    after ``rotate`` old hashes still verify, and ``verify`` tells the caller
    to re-hash a secret under the newest key once it has been presented.
    Every process re-reads the file when it changes (checked at most once a
    second), like the signing keys.
    """

    def __init__(self, keys_dir: Path) -> None:
        keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path = keys_dir / "secret-hmac.json"
        self._lock = threading.Lock()
        self._keys: list[tuple[str, bytes]] = []
        self._seen: tuple[int, int] = (-1, -1)  # (inode, mtime) last read
        self._checked = 0.0
        with _locked(keys_dir):
            if not self.path.exists():
                self._write([self._new_entry()])
        self._reload(force=True)

    @staticmethod
    def _new_entry() -> dict[str, Any]:
        return {
            "id": secrets.token_hex(4),
            "key": secrets.token_hex(32),
            "created": int(time.time()),
        }

    def _write(self, entries: list[dict[str, Any]]) -> None:
        _write_private(self.path, json.dumps({"keys": entries}, indent=2).encode())

    def _entries(self) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = json.loads(self.path.read_text())["keys"]
        return entries

    def _reload(self, force: bool = False, recheck: bool = False) -> None:
        """Re-read the key file when it changed, checking at most once a
        second; ``recheck`` checks now, ``force`` re-reads whatever."""
        now = time.monotonic()
        if not (force or recheck) and now - self._checked < 1.0:
            return
        self._checked = now
        seen = _file_version(self.path)
        if seen == self._seen and not force:
            return
        with self._lock:
            self._keys = [(e["id"], bytes.fromhex(e["key"])) for e in self._entries()]
            self._seen = seen

    def rotate(self) -> str:
        """Add a newest key; return its id. Old keys stay for old hashes."""
        with _locked(self.path.parent):
            entries = [self._new_entry(), *self._entries()]
            self._write(entries)
        self._reload(force=True)
        return str(entries[0]["id"])

    def key_ids(self) -> list[str]:
        """Key ids, newest first."""
        self._reload()
        return [kid for kid, _ in self._keys]

    def hash(self, secret: str) -> str:
        """Hash ``secret`` under the newest key."""
        self._reload()
        kid, key = self._keys[0]
        return f"hmac-sha256:{kid}:{self._mac(key, secret)}"

    @staticmethod
    def _mac(key: bytes, secret: str) -> str:
        # hmac.new rather than hmac.digest: CPython's one-shot HMAC lets go
        # of the GIL whatever the input's size, and under load each release
        # hands the interpreter to another thread and back (two context
        # switches per token; bench/README.md). Same digest either way.
        return hmac.new(key, secret.encode("utf-8"), hashlib.sha256).hexdigest()

    def _key(self, kid: str) -> bytes | None:
        return next((k for i, k in self._keys if i == kid), None)

    def verify(self, secret: str, stored: str | None) -> tuple[bool, bool]:
        """Compare in constant time; return (matches, should be re-hashed)."""
        if stored is None:
            return False, False
        self._reload()
        scheme, _, rest = stored.partition(":")
        kid, _, digest = rest.partition(":")
        if scheme != "hmac-sha256":
            return False, False
        key = self._key(kid)
        if key is None:
            # Another process may have added the key a moment ago and
            # re-hashed a secret under it: look at the file now rather than
            # within the second. Costs one stat, only for such hashes.
            self._reload(recheck=True)
            key = self._key(kid)
        if key is None:
            return False, False
        ok = hmac.compare_digest(self._mac(key, secret), digest)
        return ok, ok and kid != self._keys[0][0]


def load_or_create_secret(keys_dir: Path, name: str) -> bytes:
    """A 32-byte random secret kept in ``keys/<name>`` (mode 0600), created
    on first use and shared by every process using the same folder."""
    keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = keys_dir / name
    with _locked(keys_dir):
        if not path.exists():
            _write_private(path, secrets.token_hex(32).encode("ascii"))
    return bytes.fromhex(path.read_text().strip())


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    with open(folder / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@dataclass(frozen=True)
class SigningKey:
    """One signing key and its schedule."""

    kid: str
    alg: str
    not_before: int
    private_key: PrivateKey
    jwk: dict[str, Any]


class KeyRing:
    """The signing keys of this issuer, shared through the ``keys/`` folder.

    ``max_token_lifetime`` and ``clock_skew`` decide how long a retired key
    stays published; ``jwks_max_age`` how long a new key waits before signing.
    """

    def __init__(
        self,
        keys_dir: Path,
        *,
        alg: str = "ES256",
        jwks_max_age: int = 300,
        max_token_lifetime: int = 3600,
        clock_skew: int = 60,
    ) -> None:
        self.folder = self._state_file(keys_dir).parent
        self.alg = alg
        self.jwks_max_age = jwks_max_age
        self.retire_after = max_token_lifetime + clock_skew
        self._lock = threading.Lock()
        self._headers: dict[tuple[str, str], str] = {}
        self._keys: list[SigningKey] = []
        self._seen: tuple[int, int] = (-1, -1)  # (inode, mtime) last read
        self._checked = 0.0
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(keys_dir, 0o700)
        with _locked(self.folder):
            if not self._read_state():
                self._add_key(self.alg, int(time.time()), [])
        self._reload(force=True)

    @property
    def _state_path(self) -> Path:
        return self._state_file(self.folder.parent)

    @staticmethod
    def _state_file(keys_dir: Path) -> Path:
        return keys_dir / "signing" / "state.json"

    @classmethod
    def exists_in(cls, keys_dir: Path) -> bool:
        """Whether ``keys_dir`` already holds signing keys (building a
        ``KeyRing`` there would otherwise make some)."""
        return cls._state_file(keys_dir).is_file()

    def _read_state(self) -> list[dict[str, Any]]:
        try:
            data = json.loads(self._state_path.read_text())
        except FileNotFoundError:
            return []
        keys: list[dict[str, Any]] = data["keys"]
        return keys

    def _add_key(self, alg: str, not_before: int, state: list[dict[str, Any]]) -> str:
        key = _generate(alg)
        jwk = public_jwk(key, alg)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        _write_private(self.folder / f"{jwk['kid']}.pem", pem)
        state = [*state, {"kid": jwk["kid"], "alg": alg, "not_before": not_before}]
        _write_private(
            self._state_path, json.dumps({"keys": state}, indent=2).encode("utf-8")
        )
        return str(jwk["kid"])

    def _reload(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._checked < RELOAD_INTERVAL:
            return
        self._checked = now
        try:
            seen = _file_version(self._state_path)
        except FileNotFoundError:
            return
        if seen == self._seen and not force:
            return
        with self._lock:
            keys = []
            for entry in self._read_state():
                pem = (self.folder / f"{entry['kid']}.pem").read_bytes()
                private = serialization.load_pem_private_key(pem, password=None)
                key = SigningKey(
                    entry["kid"],
                    entry["alg"],
                    int(entry["not_before"]),
                    private,  # type: ignore[arg-type]
                    public_jwk(private, entry["alg"]),  # type: ignore[arg-type]
                )
                keys.append(key)
            keys.sort(key=lambda k: k.not_before)
            self._keys = keys
            self._seen = seen

    def rotate(self, alg: str | None = None, now: int | None = None) -> str:
        """Add a key that starts signing after one JWKS max-age plus the
        reload delay; return its kid.

        Running processes notice the new state within ``RELOAD_INTERVAL``, so
        the key is published at most that late; a cache filled just before
        then expires one max-age later. ``PUBLISH_MARGIN`` absorbs clock
        differences between the issuer and relying parties.
        """
        now = int(time.time()) if now is None else now
        lead = self.jwks_max_age + RELOAD_INTERVAL + PUBLISH_MARGIN
        with _locked(self.folder):
            state = self._read_state()
            kid = self._add_key(alg or self.alg, now + lead, state)
        self._reload(force=True)
        return kid

    def keys(self) -> list[SigningKey]:
        """All keys in ``state.json``, oldest first."""
        self._reload()
        return list(self._keys)

    def current(self, now: float | None = None) -> SigningKey:
        """The key that signs now: the newest whose ``not_before`` has passed."""
        self._reload()
        now = time.time() if now is None else now
        active = [k for k in self._keys if k.not_before <= now]
        return active[-1] if active else self._keys[0]

    def status(self, now: float | None = None) -> list[dict[str, Any]]:
        """Describe each key: kid, alg, state (pending, signing, retired, expired)."""
        self._reload()
        now = time.time() if now is None else now
        current = self.current(now)
        out = []
        for i, key in enumerate(self._keys):
            unpublish = self._unpublish_time(i)
            if key.kid == current.kid:
                state = "signing"
            elif key.not_before > now:
                state = "pending"
            elif unpublish is not None and unpublish <= now:
                state = "expired"
            else:
                state = "retired"
            out.append(
                {
                    "kid": key.kid,
                    "alg": key.alg,
                    "not_before": key.not_before,
                    "unpublish_at": unpublish,
                    "state": state,
                }
            )
        return out

    def _unpublish_time(self, index: int) -> int | None:
        later = self._keys[index + 1 :]
        if not later:
            return None
        return later[0].not_before + self.retire_after

    def published(self, now: float | None = None) -> list[SigningKey]:
        """Keys in the JWKS: pending, signing, and retired ones not yet expired."""
        now = time.time() if now is None else now
        return [
            k
            for k, s in zip(self.keys(), self.status(now), strict=True)
            if s["state"] != "expired"
        ]

    def jwks(self, now: float | None = None) -> dict[str, Any]:
        """The JWK Set (RFC 7517 section 5) of the published keys."""
        return {"keys": [k.jwk for k in self.published(now)]}

    def public_key(self, kid: str, now: float | None = None) -> SigningKey | None:
        """The published key with this kid, or ``None``."""
        for key in self.published(now):
            if key.kid == kid:
                return key
        return None

    def sign(self, claims: dict[str, Any], typ: str = "at+jwt") -> str:
        """Sign ``claims`` as a compact JWS (RFC 7515 section 7.1) with the
        current key and a ``typ`` header.

        The encoded protected header is built once per key and type, and the
        signature comes from PyJWT's algorithm object, which is what
        ``jwt.encode`` would do after re-encoding the same header each time.
        """
        key = self.current()
        cache_key = (key.kid, typ)
        header = self._headers.get(cache_key)
        if header is None:
            raw = json.dumps(
                {"alg": key.alg, "kid": key.kid, "typ": typ}, separators=(",", ":")
            )
            header = _b64url(raw.encode())
            self._headers[cache_key] = header
        payload = _b64url(orjson.dumps(claims))
        signing_input = f"{header}.{payload}"
        signature = _SIGNERS[key.alg].sign(signing_input.encode(), key.private_key)
        return f"{signing_input}.{_b64url(signature)}"
