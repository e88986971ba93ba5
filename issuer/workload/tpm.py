"""Drive a TPM 2.0 through ``tpm2-tools`` to produce the issuer's TPM evidence.

The workload side of ``issuer.evidence.tpm``: read the EK and its
certificate, create an attestation key (AK), activate the credential the
issuer made for it (TPM2_ActivateCredential, Part 3 section 12.5), quote
PCRs over the issuer's nonce (TPM2_Quote, Part 3 section 18.4), create a
signing key inside the TPM and certify it with the AK (TPM2_Certify, Part 3
section 18.2), and sign JWTs with that key (TPM2_Sign, Part 3 section 20.2)
for ``private_key_jwt`` client authentication (RFC 7523).

Every command runs as a subprocess of the Debian ``tpm2-tools`` package
(version 5) against the TPM that ``tcti`` names, for example
``device:/dev/tpmrm0`` or ``swtpm:host=127.0.0.1,port=2321``. Without a
resource manager (``/dev/tpm0``, a socket to swtpm) the tools leave
transient objects and sessions loaded, and a TPM holds only three of each;
``flush_transient`` therefore flushes them after each command. Object
contexts are kept as files in ``workdir``; they do not survive a TPM
reset, after which the workload creates its keys again and re-enrols.

Nothing here logs, and no private key ever leaves the TPM: the files in
``workdir`` hold public parts, TPM-wrapped private parts and contexts.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import struct
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..evidence.tpm import ActivationChallenge
from ..evidence.tpm_structures import (
    hash_by_id,
    parse_attest,
    parse_public,
    parse_signature,
)
from ..keys import jwk_thumbprint

__all__ = [
    "DEFAULT_PCRS",
    "EK_CERT_INDEX_RSA",
    "EK_HANDLE_RSA",
    "Tpm2Tools",
    "TpmKey",
    "TpmToolError",
]

#: TCG EK Credential Profile (low range): the NV index of the RSA 2048
#: EK certificate and the persistent handle of the RSA EK.
EK_CERT_INDEX_RSA = 0x01C00002
EK_HANDLE_RSA = "0x81010001"
#: PCRs quoted by default: the firmware and boot loader measurements of the
#: PC Client Platform Firmware Profile.
DEFAULT_PCRS: Mapping[str, Sequence[int]] = {"sha256": (0, 1, 2, 3, 4, 5, 6, 7)}

# tpm2-tools' own container for TPM2_MakeCredential output (its
# ``files_save_credential``): a magic number, a version, then the
# TPM2B_ID_OBJECT and TPM2B_ENCRYPTED_SECRET.
_CREDENTIAL_MAGIC = 0xBADCC0DE
_CREDENTIAL_VERSION = 1


class TpmToolError(RuntimeError):
    """A ``tpm2-tools`` command failed; the message names the tool and its
    last line of error output (the tools print no secrets there)."""


@dataclass(frozen=True)
class TpmKey:
    """A key inside the TPM: its ``TPMT_PUBLIC``, its context file and, for a
    key bound to PCRs, the selection its TPM2_PolicyPCR covers."""

    label: str
    public: bytes
    context: Path
    pcr_policy: Mapping[str, Sequence[int]] | None = None

    def jwk(self) -> dict[str, str]:
        """The public key as an RFC 7517 JWK with its RFC 7638 ``kid``."""
        jwk = parse_public(self.public).jwk()
        if jwk["kty"] == "EC":
            jwk["alg"] = "ES256"
        jwk["kid"] = jwk_thumbprint(jwk)
        return jwk


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _selection_arg(selection: Mapping[str, Sequence[int]]) -> str:
    return "+".join(
        f"{bank}:{','.join(map(str, idx))}" for bank, idx in selection.items()
    )


class Tpm2Tools:
    """One TPM, driven by ``tpm2-tools`` with files in ``workdir``.

    ``tcti`` defaults to the tools' own choice (``TPM2TOOLS_TCTI`` or the
    kernel resource manager). ``flush_transient`` (default on) flushes
    transient objects and loaded sessions after each command, which a TPM
    without a resource manager needs. ``timeout`` bounds each command, in
    seconds (default 30).
    """

    def __init__(
        self,
        workdir: Path,
        *,
        tcti: str | None = None,
        flush_transient: bool = True,
        timeout: float = 30.0,
        ek_handle: str = EK_HANDLE_RSA,
        ek_cert_index: int = EK_CERT_INDEX_RSA,
    ) -> None:
        self.workdir = workdir
        self.workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.tcti = tcti
        self.flush_transient = flush_transient
        self.timeout = timeout
        self.ek_handle = ek_handle
        self.ek_cert_index = ek_cert_index

    # -- plumbing --------------------------------------------------------

    def _path(self, name: str) -> Path:
        return self.workdir / name

    def _run(self, tool: str, *args: str) -> bytes:
        env = dict(os.environ)
        if self.tcti is not None:
            env["TPM2TOOLS_TCTI"] = self.tcti
        try:
            done = subprocess.run(  # noqa: S603  (fixed tool names, no shell)
                [tool, *args],
                env=env,
                capture_output=True,
                timeout=self.timeout,
                check=False,
            )
        except FileNotFoundError as exc:
            raise TpmToolError(f"{tool} not found; install tpm2-tools") from exc
        except subprocess.TimeoutExpired as exc:
            raise TpmToolError(f"{tool} timed out") from exc
        if self.flush_transient and tool != "tpm2_flushcontext":
            # Policy sessions this driver keeps are context-saved to files
            # between commands, so only what a tool left behind is loaded.
            self._flush("-t")
            self._flush("-l")
        if done.returncode != 0:
            lines = done.stderr.decode("utf-8", "replace").strip().splitlines()
            detail = " / ".join(lines[-3:]) if lines else str(done.returncode)
            raise TpmToolError(f"{tool} failed: {detail}")
        return done.stdout

    def _flush(self, what: str) -> None:
        self._run("tpm2_flushcontext", what)

    def _read_tpmt(self, path: Path) -> bytes:
        # The tools write TPM2B_PUBLIC; the issuer wants the TPMT_PUBLIC
        # inside it, which is what the Name is computed over.
        raw = path.read_bytes()
        (size,) = struct.unpack(">H", raw[:2])
        if size != len(raw) - 2:
            raise TpmToolError(f"{path.name} is not a TPM2B_PUBLIC")
        return raw[2:]

    def _policy_session(self, label: str) -> Path:
        session = self._path(f"{label}.session")
        self._run("tpm2_startauthsession", "--policy-session", "-S", str(session))
        return session

    def _end_session(self, session: Path) -> None:
        # A command that failed may have left the session loaded rather than
        # saved, in which case the flush of loaded sessions has ended it.
        try:
            self._run("tpm2_flushcontext", str(session))
        except TpmToolError:
            if not self.flush_transient:
                raise

    # -- endorsement and attestation keys ---------------------------------

    def endorsement(self) -> tuple[bytes, bytes]:
        """The EK's ``TPMT_PUBLIC`` and the DER EK certificate from NV."""
        public = self._path("ek.pub")
        self._run("tpm2_readpublic", "-c", self.ek_handle, "-o", str(public))
        cert = self._path("ek.der")
        self._run("tpm2_nvread", hex(self.ek_cert_index), "-C", "o", "-o", str(cert))
        return self._read_tpmt(public), cert.read_bytes()

    def create_ak(self, label: str = "ak") -> TpmKey:
        """Create an ECC P-256 ECDSA/SHA-256 AK under the EK (tpm2_createak).

        The AK is a restricted signing key with fixedTPM, fixedParent and
        sensitiveDataOrigin, as TCG's AK profile asks.
        """
        context = self._path(f"{label}.ctx")
        public = self._path(f"{label}.pub")
        self._run(
            "tpm2_createak",
            "-C", self.ek_handle,
            "-c", str(context),
            "-G", "ecc", "-g", "sha256", "-s", "ecdsa",
            "-u", str(public),
            "-n", str(self._path(f"{label}.name")),
        )  # fmt: skip
        return TpmKey(label, self._read_tpmt(public), context)

    def activate_credential(self, ak: TpmKey, challenge: ActivationChallenge) -> bytes:
        """Recover the issuer's activation secret (TPM2_ActivateCredential).

        The EK's authPolicy is PolicySecret(TPM_RH_ENDORSEMENT) (TCG EK
        Credential Profile, template L-1), satisfied in a policy session.
        """
        blob = self._path("credential.blob")
        blob.write_bytes(
            struct.pack(">II", _CREDENTIAL_MAGIC, _CREDENTIAL_VERSION)
            + challenge.credential_blob
            + challenge.encrypted_secret
        )
        out = self._path("credential.out")
        session = self._policy_session("activate")
        try:
            self._run("tpm2_policysecret", "-S", str(session), "-c", "e")
            self._run(
                "tpm2_activatecredential",
                "-c", str(ak.context),
                "-C", self.ek_handle,
                "-i", str(blob),
                "-o", str(out),
                "-P", f"session:{session}",
            )  # fmt: skip
        finally:
            self._end_session(session)
        secret = out.read_bytes()
        out.unlink()
        return secret

    # -- quotes -----------------------------------------------------------

    def quote(
        self,
        ak: TpmKey,
        nonce: bytes,
        selection: Mapping[str, Sequence[int]] = DEFAULT_PCRS,
    ) -> dict[str, Any]:
        """TPM2_Quote over ``nonce``: the ``quote``, ``signature`` and
        ``pcrs`` members of the issuer's ``tpm_quote`` bundle.

        An empty ``nonce`` quotes without qualifying data.
        """
        message, signature, values = (
            self._path("quote.msg"),
            self._path("quote.sig"),
            self._path("quote.pcrs"),
        )
        args = [
            "-c", str(ak.context),
            "-l", _selection_arg(selection),
            "-g", "sha256",
            "-m", str(message),
            "-s", str(signature),
            "-o", str(values),
            "-F", "values",
        ]  # fmt: skip
        if nonce:
            args += ["-q", nonce.hex()]
        self._run("tpm2_quote", *args)
        attest = message.read_bytes()
        quote = parse_attest(attest).quote
        if quote is None:
            raise TpmToolError("tpm2_quote wrote no TPMS_QUOTE_INFO")
        return {
            "quote": _b64(attest),
            "signature": _b64(signature.read_bytes()),
            "pcrs": self._split_values(quote.selection, values.read_bytes()),
        }

    @staticmethod
    def _split_values(
        selection: Sequence[tuple[int, Sequence[int]]], raw: bytes
    ) -> dict[str, dict[str, str]]:
        out: dict[str, dict[str, str]] = {}
        pos = 0
        for alg_id, indexes in selection:
            algorithm = hash_by_id(alg_id)
            bank = out.setdefault(algorithm.name, {})
            for index in indexes:
                bank[str(index)] = raw[pos : pos + algorithm.size].hex()
                pos += algorithm.size
        if pos != len(raw):
            raise TpmToolError("tpm2_quote returned PCR values of another selection")
        return out

    def extend(self, index: int, data: bytes, bank: str = "sha256") -> None:
        """Extend PCR ``index`` of ``bank`` with the digest of ``data``."""
        digest = hashlib.new(bank, data).hexdigest()
        self._run("tpm2_pcrextend", f"{index}:{bank}={digest}")

    # -- workload keys ----------------------------------------------------

    def _primary(self) -> Path:
        # The owner-hierarchy storage key is derived from the owner seed, so
        # the same template gives the same key on every call.
        context = self._path("primary.ctx")
        self._run(
            "tpm2_createprimary", "-C", "o", "-g", "sha256", "-G", "ecc",
            "-c", str(context),
        )  # fmt: skip
        return context

    def create_signing_key(
        self,
        label: str = "workload",
        *,
        pcr_policy: Mapping[str, Sequence[int]] | None = None,
        attributes: str | None = None,
    ) -> TpmKey:
        """Create an ECC P-256 ES256 key inside the TPM and load it.

        By default it has fixedTPM, fixedParent, sensitiveDataOrigin and
        userWithAuth. With ``pcr_policy`` its authPolicy is TPM2_PolicyPCR
        over the current values of those PCRs and userWithAuth is clear, so
        the TPM signs only while the PCRs hold those values. ``attributes``
        (tpm2-tools syntax) replaces the attribute set, for tests.
        """
        parent = self._primary()
        public, private = self._path(f"{label}.pub"), self._path(f"{label}.priv")
        args = ["-C", str(parent), "-G", "ecc256:ecdsa-sha256", "-g", "sha256"]
        default = "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|sign"
        if pcr_policy is not None:
            digest = self._path(f"{label}.policy")
            self._run(
                "tpm2_createpolicy", "--policy-pcr",
                "-l", _selection_arg(pcr_policy), "-L", str(digest),
            )  # fmt: skip
            args += ["-L", str(digest)]
            default = "fixedtpm|fixedparent|sensitivedataorigin|sign"
        args += ["-a", attributes or default, "-u", str(public), "-r", str(private)]
        self._run("tpm2_create", *args)
        context = self._path(f"{label}.ctx")
        self._run(
            "tpm2_load", "-C", str(parent), "-u", str(public), "-r", str(private),
            "-c", str(context),
        )  # fmt: skip
        return TpmKey(label, self._read_tpmt(public), context, pcr_policy)

    def saved_key(
        self, label: str, pcr_policy: Mapping[str, Sequence[int]] | None = None
    ) -> TpmKey:
        """The key ``label`` that ``create_ak`` or ``create_signing_key`` made
        in ``workdir``, from its saved public part and context file.

        Runs no TPM command, so the context may be stale (after a TPM
        reset). Raises ``FileNotFoundError`` when no such key was made here.
        """
        public, context = self._path(f"{label}.pub"), self._path(f"{label}.ctx")
        if not context.is_file():
            raise FileNotFoundError(context)
        return TpmKey(label, self._read_tpmt(public), context, pcr_policy)

    def reload_signing_key(
        self, label: str, pcr_policy: Mapping[str, Sequence[int]] | None = None
    ) -> TpmKey:
        """Load the key ``create_signing_key`` made as ``label`` again, from
        its public and TPM-wrapped private parts (TPM2_Load, Part 3 section
        12.2) under the owner storage primary.

        A context file does not survive a TPM reset; the wrapped private part
        does, and the primary is derived again from the same seed, so this
        gives the same key. Raises ``FileNotFoundError`` when no such key was
        made here, ``TpmToolError`` when the TPM refuses it (another TPM, or
        a cleared owner hierarchy).
        """
        public, private = self._path(f"{label}.pub"), self._path(f"{label}.priv")
        if not (public.is_file() and private.is_file()):
            raise FileNotFoundError(private)
        parent = self._primary()
        context = self._path(f"{label}.ctx")
        self._run(
            "tpm2_load", "-C", str(parent), "-u", str(public), "-r", str(private),
            "-c", str(context),
        )  # fmt: skip
        return TpmKey(label, self._read_tpmt(public), context, pcr_policy)

    def check_context(self, key: TpmKey) -> None:
        """Raise ``TpmToolError`` when the TPM no longer accepts ``key``'s
        context (TPM2_ContextLoad, Part 3 section 28.3), e.g. after a
        reset."""
        self._run("tpm2_readpublic", "-c", str(key.context))

    def certify(self, key: TpmKey, ak: TpmKey, nonce: bytes) -> dict[str, Any]:
        """TPM2_Certify of ``key`` by ``ak``: the ``attest``, ``signature``,
        ``public`` (and ``key_policy``) members of the issuer's
        ``tpm2_certify`` bundle.

        tpm2-tools 5.4 (Debian 12) cannot give TPM2_Certify qualifyingData,
        so a non-empty ``nonce`` goes into a TPM2_GetTime attest by the same
        AK made just before (``time_attest``, ``time_signature``); the
        issuer checks that the certify's Clock is not earlier.
        """
        out: dict[str, Any] = {}
        if nonce:
            time_attest, time_signature = (
                self._path("time.attest"),
                self._path("time.sig"),
            )
            self._run(
                "tpm2_gettime",
                "-c", str(ak.context),
                "-g", "sha256",
                "-q", nonce.hex(),
                "--attestation", str(time_attest),
                "-o", str(time_signature),
            )  # fmt: skip
            out["time_attest"] = _b64(time_attest.read_bytes())
            out["time_signature"] = _b64(time_signature.read_bytes())
        attest, signature = self._path("certify.attest"), self._path("certify.sig")
        self._run(
            "tpm2_certify",
            "-c", str(key.context),
            "-C", str(ak.context),
            "-g", "sha256",
            "-o", str(attest),
            "-s", str(signature),
        )  # fmt: skip
        out["attest"] = _b64(attest.read_bytes())
        out["signature"] = _b64(signature.read_bytes())
        out["public"] = _b64(key.public)
        if key.pcr_policy is not None:
            out["key_policy"] = {
                "pcrs": {bank: list(idx) for bank, idx in key.pcr_policy.items()}
            }
        return out

    # -- signing ----------------------------------------------------------

    def sign_digest(self, key: TpmKey, digest: bytes) -> bytes:
        """TPM2_Sign of a SHA-256 ``digest``; returns the ``TPMT_SIGNATURE``.

        A key bound to PCRs is used through a TPM2_PolicyPCR session
        (Part 3 section 23.7), which the TPM refuses if the PCRs changed.
        """
        message, out = self._path("sign.digest"), self._path("sign.sig")
        message.write_bytes(digest)
        args = ["-c", str(key.context), "-g", "sha256", "-s", "ecdsa", "-d"]
        session = None
        if key.pcr_policy is not None:
            session = self._policy_session("sign")
            selection = _selection_arg(key.pcr_policy)
            self._run("tpm2_policypcr", "-S", str(session), "-l", selection)
            args += ["-p", f"session:{session}"]
        try:
            self._run("tpm2_sign", *args, "-o", str(out), str(message))
        finally:
            if session is not None:
                self._end_session(session)
        return out.read_bytes()

    def sign_jwt(
        self,
        key: TpmKey,
        claims: Mapping[str, Any],
        headers: Mapping[str, Any] | None = None,
    ) -> str:
        """A compact JWS (RFC 7515) with ES256 (RFC 7518 section 3.4).

        The header carries ``kid``, the RFC 7638 thumbprint of the key.
        """
        header = {
            "alg": "ES256",
            "typ": "JWT",
            "kid": key.jwk()["kid"],
            **(headers or {}),
        }
        signing_input = (
            _b64url(json.dumps(header, separators=(",", ":")).encode())
            + "."
            + _b64url(json.dumps(dict(claims), separators=(",", ":")).encode())
        )
        signature = parse_signature(
            self.sign_digest(key, hashlib.sha256(signing_input.encode()).digest())
        )
        # RFC 7518 section 3.4: R and S as fixed 32-byte big-endian values.
        raw = signature.r.to_bytes(32, "big") + signature.s.to_bytes(32, "big")
        return signing_input + "." + _b64url(raw)

    def client_assertion(
        self,
        key: TpmKey,
        *,
        client_id: str,
        audience: str,
        now: int,
        lifetime: int = 60,
    ) -> str:
        """An RFC 7523 section 3 client assertion for ``private_key_jwt``."""
        claims = {
            "iss": client_id,
            "sub": client_id,
            "aud": audience,
            "iat": now,
            "exp": now + lifetime,
            "jti": secrets.token_urlsafe(16),
        }
        return self.sign_jwt(key, claims)

    # -- evidence bundles -------------------------------------------------

    @staticmethod
    def binding(
        ak: TpmKey, ek_certificates: Sequence[bytes], activation_secret: bytes
    ) -> dict[str, Any]:
        """The bundle members that bind ``ak`` to the EK by credential
        activation: ``ak_public``, ``ek_certificates``, ``activation_secret``."""
        return {
            "ak_public": _b64(ak.public),
            "ek_certificates": [_b64(c) for c in ek_certificates],
            "activation_secret": _b64(activation_secret),
        }
