"""The workload's side of attested token issuance, over HTTP.

``Workload`` keeps a state folder (TPM object files and ``workload.json``)
and talks to one issuer:

1. discovery of the issuer's endpoints (RFC 8414 section 3);
2. a freshness nonce from ``POST /challenge``, client-authenticated;
3. once per attestation key (AK), credential activation at
   ``POST /tpm/activate`` (TPM 2.0 Library Part 1 section 24, Part 3
   section 12.5): the issuer encrypts a secret to the EK for the AK's Name
   and the TPM releases it only if both live in it;
4. evidence: a TPM2_Quote over ``issuer.evidence.tpm.qualifying_data`` of
   the nonce (Part 3 section 18.4) and a TPM2_Certify of the TPM-resident
   signing key (Part 3 section 18.2) with its TPM2_GetTime freshness
   attest (Part 3 section 18.7), each with the AK's trust members, plus any
   evidence the caller adds (an EAR, a Nitro document, signed provenance);
5. client authentication with ``private_key_jwt`` (RFC 7523 section 2.2,
   RFC 7521 section 4.2) whose assertion the TPM signs, and optionally a
   DPoP proof (RFC 9449 section 4);
6. the token request (RFC 6749 section 4.4, or RFC 8693 section 2.1).

Wire format of the token request: the usual form parameters, ``nonce``
(the challenge nonce), and one ``evidence`` parameter per piece, each a
JSON object ``{"kind": K, "value": V}``, described in docs/workload.md.

The request is sent with ``requests`` rather than Authlib's
``OAuth2Session``: Authlib decodes the prepared body into a ``dict``
before posting it, which keeps only the last of several ``evidence``
parameters, and it has no DPoP support.

Nothing here logs. Tokens, assertions, the activation secret and evidence
are returned to the caller, never printed; the activation secret is kept in
``workload.json``, readable by its owner only.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import json
import os
import secrets
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import jwt
import requests
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from ..evidence.tpm import ActivationChallenge, qualifying_data
from ..keys import jwk_thumbprint
from .tpm import EK_CERT_INDEX_RSA, EK_HANDLE_RSA, Tpm2Tools, TpmKey, TpmToolError

__all__ = [
    "ASSERTION_TYPE",
    "EVIDENCE_KINDS",
    "GRANT_CLIENT_CREDENTIALS",
    "GRANT_TOKEN_EXCHANGE",
    "TOKEN_TYPE_JWT",
    "Challenge",
    "DPoPKey",
    "Evidence",
    "IssuerError",
    "MemoryDPoPKey",
    "StateError",
    "TokenResult",
    "TpmDPoPKey",
    "Workload",
    "WorkloadError",
    "load_evidence",
]

#: RFC 7523 section 2.2: the client assertion type of ``private_key_jwt``.
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
GRANT_CLIENT_CREDENTIALS = "client_credentials"
GRANT_TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"  # noqa: S105
#: RFC 8693 section 3: a JWT subject token.
TOKEN_TYPE_JWT = "urn:ietf:params:oauth:token-type:jwt"  # noqa: S105
#: Evidence kinds the issuer knows (docs/evidence.md).
EVIDENCE_KINDS = (
    "tpm_quote",
    "tpm2_certify",
    "ear",
    "nitro_attestation",
    "slsa_provenance",
)
STATE_FILE = "workload.json"
_STATE_VERSION = 1
# Labels of the TPM objects in ``<state>/tpm``.
_AK, _SIGNING, _DPOP = "ak", "workload", "dpop"
# RFC 7523 section 3 item 4: the issuer accepts at most a few minutes; a
# minute is enough for one request.
ASSERTION_LIFETIME = 60


class WorkloadError(Exception):
    """Root of the errors this module raises (besides ``TpmToolError`` from
    the TPM driver and ``OSError`` for files)."""


class StateError(WorkloadError):
    """The state folder is missing, unreadable or not enrolled yet."""


class IssuerError(WorkloadError):
    """The issuer refused a request or answered something unusable.

    ``error`` is the OAuth error code (RFC 6749 section 5.2), or
    ``http_error`` when the body carried none; ``description`` the issuer's
    ``error_description``; ``dpop_nonce`` the ``DPoP-Nonce`` header
    (RFC 9449 section 8), if any.
    """

    def __init__(
        self,
        status: int,
        error: str,
        description: str = "",
        dpop_nonce: str | None = None,
    ) -> None:
        self.status = status
        self.error = error
        self.description = description
        self.dpop_nonce = dpop_nonce
        text = f"{error} (HTTP {status})"
        super().__init__(f"{text}: {description}" if description else text)


# -- evidence ------------------------------------------------------------


@dataclass(frozen=True)
class Evidence:
    """One piece of evidence for the token request, tagged with its kind.

    ``value`` is a JSON object for ``tpm_quote``, ``tpm2_certify`` and
    ``slsa_provenance``, and a string for ``ear`` (compact JWT) and
    ``nitro_attestation`` (base64 COSE_Sign1).
    """

    kind: str
    value: str | Mapping[str, Any]

    def param(self) -> str:
        """The value of one ``evidence`` form parameter: the JSON text of
        ``{"kind": ..., "value": ...}``."""
        return json.dumps(
            {"kind": self.kind, "value": self.value}, separators=(",", ":")
        )


def load_evidence(kind: str, path: Path) -> Evidence:
    """Read one piece of evidence of ``kind`` from a file.

    ``ear``: a compact JWT (surrounding white space is dropped).
    ``nitro_attestation``: base64 text, or the raw CBOR, which is encoded.
    The other kinds: a JSON object. Raises ``ValueError`` for an unknown
    kind or content of the wrong form, ``OSError`` when unreadable.
    """
    if kind not in EVIDENCE_KINDS:
        raise ValueError(f"unknown evidence kind {kind!r}; use one of {EVIDENCE_KINDS}")
    raw = path.read_bytes()
    if kind == "ear":
        text = raw.decode("ascii", "replace").strip()
        if text.count(".") != 2 or not text.isascii():
            raise ValueError(f"{path}: an EAR must be a compact JWT")
        return Evidence(kind, text)
    if kind == "nitro_attestation":
        return Evidence(kind, _nitro_text(raw, path))
    try:
        value = json.loads(raw)
    except ValueError:
        raise ValueError(f"{path}: {kind} evidence must be JSON") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: {kind} evidence must be a JSON object")
    return Evidence(kind, value)


def _nitro_text(raw: bytes, path: Path) -> str:
    # A Nitro document is CBOR; a COSE_Sign1 array or its tag 18 starts with
    # a byte outside the base64 alphabet, so text that decodes is base64.
    try:
        text = "".join(raw.decode("ascii").split())
        standard = text.replace("-", "+").replace("_", "/")
        if not base64.b64decode(standard + "=" * (-len(standard) % 4), validate=True):
            raise ValueError(f"{path}: empty Nitro attestation document")
    except (UnicodeDecodeError, binascii.Error):
        if raw[:1] in (b"\x84", b"\xd2"):
            return base64.b64encode(raw).decode("ascii")
        raise ValueError(f"{path}: not a Nitro attestation document") from None
    return text


# -- DPoP ----------------------------------------------------------------


class DPoPKey(Protocol):
    """A key that signs DPoP proofs (RFC 9449 section 4.2)."""

    def proof(self, htm: str, htu: str, nonce: str | None = None) -> str:
        """A DPoP proof JWT for one request."""
        ...  # pragma: no cover

    def thumbprint(self) -> str:
        """The RFC 7638 thumbprint of the public key (``cnf.jkt``)."""
        ...  # pragma: no cover


def _proof_claims(htm: str, htu: str, nonce: str | None) -> dict[str, Any]:
    # RFC 9449 section 4.2: jti, htm, htu (without query and fragment),
    # iat, and the server's nonce when it asked for one.
    claims: dict[str, Any] = {
        "jti": secrets.token_urlsafe(16),
        "htm": htm,
        "htu": htu.split("?", 1)[0].split("#", 1)[0],
        "iat": int(time.time()),
    }
    if nonce is not None:
        claims["nonce"] = nonce
    return claims


class MemoryDPoPKey:
    """An ES256 DPoP key generated in memory, for this process only."""

    def __init__(self) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        jwk: dict[str, Any] = ECAlgorithm.to_jwk(self._key.public_key(), as_dict=True)
        self._jwk = {m: jwk[m] for m in ("kty", "crv", "x", "y")}

    def proof(self, htm: str, htu: str, nonce: str | None = None) -> str:
        """A proof signed in software (RFC 9449 section 4.2)."""
        return jwt.encode(
            _proof_claims(htm, htu, nonce),
            self._key,
            algorithm="ES256",
            headers={"typ": "dpop+jwt", "jwk": self._jwk},
        )

    def thumbprint(self) -> str:
        """RFC 7638 thumbprint of the public key."""
        return jwk_thumbprint(self._jwk)


class TpmDPoPKey:
    """An ES256 DPoP key inside the TPM (``key``); proofs are signed by
    TPM2_Sign (Part 3 section 20.2)."""

    def __init__(self, tpm: Tpm2Tools, key: TpmKey) -> None:
        self._tpm = tpm
        self.key = key
        jwk = key.jwk()
        self._jwk = {m: jwk[m] for m in ("kty", "crv", "x", "y")}

    def proof(self, htm: str, htu: str, nonce: str | None = None) -> str:
        """A proof signed inside the TPM (RFC 9449 section 4.2)."""
        return self._tpm.sign_jwt(
            self.key,
            _proof_claims(htm, htu, nonce),
            headers={"typ": "dpop+jwt", "jwk": self._jwk},
        )

    def thumbprint(self) -> str:
        """RFC 7638 thumbprint of the public key."""
        return jwk_thumbprint(self._jwk)


# -- results -------------------------------------------------------------


@dataclass(frozen=True)
class Challenge:
    """A ``POST /challenge`` answer: a single-use nonce and its lifetime."""

    nonce: str
    expires_in: int


@dataclass(frozen=True)
class TokenResult:
    """A successful token response (RFC 6749 section 5.1) and what was sent.

    ``response`` is the JSON body; ``evidence`` the pieces sent, in order;
    ``nonce`` the challenge nonce they were bound to.
    """

    response: Mapping[str, Any]
    nonce: str
    evidence: tuple[Evidence, ...] = ()
    dpop_nonce: str | None = None

    @property
    def access_token(self) -> str:
        """The issued access token."""
        return str(self.response["access_token"])

    def unverified_claims(self) -> dict[str, Any]:
        """The access token's claims, decoded without checking the
        signature: for display only, never for a decision."""
        claims: dict[str, Any] = jwt.decode(
            self.access_token, options={"verify_signature": False}
        )
        return claims


# -- state ---------------------------------------------------------------


@dataclass
class _State:
    issuer: str | None = None
    client_id: str | None = None
    ek_certificates: list[str] = field(default_factory=list)
    ek_public: str | None = None
    key_pcrs: dict[str, list[int]] | None = None
    dpop_key: bool = False
    # The activation secret is specific to the issuer's HMAC key and the
    # AK, so it is kept with both.
    activation: dict[str, str] | None = None

    @classmethod
    def read(cls, path: Path) -> _State:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError) as exc:
            raise StateError(f"cannot read {path}: {exc}") from None
        if not isinstance(data, dict) or data.get("version") != _STATE_VERSION:
            raise StateError(f"{path} is not a wimse-workload state file")
        data.pop("version")
        try:
            return cls(**data)
        except TypeError:
            raise StateError(f"{path} has unknown members") from None

    def write(self, path: Path) -> None:
        data = {"version": _STATE_VERSION, **self.__dict__}
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(data, out, indent=2, sort_keys=True)
        tmp.replace(path)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _error_from(resp: requests.Response) -> IssuerError:
    try:
        body = resp.json()
    except ValueError:
        body = None
    error, description = "http_error", ""
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        error = body["error"]
        description = str(body.get("error_description", ""))
    return IssuerError(
        resp.status_code, error, description, resp.headers.get("DPoP-Nonce")
    )


class Workload:
    """One workload: its TPM, its state folder and the issuer it uses.

    ``state`` is created (mode 0700) when missing; the TPM objects live in
    ``state/tpm``. ``tcti`` selects the TPM (tpm2-tools syntax, e.g.
    ``swtpm:host=127.0.0.1,port=2321``; default: the tools' own choice).
    ``issuer`` and ``client_id`` default to those saved by an earlier run.
    ``timeout`` bounds each HTTP request, in seconds (default 30).
    ``ek_handle`` and ``ek_cert_index`` locate the EK and its certificate
    (default: the RSA EK of the TCG EK Credential Profile).
    """

    def __init__(
        self,
        state: Path,
        *,
        tcti: str | None = None,
        issuer: str | None = None,
        client_id: str | None = None,
        timeout: float = 30.0,
        session: requests.Session | None = None,
        ek_handle: str = EK_HANDLE_RSA,
        ek_cert_index: int = EK_CERT_INDEX_RSA,
    ) -> None:
        self.state_dir = state
        state.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.tpm = Tpm2Tools(
            state / "tpm", tcti=tcti, ek_handle=ek_handle, ek_cert_index=ek_cert_index
        )
        self._state_path = state / STATE_FILE
        self._given_issuer = issuer.rstrip("/") if issuer is not None else None
        self._given_client_id = client_id
        self._state = self._read_state()
        self._given = issuer is not None or client_id is not None
        self.timeout = timeout
        self.http = session or requests.Session()
        self._metadata: dict[str, Any] | None = None
        self._signing: TpmKey | None = None

    # -- plumbing --------------------------------------------------------

    def _read_state(self) -> _State:
        state = _State.read(self._state_path)
        if self._given_issuer is not None:
            state.issuer = self._given_issuer
        if self._given_client_id is not None:
            state.client_id = self._given_client_id
        return state

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the state folder for this process: the TPM driver's scratch
        files and ``workload.json`` are shared by every run on it."""
        fd = os.open(self.state_dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            # Another process may have changed the state while this one
            # waited.
            self._state = self._read_state()
            yield
        finally:
            os.close(fd)

    def _save(self) -> None:
        self._state.write(self._state_path)
        self._given = False

    def save(self) -> None:
        """Keep the issuer and client id given to the constructor for later
        runs (enrollment and activation save them too)."""
        if self._given:
            self._save()

    @property
    def issuer(self) -> str:
        """The issuer identifier; raises ``StateError`` when unknown."""
        if not self._state.issuer:
            raise StateError("no issuer given or saved; pass --issuer")
        return self._state.issuer

    @property
    def client_id(self) -> str:
        """The registered client id; raises ``StateError`` when unknown."""
        if not self._state.client_id:
            raise StateError("no client id given or saved; pass --client-id")
        return self._state.client_id

    def metadata(self) -> Mapping[str, Any]:
        """The issuer's metadata (RFC 8414 section 3), fetched once.

        Raises ``IssuerError`` when it cannot be read or names another
        issuer (RFC 8414 section 3.3).
        """
        if self._metadata is None:
            url = self.issuer + "/.well-known/oauth-authorization-server"
            resp = self._send("GET", url)
            data = self._json(resp)
            if data.get("issuer") != self.issuer:
                raise IssuerError(
                    resp.status_code, "http_error", "metadata names another issuer"
                )
            self._metadata = data
        return self._metadata

    def _endpoint(self, name: str, default_path: str) -> str:
        value = self.metadata().get(name)
        return value if isinstance(value, str) else self.issuer + default_path

    def _send(
        self,
        method: str,
        url: str,
        data: Sequence[tuple[str, str]] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> requests.Response:
        try:
            return self.http.request(
                method,
                url,
                data=list(data) if data is not None else None,
                headers=dict(headers or {}),
                timeout=self.timeout,
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            raise IssuerError(
                0, "http_error", f"{method} {url}: {type(exc).__name__}"
            ) from None

    @staticmethod
    def _json(resp: requests.Response) -> dict[str, Any]:
        if resp.status_code != 200:
            raise _error_from(resp)
        try:
            body = resp.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise IssuerError(resp.status_code, "http_error", "answer is not JSON")
        return body

    def _authenticated(
        self,
        url: str,
        form: Sequence[tuple[str, str]] = (),
        headers: Mapping[str, str] | None = None,
    ) -> requests.Response:
        # RFC 7523 section 2.2; a fresh assertion (new jti) per request, as
        # the issuer refuses a replayed jti.
        assertion = self.tpm.client_assertion(
            self.signing_key(),
            client_id=self.client_id,
            audience=self.issuer,
            now=int(time.time()),
            lifetime=ASSERTION_LIFETIME,
        )
        body = [
            *form,
            ("client_assertion_type", ASSERTION_TYPE),
            ("client_assertion", assertion),
        ]
        return self._send("POST", url, body, headers)

    # -- keys --------------------------------------------------------------

    def enroll(
        self,
        *,
        ek_chain: Sequence[bytes] = (),
        key_pcrs: Mapping[str, Sequence[int]] | None = None,
        new_keys: bool = False,
    ) -> dict[str, Any]:
        """Create the AK and the ES256 signing key in the TPM, unless they
        exist; return the signing key's JWKS (RFC 7517 section 5) for
        client registration.

        ``ek_chain`` (DER) follows the EK certificate read from NV, toward
        the manufacturer CA (default: the chain saved by an earlier run for
        the same EK certificate). ``key_pcrs`` binds a new signing key to the
        current values of those PCRs (TPM2_PolicyPCR). ``new_keys`` makes
        both keys again, which changes the key to register. An AK whose
        context the TPM no longer accepts is made again (and activated
        again on next use); the signing key is reloaded.
        """
        ek_public, ek_cert = self.tpm.endorsement()
        saved = self._state.ek_certificates
        chain = [_b64(c) for c in (ek_cert, *ek_chain)]
        if not ek_chain and saved[:1] == chain:
            # Enrolling again keeps the CA certificates given the first time.
            chain = saved
        self._state.ek_public = _b64(ek_public)
        self._state.ek_certificates = chain
        ak = None if new_keys else self._usable_ak()
        if ak is None:
            self.tpm.create_ak(_AK)
            self._state.activation = None
        signing = None if new_keys else self._existing_signing_key()
        if signing is None:
            pcrs = {b: list(i) for b, i in key_pcrs.items()} if key_pcrs else None
            signing = self.tpm.create_signing_key(_SIGNING, pcr_policy=pcrs)
            self._state.key_pcrs = pcrs
            self._state.dpop_key = False
        self._signing = signing
        self._save()
        return self.jwks()

    def _usable_ak(self) -> TpmKey | None:
        try:
            ak = self.tpm.saved_key(_AK)
            self.tpm.check_context(ak)
        except (FileNotFoundError, TpmToolError):
            return None
        return ak

    def _existing_signing_key(self) -> TpmKey | None:
        try:
            return self.tpm.reload_signing_key(_SIGNING, self._state.key_pcrs)
        except FileNotFoundError:
            return None

    def ak(self) -> TpmKey:
        """The attestation key; raises ``StateError`` before enrollment."""
        try:
            return self.tpm.saved_key(_AK)
        except FileNotFoundError:
            raise StateError("not enrolled: run `wimse-workload enroll`") from None

    def signing_key(self) -> TpmKey:
        """The TPM-resident key the client authenticates with, loaded into
        the TPM once per process. Raises ``StateError`` before enrollment."""
        if self._signing is None:
            key = self._existing_signing_key()
            if key is None:
                raise StateError("not enrolled: run `wimse-workload enroll`")
            self._signing = key
        return self._signing

    def jwks(self) -> dict[str, Any]:
        """The JWKS to register: the signing key's public JWK with its RFC
        7638 ``kid`` and ``alg`` ES256."""
        return {"keys": [self.signing_key().jwk()]}

    def dpop_key(self) -> TpmDPoPKey:
        """A DPoP key inside the TPM, made on first use and kept."""
        key = None
        if self._state.dpop_key:
            with contextlib.suppress(FileNotFoundError):
                key = self.tpm.reload_signing_key(_DPOP)
        if key is None:
            key = self.tpm.create_signing_key(_DPOP)
            self._state.dpop_key = True
            self._save()
        return TpmDPoPKey(self.tpm, key)

    # -- issuer calls ----------------------------------------------------

    def challenge(self) -> Challenge:
        """``POST /challenge``: a single-use nonce bound to this client."""
        url = self._endpoint("challenge_endpoint", "/challenge")
        body = self._json(self._authenticated(url))
        nonce, expires_in = body.get("nonce"), body.get("expires_in")
        if not isinstance(nonce, str) or not isinstance(expires_in, int):
            raise IssuerError(200, "http_error", "challenge answer lacks nonce")
        return Challenge(nonce, expires_in)

    def activated(self) -> bool:
        """True when an activation secret for this issuer and AK is kept."""
        record = self._state.activation
        return (
            record is not None
            and record.get("issuer") == self.issuer
            and record.get("ak_public") == _b64(self.ak().public)
        )

    def activate(self) -> None:
        """Credential activation with the issuer (TPM 2.0 Part 1 section 24).

        Sends the EK certificate chain, the EK and AK ``TPMT_PUBLIC`` to
        ``POST /tpm/activate``, feeds the answer to TPM2_ActivateCredential
        and keeps the released secret in the state file. Raises
        ``IssuerError`` (e.g. ``invalid_client`` before registration) or
        ``TpmToolError`` (the TPM refused: the blob was not made for it).
        """
        ak = self.ak()
        if not self._state.ek_public or not self._state.ek_certificates:
            raise StateError("not enrolled: run `wimse-workload enroll`")
        url = self._endpoint("tpm_activation_endpoint", "/tpm/activate")
        form = [
            ("ek_certificates", json.dumps(self._state.ek_certificates)),
            ("ek_public", self._state.ek_public),
            ("ak_public", _b64(ak.public)),
        ]
        body = self._json(self._authenticated(url, form))
        try:
            challenge = ActivationChallenge(
                base64.b64decode(str(body["credential_blob"]), validate=True),
                base64.b64decode(str(body["encrypted_secret"]), validate=True),
            )
        except (KeyError, binascii.Error):
            raise IssuerError(
                200, "http_error", "malformed activation answer"
            ) from None
        secret = self.tpm.activate_credential(ak, challenge)
        self._state.activation = {
            "issuer": self.issuer,
            "ak_public": _b64(ak.public),
            "secret": _b64(secret),
        }
        self._save()

    def _binding(self) -> dict[str, Any]:
        if not self.activated():
            self.activate()
        record = self._state.activation or {}
        certificates = [base64.b64decode(c) for c in self._state.ek_certificates]
        return Tpm2Tools.binding(
            self.ak(), certificates, base64.b64decode(record["secret"])
        )

    # -- evidence ------------------------------------------------------------

    def quote(self, nonce: str) -> Evidence:
        """A ``tpm_quote`` piece: TPM2_Quote by the AK over the SHA-256 of
        ``nonce`` (TPM 2.0 Part 3 section 18.4), with the AK's trust."""
        ak = self.ak()
        quote = self.tpm.quote(ak, qualifying_data(nonce))
        return Evidence("tpm_quote", {**self._binding(), **quote})

    def certify(self, nonce: str, key: TpmKey | None = None) -> Evidence:
        """A ``tpm2_certify`` piece: TPM2_Certify of ``key`` (default: the
        signing key) by the AK (Part 3 section 18.2), made fresh by a
        TPM2_GetTime attest over the nonce (Part 3 section 18.7)."""
        certified = key if key is not None else self.signing_key()
        bundle = self.tpm.certify(certified, self.ak(), qualifying_data(nonce))
        return Evidence("tpm2_certify", {**self._binding(), **bundle})

    def tpm_evidence(self, nonce: str) -> list[Evidence]:
        """The quote and the certify of the signing key, bound to ``nonce``."""
        return [self.quote(nonce), self.certify(nonce)]

    # -- token -----------------------------------------------------------------

    def request_token(
        self,
        *,
        nonce: str | None,
        evidence: Sequence[Evidence] = (),
        audiences: Sequence[str] = (),
        scope: str | None = None,
        requirement: Mapping[str, str] | None = None,
        subject_token: str | None = None,
        subject_token_type: str = TOKEN_TYPE_JWT,
        dpop: DPoPKey | None = None,
        dpop_nonce: str | None = None,
    ) -> TokenResult:
        """One token request with the given evidence (no challenge, no TPM
        evidence added).

        client_credentials (RFC 6749 section 4.4), or token exchange
        (RFC 8693 section 2.1) when ``subject_token`` is given.
        ``requirement`` holds ``min_mial``/``min_maal``/``min_assurance``.
        Raises ``IssuerError`` with the issuer's OAuth error.
        """
        url = self._endpoint("token_endpoint", "/token")
        form: list[tuple[str, str]] = []
        if subject_token is None:
            form.append(("grant_type", GRANT_CLIENT_CREDENTIALS))
        else:
            form += [
                ("grant_type", GRANT_TOKEN_EXCHANGE),
                ("subject_token", subject_token),
                ("subject_token_type", subject_token_type),
            ]
        form += [("audience", a) for a in audiences]
        if scope:
            form.append(("scope", scope))
        for name, value in (requirement or {}).items():
            if name not in ("min_mial", "min_maal", "min_assurance"):
                raise ValueError(f"unknown requirement parameter {name}")
            form.append((name, value))
        if nonce is not None:
            form.append(("nonce", nonce))
        form += [("evidence", piece.param()) for piece in evidence]
        headers = {"Accept": "application/json"}
        if dpop is not None:
            headers["DPoP"] = dpop.proof("POST", url, dpop_nonce)
        resp = self._authenticated(url, form, headers)
        body = self._json(resp)
        if not isinstance(body.get("access_token"), str):
            raise IssuerError(200, "http_error", "token answer lacks access_token")
        return TokenResult(
            body, nonce or "", tuple(evidence), resp.headers.get("DPoP-Nonce")
        )

    def fetch_token(
        self,
        *,
        evidence: Sequence[Evidence] = (),
        nonce: str | None = None,
        tpm: bool = True,
        dpop: DPoPKey | None = None,
        **options: Any,
    ) -> TokenResult:
        """The whole flow: challenge, TPM evidence, extra ``evidence``, token.

        ``nonce`` uses a challenge nonce fetched earlier (e.g. one the
        caller's attestation verifier put into an EAR) instead of a new one.
        ``tpm`` false sends only ``evidence``; with a ``TpmDPoPKey`` the
        DPoP key is certified too. When a DPoP-bound request is
        answered ``use_dpop_nonce`` (RFC 9449 section 8), it is made once
        more with the server's nonce, a new challenge and new TPM evidence
        (unless ``nonce`` was given). ``options`` go to ``request_token``.
        Raises ``IssuerError``, ``StateError`` or ``TpmToolError``.
        """
        dpop_nonce: str | None = None
        for attempt in range(2):
            challenge_nonce = nonce if nonce is not None else self.challenge().nonce
            pieces = self.tpm_evidence(challenge_nonce) if tpm else []
            if tpm and isinstance(dpop, TpmDPoPKey):
                # The issuer counts a certify for any key the request proves
                # possession of, the DPoP key included.
                pieces.append(self.certify(challenge_nonce, dpop.key))
            pieces += evidence
            try:
                return self.request_token(
                    nonce=challenge_nonce,
                    evidence=pieces,
                    dpop=dpop,
                    dpop_nonce=dpop_nonce,
                    **options,
                )
            except IssuerError as exc:
                retry = exc.error == "use_dpop_nonce" and exc.dpop_nonce
                if attempt or dpop is None or not retry:
                    raise
                dpop_nonce = exc.dpop_nonce
        raise AssertionError("unreachable")  # pragma: no cover
