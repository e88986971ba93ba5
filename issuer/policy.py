"""Issuance policy: minimum levels per client, audience and scope (TOML).

A policy file looks like::

    version = "2026-12-01"

    [default]
    min_mial = 1

    [[rules]]
    name = "payments"
    audience = "https://payments.example"
    min_mial = 2
    min = { "maal.containment" = 1 }

Every rule whose selectors (``client``, ``audience``, ``scope``; each a
string or a list) all match a request applies; the demands of all matching
rules and the default combine by taking the strictest of each. A rule with
no selector matches everything. Without a file the policy demands nothing
and its version is ``none``.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from verifier.levels import Requirement, Scheme, load_scheme

from .evidence.settings import EvidenceSettings

__all__ = ["Policy", "PolicyError", "PolicyRule"]

_SELECTORS = ("client", "audience", "scope")


class PolicyError(ValueError):
    """The policy file is invalid; the message names the place."""


@dataclass(frozen=True)
class PolicyRule:
    """One rule: selectors and the requirement it adds."""

    name: str
    selectors: Mapping[str, tuple[str, ...]]
    requirement: Requirement

    def matches(
        self, client_id: str, audiences: Iterable[str], scopes: Iterable[str]
    ) -> bool:
        """True when every selector the rule has matches the request."""
        values = {
            "client": {client_id},
            "audience": set(audiences),
            "scope": set(scopes),
        }
        return all(values[key] & set(wanted) for key, wanted in self.selectors.items())


@dataclass(frozen=True)
class Policy:
    """A loaded policy."""

    version: str
    default: Requirement
    rules: tuple[PolicyRule, ...]
    evidence: EvidenceSettings = field(default_factory=EvidenceSettings)

    @classmethod
    def empty(cls) -> Policy:
        """The policy used without a file: demands nothing, accepts no
        attestation evidence."""
        return cls("none", Requirement(), ())

    @classmethod
    def load(
        cls,
        path: str,
        scheme: Scheme | None = None,
        activation_key: bytes | None = None,
    ) -> Policy:
        """Read and validate a policy file; raises ``PolicyError``.

        ``activation_key`` is the issuer's TPM credential-activation key
        (kept in ``keys/``), used by the ``[evidence.tpm]`` table."""
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except OSError as exc:
            raise PolicyError(f"cannot read {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise PolicyError(f"{path} is not valid TOML: {exc}") from None
        return cls.from_mapping(
            data, scheme or load_scheme(), Path(path).resolve().parent, activation_key
        )

    @classmethod
    def from_mapping(
        cls,
        data: Mapping[str, Any],
        scheme: Scheme,
        base: Path | None = None,
        activation_key: bytes | None = None,
    ) -> Policy:
        """Build from parsed TOML; raises ``PolicyError``. ``base`` resolves
        relative paths of the ``evidence`` tables (default: the current
        directory)."""
        base = base or Path.cwd()
        unknown = set(data) - {"version", "default", "rules", "evidence"}
        if unknown:
            raise PolicyError(f"unknown top-level keys {sorted(unknown)}")
        version = data.get("version")
        if not isinstance(version, str) or not version or len(version) > 100:
            raise PolicyError("version must be a non-empty string (at most 100 chars)")
        try:
            default = Requirement.from_mapping(data.get("default", {}), scheme)
        except ValueError as exc:
            raise PolicyError(f"[default]: {exc}") from None
        raw_rules = data.get("rules", [])
        if not isinstance(raw_rules, list):
            raise PolicyError("rules must be an array of tables ([[rules]])")
        rules = tuple(_rule(i, raw, scheme) for i, raw in enumerate(raw_rules))
        raw_evidence = data.get("evidence", {})
        if not isinstance(raw_evidence, Mapping):
            raise PolicyError("evidence must be a table ([evidence.KIND])")
        try:
            evidence = EvidenceSettings.from_mapping(raw_evidence, base, activation_key)
        except (ValueError, TypeError) as exc:
            raise PolicyError(str(exc)) from None
        return cls(version, default, rules, evidence)

    def requirement_for(
        self, client_id: str, audiences: Iterable[str], scopes: Iterable[str]
    ) -> tuple[Requirement, list[str]]:
        """The combined requirement for a request and the names of the rules
        that contributed (``default`` first)."""
        audiences, scopes = list(audiences), list(scopes)
        requirement = self.default
        names = ["default"]
        for rule in self.rules:
            if rule.matches(client_id, audiences, scopes):
                requirement = requirement.combine(rule.requirement)
                names.append(rule.name)
        return requirement, names


def _rule(index: int, raw: object, scheme: Scheme) -> PolicyRule:
    where = f"rules[{index}]"
    if not isinstance(raw, dict):
        raise PolicyError(f"{where} must be a table")
    name = raw.get("name", f"rule-{index}")
    if not isinstance(name, str):
        raise PolicyError(f"{where}.name must be a string")
    selectors: dict[str, tuple[str, ...]] = {}
    demands: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "name":
            continue
        if key in _SELECTORS:
            items = [value] if isinstance(value, str) else value
            if not isinstance(items, list) or not all(
                isinstance(v, str) for v in items
            ):
                raise PolicyError(f"{where}.{key} must be a string or list of strings")
            selectors[key] = tuple(items)
        else:
            demands[key] = value
    try:
        requirement = Requirement.from_mapping(demands, scheme)
    except ValueError as exc:
        raise PolicyError(f"{where} ({name}): {exc}") from None
    return PolicyRule(name, selectors, requirement)
