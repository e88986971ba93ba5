"""AWS Nitro Enclaves attestation documents.

The Nitro Security Module signs an attestation document for an enclave: a
COSE_Sign1 message (RFC 9052 section 4.2) with algorithm ES384 (RFC 9053
section 2.1) whose payload is a CBOR map (AWS, "Nitro Enclaves attestation
document" in the aws-nitro-enclaves-nsm-api specification): ``module_id``,
``digest``, ``timestamp`` (milliseconds), ``pcrs``, ``certificate``,
``cabundle``, and the optional ``public_key``, ``user_data`` and ``nonce``.

``verify`` authenticates before it interprets: it reads only what it needs to
check the signature and the certificate chain (RFC 5280 section 6, up to the
configured AWS root), and validates the other fields once the document is
known to come from a Nitro hypervisor. Documents arrive as raw CBOR, tagged
(tag 18) or untagged, or as base64 text of either.

CBOR is decoded strictly: no duplicate map keys, no indefinite lengths, no
tags inside the message, bounded nesting, and nothing after the item.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cbor2
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from ..assurance.engine import Rating
from ..config import ConfigError
from ..errors import EvidenceError
from . import VerifiedEvidence, digest_of

# The RFC 7638 helper lives with the EAR module, which needs it too.
from .ear import public_key_thumbprint

__all__ = ["KIND", "NitroPolicy", "load_roots", "verify"]

KIND = "nitro_attestation"

# RFC 9053 section 2.1: COSE algorithm -35 is ECDSA with SHA-384.
_ES384 = -35
_COSE_ALG = 1
_COSE_CRIT = 2
_COSE_SIGN1_TAG = 18
_ES384_SIGNATURE_BYTES = 96

# Field bounds of the AWS attestation document specification.
_PCR_SIZES = (32, 48, 64)
_MAX_PCRS = 32
_MAX_OPTIONAL_FIELD = 1024
_MAX_CERTIFICATE = 4096
_MAX_CHAIN = 8

# Every tag cbor2 would otherwise turn into a Python object (dates, bignums,
# decimal fractions, sets, shared references...). None belongs in an
# attestation document, and some cost time or memory to build.
_BUILTIN_TAGS = (0, 1, 2, 3, 4, 5, 25, 28, 29, 30, 35, 36, 37, 52, 54, 100, 256)
_BUILTIN_TAGS_2 = (258, 260, 261, 1004, 55799)

_URLSAFE_TO_STANDARD = bytes.maketrans(b"-_", b"+/")


@dataclass(frozen=True)
class NitroPolicy:
    """What a Nitro attestation document must satisfy.

    - ``roots``: trusted root certificates (the AWS Nitro Enclaves root,
      ``load_roots``); required, at least one.
    - ``reference_pcrs``: PCR index to expected value; every listed PCR must
      match. Default: none, which leaves the software unappraised (ratings
      stay at 2).
    - ``allow_debug``: accept enclaves in debug mode (PCR0 all zero); default
      ``False``, since a debug enclave's memory is readable by its host.
    - ``max_age``: seconds the document's ``timestamp`` stays acceptable;
      default 300.
    - ``clock_skew``: seconds a ``timestamp`` may lie in the future; default 60.
    - ``max_size``: largest accepted document in bytes (base64 text counts as
      received), checked before parsing; default 32768.

    Raises ``ValueError`` when built without a root or with a malformed PCR.
    """

    roots: tuple[x509.Certificate, ...]
    reference_pcrs: Mapping[int, bytes] = field(default_factory=dict)
    allow_debug: bool = False
    max_age: int = 300
    clock_skew: int = 60
    max_size: int = 32768

    def __post_init__(self) -> None:
        if not self.roots:
            raise ValueError("a Nitro policy needs at least one root certificate")
        for index, value in self.reference_pcrs.items():
            if not 0 <= index < _MAX_PCRS or len(value) not in _PCR_SIZES:
                raise ValueError(f"reference PCR{index} is not a PCR value")


def load_roots(path: Path) -> tuple[x509.Certificate, ...]:
    """Read one or more PEM root certificates; raises ``ConfigError``."""
    try:
        roots = x509.load_pem_x509_certificates(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError:
        raise ConfigError(f"{path} holds no PEM certificate") from None
    return tuple(roots)


# Decoding.


def _reject_tag(*_: object) -> Any:
    raise cbor2.CBORDecodeError("tags are not allowed here")


_NO_TAGS = dict.fromkeys(_BUILTIN_TAGS + _BUILTIN_TAGS_2, _reject_tag)


def _cbor(data: bytes, what: str) -> Any:
    stream = io.BytesIO(data)
    decoder = cbor2.CBORDecoder(
        stream,
        tag_hook=_reject_tag,
        semantic_decoders=_NO_TAGS,
        max_depth=4,
        allow_indefinite=False,
        allow_duplicate_keys=False,
    )
    try:
        value = decoder.decode()
    except (cbor2.CBORError, ValueError, TypeError, OverflowError, RecursionError):
        raise EvidenceError("malformed", f"The {what} is not valid CBOR.") from None
    # One item and nothing after it: trailing bytes would be unsigned
    # passengers that other readers might interpret.
    if stream.tell() != len(data):
        raise EvidenceError("malformed", f"The {what} has trailing bytes.")
    return value


def _message_bytes(raw: bytes | str, max_size: int) -> bytes:
    if len(raw) > max_size:
        raise EvidenceError("too_large", "The attestation document is too large.")
    if isinstance(raw, str):
        try:
            raw = raw.encode("ascii")
        except UnicodeEncodeError:
            raise EvidenceError("malformed", "The document is not base64.") from None
    # A CBOR array of four (0x84) or tag 18 (0xd2) cannot start base64 text,
    # whose alphabet is ASCII; anything else is read as base64.
    if raw[:1] in (b"\x84", b"\xd2"):
        return raw
    # Standard and URL-safe alphabets are both accepted, padding optional.
    text = b"".join(raw.split()).translate(_URLSAFE_TO_STANDARD)
    try:
        return base64.b64decode(text + b"=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise EvidenceError(
            "malformed", "The document is neither CBOR nor base64."
        ) from None


@dataclass(frozen=True)
class _Sign1:
    protected: bytes
    payload: bytes
    signature: bytes


def _sign1(message: bytes) -> _Sign1:
    """Split a COSE_Sign1 message (RFC 9052 section 4.2)."""
    if message[:1] == b"\xd2":
        # Tag 18 marks COSE_Sign1 (RFC 9052 section 2); it is one byte, so
        # it is removed here rather than let the decoder accept tags.
        message = message[1:]
    value = _cbor(message, "COSE_Sign1 message")
    if not isinstance(value, list) or len(value) != 4:
        raise EvidenceError("malformed", "The document is not a COSE_Sign1 array.")
    protected, unprotected, payload, signature = value
    if not all(isinstance(v, bytes) for v in (protected, payload, signature)):
        raise EvidenceError("malformed", "The COSE_Sign1 members have wrong types.")
    # The unprotected bucket is not signed and nothing in it is used; some
    # producers write null instead of an empty map, which is tolerated.
    if unprotected is not None and not isinstance(unprotected, dict):
        raise EvidenceError("malformed", "The COSE unprotected header is not a map.")
    headers = _cbor(protected, "COSE protected header") if protected else {}
    if not isinstance(headers, dict):
        raise EvidenceError("malformed", "The COSE protected header is not a map.")
    if headers.get(_COSE_ALG) != _ES384:
        raise EvidenceError("unsupported", "The document is not signed with ES384.")
    # RFC 9052 section 3.1: critical headers must be understood; none is.
    if _COSE_CRIT in headers:
        raise EvidenceError("unsupported", "The document has critical headers.")
    if len(signature) != _ES384_SIGNATURE_BYTES:
        raise EvidenceError("bad_signature", "The ES384 signature has a wrong size.")
    return _Sign1(protected, payload, signature)


def _document(payload: bytes) -> dict[str, Any]:
    document = _cbor(payload, "attestation document")
    if not isinstance(document, dict) or not all(isinstance(k, str) for k in document):
        raise EvidenceError("malformed", "The attestation document is not a map.")
    return document


def _certificates(
    document: Mapping[str, Any],
) -> tuple[x509.Certificate, list[x509.Certificate]]:
    leaf_der = document.get("certificate")
    bundle = document.get("cabundle")
    if not isinstance(leaf_der, bytes) or not 0 < len(leaf_der) <= _MAX_CERTIFICATE:
        raise EvidenceError("malformed", "The document has no certificate.")
    if bundle is None:
        bundle = []
    if not isinstance(bundle, list) or len(bundle) > _MAX_CHAIN:
        raise EvidenceError("malformed", "The document's cabundle is not a list.")
    if not all(isinstance(c, bytes) and 0 < len(c) <= _MAX_CERTIFICATE for c in bundle):
        raise EvidenceError("malformed", "The document's cabundle is not DER.")
    try:
        leaf = x509.load_der_x509_certificate(leaf_der)
        chain = [x509.load_der_x509_certificate(c) for c in bundle]
    except (ValueError, x509.InvalidVersion):
        raise EvidenceError("malformed", "A certificate does not parse.") from None
    return leaf, chain


# Authentication.


def _check_signature(sign1: _Sign1, leaf: x509.Certificate) -> None:
    """Verify ES384 over the Sig_structure (RFC 9052 section 4.4)."""
    try:
        key = leaf.public_key()
    except (ValueError, UnsupportedAlgorithm):
        raise EvidenceError("unsupported", "The signing key cannot be read.") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        raise EvidenceError("unsupported", "The signing certificate is not P-384.")
    to_be_signed = cbor2.dumps(["Signature1", sign1.protected, b"", sign1.payload])
    # COSE carries r and s as two fixed-size big-endian integers (RFC 9053
    # section 2.1); cryptography expects them DER-encoded.
    r = int.from_bytes(sign1.signature[:48], "big")
    s = int.from_bytes(sign1.signature[48:], "big")
    try:
        key.verify(encode_dss_signature(r, s), to_be_signed, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        raise EvidenceError(
            "bad_signature", "The document signature does not verify."
        ) from None


# The Nitro leaf has neither a subjectAltName nor an authorityKeyIdentifier,
# and no extended key usage; the Web PKI profile cryptography applies by
# default asks for all three. Every other default check is kept.
_LEAF_POLICY = (
    ExtensionPolicy.webpki_defaults_ee()
    .may_be_present(x509.SubjectAlternativeName, Criticality.AGNOSTIC, None)
    .may_be_present(x509.AuthorityKeyIdentifier, Criticality.AGNOSTIC, None)
    .may_be_present(x509.ExtendedKeyUsage, Criticality.AGNOSTIC, None)
)
_CA_POLICY = ExtensionPolicy.webpki_defaults_ca()


def _check_chain(
    leaf: x509.Certificate,
    bundle: list[x509.Certificate],
    policy: NitroPolicy,
    now: float,
) -> int:
    """Validate the path leaf -> cabundle -> a trusted root at ``now``.

    Returns the earliest ``notAfter`` of the presented certificates. Their
    validity windows are compared first only to name the failure; the path
    validation itself (RFC 5280 section 6) repeats every check.
    """
    at = datetime.fromtimestamp(now, tz=UTC)
    for cert in (leaf, *bundle):
        if at > cert.not_valid_after_utc:
            raise EvidenceError("expired", "A certificate in the chain has expired.")
        if at < cert.not_valid_before_utc:
            raise EvidenceError("not_yet_valid", "A certificate is not valid yet.")
    if not bundle:
        raise EvidenceError("untrusted_chain", "The document carries no CA bundle.")
    verifier = (
        PolicyBuilder()
        .store(Store(list(policy.roots)))
        .time(at)
        .max_chain_depth(_MAX_CHAIN)
        .extension_policies(ca_policy=_CA_POLICY, ee_policy=_LEAF_POLICY)
        .build_client_verifier()
    )
    try:
        # cabundle[0] is the root itself; only the configured copy is trusted.
        verifier.verify(leaf, bundle[1:])
    except (VerificationError, ValueError, UnsupportedAlgorithm, KeyError):
        # cryptography 48 raises KeyError, not ValueError, for a name
        # attribute with an unknown ASN.1 string type; any of these means no
        # valid path exists.
        raise EvidenceError(
            "untrusted_chain", "The certificate chain does not reach a trusted root."
        ) from None
    return int(min(c.not_valid_after_utc for c in (leaf, *bundle)).timestamp())


# Content (the attestation document specification, once authenticated).


def _optional_bytes(document: Mapping[str, Any], name: str) -> bytes | None:
    value = document.get(name)
    if value is None:
        return None
    if not isinstance(value, bytes) or len(value) > _MAX_OPTIONAL_FIELD:
        raise EvidenceError("malformed", f"The document's {name} is not valid.")
    return value


def _pcrs(document: Mapping[str, Any]) -> dict[int, bytes]:
    pcrs = document.get("pcrs")
    if not isinstance(pcrs, dict) or not 0 < len(pcrs) <= _MAX_PCRS:
        raise EvidenceError("malformed", "The document has no PCRs.")
    for index, value in pcrs.items():
        if isinstance(index, bool) or not isinstance(index, int):
            raise EvidenceError("malformed", "A PCR index is not an integer.")
        if not 0 <= index < _MAX_PCRS:
            raise EvidenceError("malformed", "A PCR index is out of range.")
        if not isinstance(value, bytes) or len(value) not in _PCR_SIZES:
            raise EvidenceError("malformed", "A PCR value has a wrong size.")
    return pcrs


def _check_content(
    document: Mapping[str, Any], policy: NitroPolicy, now: float
) -> None:
    module_id = document.get("module_id")
    if not isinstance(module_id, str) or not module_id:
        raise EvidenceError("malformed", "The document has no module_id.")
    if document.get("digest") != "SHA384":
        raise EvidenceError("unsupported", "The PCR digest is not SHA384.")
    timestamp = document.get("timestamp")
    if isinstance(timestamp, bool) or not isinstance(timestamp, int) or timestamp <= 0:
        raise EvidenceError("malformed", "The document has no valid timestamp.")
    issued = timestamp / 1000
    if issued > now + policy.clock_skew:
        raise EvidenceError("not_yet_valid", "The document is dated in the future.")
    if now - issued > policy.max_age:
        raise EvidenceError("expired", "The document is older than allowed.")


def _check_nonce(nonce: bytes | None, expected: bytes | None) -> bool:
    if expected is None:
        return False
    if not nonce:
        raise EvidenceError("nonce_missing", "The document carries no nonce.")
    if not hmac.compare_digest(nonce, expected):
        raise EvidenceError(
            "nonce_mismatch", "The document nonce is not the one issued."
        )
    return True


def _check_pcrs(pcrs: Mapping[int, bytes], policy: NitroPolicy) -> bool:
    """Return whether reference values covering PCR0 all matched."""
    pcr0 = pcrs.get(0)
    # AWS: an enclave started in debug mode reports PCR0, 1 and 2 as zeros,
    # and its memory can be read from the parent instance.
    if pcr0 is not None and not any(pcr0) and not policy.allow_debug:
        raise EvidenceError("debug_mode", "The enclave runs in debug mode.")
    for index, expected in policy.reference_pcrs.items():
        value = pcrs.get(index)
        if value is None or not hmac.compare_digest(value, expected):
            raise EvidenceError(
                "reference_mismatch", f"PCR{index} differs from its reference value."
            )
    return 0 in policy.reference_pcrs


def _bound_key(public_key: bytes | None) -> str | None:
    """Thumbprint of ``public_key`` when it is a key (DER SPKI or SEC1 point).

    AWS leaves the field's format to the enclave. Bytes that are not a key
    (the real samples carry filler) bind nothing.
    """
    if not public_key:
        return None
    key: object
    try:
        key = serialization.load_der_public_key(public_key)
    except (ValueError, UnsupportedAlgorithm):
        curve = {65: ec.SECP256R1(), 97: ec.SECP384R1()}.get(len(public_key))
        if curve is None or public_key[:1] != b"\x04":
            return None
        try:
            key = ec.EllipticCurvePublicKey.from_encoded_point(curve, public_key)
        except ValueError:
            return None
    try:
        return public_key_thumbprint(key)
    except EvidenceError:
        return None


def _ratings(fresh: bool, matched: bool) -> dict[str, Rating]:
    if fresh and matched:
        reason = "Nitro document under the AWS root, fresh nonce, PCRs match reference"
        value = 3
    else:
        missing = []
        if not fresh:
            missing.append("no fresh nonce")
        if not matched:
            missing.append("no PCR0 reference value")
        reason = "Nitro document signed by the platform; capped at 2: " + ", ".join(
            missing
        )
        value = 2
    return {
        "identity_attestation": Rating(value, reason),
        "deployment_environment": Rating(value, reason),
        "software_integrity": Rating(value, reason),
    }


def verify(
    raw: bytes | str,
    *,
    policy: NitroPolicy,
    expected_nonce: bytes | None,
    now: float,
) -> VerifiedEvidence:
    """Verify a Nitro Enclaves attestation document and rate it.

    Checks, in order: size, COSE_Sign1 form (RFC 9052 section 4.2), the ES384
    signature by the document's certificate (section 4.4), the chain from
    that certificate through ``cabundle`` to a configured root at ``now``
    (RFC 5280 section 6), the document fields and ``timestamp`` age, the
    nonce, debug mode and the reference PCRs. ``expected_nonce=None`` means
    freshness is not required; ratings then stay at 2.

    Raises ``EvidenceError`` with reason ``too_large``, ``malformed``,
    ``unsupported``, ``bad_signature``, ``expired``, ``not_yet_valid``,
    ``untrusted_chain``, ``nonce_missing``, ``nonce_mismatch``,
    ``debug_mode`` or ``reference_mismatch``.
    """
    message = _message_bytes(raw, policy.max_size)
    sign1 = _sign1(message)
    document = _document(sign1.payload)
    leaf, bundle = _certificates(document)
    _check_signature(sign1, leaf)
    expires_at = _check_chain(leaf, bundle, policy, now)

    _check_content(document, policy, now)
    pcrs = _pcrs(document)
    public_key = _optional_bytes(document, "public_key")
    _optional_bytes(document, "user_data")
    nonce = _optional_bytes(document, "nonce")
    fresh = _check_nonce(nonce, expected_nonce)
    matched = _check_pcrs(pcrs, policy)

    pcr0 = pcrs.get(0)
    return VerifiedEvidence(
        kind=KIND,
        digest=digest_of(raw.encode("ascii") if isinstance(raw, str) else raw),
        expires_at=expires_at,
        mial=_ratings(fresh, matched),
        nonce=nonce or None,
        bound_key=_bound_key(public_key),
        subjects=(f"nitro-pcr0:{pcr0.hex()}",) if pcr0 is not None else (),
        details={
            "module_id": str(document["module_id"])[:128],
            "timestamp": str(document["timestamp"]),
            "pcrs_checked": ",".join(str(i) for i in sorted(policy.reference_pcrs)),
            "debug": "yes" if pcr0 is not None and not any(pcr0) else "no",
        },
    )
