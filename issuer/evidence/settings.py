"""Evidence trust anchors and reference values from the policy file.

The ``[evidence.<kind>]`` tables of the policy file (docs/evidence.md,
"Configuration") become the policy objects of each evidence module. Paths
are resolved against the policy file's folder. Raises ``ValueError`` naming
the table and key for anything malformed, so ``wimse-issuer policy check``
reports it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509

from . import ear, nitro, provenance, tpm

__all__ = ["EvidenceSettings"]

_KNOWN = {"tpm", "ear", "nitro", "provenance"}


def _files(table: Mapping[str, Any], key: str, base: Path, where: str) -> list[Path]:
    value = table.get(key, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{where}.{key} must be a path or a list of paths")
    return [(base / v).resolve() for v in value]


def _certs(paths: list[Path], where: str) -> tuple[x509.Certificate, ...]:
    out: list[x509.Certificate] = []
    for path in paths:
        try:
            out.extend(x509.load_pem_x509_certificates(path.read_bytes()))
        except (OSError, ValueError) as exc:
            raise ValueError(
                f"{where}: cannot load certificates from {path}: {exc}"
            ) from None
    return tuple(out)


def _hex(value: object, where: str) -> bytes:
    if not isinstance(value, str):
        raise ValueError(f"{where} must be a hex string")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise ValueError(f"{where} must be a hex string") from None


def _unknown(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    extra = set(table) - allowed
    if extra:
        raise ValueError(f"{where}: unknown keys {sorted(extra)}")


@dataclass(frozen=True)
class EvidenceSettings:
    """The configured evidence kinds; ``None`` for a kind not accepted."""

    tpm: tpm.TpmPolicy | None = None
    ear: ear.EarPolicy | None = None
    nitro: nitro.NitroPolicy | None = None
    provenance: provenance.ProvenancePolicy | None = None
    #: Artifact digests (``sha256:<hex>``) provenance may vouch for.
    artifact_digests: tuple[str, ...] = ()

    @classmethod
    def from_mapping(
        cls, data: Mapping[str, Any], base: Path, activation_key: bytes | None
    ) -> EvidenceSettings:
        """Build from the ``evidence`` table of a policy file."""
        _unknown(data, _KNOWN, "evidence")
        for name, table in data.items():
            if not isinstance(table, Mapping):
                raise ValueError(f"evidence.{name} must be a table")
        return cls(
            tpm=_tpm(data["tpm"], base, activation_key) if "tpm" in data else None,
            ear=_ear(data["ear"], base) if "ear" in data else None,
            nitro=_nitro(data["nitro"], base) if "nitro" in data else None,
            provenance=_provenance(data["provenance"], base)
            if "provenance" in data
            else None,
            artifact_digests=_artifacts(data.get("provenance", {})),
        )

    def kinds(self) -> list[str]:
        """Evidence kinds accepted at the token endpoint."""
        out = []
        if self.tpm is not None:
            out += ["tpm_quote", "tpm2_certify"]
        if self.ear is not None:
            out.append("ear")
        if self.nitro is not None:
            out.append("nitro_attestation")
        if self.provenance is not None:
            out.append("slsa_provenance")
        return out


def _tpm(table: Mapping[str, Any], base: Path, key: bytes | None) -> tpm.TpmPolicy:
    where = "evidence.tpm"
    _unknown(
        table,
        {
            "ek_ca_files",
            "ak_ca_files",
            "pcr_reference",
            "allow_sha1",
            "evidence_lifetime",
        },
        where,
    )
    reference: dict[str, dict[int, tuple[bytes, ...]]] = {}
    raw = table.get("pcr_reference", {})
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where}.pcr_reference must be a table of banks")
    for bank, pcrs in raw.items():
        if not isinstance(pcrs, Mapping):
            raise ValueError(f"{where}.pcr_reference.{bank} must be a table")
        entries: dict[int, tuple[bytes, ...]] = {}
        for index, values in pcrs.items():
            if not str(index).isdigit() or not 0 <= int(index) <= 23:
                raise ValueError(f"{where}.pcr_reference.{bank}: PCR index 0..23")
            items = [values] if isinstance(values, str) else values
            if not isinstance(items, list) or not items:
                raise ValueError(f"{where}.pcr_reference.{bank}.{index}: hex values")
            entries[int(index)] = tuple(
                _hex(v, f"{where}.pcr_reference") for v in items
            )
        reference[str(bank)] = entries
    allow_sha1 = table.get("allow_sha1", False)
    lifetime = table.get("evidence_lifetime", 3600)
    if not isinstance(allow_sha1, bool) or type(lifetime) is not int or lifetime <= 0:
        raise ValueError(f"{where}: allow_sha1 is true/false, evidence_lifetime > 0")
    return tpm.TpmPolicy(
        ek_ca_certificates=_certs(_files(table, "ek_ca_files", base, where), where),
        ak_ca_certificates=_certs(_files(table, "ak_ca_files", base, where), where),
        activation_key=key,
        pcr_reference=reference,
        allow_sha1=allow_sha1,
        evidence_lifetime=lifetime,
    )


def _ear(table: Mapping[str, Any], base: Path) -> ear.EarPolicy:
    where = "evidence.ear"
    _unknown(table, {"key_files", "profile", "max_age"}, where)
    keys: list[Any] = []
    for path in _files(table, "key_files", base, where):
        try:
            keys.extend(ear.load_verifier_keys(path))
        except (OSError, ValueError) as exc:
            raise ValueError(f"{where}: cannot load keys from {path}: {exc}") from None
    if not keys:
        raise ValueError(f"{where}.key_files must name at least one key")
    kwargs: dict[str, Any] = {}
    if "profile" in table:
        if not isinstance(table["profile"], str) or not table["profile"]:
            raise ValueError(f"{where}.profile must be a string")
        kwargs["profile"] = table["profile"]
    if "max_age" in table:
        kwargs["max_age"] = _int(table, "max_age", where, 1, 31_536_000)
    return ear.EarPolicy(keys=tuple(keys), **kwargs)


def _nitro(table: Mapping[str, Any], base: Path) -> nitro.NitroPolicy:
    where = "evidence.nitro"
    _unknown(table, {"root_files", "reference_pcrs", "allow_debug", "max_age"}, where)
    roots: list[x509.Certificate] = []
    for path in _files(table, "root_files", base, where):
        try:
            roots.extend(nitro.load_roots(path))
        except (OSError, ValueError) as exc:
            raise ValueError(f"{where}: cannot load roots from {path}: {exc}") from None
    if not roots:
        raise ValueError(f"{where}.root_files must name at least one root")
    raw = table.get("reference_pcrs", {})
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where}.reference_pcrs must be a table")
    pcrs = {}
    for k, v in raw.items():
        if not str(k).isdigit() or not 0 <= int(k) <= 31:
            raise ValueError(f"{where}.reference_pcrs: PCR index 0..31, not {k!r}")
        pcrs[int(k)] = _hex(v, f"{where}.reference_pcrs.{k}")
    allow_debug = table.get("allow_debug", False)
    if not isinstance(allow_debug, bool):
        raise ValueError(f"{where}.allow_debug must be true or false")
    kwargs: dict[str, Any] = {}
    if "max_age" in table:
        kwargs["max_age"] = _int(table, "max_age", where, 1, 86400)
    return nitro.NitroPolicy(
        roots=tuple(roots), reference_pcrs=pcrs, allow_debug=allow_debug, **kwargs
    )


def _artifacts(table: Mapping[str, Any]) -> tuple[str, ...]:
    values = table.get("artifact_digests", [])
    if not isinstance(values, list) or not all(
        isinstance(v, str) and v.startswith("sha256:") and len(v) == 71 for v in values
    ):
        raise ValueError(
            "evidence.provenance.artifact_digests must be a list of sha256:<hex>"
        )
    return tuple(values)


def _int(table: Mapping[str, Any], key: str, where: str, low: int, high: int) -> int:
    value = table[key]
    if type(value) is not int or not low <= value <= high:
        raise ValueError(f"{where}.{key} must be an integer {low}..{high}")
    return value


def _provenance(table: Mapping[str, Any], base: Path) -> provenance.ProvenancePolicy:
    where = "evidence.provenance"
    _unknown(
        table,
        {"trusted_root_file", "builders", "source_repositories", "artifact_digests"},
        where,
    )
    root_files = _files(table, "trusted_root_file", base, where)
    if len(root_files) != 1:
        raise ValueError(f"{where}.trusted_root_file must name one file")
    try:
        root = provenance.load_trusted_root(root_files[0])
    except (OSError, ValueError, json.JSONDecodeError) as exc:
        raise ValueError(f"{where}: cannot load the trusted root: {exc}") from None
    builders = []
    for i, row in enumerate(table.get("builders", [])):
        if not isinstance(row, Mapping):
            raise ValueError(f"{where}.builders[{i}] must be a table")
        texts = [row.get(k) for k in ("identity", "issuer", "builder_id")]
        if not all(isinstance(t, str) and t for t in texts):
            raise ValueError(
                f"{where}.builders[{i}]: identity, issuer, builder_id are strings"
            )
        builders.append(
            provenance.TrustedBuilder(
                identity=row["identity"],
                issuer=row["issuer"],
                builder_id=row["builder_id"],
                level=_int(row, "level", f"{where}.builders[{i}]", 1, 3),
            )
        )
    repos = table.get("source_repositories", [])
    if not isinstance(repos, list) or not all(isinstance(r, str) for r in repos):
        raise ValueError(f"{where}.source_repositories must be a list of strings")
    return provenance.ProvenancePolicy(
        trusted_root=root, builders=tuple(builders), source_repositories=tuple(repos)
    )
