"""SLSA build provenance in a Sigstore bundle, verified offline.

A builder (GitHub Actions, for example) signs an in-toto Statement (in-toto
attestation framework, Statement v1) whose predicate is SLSA provenance
(SLSA v1.0 "Provenance", or the older v0.2) with a short-lived Fulcio
certificate, wraps it in a DSSE envelope (DSSE v1 protocol) and logs it in
Rekor; the Sigstore bundle carries all of it. ``verify`` hands the bundle to
sigstore-python's ``Verifier`` with a ``TrustedRoot`` loaded from a file, so
nothing is fetched: the certificate chain, the SCT, the Rekor inclusion
promise and proof and the DSSE signature are all checked against that root,
and the certificate is judged at the Rekor integrated time, not at ``now``.

What this module adds to the library: the signing identity must be a row of
the operator's trusted-builder table (certificate SAN and OIDC issuer, and
the builder id the provenance names), the source repository in the
certificate must be an allowed one, and the statement's subject digests are
matched against the artifact the caller expects. The SLSA Build level is the
level that table row credits (SLSA v1.0 "Security levels", Build track).

Known limit: sigstore-python 4.5 verifies DSSE bundles whose Rekor entry is
of kind ``dsse`` 0.0.1 (or ``hashedrekord`` 0.0.2 on Rekor v2). Older npm
provenance bundles use ``intoto`` 0.0.2 entries; they are refused with
reason ``unsupported``.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from pydantic import ValidationError
from sigstore.errors import CertValidationError, Error, VerificationError
from sigstore.models import Bundle, TrustedRoot
from sigstore.verify import Verifier
from sigstore.verify.policy import Identity, OIDCIssuer, OIDCIssuerV2

from verifier.keys import strict_json

from ..assurance.engine import Rating
from ..config import ConfigError
from ..errors import EvidenceError
from . import VerifiedEvidence, digest_of

__all__ = [
    "KIND",
    "SLSA_PROVENANCE_TYPES",
    "ProvenancePolicy",
    "TrustedBuilder",
    "load_trusted_root",
    "verify",
]

KIND = "slsa_provenance"

#: in-toto Statement types read (attestation framework v1 and v0.1).
STATEMENT_TYPES = frozenset(
    {"https://in-toto.io/Statement/v1", "https://in-toto.io/Statement/v0.1"}
)

#: SLSA provenance predicate types read (v1.0 and v0.2).
SLSA_PROVENANCE_TYPES = frozenset(
    {"https://slsa.dev/provenance/v1", "https://slsa.dev/provenance/v0.2"}
)

_IN_TOTO_PAYLOAD = "application/vnd.in-toto+json"

_BUNDLE_TYPES = frozenset(
    {
        "application/vnd.dev.sigstore.bundle+json;version=0.1",
        "application/vnd.dev.sigstore.bundle+json;version=0.2",
        "application/vnd.dev.sigstore.bundle+json;version=0.3",
        "application/vnd.dev.sigstore.bundle.v0.3+json",
    }
)

# The Rekor entry kinds sigstore-python 4.5 can tie to a DSSE envelope.
_SUPPORTED_ENTRIES = frozenset({("dsse", "0.0.1"), ("hashedrekord", "0.0.2")})

# Fulcio certificate extension "Source Repository URI" (OID 1.3.6.1.4.1.57264
# .1.12), a DER UTF8String naming the repository the workflow ran in.
_SOURCE_REPOSITORY_URI = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.12")

_HEX = re.compile(r"[0-9a-f]+")
_MAX_LEVEL = 3


@dataclass(frozen=True)
class TrustedBuilder:
    """One row of the trusted-builder table.

    - ``identity``: the signing certificate's SAN, exactly (for GitHub, the
      workflow that signed, with its ref: ``https://github.com/OWNER/REPO/
      .github/workflows/FILE@REF``).
    - ``issuer``: the OIDC issuer Fulcio recorded in the certificate.
    - ``builder_id``: the ``builder.id`` the provenance must name.
    - ``level``: the SLSA Build level the operator credits this builder with,
      1 to 3 (see ``docs/evidence.md``, section "Provenance").
    """

    identity: str
    issuer: str
    builder_id: str
    level: int

    def __post_init__(self) -> None:
        if not 1 <= self.level <= _MAX_LEVEL:
            raise ValueError("a trusted builder's SLSA Build level is 1, 2 or 3")


@dataclass(frozen=True)
class ProvenancePolicy:
    """What signed provenance must satisfy.

    - ``trusted_root``: the Sigstore trusted root (``load_trusted_root``);
      required. Verification never leaves this machine.
    - ``builders``: the trusted-builder table; required, at least one row.
    - ``source_repositories``: allowed source repository URIs, as in the
      certificate (``https://github.com/OWNER/REPO``); required, at least one.
    - ``clock_skew``: seconds a Rekor integrated time may lie in the future;
      default 60.
    - ``max_size``: largest accepted bundle in bytes, checked before parsing;
      default 262144.

    Raises ``ValueError`` when a required member is empty.
    """

    trusted_root: TrustedRoot
    builders: tuple[TrustedBuilder, ...]
    source_repositories: tuple[str, ...]
    clock_skew: int = 60
    max_size: int = 262144
    _verifier: Verifier = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.builders:
            raise ValueError("a provenance policy needs at least one trusted builder")
        if not self.source_repositories:
            raise ValueError("a provenance policy needs at least one source repository")
        try:
            verifier = Verifier(trusted_root=self.trusted_root)
        except Error as exc:
            raise ValueError(f"unusable trusted root: {exc}") from None
        # The verifier only reads the root; building it once keeps that work
        # out of every verification.
        object.__setattr__(self, "_verifier", verifier)


def load_trusted_root(path: Path) -> TrustedRoot:
    """Read a Sigstore ``TrustedRoot`` JSON file; raises ``ConfigError``."""
    try:
        return TrustedRoot.from_file(str(path))
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except (ValueError, Error):
        raise ConfigError(f"{path} is not a Sigstore trusted root") from None


class _BuilderPolicy:
    """A sigstore ``VerificationPolicy`` that also says which row matched.

    sigstore calls ``verify`` once, after the chain and SCT checks, so a
    failure recorded here is a builder mismatch and nothing else.
    """

    def __init__(self, builders: tuple[TrustedBuilder, ...]) -> None:
        self._builders = builders
        self.matched: TrustedBuilder | None = None
        self.refused = False

    def verify(self, cert: x509.Certificate) -> None:
        for builder in self._builders:
            try:
                Identity(identity=builder.identity).verify(cert)
                _verify_issuer(cert, builder.issuer)
            except VerificationError:
                continue
            self.matched = builder
            return
        self.refused = True
        raise VerificationError("the signer is not a trusted builder")


def _verify_issuer(cert: x509.Certificate, issuer: str) -> None:
    # Fulcio writes the issuer in extension .1.8 and, for older clients,
    # also in .1.1; either one naming the configured issuer is enough.
    try:
        OIDCIssuerV2(issuer).verify(cert)
    except VerificationError:
        OIDCIssuer(issuer).verify(cert)


# Parsing.


def _text(document: Mapping[str, Any], name: str) -> str:
    """A member that must be text; anything else reads as empty."""
    value = document.get(name)
    return value if isinstance(value, str) else ""


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        value = strict_json(data)
    except ValueError:
        raise EvidenceError("malformed", f"The {what} is not JSON.") from None
    if not isinstance(value, dict):
        raise EvidenceError("malformed", f"The {what} is not a JSON object.")
    return value


def _log_entry(document: Mapping[str, Any]) -> tuple[tuple[str, str], int | None]:
    """The Rekor entry kind and integrated time, read before the library."""
    material = document.get("verificationMaterial")
    entries = material.get("tlogEntries") if isinstance(material, dict) else None
    if not isinstance(entries, list) or len(entries) != 1:
        raise EvidenceError("malformed", "The bundle has no single Rekor entry.")
    entry = entries[0]
    kind = entry.get("kindVersion") if isinstance(entry, dict) else None
    if not isinstance(kind, dict):
        raise EvidenceError("malformed", "The Rekor entry has no kind.")
    kind_version = (str(kind.get("kind")), str(kind.get("version")))
    integrated = entry.get("integratedTime")
    try:
        when = int(integrated) if integrated is not None else None
    except (TypeError, ValueError):
        raise EvidenceError(
            "malformed", "The Rekor integrated time is not a number."
        ) from None
    return kind_version, when


def _precheck(raw: bytes) -> int | None:
    """Refuse what the library cannot verify, with a precise reason."""
    document = _json_object(raw, "bundle")
    if _text(document, "mediaType") not in _BUNDLE_TYPES:
        raise EvidenceError("unsupported", "The bundle media type is not supported.")
    if not isinstance(document.get("dsseEnvelope"), dict):
        raise EvidenceError("unsupported", "The bundle carries no DSSE envelope.")
    kind_version, integrated = _log_entry(document)
    if kind_version not in _SUPPORTED_ENTRIES:
        raise EvidenceError(
            "unsupported", "The bundle's Rekor entry kind cannot be verified here."
        )
    return integrated


def _check_signing_time(
    cert: x509.Certificate, integrated: int | None, policy: ProvenancePolicy, now: float
) -> None:
    # sigstore judges the certificate at the Rekor integrated time and would
    # refuse a time outside its window too; checking it first names the
    # failure. The time itself is authenticated by the library afterwards.
    if integrated is None:
        return
    when = datetime.fromtimestamp(integrated, tz=UTC)
    if when > cert.not_valid_after_utc:
        raise EvidenceError("expired", "The certificate had expired when logged.")
    if when < cert.not_valid_before_utc:
        raise EvidenceError("not_yet_valid", "The certificate was not valid yet.")
    if integrated > now + policy.clock_skew:
        raise EvidenceError("not_yet_valid", "The log entry is dated in the future.")


def _load_bundle(raw: bytes) -> Bundle:
    try:
        return Bundle.from_json(raw)
    except (Error, ValueError, ValidationError):
        raise EvidenceError("malformed", "The bundle does not parse.") from None


def _verify_bundle(
    bundle: Bundle, policy: ProvenancePolicy
) -> tuple[bytes, TrustedBuilder]:
    builders = _BuilderPolicy(policy.builders)
    try:
        payload_type, payload = policy._verifier.verify_dsse(bundle, builders)
    except CertValidationError:
        raise EvidenceError(
            "untrusted_chain", "The signing certificate does not chain to the root."
        ) from None
    except VerificationError:
        if builders.refused:
            raise EvidenceError(
                "untrusted_builder", "The provenance signer is not a trusted builder."
            ) from None
        raise EvidenceError(
            "bad_signature", "The bundle's signature or log entry does not verify."
        ) from None
    except (Error, ValueError):
        raise EvidenceError("malformed", "The bundle cannot be verified.") from None
    if builders.matched is None:
        raise EvidenceError("untrusted_builder", "No trusted builder matched.")
    if payload_type != _IN_TOTO_PAYLOAD:
        raise EvidenceError(
            "unsupported", "The DSSE payload is not an in-toto statement."
        )
    return payload, builders.matched


# The statement (in-toto Statement v1; SLSA provenance v1.0 and v0.2).


def _subjects(statement: Mapping[str, Any]) -> tuple[str, ...]:
    subjects = statement.get("subject")
    if not isinstance(subjects, list) or not subjects:
        raise EvidenceError("malformed", "The statement names no subject.")
    found: set[str] = set()
    for subject in subjects:
        digests = subject.get("digest") if isinstance(subject, dict) else None
        if not isinstance(digests, dict) or not digests:
            raise EvidenceError("malformed", "A subject has no digest.")
        for algorithm, value in digests.items():
            if not isinstance(value, str) or not _HEX.fullmatch(value.lower()):
                raise EvidenceError("malformed", "A subject digest is not hex.")
            found.add(f"{algorithm.lower()}:{value.lower()}")
    return tuple(sorted(found))


def _builder_id(statement: Mapping[str, Any]) -> str | None:
    predicate = statement.get("predicate")
    if not isinstance(predicate, dict):
        return None
    if statement.get("predicateType") == "https://slsa.dev/provenance/v1":
        details = predicate.get("runDetails")
        builder = details.get("builder") if isinstance(details, dict) else None
    else:
        builder = predicate.get("builder")
    value = builder.get("id") if isinstance(builder, dict) else None
    return value if isinstance(value, str) else None


def _statement_repository(statement: Mapping[str, Any]) -> str | None:
    """``externalParameters.workflow.repository`` of GitHub's v1 build type."""
    value: Any = statement.get("predicate")
    for member in ("buildDefinition", "externalParameters", "workflow", "repository"):
        value = value.get(member) if isinstance(value, dict) else None
    return value if isinstance(value, str) else None


def _der_utf8(data: bytes) -> str | None:
    """Decode a DER UTF8String (tag 12), the form of Fulcio's v2 extensions."""
    if len(data) < 2 or data[0] != 0x0C:
        return None
    length, offset = data[1], 2
    if length & 0x80:
        size = length & 0x7F
        if not 0 < size <= 2 or len(data) < 2 + size:
            return None
        length, offset = int.from_bytes(data[2 : 2 + size], "big"), 2 + size
    if len(data) != offset + length:
        return None
    try:
        return data[offset:].decode("utf-8")
    except UnicodeDecodeError:
        return None


def _source_repository(cert: x509.Certificate) -> str | None:
    try:
        extension = cert.extensions.get_extension_for_oid(_SOURCE_REPOSITORY_URI)
    except x509.ExtensionNotFound:
        return None
    value = extension.value
    if not isinstance(value, x509.UnrecognizedExtension):
        return None
    return _der_utf8(value.value)


def _check_source(
    cert: x509.Certificate, statement: Mapping[str, Any], policy: ProvenancePolicy
) -> str:
    repository = _source_repository(cert)
    if repository is None or repository not in policy.source_repositories:
        raise EvidenceError("untrusted_source", "The source repository is not allowed.")
    # The statement is signed by the builder, but a statement naming another
    # repository than the certificate would describe a different build.
    named = _statement_repository(statement)
    if named is not None and named != repository:
        raise EvidenceError(
            "untrusted_source", "The provenance names another source repository."
        )
    return repository


def _check_subject(subjects: tuple[str, ...], expected: str | None) -> None:
    if expected is None:
        return
    algorithm, _, value = expected.partition(":")
    wanted = f"{algorithm.lower()}:{value.lower()}"
    if not any(hmac.compare_digest(wanted, s) for s in subjects):
        raise EvidenceError(
            "subject_mismatch", "The provenance describes another artifact."
        )


def verify(
    raw: bytes | str,
    *,
    policy: ProvenancePolicy,
    expected_nonce: bytes | None,
    now: float,
    expected_subject_digest: str | None = None,
) -> VerifiedEvidence:
    """Verify SLSA provenance in a Sigstore bundle and rate supply_chain.

    ``expected_subject_digest`` (``sha256:<hex>``) is the artifact the other
    evidence reports as running; when given, a statement subject must carry
    it. ``expected_nonce`` is accepted for a uniform interface and ignored:
    provenance describes a build, not a running instance, and carries no
    nonce. ``now`` bounds the Rekor integrated time from above.

    Raises ``EvidenceError`` with reason ``too_large``, ``malformed``,
    ``unsupported`` (bundle or Rekor entry type, statement or predicate
    type), ``expired`` or ``not_yet_valid`` (the certificate at the logged
    time), ``untrusted_chain``, ``untrusted_builder``, ``bad_signature``,
    ``untrusted_source`` or ``subject_mismatch``.
    """
    if len(raw) > policy.max_size:
        raise EvidenceError("too_large", "The bundle is larger than allowed.")
    data = raw.encode("utf-8") if isinstance(raw, str) else raw
    integrated = _precheck(data)
    bundle = _load_bundle(data)
    cert = bundle.signing_certificate
    _check_signing_time(cert, integrated, policy, now)
    payload, builder = _verify_bundle(bundle, policy)

    statement = _json_object(payload, "in-toto statement")
    if _text(statement, "_type") not in STATEMENT_TYPES:
        raise EvidenceError("unsupported", "The statement type is not in-toto.")
    predicate_type = _text(statement, "predicateType")
    if predicate_type not in SLSA_PROVENANCE_TYPES:
        raise EvidenceError("unsupported", "The predicate is not SLSA provenance.")
    subjects = _subjects(statement)
    if _builder_id(statement) != builder.builder_id:
        raise EvidenceError(
            "untrusted_builder", "The provenance names another builder id."
        )
    repository = _check_source(cert, statement, policy)
    _check_subject(subjects, expected_subject_digest)

    level = min(builder.level, _MAX_LEVEL)
    reason = (
        f"SLSA Build L{level}: {predicate_type} signed by trusted builder "
        f"{builder.builder_id}"
    )
    return VerifiedEvidence(
        kind=KIND,
        digest=digest_of(data),
        mial={"supply_chain": Rating(level, reason)},
        subjects=subjects,
        details={
            "builder_id": builder.builder_id[:200],
            "signer": builder.identity[:300],
            "source_repository": repository[:200],
            "predicate_type": predicate_type,
            "integrated_time": str(integrated),
        },
    )
