"""TPM 2.0 evidence: PCR quotes and key residence (TPM2_Certify).

Two evidence kinds, each a JSON object whose members docs/evidence.md lists:

- ``tpm_quote`` (``verify_quote``): a TPM2_Quote (Part 3 section 18.4) over
  the issuer's nonce by an attestation key (AK), the PCR values it covers and
  optionally the firmware event log. Rates MIAL identity_attestation and
  deployment_environment.
- ``tpm2_certify`` (``verify_certify``): a TPM2_Certify (Part 3 section
  18.2) by the same AK of the key the workload authenticates with. Rates
  MAAL containment, enrollment and unlocking, and binds that key
  (``bound_key``).

The AK is trusted in one of three ways, tried in this order:

1. ``ak_certificates``: an AK certificate chain to a configured AK CA (a
   privacy CA that ran credential activation itself).
2. ``ek_certificates`` + ``activation_secret``: an EK certificate chain to a
   configured TPM manufacturer CA, and the secret the workload recovered with
   TPM2_ActivateCredential (Part 3 section 12.5) from a credential this
   issuer made with ``make_activation_challenge`` for that EK and AK Name.
   The TPM releases the secret only when the object with that Name is
   loaded beside the EK's private key, so knowing it proves that the AK
   lives in the TPM the EK certificate vouches for. The secret is an HMAC of
   the EK key and the AK Name under ``TpmPolicy.activation_key``, so the
   issuer keeps no state between the challenge and later quotes.
3. ``TpmPolicy.trusted_ak_names``: an AK pinned by the operator. Nothing
   then shows the AK is in a TPM, so ratings stay at 1.

Reference: TPM 2.0 Library, Part 1 (Architecture) sections 11.4.10 (KDFa,
KDFe), 16 (Names) and 24 (credential protection); Part 2 for structures
(see ``tpm_structures``); Part 3 for commands.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.x509 import verification

# TPM 2.0 mandates AES-CFB for credential protection (Part 1 section 24);
# cryptography files CFB under "decrepit" from 47 on.
try:
    from cryptography.hazmat.decrepit.ciphers.modes import CFB
except ImportError:  # cryptography before 47
    from cryptography.hazmat.primitives.ciphers.modes import CFB

from ..assurance.engine import Rating
from ..errors import EvidenceError
from ..keys import jwk_thumbprint
from . import VerifiedEvidence, digest_of
from .tpm_structures import (
    ALG_ECC,
    ALG_ECDSA,
    ALG_RSA,
    ALG_RSAPSS,
    ALG_RSASSA,
    ST_ATTEST_CERTIFY,
    ST_ATTEST_QUOTE,
    ST_ATTEST_TIME,
    TPM_GENERATED_VALUE,
    Attest,
    HashAlgorithm,
    Public,
    QuoteInfo,
    Signature,
    hash_by_id,
    hash_by_name,
    marshal_pcr_selection,
    parse_attest,
    parse_event_log,
    parse_public,
    parse_signature,
    replay_event_log,
)

__all__ = [
    "KIND_CERTIFY",
    "KIND_QUOTE",
    "ActivationChallenge",
    "TpmPolicy",
    "activation_secret",
    "make_activation_challenge",
    "make_credential",
    "pcr_policy_digest",
    "qualifying_data",
    "verify_certify",
    "verify_quote",
]

KIND_QUOTE = "tpm_quote"
KIND_CERTIFY = "tpm2_certify"

# Part 2 section 6.5.2 (TPM_CC_PolicyPCR), hashed into a PolicyPCR digest.
_CC_POLICY_PCR = 0x0000017F
_ALG_AES = 0x0006
_ALG_CFB = 0x0043
_ACTIVATION_LABEL = b"wimse-assurance tpm2 activation v1\0"
# The attributes that make an AK trustworthy: a restricted signing key only
# signs structures the TPM built itself (Part 1, restricted signing keys),
# and the fixed and sensitiveDataOrigin bits keep its private key inside the
# TPM that made it.
_AK_ATTRIBUTES = (
    "fixedTPM",
    "fixedParent",
    "sensitiveDataOrigin",
    "restricted",
    "sign",
)
# The attributes that prove key residence (LEVELS 3.3, containment 3).
_RESIDENT_ATTRIBUTES = ("fixedTPM", "fixedParent", "sensitiveDataOrigin", "sign")


@dataclass(frozen=True)
class TpmPolicy:
    """What the issuer trusts and expects of TPM evidence.

    - ``ek_ca_certificates``: trust anchors for EK certificates (TPM
      manufacturer CAs). Default none: no EK chains.
    - ``ak_ca_certificates``: trust anchors for AK certificates (a privacy
      CA). Default none.
    - ``trusted_ak_names``: AK Names (nameAlg + digest, Part 1 section 16)
      trusted without a chain; evidence from them rates at most 1. Default
      none.
    - ``activation_key``: HMAC key of credential-activation secrets; at
      least 32 bytes. Default ``None``: the activation path is refused.
    - ``pcr_reference``: accepted values per bank name and PCR index, e.g.
      ``{"sha256": {0: (b"...",), 7: (b"...",)}}``. Every PCR listed must be
      inside the quote's signed selection and hold one of its values.
      Default none: PCRs are verified against the quote but not appraised.
    - ``hash_algorithms``: hash algorithms allowed for signatures, PCR
      banks and Names. Default SHA-256, SHA-384, SHA-512.
    - ``allow_sha1``: also allow SHA-1 (legacy TPMs and quotes). Default off.
    - ``evidence_lifetime``: seconds a token may rest on the evidence.
      Default 3600.
    - ``max_bundle_bytes``: largest JSON bundle accepted. Default 256 KiB.
    """

    ek_ca_certificates: tuple[x509.Certificate, ...] = ()
    ak_ca_certificates: tuple[x509.Certificate, ...] = ()
    trusted_ak_names: frozenset[bytes] = frozenset()
    activation_key: bytes | None = None
    pcr_reference: Mapping[str, Mapping[int, tuple[bytes, ...]]] = field(
        default_factory=dict
    )
    hash_algorithms: frozenset[str] = frozenset({"sha256", "sha384", "sha512"})
    allow_sha1: bool = False
    evidence_lifetime: int = 3600
    max_bundle_bytes: int = 256 * 1024


def qualifying_data(nonce: str) -> bytes:
    """The ``qualifyingData`` a workload passes to TPM2_Quote and TPM2_Certify.

    The SHA-256 of the issuer's challenge nonce: 32 bytes fit the
    ``TPM2B_DATA`` of every TPM, including those whose largest digest is
    SHA-256, which refuse the 43-character nonce itself. The issuer passes
    the same value as ``expected_nonce``.
    """
    return hashlib.sha256(nonce.encode("utf-8")).digest()


# --- bundle members -------------------------------------------------------


def _load(
    bundle: Mapping[str, Any] | str | bytes, policy: TpmPolicy
) -> tuple[Mapping[str, Any], str]:
    # The digest names the exact bytes received; a bundle passed already
    # decoded is digested in canonical JSON so that the same content always
    # gets the same digest.
    if isinstance(bundle, str | bytes):
        raw = bundle.encode("utf-8") if isinstance(bundle, str) else bundle
        if len(raw) > policy.max_bundle_bytes:
            raise EvidenceError("too_large", "TPM evidence is too large")
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise EvidenceError("malformed", "TPM evidence is not JSON") from exc
    else:
        data = bundle
        try:
            raw = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
        except (TypeError, ValueError, RecursionError) as exc:
            raise EvidenceError("malformed", "TPM evidence is not JSON") from exc
        if len(raw) > policy.max_bundle_bytes:
            raise EvidenceError("too_large", "TPM evidence is too large")
    if not isinstance(data, Mapping):
        raise EvidenceError("malformed", "TPM evidence is not a JSON object")
    return data, digest_of(raw)


def _b64(data: Mapping[str, Any], member: str) -> bytes:
    return _decode(data.get(member), member)


def _decode(value: Any, label: str) -> bytes:
    if not isinstance(value, str) or not value:
        raise EvidenceError("malformed", f"{label} is missing or not a string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise EvidenceError("malformed", f"{label} is not base64") from exc


def _certificates(data: Mapping[str, Any], member: str) -> list[x509.Certificate]:
    values = data.get(member)
    if not isinstance(values, list) or not 1 <= len(values) <= 8:
        raise EvidenceError("malformed", f"{member} must list 1 to 8 certificates")
    out = []
    for i, value in enumerate(values):
        der = _decode(value, f"{member}[{i}]")
        try:
            out.append(x509.load_der_x509_certificate(der))
        except ValueError as exc:
            raise EvidenceError(
                "malformed", f"{member}[{i}] is not a DER certificate"
            ) from exc
    return out


def _pcr_values(
    data: Mapping[str, Any], policy: TpmPolicy
) -> dict[int, dict[int, bytes]]:
    # {"sha256": {"0": "<hex>", ...}, ...}
    pcrs = data.get("pcrs")
    if not isinstance(pcrs, Mapping):
        raise EvidenceError("malformed", "pcrs is missing or not an object")
    out: dict[int, dict[int, bytes]] = {}
    for bank_name, bank in pcrs.items():
        algorithm = _allowed_hash(hash_by_name(str(bank_name)).alg_id, policy)
        if not isinstance(bank, Mapping):
            raise EvidenceError("malformed", f"pcrs.{bank_name} is not an object")
        values = {}
        for index, value in bank.items():
            if not (isinstance(index, str) and index.isdigit() and int(index) < 32):
                raise EvidenceError("malformed", "PCR index must be 0 to 31")
            try:
                digest = bytes.fromhex(value) if isinstance(value, str) else b""
            except ValueError as exc:
                raise EvidenceError("malformed", "PCR value is not hex") from exc
            if len(digest) != algorithm.size:
                raise EvidenceError("malformed", f"PCR value is not {bank_name}")
            values[int(index)] = digest
        out[algorithm.alg_id] = values
    return out


# --- checks shared by both kinds ------------------------------------------


def _allowed_hash(alg_id: int, policy: TpmPolicy) -> HashAlgorithm:
    algorithm = hash_by_id(alg_id)
    allowed = algorithm.name in policy.hash_algorithms
    if algorithm.legacy:
        # SHA-1 needs the explicit legacy switch even if listed, so that a
        # list copied from elsewhere never re-enables it by accident.
        allowed = policy.allow_sha1
    if not allowed:
        raise EvidenceError("unsupported", f"{algorithm.name} is not allowed by policy")
    return algorithm


def _check_ak(ak: Public, policy: TpmPolicy) -> None:
    _allowed_hash(ak.name_alg, policy)
    missing = [a for a in _AK_ATTRIBUTES if not ak.has(a)]
    if missing or ak.has("decrypt"):
        raise EvidenceError(
            "ak_attributes",
            "AK is not a restricted signing key resident in its TPM: "
            + ", ".join(missing or ["decrypt set"]),
        )


def _check_header(attest: Attest, kind: int) -> None:
    # Part 2 section 10.12 (TPMS_ATTEST): only the TPM itself writes
    # TPM_GENERATED_VALUE into a structure a restricted key signs; anything
    # else was built outside the TPM.
    if attest.magic != TPM_GENERATED_VALUE:
        raise EvidenceError("bad_magic", "TPMS_ATTEST magic is not TPM_GENERATED")
    if attest.type != kind:
        raise EvidenceError("wrong_attest_type", "TPMS_ATTEST has the wrong type")


def _verify_signature(
    key: Public, signature: Signature, message: bytes, policy: TpmPolicy
) -> HashAlgorithm:
    algorithm = _allowed_hash(signature.hash_alg, policy)
    public = key.public_key()
    try:
        if signature.sig_alg == ALG_RSASSA and isinstance(public, rsa.RSAPublicKey):
            public.verify(signature.value, message, padding.PKCS1v15(), algorithm.new())
        elif signature.sig_alg == ALG_RSAPSS and isinstance(public, rsa.RSAPublicKey):
            # TPMs have used both the digest size and the largest salt over
            # the revisions of Part 1 (annex B, RSASSA-PSS), so any length is accepted.
            pss = padding.PSS(padding.MGF1(algorithm.new()), padding.PSS.AUTO)
            public.verify(signature.value, message, pss, algorithm.new())
        elif signature.sig_alg == ALG_ECDSA and isinstance(
            public, ec.EllipticCurvePublicKey
        ):
            der = encode_dss_signature(signature.r, signature.s)
            public.verify(der, message, ec.ECDSA(algorithm.new()))
        else:
            raise EvidenceError("unsupported", "signature scheme does not fit the key")
    except InvalidSignature as exc:
        raise EvidenceError("bad_signature", "TPM signature does not verify") from exc
    return algorithm


def _check_nonce(attest: Attest, expected: bytes | None) -> bool:
    if expected is None:
        return False
    if not attest.extra_data:
        raise EvidenceError("nonce_missing", "the TPM attestation carries no nonce")
    if not hmac.compare_digest(attest.extra_data, expected):
        raise EvidenceError("nonce_mismatch", "the TPM attestation has another nonce")
    return True


# --- certificate chains ---------------------------------------------------


def _require_ca(
    policy: verification.Policy,
    cert: x509.Certificate,
    ext: x509.BasicConstraints | None,
) -> None:
    if ext is None or not ext.ca:
        raise ValueError("issuer is not a CA")


def _key_cert_sign(
    policy: verification.Policy, cert: x509.Certificate, ext: x509.KeyUsage | None
) -> None:
    if ext is not None and not ext.key_cert_sign:
        raise ValueError("issuer may not sign certificates")


# Manufacturer CAs predate the Web PKI profile that cryptography enforces by
# default (several lack a critical basicConstraints or an AKI), so CA
# certificates are held to what path validation needs (RFC 5280 section
# 6.1.4 (k) and (n)); EK and AK certificates carry TCG-specific subject
# alternative names and key usages, and are not held to a profile at all.
_CA_POLICY = (
    verification.ExtensionPolicy.permit_all()
    .require_present(
        x509.BasicConstraints, verification.Criticality.AGNOSTIC, _require_ca
    )
    .may_be_present(x509.KeyUsage, verification.Criticality.AGNOSTIC, _key_cert_sign)
)
_EE_POLICY = verification.ExtensionPolicy.permit_all()


def _verify_chain(
    chain: Sequence[x509.Certificate],
    anchors: Sequence[x509.Certificate],
    now: float,
    what: str,
) -> float:
    """Check ``chain`` (leaf first) against ``anchors``; return its expiry."""
    if not anchors:
        raise EvidenceError("untrusted_chain", f"no {what} CA is configured")
    at = datetime.fromtimestamp(now, UTC)
    builder = (
        verification.PolicyBuilder()
        .store(verification.Store(list(anchors)))
        .time(at)
        .max_chain_depth(6)
        .extension_policies(ca_policy=_CA_POLICY, ee_policy=_EE_POLICY)
    )
    try:
        verified = builder.build_client_verifier().verify(chain[0], list(chain[1:]))
    except verification.VerificationError as exc:
        raise _chain_failure(chain, anchors, at, what) from exc
    return min(c.not_valid_after_utc for c in verified.chain).timestamp()


def _chain_failure(
    chain: Sequence[x509.Certificate],
    anchors: Sequence[x509.Certificate],
    at: datetime,
    what: str,
) -> EvidenceError:
    # The verifier reports every failure alike; walking the issuer names
    # tells an operator whether the fix is renewing a certificate or
    # trusting another CA.
    pool = [*chain[1:], *anchors]
    cert: x509.Certificate | None = chain[0]
    for _ in range(8):
        if cert is None:
            break
        if cert.not_valid_after_utc < at:
            return EvidenceError("expired", f"a {what} certificate expired")
        if cert.not_valid_before_utc > at:
            return EvidenceError(
                "not_yet_valid", f"a {what} certificate is not yet valid"
            )
        if cert.issuer == cert.subject:
            break
        cert = next((c for c in pool if c.subject == cert.issuer), None)
    return EvidenceError(
        "untrusted_chain", f"{what} certificate does not chain to a trusted CA"
    )


def _spki(key: Any) -> bytes:
    der: bytes = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der


# --- AK trust -------------------------------------------------------------


@dataclass(frozen=True)
class _AkTrust:
    method: str
    chained: bool
    not_after: float | None


def activation_secret(
    key: bytes, ek_certificate: x509.Certificate, ak_name: bytes
) -> bytes:
    """The credential-activation secret for this EK and AK Name.

    An HMAC-SHA256 under ``key`` of the EK's SubjectPublicKeyInfo digest and
    the AK Name, so that the issuer can recompute it instead of storing it.
    """
    ek_digest = hashlib.sha256(_spki(ek_certificate.public_key())).digest()
    return hmac.new(key, _ACTIVATION_LABEL + ek_digest + ak_name, "sha256").digest()


def _ak_trust(
    data: Mapping[str, Any], ak: Public, policy: TpmPolicy, now: float
) -> _AkTrust:
    if "ak_certificates" in data:
        chain = _certificates(data, "ak_certificates")
        not_after = _verify_chain(chain, policy.ak_ca_certificates, now, "AK")
        if _spki(chain[0].public_key()) != _spki(ak.public_key()):
            raise EvidenceError(
                "ak_certificate_mismatch", "AK certificate names another key"
            )
        return _AkTrust("ak_certificate", True, not_after)
    if "ek_certificates" in data:
        chain = _certificates(data, "ek_certificates")
        not_after = _verify_chain(chain, policy.ek_ca_certificates, now, "EK")
        if policy.activation_key is None:
            raise EvidenceError(
                "ak_not_trusted", "credential activation is not enabled"
            )
        secret = _b64(data, "activation_secret")
        expected = activation_secret(policy.activation_key, chain[0], ak.name)
        if not hmac.compare_digest(secret, expected):
            raise EvidenceError(
                "activation_failed", "activation secret does not match this EK and AK"
            )
        return _AkTrust("ek_certificate", True, not_after)
    if ak.name in policy.trusted_ak_names:
        return _AkTrust("pinned", False, None)
    raise EvidenceError("ak_not_trusted", "the AK is neither certified nor pinned")


def _expiry(now: float, policy: TpmPolicy, trust: _AkTrust) -> int:
    limit = now + policy.evidence_lifetime
    if trust.not_after is not None:
        limit = min(limit, trust.not_after)
    return int(limit)


# --- TPM2_Quote -----------------------------------------------------------


def _check_pcrs(
    data: Mapping[str, Any],
    quote: QuoteInfo,
    digest_alg: HashAlgorithm,
    policy: TpmPolicy,
) -> dict[int, dict[int, bytes]]:
    supplied = _pcr_values(data, policy)
    quoted: dict[int, dict[int, bytes]] = {}
    concatenated = b""
    # Part 3 section 18.4.1: pcrDigest hashes the selected PCRs, bank by bank
    # in selection order and by ascending index, with the signing hash.
    for alg_id, indexes in quote.selection:
        _allowed_hash(alg_id, policy)
        bank = supplied.get(alg_id, {})
        for index in indexes:
            value = bank.get(index)
            if value is None:
                raise EvidenceError("pcr_missing", "a quoted PCR has no value")
            concatenated += value
            quoted.setdefault(alg_id, {})[index] = value
    if not hmac.compare_digest(digest_alg.digest(concatenated), quote.pcr_digest):
        raise EvidenceError(
            "pcr_digest_mismatch", "PCR values do not match the quote's pcrDigest"
        )

    # Only values inside the signed selection are bound by the signature; a
    # reference PCR outside it would be compared with an unsigned claim.
    for bank_name, references in policy.pcr_reference.items():
        alg_id = hash_by_name(bank_name).alg_id
        for index, accepted in references.items():
            value = quoted.get(alg_id, {}).get(index)
            if value is None:
                raise EvidenceError(
                    "pcr_not_quoted",
                    f"PCR {bank_name}:{index} is not in the quote's signed selection",
                )
            if not any(hmac.compare_digest(value, ref) for ref in accepted):
                raise EvidenceError(
                    "pcr_mismatch", f"PCR {bank_name}:{index} differs from policy"
                )
    return quoted


def _check_event_log(raw: bytes, quoted: Mapping[int, Mapping[int, bytes]]) -> str:
    log = parse_event_log(raw)
    replayed = replay_event_log(log)
    compared = []
    for alg_id, bank in replayed.items():
        for index, value in sorted(bank.items()):
            signed = quoted.get(alg_id, {}).get(index)
            # A PCR outside the quote is not signed, so the log cannot be
            # checked against it; it is neither trusted nor held against it.
            if signed is None:
                continue
            if not hmac.compare_digest(signed, value):
                raise EvidenceError(
                    "event_log_mismatch",
                    f"event log replay differs from quoted PCR {index}",
                )
            compared.append(f"{hash_by_id(alg_id).name}:{index}")
    return f"{len(log.events)} events replayed; matches {', '.join(compared) or 'none'}"


def _selection_text(quote: QuoteInfo) -> str:
    return "; ".join(
        f"{hash_by_id(alg).name}:{','.join(map(str, idx))}"
        for alg, idx in quote.selection
    )


def verify_quote(
    bundle: Mapping[str, Any] | str | bytes,
    *,
    policy: TpmPolicy,
    expected_nonce: bytes | None,
    now: float,
) -> VerifiedEvidence:
    """Verify a TPM2_Quote bundle and rate it (LEVELS 3.2, evidence 3.6).

    Checks, in order: the AK (``TPMT_PUBLIC``, Part 2 section 12.2.4) is a
    restricted signing key; the quote (``TPMS_ATTEST``, Part 2 section
    10.12) has the TPM_GENERATED magic and type ATTEST_QUOTE; the AK's
    ``TPMT_SIGNATURE`` over it verifies; ``extraData`` equals
    ``expected_nonce``; the supplied PCR values hash to ``pcrDigest``; every
    reference PCR of ``policy`` lies in the signed selection and matches;
    the event log, if sent, replays to the quoted PCRs; the AK chains to a
    trusted CA (module docstring).

    ``expected_nonce`` ``None`` accepts a quote without freshness, rated at
    most 2. Raises ``EvidenceError`` with a fixed ``reason`` on any failure.
    """
    data, digest = _load(bundle, policy)
    ak = parse_public(_b64(data, "ak_public"))
    _check_ak(ak, policy)
    attest = parse_attest(_b64(data, "quote"))
    _check_header(attest, ST_ATTEST_QUOTE)
    signature = parse_signature(_b64(data, "signature"))
    digest_alg = _verify_signature(ak, signature, attest.raw, policy)
    fresh = _check_nonce(attest, expected_nonce)
    if attest.quote is None:  # parse_attest fills it for every ATTEST_QUOTE
        raise EvidenceError("malformed", "quote has no TPMS_QUOTE_INFO")

    quoted = _check_pcrs(data, attest.quote, digest_alg, policy)
    details = {
        "ak_name": ak.name.hex(),
        "pcr_selection": _selection_text(attest.quote),
        "clock_safe": str(attest.safe).lower(),
    }
    if "event_log" in data:
        details["event_log"] = _check_event_log(_b64(data, "event_log"), quoted)
    trust = _ak_trust(data, ak, policy, now)
    details["ak_trust"] = trust.method
    appraised = bool(policy.pcr_reference)

    return VerifiedEvidence(
        kind=KIND_QUOTE,
        digest=digest,
        expires_at=_expiry(now, policy, trust),
        mial=_quote_ratings(trust, fresh, appraised),
        nonce=attest.extra_data or None,
        subjects=(f"tpm-ak:{ak.name.hex()}",),
        details=details,
    )


def _quote_ratings(trust: _AkTrust, fresh: bool, appraised: bool) -> dict[str, Rating]:
    if not trust.chained:
        reason = "TPM quote by an AK pinned in policy; nothing shows the AK is in a TPM"
        return {
            "identity_attestation": Rating(1, reason),
            "deployment_environment": Rating(1, reason),
        }
    source = (
        "an AK certificate from a trusted CA"
        if trust.method == "ak_certificate"
        else "an AK bound by credential activation to an EK certificate"
    )
    if fresh:
        identity = Rating(3, f"TPM quote over the issuer's nonce by {source}")
    else:
        identity = Rating(2, f"TPM quote by {source}, not bound to a fresh nonce")
    if fresh and appraised:
        environment = Rating(
            3, "fresh TPM quote whose PCRs match the policy's reference values"
        )
    elif appraised:
        environment = Rating(
            2, "PCRs match reference values, but the quote is not fresh"
        )
    else:
        environment = Rating(
            2, "genuine TPM host; no PCR reference values in policy to appraise against"
        )
    return {"identity_attestation": identity, "deployment_environment": environment}


# --- TPM2_Certify ---------------------------------------------------------


def pcr_policy_digest(
    name_alg: int, selection: Sequence[tuple[int, Sequence[int]]], values: bytes
) -> bytes:
    """The authPolicy a trial TPM2_PolicyPCR session computes (Part 3 section 23.7).

    ``policyDigest = H(zeros || TPM_CC_PolicyPCR || TPML_PCR_SELECTION ||
    H(values))`` with ``H`` the key's nameAlg, starting from an all-zero
    digest (Part 1, policy sessions). ``values`` is the concatenation of the
    selected PCR values in selection order.
    """
    algorithm = hash_by_id(name_alg)
    pcrs = marshal_pcr_selection(tuple((a, tuple(i)) for a, i in selection))
    return algorithm.digest(
        bytes(algorithm.size)
        + struct.pack(">I", _CC_POLICY_PCR)
        + pcrs
        + algorithm.digest(values)
    )


def _unlocking(data: Mapping[str, Any], key: Public, policy: TpmPolicy) -> Rating:
    # Part 1, authorization roles: with userWithAuth set, the key's authValue alone
    # authorises signing, whatever its authPolicy says.
    if key.has("userWithAuth"):
        return Rating(
            1,
            "usable with its authValue (userWithAuth); guarded by OS access to the TPM",
        )
    if not key.auth_policy:
        return Rating(1, "no authPolicy and userWithAuth clear: not usable for signing")
    spec = data.get("key_policy")
    pcrs = spec.get("pcrs") if isinstance(spec, Mapping) else None
    if not isinstance(pcrs, Mapping):
        return Rating(1, "authPolicy set but not described; it cannot be appraised")
    selection = []
    values = b""
    for bank_name, indexes in pcrs.items():
        algorithm = _allowed_hash(hash_by_name(str(bank_name)).alg_id, policy)
        refs = policy.pcr_reference.get(algorithm.name, {})
        if not isinstance(indexes, list) or not all(
            isinstance(i, int) and 0 <= i < 32 for i in indexes
        ):
            raise EvidenceError("malformed", "key_policy.pcrs lists bad indexes")
        for index in sorted(set(indexes)):
            accepted = refs.get(index, ())
            if len(accepted) != 1:
                return Rating(
                    1, "PCR policy over PCRs without a single reference value"
                )
            values += accepted[0]
        selection.append((algorithm.alg_id, sorted(set(indexes))))
    expected = pcr_policy_digest(key.name_alg, selection, values)
    if not hmac.compare_digest(expected, key.auth_policy):
        return Rating(1, "authPolicy is not the PCR policy of the reference values")
    return Rating(
        3, "TPM releases the key only while PCRs hold the reference values (PolicyPCR)"
    )


def verify_certify(
    bundle: Mapping[str, Any] | str | bytes,
    *,
    policy: TpmPolicy,
    ak_public: bytes,
    expected_nonce: bytes | None,
    expected_key_thumbprint: str | None,
    now: float,
) -> VerifiedEvidence:
    """Verify a TPM2_Certify of the workload's key and rate it (LEVELS 3.3).

    ``ak_public`` is the marshalled ``TPMT_PUBLIC`` of the AK, the one the
    same request's quote names. The bundle must still prove the AK's trust
    (``ak_certificates``, or ``ek_certificates`` and ``activation_secret``)
    unless the AK is pinned, so that this function never credits an
    unproven AK.

    Checks: the attest (``TPMS_ATTEST`` with ``TPMS_CERTIFY_INFO``, Part 2
    section 10.12) is TPM-generated, of type ATTEST_CERTIFY and signed by
    the AK; ``extraData`` equals ``expected_nonce``; the certified key's
    ``TPMT_PUBLIC`` has the Name the attest certifies (Part 1 section 16);
    it has fixedTPM, fixedParent, sensitiveDataOrigin and sign set; its RFC
    7638 thumbprint equals ``expected_key_thumbprint`` when one is given.

    Rates containment 3 and enrollment 3 (2 without a fresh nonce or with a
    pinned AK); unlocking 3 for a PCR policy matching the reference values,
    1 otherwise. Raises ``EvidenceError`` with a fixed ``reason``.
    """
    data, digest = _load(bundle, policy)
    ak = parse_public(ak_public)
    _check_ak(ak, policy)
    attest = parse_attest(_b64(data, "attest"))
    _check_header(attest, ST_ATTEST_CERTIFY)
    _verify_signature(ak, parse_signature(_b64(data, "signature")), attest.raw, policy)
    fresh = _certify_freshness(data, ak, attest, expected_nonce, policy)
    if attest.certify is None:  # parse_attest fills it for every ATTEST_CERTIFY
        raise EvidenceError("malformed", "certify has no TPMS_CERTIFY_INFO")

    key = parse_public(_b64(data, "public"))
    _allowed_hash(key.name_alg, policy)
    if not hmac.compare_digest(key.name, attest.certify.name):
        raise EvidenceError("name_mismatch", "the key is not the object certified")
    missing = [a for a in _RESIDENT_ATTRIBUTES if not key.has(a)]
    if missing:
        raise EvidenceError(
            "key_attributes", "certified key lacks " + ", ".join(missing)
        )
    thumbprint = jwk_thumbprint(key.jwk())
    if expected_key_thumbprint is not None and not hmac.compare_digest(
        thumbprint, expected_key_thumbprint
    ):
        raise EvidenceError("key_mismatch", "certified key is not the client's key")
    trust = _ak_trust(data, ak, policy, now)

    return VerifiedEvidence(
        kind=KIND_CERTIFY,
        digest=digest,
        expires_at=_expiry(now, policy, trust),
        maal=_certify_ratings(data, key, policy, trust, fresh),
        nonce=attest.extra_data or None,
        bound_key=thumbprint,
        subjects=(f"tpm-ak:{ak.name.hex()}",),
        details={
            "ak_name": ak.name.hex(),
            "ak_trust": trust.method,
            "key_name": key.name.hex(),
            "key_attributes": "|".join(key.attribute_names()),
        },
    )


def _certify_freshness(
    data: Mapping[str, Any],
    ak: Public,
    attest: Attest,
    expected_nonce: bytes | None,
    policy: TpmPolicy,
) -> bool:
    if expected_nonce is None:
        return False
    if hmac.compare_digest(attest.extra_data, expected_nonce):
        return True
    if "time_attest" not in data:
        return _check_nonce(attest, expected_nonce)

    # tpm2-tools 5.4 cannot pass qualifyingData to TPM2_Certify (it sends a
    # fixed 00ff55aa), so the nonce may instead come in a TPM2_GetTime
    # attest (Part 3 section 18.7) by the same AK. Within one boot cycle
    # (equal resetCount and restartCount) the TPM's Clock never goes back,
    # so a certify whose Clock is not below that attest's was made after the
    # nonce existed.
    anchor = parse_attest(_b64(data, "time_attest"))
    _check_header(anchor, ST_ATTEST_TIME)
    signature = parse_signature(_b64(data, "time_signature"))
    _verify_signature(ak, signature, anchor.raw, policy)
    _check_nonce(anchor, expected_nonce)
    same_cycle = (attest.reset_count, attest.restart_count) == (
        anchor.reset_count,
        anchor.restart_count,
    )
    if not same_cycle or attest.clock < anchor.clock:
        raise EvidenceError(
            "stale_certify", "the certify was not made after the nonce-bearing attest"
        )
    return True


def _certify_ratings(
    data: Mapping[str, Any],
    key: Public,
    policy: TpmPolicy,
    trust: _AkTrust,
    fresh: bool,
) -> dict[str, Rating]:
    if trust.chained:
        containment = Rating(
            3, "TPM-resident key (fixedTPM, fixedParent) certified by a chained AK"
        )
    else:
        containment = Rating(
            2, "key attributes say TPM-resident, but the certifying AK is only pinned"
        )
    if trust.chained and fresh:
        enrollment = Rating(
            3, "key made in the TPM (sensitiveDataOrigin), certified over the nonce"
        )
    else:
        enrollment = Rating(
            2, "key made in the TPM, but the certification is not fresh or not chained"
        )
    return {
        "containment": containment,
        "enrollment": enrollment,
        "unlocking": _unlocking(data, key, policy),
    }


# --- credential activation (issuer side of TPM2_ActivateCredential) --------


@dataclass(frozen=True)
class ActivationChallenge:
    """What TPM2_MakeCredential returns (Part 3 section 12.6).

    ``credential_blob`` is a marshalled ``TPM2B_ID_OBJECT`` and
    ``encrypted_secret`` a ``TPM2B_ENCRYPTED_SECRET``; the workload feeds
    both to TPM2_ActivateCredential.
    """

    credential_blob: bytes
    encrypted_secret: bytes

    def to_json(self) -> dict[str, str]:
        """Both members, standard base64, for a JSON response."""
        return {
            "credential_blob": base64.b64encode(self.credential_blob).decode(),
            "encrypted_secret": base64.b64encode(self.encrypted_secret).decode(),
        }


def _kdfa(
    algorithm: HashAlgorithm, key: bytes, label: bytes, context: bytes, bits: int
) -> bytes:
    # Part 1 section 11.4.10.2: SP 800-108 counter mode with HMAC; the label
    # is NUL-terminated and the output length in bits closes each block.
    out = b""
    for counter in range(1, math.ceil(bits / (algorithm.size * 8)) + 1):
        block = struct.pack(">I", counter) + label + b"\0" + context
        out += hmac.new(key, block + struct.pack(">I", bits), algorithm.name).digest()
    return out[: bits // 8]


def _kdfe(
    algorithm: HashAlgorithm, z: bytes, label: bytes, u: bytes, v: bytes, bits: int
) -> bytes:
    # Part 1 section 11.4.10.3: the SP 800-56A concatenation KDF.
    out = b""
    for counter in range(1, math.ceil(bits / (algorithm.size * 8)) + 1):
        out += algorithm.digest(struct.pack(">I", counter) + z + label + b"\0" + u + v)
    return out[: bits // 8]


def make_credential(ek: Public, name: bytes, credential: bytes) -> ActivationChallenge:
    """TPM2_MakeCredential (Part 3 section 12.6) done in software.

    Protects ``credential`` so that only the TPM holding the private part of
    ``ek`` can recover it, and only for the loaded object whose Name is
    ``name`` (Part 1 section 24). ``ek`` must be a storage key with
    AES-CFB inner wrapping, RSA or NIST ECC, as every EK template is.
    Raises ``EvidenceError("unsupported")`` otherwise.
    """
    algorithm = hash_by_id(ek.name_alg)
    if ek.symmetric != _ALG_AES or ek.sym_mode != _ALG_CFB:
        raise EvidenceError("unsupported", "EK does not use AES-CFB")
    if len(credential) > algorithm.size:
        raise ValueError("credential longer than the EK nameAlg digest")

    public = ek.public_key()
    if ek.type == ALG_RSA and isinstance(public, rsa.RSAPublicKey):
        # Part 1 annex B (RSA): an RSA-OAEP encrypted seed, labelled IDENTITY.
        seed = os.urandom(algorithm.size)
        oaep = padding.OAEP(
            padding.MGF1(algorithm.new()), algorithm.new(), b"IDENTITY\0"
        )
        encrypted = public.encrypt(seed, oaep)
    elif ek.type == ALG_ECC and isinstance(public, ec.EllipticCurvePublicKey):
        # Part 1 annex C (ECC): one-pass ECDH with an ephemeral key; the seed
        # is KDFe of the shared x-coordinate and both public x-coordinates.
        size = (public.curve.key_size + 7) // 8
        ephemeral = ec.generate_private_key(public.curve)
        point = ephemeral.public_key().public_numbers()
        z = ephemeral.exchange(ec.ECDH(), public)
        ex, ey = point.x.to_bytes(size, "big"), point.y.to_bytes(size, "big")
        ek_x = ek.ecc_x.rjust(size, b"\0")
        seed = _kdfe(algorithm, z, b"IDENTITY", ex, ek_x, algorithm.size * 8)
        encrypted = struct.pack(">H", size) + ex + struct.pack(">H", size) + ey
    else:
        raise EvidenceError("unsupported", "EK is neither RSA nor ECC")

    # Part 1 section 24: the credential, as a TPM2B_DIGEST, is
    # encrypted under a key bound to the object Name, then protected by an
    # outer HMAC over the ciphertext and the Name.
    sym_key = _kdfa(algorithm, seed, b"STORAGE", name, ek.sym_bits)
    encryptor = Cipher(algorithms.AES(sym_key), CFB(bytes(16))).encryptor()
    plain = struct.pack(">H", len(credential)) + credential
    enc_identity = encryptor.update(plain) + encryptor.finalize()
    hmac_key = _kdfa(algorithm, seed, b"INTEGRITY", b"", algorithm.size * 8)
    outer = hmac.new(hmac_key, enc_identity + name, algorithm.name).digest()
    id_object = struct.pack(">H", len(outer)) + outer + enc_identity
    return ActivationChallenge(
        credential_blob=struct.pack(">H", len(id_object)) + id_object,
        encrypted_secret=struct.pack(">H", len(encrypted)) + encrypted,
    )


def make_activation_challenge(
    *,
    ek_certificates: Sequence[bytes],
    ek_public: bytes,
    ak_public: bytes,
    policy: TpmPolicy,
    now: float,
) -> ActivationChallenge:
    """The credential a workload must activate to bind its AK to its EK.

    ``ek_certificates`` is the DER EK certificate chain (leaf first),
    ``ek_public`` and ``ak_public`` the marshalled ``TPMT_PUBLIC`` of EK and
    AK. The EK chain is verified and must name the same key as
    ``ek_public``; the AK must be a restricted signing key. The secret is
    ``activation_secret`` of the EK and AK Name, so the workload later
    proves the binding by sending it back as ``activation_secret``.

    Raises ``EvidenceError`` (``untrusted_chain``, ``ek_mismatch``,
    ``ak_attributes``, ...) and ``ValueError`` when no
    ``policy.activation_key`` is configured.
    """
    if policy.activation_key is None or len(policy.activation_key) < 32:
        raise ValueError("TpmPolicy.activation_key of at least 32 bytes is required")
    encoded = [base64.b64encode(c).decode() for c in ek_certificates]
    chain = _certificates({"ek_certificates": encoded}, "ek_certificates")
    _verify_chain(chain, policy.ek_ca_certificates, now, "EK")
    ek = parse_public(ek_public)
    if _spki(ek.public_key()) != _spki(chain[0].public_key()):
        raise EvidenceError("ek_mismatch", "EK certificate names another key")
    if not (ek.has("restricted") and ek.has("decrypt") and ek.has("fixedTPM")):
        raise EvidenceError("ek_attributes", "EK is not a restricted decryption key")
    ak = parse_public(ak_public)
    _check_ak(ak, policy)
    secret = activation_secret(policy.activation_key, chain[0], ak.name)
    return make_credential(ek, ak.name, secret)
