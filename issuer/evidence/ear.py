"""EAT Attestation Results (EAR) from a configured verifier such as Veraison.

An EAR (draft-ietf-rats-ear) is a JWT that a RATS verifier signs after it
appraised a workload's evidence (a TPM quote, an SEV-SNP or TDX report). Each
entry of ``submods`` carries an appraisal status and an AR4SI trustworthiness
vector (draft-ietf-rats-ar4si section 3.2), which ``verify`` maps onto the
MIAL dimensions as ``docs/levels.md`` and ``../shared/LEVELS.md`` section 3.5
state, and ``docs/evidence.md`` (section "EAR") summarises.

Two spellings of the claim names exist: the older Veraison profile puts
``ear.status`` and ``ear.trustworthiness-vector`` in each submodule, the
working-group draft renamed them ``ear_status`` and
``ear_trustworthiness_vector``. Both are read; a submodule carrying both
spellings with different values is refused, since two readers could then
disagree about what the verifier said.

The JWS checks follow RFC 8725: the algorithm comes from an allow-list
(ES256, ES384, EdDSA, PS256; never ``none`` or HMAC) and must fit the pinned
key, and no claim is read before the signature verifies. Header parameters
that name keys (``jwk``, ``jku``, ``x5c``, ``x5u``) are never used: the
verifier's keys are pinned by configuration.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from jwt.algorithms import get_default_algorithms
from jwt.api_jws import PyJWS
from jwt.exceptions import (
    InvalidAlgorithmError,
    InvalidKeyError,
    InvalidSignatureError,
    PyJWTError,
)

from verifier.keys import strict_json

from ..assurance.engine import Rating
from ..config import ConfigError
from ..errors import EvidenceError
from ..keys import jwk_thumbprint
from ..platforms.keysource import VerificationKey, keys_from_jwks, load_pem_file
from . import VerifiedEvidence, digest_of

__all__ = [
    "ALLOWED_ALGORITHMS",
    "KIND",
    "VERAISON_PROFILE",
    "EarPolicy",
    "load_verifier_keys",
    "public_key_thumbprint",
    "require_bound_key",
    "verify",
]

KIND = "ear"

#: ``eat_profile`` of the EARs Veraison issues (and of the real sample).
VERAISON_PROFILE = "tag:github.com,2023:veraison/ear"

#: The JWS algorithms an EAR may be signed with (RFC 7518 section 3.1,
#: RFC 8037 section 3.1). ``none`` and the HMAC family are never accepted.
ALLOWED_ALGORITHMS = frozenset({"ES256", "ES384", "EdDSA", "PS256"})

PublicKey = (
    rsa.RSAPublicKey
    | ec.EllipticCurvePublicKey
    | ed25519.Ed25519PublicKey
    | ed448.Ed448PublicKey
)


@dataclass(frozen=True)
class EarPolicy:
    """What an EAR must satisfy to be accepted.

    - ``keys``: the verifier's pinned public keys (``load_verifier_keys``);
      required, at least one.
    - ``profile``: the required ``eat_profile``; default ``VERAISON_PROFILE``.
    - ``algorithms``: accepted JWS ``alg`` values, a subset of
      ``ALLOWED_ALGORITHMS``; default all four.
    - ``max_age``: seconds an appraisal (its ``iat``) stays acceptable;
      default 300.
    - ``clock_skew``: seconds of tolerance for ``iat``, ``nbf`` and ``exp``
      in the future or past; default 60.
    - ``max_size``: largest accepted EAR in bytes, checked before parsing;
      default 65536.

    Raises ``ValueError`` when built with no key or a disallowed algorithm.
    """

    keys: tuple[VerificationKey, ...]
    profile: str = VERAISON_PROFILE
    algorithms: frozenset[str] = ALLOWED_ALGORITHMS
    max_age: int = 300
    clock_skew: int = 60
    max_size: int = 65536

    def __post_init__(self) -> None:
        if not self.keys:
            raise ValueError("an EAR policy needs at least one verifier key")
        extra = set(self.algorithms) - ALLOWED_ALGORITHMS
        if extra or not self.algorithms:
            raise ValueError(
                f"EAR algorithms must be among {sorted(ALLOWED_ALGORITHMS)}"
            )


def load_verifier_keys(path: Path) -> tuple[VerificationKey, ...]:
    """Read a verifier's public key(s): PEM, a JWK, or a JWK Set file.

    A PEM file holds one public key or certificate (RFC 7468); a JSON file
    holds one JWK (RFC 7517 section 4) or a JWK Set (section 5). Private key
    members make the file unacceptable. Raises ``ConfigError``.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    if data.lstrip().startswith(b"-----BEGIN"):
        return (load_pem_file(path, None),)
    try:
        document = json.loads(data)
    except (ValueError, RecursionError):
        raise ConfigError(f"{path} is neither PEM nor JSON") from None
    if isinstance(document, dict) and "keys" not in document:
        document = {"keys": [document]}
    try:
        keys = keys_from_jwks(document)
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if not keys:
        raise ConfigError(f"{path} holds no usable signature verification key")
    return tuple(keys)


# Key binding (RFC 7638), shared with the Nitro module.

_JWK_WRITERS = {
    rsa.RSAPublicKey: "RS256",
    ec.EllipticCurvePublicKey: "ES256",
    ed25519.Ed25519PublicKey: "EdDSA",
    ed448.Ed448PublicKey: "EdDSA",
}


def public_key_thumbprint(key: object) -> str:
    """The RFC 7638 SHA-256 thumbprint of a public key, base64url.

    Raises ``EvidenceError("unsupported")`` for a key type JOSE cannot
    express (a curve without a JWK ``crv`` name, for example).
    """
    for key_type, writer in _JWK_WRITERS.items():
        if isinstance(key, key_type):
            try:
                jwk = get_default_algorithms()[writer].to_jwk(key, as_dict=True)
                return jwk_thumbprint(jwk)
            except (PyJWTError, KeyError, ValueError):
                break
    raise EvidenceError("unsupported", "The bound key has no JWK form.")


def require_bound_key(evidence: VerifiedEvidence, expected: str) -> VerifiedEvidence:
    """Return ``evidence`` if it binds the key whose thumbprint is ``expected``.

    ``expected`` is the RFC 7638 thumbprint of the key the client
    authenticated with (or its DPoP key). Raises ``EvidenceError`` with
    ``key_missing`` when the evidence binds no key and ``key_mismatch`` when
    it binds another one. The comparison runs in constant time.
    """
    if evidence.bound_key is None:
        raise EvidenceError("key_missing", "The evidence binds no workload key.")
    if not hmac.compare_digest(evidence.bound_key.encode(), expected.encode()):
        raise EvidenceError(
            "key_mismatch", "The evidence binds a key other than the client's."
        )
    return evidence


# JWS parsing (RFC 7515 section 5.2).

_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")
_JWS = PyJWS(options={"enforce_minimum_key_length": True})


def _b64url(segment: str) -> bytes:
    if len(segment) % 4 == 1 or not _BASE64URL.fullmatch(segment):
        raise ValueError("not base64url")
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except binascii.Error:
        raise ValueError("not base64url") from None


def _json_object(segment: str, part: str) -> dict[str, Any]:
    try:
        value = strict_json(_b64url(segment))
    except ValueError:
        raise EvidenceError("malformed", f"The EAR {part} is not JSON.") from None
    if not isinstance(value, dict):
        raise EvidenceError("malformed", f"The EAR {part} is not a JSON object.")
    return value


def _text(raw: bytes | str, max_size: int) -> str:
    if len(raw) > max_size:
        raise EvidenceError("too_large", "The EAR is larger than allowed.")
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("ascii")
        except UnicodeDecodeError:
            raise EvidenceError("malformed", "The EAR is not ASCII.") from None
    if not raw.isascii():
        raise EvidenceError("malformed", "The EAR is not ASCII.")
    return raw.strip()


def _check_header(header: Mapping[str, Any], policy: EarPolicy) -> tuple[str, Any]:
    alg = header.get("alg")
    if not isinstance(alg, str):
        raise EvidenceError("malformed", "The EAR header has no alg.")
    if alg not in policy.algorithms:
        raise EvidenceError("unsupported", "The EAR algorithm is not allowed.")
    # RFC 7515 section 4.1.11: no header extension is understood here, so a
    # token that marks any as critical must be refused.
    if "crit" in header or "b64" in header:
        raise EvidenceError("unsupported", "The EAR uses critical header extensions.")
    return alg, header.get("kid")


# Signature lengths fixed by the algorithm (RFC 7518 section 3.4: R and S
# each as long as the curve's order; RFC 8037 section 3.1: 64 bytes).
_SIGNATURE_BYTES = {"ES256": 64, "ES384": 96, "ES512": 132, "EdDSA": 64}


def _verify_signature(token: str, alg: str, kid: Any, policy: EarPolicy) -> None:
    """Try the pinned keys that fit ``alg`` (and ``kid`` when one is named).

    A signature that is not base64url, or not the length ``alg`` fixes, is
    malformed whatever the key: a cut signature is named so every time,
    rather than only when its last characters fail to decode.
    """
    size = _SIGNATURE_BYTES.get(alg)
    if size is not None:
        try:
            signature = _b64url(token.rsplit(".", 1)[-1])
        except ValueError:
            raise EvidenceError("malformed", "The EAR is not a valid JWS.") from None
        if len(signature) != size:
            raise EvidenceError("malformed", "The EAR signature has the wrong length.")
    candidates = [
        k
        for k in policy.keys
        if alg in k.algorithms and (kid is None or k.kid is None or k.kid == kid)
    ]
    if not candidates:
        raise EvidenceError("bad_signature", "No verifier key fits the EAR.")
    for key in candidates:
        try:
            _JWS.decode_complete(token, key=key.key, algorithms=[alg])
        except (InvalidSignatureError, InvalidKeyError):
            continue
        except InvalidAlgorithmError:
            raise EvidenceError(
                "unsupported", "The EAR algorithm is not allowed."
            ) from None
        except PyJWTError:
            raise EvidenceError("malformed", "The EAR is not a valid JWS.") from None
        return
    raise EvidenceError("bad_signature", "The EAR signature does not verify.")


# Claims (RFC 7519 section 4.1, RFC 9711 sections 4.1 and 4.3.2).


def _number(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    # NumericDate may carry a fraction (RFC 7519 section 2): the real Veraison
    # sample's iat is a JSON float. Infinite or NaN values are not times.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise EvidenceError("malformed", f"The EAR {name} is not a number.")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise EvidenceError("malformed", f"The EAR {name} is not a number.")
    return number


def _check_times(
    claims: Mapping[str, Any], policy: EarPolicy, now: float
) -> tuple[float, int | None]:
    iat = _number(claims, "iat")
    if iat is None:
        raise EvidenceError("malformed", "The EAR has no iat.")
    nbf = _number(claims, "nbf")
    exp = _number(claims, "exp")
    skew = policy.clock_skew
    if iat > now + skew or (nbf is not None and nbf > now + skew):
        raise EvidenceError("not_yet_valid", "The EAR is not valid yet.")
    if exp is not None and exp <= now - skew:
        raise EvidenceError("expired", "The EAR has expired.")
    if now - iat > policy.max_age:
        raise EvidenceError("expired", "The appraisal is older than allowed.")
    return iat, None if exp is None else int(exp)


def _nonces(claims: Mapping[str, Any]) -> list[str]:
    # RFC 9711 section 4.1: in JSON the nonce is a text string, or an array
    # of them when several parties each supplied one.
    value = claims.get("eat_nonce")
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(v, str) and v for v in items):
        raise EvidenceError("malformed", "The EAR eat_nonce is not text.")
    return items


def _nonce_matches(text: str, expected: bytes) -> bool:
    """Compare one ``eat_nonce`` with the issued nonce, in constant time.

    The issuer's challenge is itself text, which a workload may copy into
    ``eat_nonce`` as is; a verifier that took it as binary (Veraison does)
    writes its base64url form instead. Both encode the same bytes, so both
    are accepted.
    """
    as_text = hmac.compare_digest(text.encode("utf-8"), expected)
    try:
        decoded = _b64url(text)
    except ValueError:
        decoded = b""
    return as_text | hmac.compare_digest(decoded, expected)


def _check_nonce(
    claims: Mapping[str, Any], expected: bytes | None
) -> tuple[bool, bytes | None]:
    """Return whether a fresh nonce matched, and the nonce to report."""
    nonces = _nonces(claims)
    if expected is None:
        return False, nonces[0].encode("utf-8") if nonces else None
    if not nonces:
        raise EvidenceError("nonce_missing", "The EAR carries no nonce.")
    if not any(_nonce_matches(n, expected) for n in nonces):
        raise EvidenceError("nonce_mismatch", "The EAR nonce is not the one issued.")
    return True, expected


# Appraisals (draft-ietf-rats-ear "EAR-appraisal"; AR4SI section 3.2).

_CLAIMS = (
    "instance-identity",
    "configuration",
    "executables",
    "file-system",
    "hardware",
    "runtime-opaque",
    "storage-opaque",
    "sourced-data",
)

# The dimension each trustworthiness claim informs (LEVELS.md section 3.5).
# sourced-data is informational only; storage-opaque speaks to the MAAL
# dimension containment, which it can lower but never raise on its own.
_DIMENSION = {
    "instance-identity": "identity_attestation",
    "hardware": "deployment_environment",
    "runtime-opaque": "deployment_environment",
    "executables": "software_integrity",
    "file-system": "software_integrity",
    "configuration": "configuration",
    "storage-opaque": "containment",
}

_MIAL_DIMENSIONS = (
    "identity_attestation",
    "deployment_environment",
    "software_integrity",
    "configuration",
)

# AR4SI values that say "unrecognised or unavailable": they cap at 1, not 2,
# because nothing at all is known about the element (LEVELS.md section 3.5).
_CAP_AT_ONE = {("executables", 33), ("configuration", 36), ("file-system", 32)}

# AR4SI: every claim may carry 99, "cryptographic validation of the evidence
# failed". The verifier then appraised nothing that can be trusted.
_CRYPTO_FAILED = 99

_TIERS = ("affirming", "none", "warning", "contraindicated")
_RANK = {name: rank for rank, name in enumerate(_TIERS)}

_SPELLINGS = {
    "status": ("ear.status", "ear_status"),
    "vector": ("ear.trustworthiness-vector", "ear_trustworthiness_vector"),
    "policy": ("ear.appraisal-policy-id", "ear_appraisal_policy_id"),
    "key": ("ear.veraison.key-attestation", "ear_veraison_key_attestation"),
}


def _tier(value: int) -> str:
    """The AR4SI tier of a claim value (section 3.2 of draft-ietf-rats-ar4si)."""
    if -1 <= value <= 1:
        return "none"
    if 2 <= value <= 31 or -32 <= value <= -2:
        return "affirming"
    if 32 <= value <= 95 or -96 <= value <= -33:
        return "warning"
    return "contraindicated"


@dataclass
class _Appraisal:
    name: str
    status: str
    vector: dict[str, int]
    policy_id: str | None
    akpub: str | None


def _member(appraisal: Mapping[str, Any], what: str) -> Any:
    old, new = _SPELLINGS[what]
    if old in appraisal and new in appraisal and appraisal[old] != appraisal[new]:
        raise EvidenceError(
            "malformed", "A submodule states one claim twice, differently."
        )
    return appraisal[old] if old in appraisal else appraisal.get(new)


def _read_vector(value: Any) -> dict[str, int]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise EvidenceError("malformed", "A trustworthiness vector is not an object.")
    vector: dict[str, int] = {}
    for claim, number in value.items():
        if isinstance(number, bool) or not isinstance(number, int):
            raise EvidenceError(
                "malformed", "A trustworthiness claim is not an integer."
            )
        if not -128 <= number <= 127:
            raise EvidenceError("malformed", "A trustworthiness claim is out of range.")
        # Claims AR4SI does not define are skipped: their meaning is unknown,
        # and the appraisal status already reflects the worst of them.
        if claim in _CLAIMS:
            vector[claim] = number
    return vector


def _read_appraisal(name: str, appraisal: Any) -> _Appraisal:
    if not isinstance(appraisal, dict):
        raise EvidenceError("malformed", "A submodule is not an object.")
    status = _member(appraisal, "status")
    if not isinstance(status, str) or status not in _RANK:
        raise EvidenceError("malformed", "A submodule has no valid ear.status.")
    policy_id = _member(appraisal, "policy")
    if policy_id is not None and not isinstance(policy_id, str):
        raise EvidenceError("malformed", "An appraisal policy id is not text.")
    key = _member(appraisal, "key")
    akpub = None
    if key is not None:
        if not isinstance(key, dict):
            raise EvidenceError("malformed", "The key attestation is not an object.")
        akpub = key.get("akpub")
        if akpub is not None and not isinstance(akpub, str):
            raise EvidenceError("malformed", "The attested key is not text.")
    return _Appraisal(
        name, status, _read_vector(_member(appraisal, "vector")), policy_id, akpub
    )


def _read_appraisals(claims: Mapping[str, Any]) -> list[_Appraisal]:
    submods = claims.get("submods")
    if not isinstance(submods, dict) or not submods:
        raise EvidenceError("malformed", "The EAR has no submods.")
    appraisals = [_read_appraisal(str(n), a) for n, a in submods.items()]
    for appraisal in appraisals:
        if _CRYPTO_FAILED in appraisal.vector.values():
            raise EvidenceError(
                "contraindicated", "The verifier could not validate the evidence."
            )
    return appraisals


def _effective_status(appraisal: _Appraisal) -> str:
    """The submodule's status, never better than its worst claim.

    draft-ietf-rats-ear requires the status to be no better than the worst
    claim; a verifier that broke that rule is held to it here. sourced-data
    is left out: LEVELS.md section 3.5 makes it informational only.
    """
    worst = appraisal.status
    for claim, value in appraisal.vector.items():
        tier = _tier(value)
        if claim != "sourced-data" and tier != "none" and _RANK[tier] > _RANK[worst]:
            worst = tier
    return worst


# Ratings (docs/levels.md; LEVELS.md sections 3.2 and 3.5).


@dataclass
class _Ratings:
    fresh: bool
    mial: dict[str, Rating] = field(default_factory=dict)
    caps: dict[str, Rating] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)

    def enable(self, dim: str, why: str) -> None:
        """Record an affirming claim: 3 when fresh, else 2 (evidence rule)."""
        if self.fresh:
            rating = Rating(3, f"{why}, fresh nonce matched")
        else:
            rating = Rating(2, f"{why}; capped at 2: no fresh nonce")
        current = self.mial.get(dim)
        if current is None or rating.value > current.value:
            self.mial[dim] = rating

    def cap(self, dim: str, value: int, why: str) -> None:
        current = self.caps.get(dim)
        if current is None or value < current.value:
            self.caps[dim] = Rating(value, why)


def _enable(ratings: _Ratings, appraisal: _Appraisal) -> None:
    vector = appraisal.vector
    where = f"EAR {appraisal.name}"
    hardware = vector.get("hardware") == 2
    if vector.get("instance-identity") == 2:
        if hardware:
            ratings.enable(
                "identity_attestation", f"{where}: instance-identity 2, hardware 2"
            )
        else:
            # Without a hardware-rooted appraisal the result is still signed
            # by a third party (the verifier), which is what level 2 asks.
            ratings.mial.setdefault(
                "identity_attestation",
                Rating(2, f"{where}: instance-identity 2 without hardware 2"),
            )
    if hardware:
        ratings.enable("deployment_environment", f"{where}: hardware 2")
        if vector.get("runtime-opaque") == 2:
            ratings.notes["confidential"] = f"{appraisal.name}: runtime-opaque 2"
    file_system = vector.get("file-system")
    file_system_ok = file_system is None or file_system == 2
    if vector.get("executables") in (2, 3) and file_system_ok:
        ratings.enable(
            "software_integrity", f"{where}: executables {vector['executables']}"
        )
    if vector.get("configuration") in (2, 3):
        ratings.enable(
            "configuration", f"{where}: configuration {vector['configuration']}"
        )
    if vector.get("storage-opaque") == 2:
        ratings.notes["storage_opaque"] = (
            f"{appraisal.name}: storage-opaque 2 (key attestation still needed)"
        )


def _cap_claims(ratings: _Ratings, appraisal: _Appraisal) -> None:
    for claim, value in appraisal.vector.items():
        tier = _tier(value)
        where = f"EAR {appraisal.name}: {claim} {value}"
        if claim == "sourced-data":
            if tier in ("warning", "contraindicated"):
                ratings.notes["sourced_data"] = f"{appraisal.name}: {value} ({tier})"
            continue
        dim = _DIMENSION[claim]
        if tier == "contraindicated":
            ratings.cap(dim, 0, f"{where} (contraindicated)")
        elif (claim, value) in _CAP_AT_ONE:
            ratings.cap(dim, 1, f"{where} (unrecognised)")
        elif tier == "warning":
            ratings.cap(dim, 2, f"{where} (warning)")


def _rate(appraisals: Iterable[_Appraisal], fresh: bool) -> tuple[_Ratings, str]:
    ratings = _Ratings(fresh=fresh)
    overall = "affirming"
    for appraisal in appraisals:
        status = _effective_status(appraisal)
        if _RANK[status] > _RANK[overall]:
            overall = status
        # A submodule the verifier could not judge ("none") or judged
        # contraindicated affirms nothing; its claims may still lower values.
        if status in ("affirming", "warning"):
            _enable(ratings, appraisal)
        _cap_claims(ratings, appraisal)

    if overall == "warning":
        for dim in _MIAL_DIMENSIONS:
            ratings.cap(dim, 2, "EAR status warning")
    elif overall == "contraindicated":
        # LEVELS.md section 3.5: contraindicated forces MIAL 0; identity 0
        # alone does that, the others make the record say why.
        for dim in _MIAL_DIMENSIONS:
            ratings.cap(dim, 0, "EAR status contraindicated")

    for dim, rating in list(ratings.mial.items()):
        cap = ratings.caps.get(dim)
        if cap is not None and cap.value < rating.value:
            ratings.mial[dim] = Rating(
                cap.value, f"{rating.reason}; capped: {cap.reason}"
            )
    return ratings, overall


def _bound_key(appraisals: Iterable[_Appraisal]) -> str | None:
    """Thumbprint of the attested key (Veraison key attestation, ``akpub``).

    ``akpub`` is a base64url DER SubjectPublicKeyInfo (RFC 5280 section
    4.1.2.7). Submodules naming different keys make the binding ambiguous.
    """
    thumbprints = set()
    for appraisal in appraisals:
        if appraisal.akpub is None:
            continue
        try:
            key = serialization.load_der_public_key(_b64url(appraisal.akpub))
        except ValueError:
            raise EvidenceError(
                "malformed", "The attested key does not parse."
            ) from None
        thumbprints.add(public_key_thumbprint(key))
    if len(thumbprints) > 1:
        raise EvidenceError("malformed", "The EAR attests more than one key.")
    return thumbprints.pop() if thumbprints else None


def _details(
    claims: Mapping[str, Any],
    appraisals: list[_Appraisal],
    status: str,
    notes: dict[str, str],
) -> dict[str, str]:
    details = {
        "profile": str(claims.get("eat_profile")),
        "status": status,
        "submods": ",".join(a.name for a in appraisals)[:200],
    }
    verifier = claims.get("ear.verifier-id", claims.get("ear_verifier_id"))
    if isinstance(verifier, dict):
        details["verifier"] = f"{verifier.get('developer')} {verifier.get('build')}"[
            :200
        ]
    jti = claims.get("jti")
    if isinstance(jti, str):
        details["jti"] = jti[:128]
    policies = sorted({a.policy_id for a in appraisals if a.policy_id})
    if policies:
        details["policy_ids"] = ",".join(policies)[:300]
    details.update(notes)
    return details


def verify(
    raw: bytes | str,
    *,
    policy: EarPolicy,
    expected_nonce: bytes | None,
    now: float,
) -> VerifiedEvidence:
    """Verify an EAR JWT and rate it (draft-ietf-rats-ear, AR4SI section 3.2).

    ``expected_nonce`` is the nonce the issuer handed out; ``None`` means the
    caller does not require freshness, and then no dimension is rated above
    2. Raises ``EvidenceError`` with reason ``too_large``, ``malformed``,
    ``unsupported`` (algorithm, critical header, profile), ``bad_signature``,
    ``not_yet_valid``, ``expired``, ``nonce_missing``, ``nonce_mismatch`` or
    ``contraindicated`` (a trust-vector value of 99). A contraindicated
    status is returned, not raised, with ``contraindicated=True``: the
    issuer refuses it and records why.
    """
    token = _text(raw, policy.max_size)
    parts = token.split(".")
    if len(parts) != 3:
        raise EvidenceError("malformed", "The EAR is not a compact JWS.")
    alg, kid = _check_header(_json_object(parts[0], "header"), policy)
    _verify_signature(token, alg, kid, policy)
    claims = _json_object(parts[1], "payload")

    if claims.get("eat_profile") != policy.profile:
        raise EvidenceError("unsupported", "The EAR profile is not the configured one.")
    iat, exp = _check_times(claims, policy, now)
    fresh, nonce = _check_nonce(claims, expected_nonce)
    appraisals = _read_appraisals(claims)
    ratings, status = _rate(appraisals, fresh)
    bound_key = _bound_key(appraisals)

    details = _details(claims, appraisals, status, ratings.notes)
    details["appraised_at"] = str(int(iat))
    return VerifiedEvidence(
        kind=KIND,
        digest=digest_of(raw.encode("ascii") if isinstance(raw, str) else raw),
        expires_at=exp,
        mial=ratings.mial,
        caps=ratings.caps,
        contraindicated=status == "contraindicated",
        nonce=nonce,
        bound_key=bound_key,
        details=details,
    )
