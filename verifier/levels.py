"""Assurance level schemes: per-dimension vectors, overall levels, requirements.

This module is the single definition of how an overall ``mial`` or ``maal``
follows from a per-dimension vector. The issuer uses it to stamp tokens and
the verifier uses it to recompute and check them, so both always agree.

The tables are data (``schemes/*.json``), not code; a token names the scheme
it was computed under in ``assurance_levels.scheme``. ``docs/levels.md``
defines every dimension and rule.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

__all__ = [
    "DEFAULT_SCHEME_ID",
    "KINDS",
    "LevelTable",
    "Requirement",
    "Scheme",
    "Shortfall",
    "load_scheme",
]

DEFAULT_SCHEME_ID = "urn:wimse-assurance:levels:1"
KINDS: tuple[Literal["mial"], Literal["maal"]] = ("mial", "maal")
Kind = Literal["mial", "maal"]

_SCHEME_FILES = {DEFAULT_SCHEME_ID: "wimse-levels-1.json"}
_SCHEME_DIR = Path(__file__).resolve().parent / "schemes"


@dataclass(frozen=True)
class Shortfall:
    """One unmet item of a requirement.

    ``item`` is ``"mial"``, ``"maal"``, ``"max_age"`` or a dimension such as
    ``"maal.containment"``; ``required`` and ``found`` are the numbers compared
    (for ``max_age``: allowed seconds and the appraisal's age).
    """

    item: str
    required: int
    found: int

    def describe(self) -> str:
        """Return a short ASCII sentence naming the item and both values."""
        if self.item == "max_age":
            return f"appraisal is {self.found}s old, at most {self.required}s allowed"
        return f"{self.item} is {self.found}, {self.required} required"


@dataclass(frozen=True)
class LevelTable:
    """The dimensions of one kind of level and the minimum row of each level.

    ``rows[0]`` holds the minimums of level 1, ``rows[-1]`` those of the top
    level. A dimension missing from a row has minimum 0.
    """

    kind: Kind
    dimensions: tuple[str, ...]
    rows: tuple[Mapping[str, int], ...]
    dimension_max: int

    @property
    def top(self) -> int:
        """The highest overall level of this kind."""
        return len(self.rows)

    def overall(self, vector: Mapping[str, int]) -> int:
        """Return the highest level whose every minimum ``vector`` meets.

        Levels are tried from 1 upward and the search stops at the first row
        that fails, so a weak dimension caps the level. Dimensions missing from
        ``vector`` count as 0.
        """
        level = 0
        for row in self.rows:
            if any(vector.get(dim, 0) < need for dim, need in row.items()):
                break
            level += 1
        return level

    def shortfalls(self, vector: Mapping[str, int], level: int) -> list[Shortfall]:
        """Return each dimension that keeps ``vector`` below ``level``."""
        if level <= 0:
            return []
        row = self.rows[min(level, self.top) - 1]
        return [
            Shortfall(f"{self.kind}.{dim}", need, vector.get(dim, 0))
            for dim, need in row.items()
            if vector.get(dim, 0) < need
        ]

    def check_vector(self, vector: object) -> dict[str, int]:
        """Return ``vector`` as a dict after checking its shape.

        Raises ``ValueError`` unless it is an object holding exactly this
        kind's dimensions, each an integer from 0 to the dimension maximum
        (booleans are not integers here).
        """
        if not isinstance(vector, dict):
            raise ValueError(f"{self.kind} vector is not an object")
        if set(vector) != set(self.dimensions):
            raise ValueError(f"{self.kind} vector does not name exactly the dimensions")
        out: dict[str, int] = {}
        for dim in self.dimensions:
            value = vector[dim]
            if type(value) is not int or not 0 <= value <= self.dimension_max:
                raise ValueError(f"{self.kind}.{dim} is not an integer 0..3")
            out[dim] = value
        return out


@dataclass(frozen=True)
class Scheme:
    """A versioned pair of level tables."""

    id: str
    mial: LevelTable
    maal: LevelTable

    def table(self, kind: Kind) -> LevelTable:
        """Return the table of ``kind`` (``"mial"`` or ``"maal"``)."""
        return self.mial if kind == "mial" else self.maal

    def has_dimension(self, item: str) -> bool:
        """Tell whether ``item`` (such as ``"maal.containment"``) exists."""
        kind, _, dim = item.partition(".")
        if kind not in KINDS:
            return False
        return dim in self.table(kind).dimensions


def _load_table(kind: Kind, data: Mapping[str, object], top: int) -> LevelTable:
    dims = tuple(str(d) for d in data["dimensions"])  # type: ignore[attr-defined]
    rows = tuple(
        {str(k): int(v) for k, v in row.items()}
        for row in data["levels"]  # type: ignore[attr-defined]
    )
    for row in rows:
        unknown = set(row) - set(dims)
        if unknown:
            raise ValueError(f"{kind} row names unknown dimensions {sorted(unknown)}")
        if any(not 0 <= v <= top for v in row.values()):
            raise ValueError(f"{kind} row minimum outside 0..{top}")
    # Rows must be nested: each level demands at least what the one below does,
    # otherwise "highest row met" and "stop at the first failing row" differ.
    for lower, upper in itertools.pairwise(rows):
        if any(upper.get(d, 0) < need for d, need in lower.items()):
            raise ValueError(f"{kind} rows are not nested")
    return LevelTable(kind, dims, rows, top)


_CACHE: dict[str, Scheme] = {}


def load_scheme(scheme_id: str = DEFAULT_SCHEME_ID) -> Scheme:
    """Return the scheme named ``scheme_id``.

    Raises ``KeyError`` for a scheme this version does not know and
    ``ValueError`` for a table that breaks the nesting rule.
    """
    cached = _CACHE.get(scheme_id)
    if cached is not None:
        return cached
    filename = _SCHEME_FILES[scheme_id]
    text = (_SCHEME_DIR / filename).read_text(encoding="utf-8")
    data = json.loads(text)
    if data["scheme"] != scheme_id:
        raise ValueError("scheme file names another scheme")
    top = int(data["dimension_max"])
    scheme = Scheme(
        scheme_id,
        _load_table("mial", data["mial"], top),
        _load_table("maal", data["maal"], top),
    )
    _CACHE[scheme_id] = scheme
    return scheme


_ITEM = re.compile(r"\A(mial|maal)\.([a-z_]{1,40})>=([0-9])\Z")
_INT = re.compile(r"\A[0-9]{1,9}\Z")


@dataclass(frozen=True)
class Requirement:
    """Minimum levels demanded by a policy, a token request or a route.

    Every member is a lower bound; 0 or ``None`` means no constraint.
    ``dimensions`` maps items such as ``"maal.containment"`` to a minimum.
    ``max_age`` is the most seconds allowed since the appraisal.
    """

    min_mial: int = 0
    min_maal: int = 0
    dimensions: Mapping[str, int] = field(default_factory=dict)
    max_age: int | None = None

    @classmethod
    def parse(
        cls,
        min_mial: str | None = None,
        min_maal: str | None = None,
        min_assurance: str | None = None,
        max_age: str | None = None,
        scheme: Scheme | None = None,
    ) -> Requirement:
        """Parse the compact form used in requests and challenges.

        ``min_assurance`` holds space-separated items ``kind.dimension>=N``.
        Raises ``ValueError`` naming the first malformed part.
        """
        scheme = scheme or load_scheme()
        dims: dict[str, int] = {}
        for part in (min_assurance or "").split(" "):
            if not part:
                continue
            match = _ITEM.match(part)
            if match is None:
                raise ValueError("min_assurance items look like maal.containment>=2")
            item = f"{match.group(1)}.{match.group(2)}"
            if not scheme.has_dimension(item):
                raise ValueError(f"min_assurance names unknown dimension {item}")
            value = int(match.group(3))
            if value > scheme.mial.dimension_max:
                raise ValueError(f"{item} minimum above 3")
            dims[item] = max(dims.get(item, 0), value)
        return cls(
            _parse_level("min_mial", min_mial, scheme.mial.top),
            _parse_level("min_maal", min_maal, scheme.maal.top),
            dims,
            None if max_age is None else _parse_int("max_age", max_age),
        )

    @classmethod
    def from_mapping(cls, data: Mapping[str, object], scheme: Scheme) -> Requirement:
        """Build from a policy-file table with ``min_mial``, ``min_maal``, ``min``
        (dimension item to minimum) and ``max_age``.

        Raises ``ValueError`` for unknown keys, dimensions or out-of-range values.
        """
        allowed = {"min_mial", "min_maal", "min", "max_age"}
        unknown = set(data) - allowed
        if unknown:
            raise ValueError(f"unknown requirement keys {sorted(unknown)}")
        dims_in = data.get("min", {})
        if not isinstance(dims_in, Mapping):
            raise ValueError("min must be a table of dimension minimums")
        dims: dict[str, int] = {}
        for item, value in dims_in.items():
            if not scheme.has_dimension(str(item)):
                raise ValueError(f"unknown dimension {item}")
            dims[str(item)] = _check_int(str(item), value, scheme.mial.dimension_max)
        max_age = data.get("max_age")
        return cls(
            _check_int("min_mial", data.get("min_mial", 0), scheme.mial.top),
            _check_int("min_maal", data.get("min_maal", 0), scheme.maal.top),
            dims,
            None if max_age is None else _check_int("max_age", max_age, 10**9),
        )

    def combine(self, other: Requirement) -> Requirement:
        """Return the requirement that demands everything either one demands."""
        dims = dict(self.dimensions)
        for item, value in other.dimensions.items():
            dims[item] = max(dims.get(item, 0), value)
        ages = [a for a in (self.max_age, other.max_age) if a is not None]
        return Requirement(
            max(self.min_mial, other.min_mial),
            max(self.min_maal, other.min_maal),
            dims,
            min(ages) if ages else None,
        )

    @property
    def is_empty(self) -> bool:
        """True when nothing is demanded."""
        return (
            self.min_mial == 0
            and self.min_maal == 0
            and not any(self.dimensions.values())
            and self.max_age is None
        )

    def unmet(
        self,
        mial: int,
        maal: int,
        vectors: Mapping[str, Mapping[str, int]],
        appraisal_age: int | None = None,
    ) -> list[Shortfall]:
        """Return every item this requirement demands that the values miss.

        ``vectors`` maps ``"mial"`` and ``"maal"`` to per-dimension ratings.
        ``appraisal_age`` is only compared when ``max_age`` is set; ``None``
        there means the age is unknown, which fails a ``max_age`` demand.
        """
        out: list[Shortfall] = []
        if mial < self.min_mial:
            out.append(Shortfall("mial", self.min_mial, mial))
        if maal < self.min_maal:
            out.append(Shortfall("maal", self.min_maal, maal))
        for item, need in sorted(self.dimensions.items()):
            kind, _, dim = item.partition(".")
            found = vectors.get(kind, {}).get(dim, 0)
            if found < need:
                out.append(Shortfall(item, need, found))
        if self.max_age is not None:
            age = -1 if appraisal_age is None else appraisal_age
            if age < 0 or age > self.max_age:
                out.append(Shortfall("max_age", self.max_age, age))
        return out

    def compact(self) -> dict[str, str]:
        """Return the compact parameters (``min_mial`` ...) for a challenge."""
        out: dict[str, str] = {}
        if self.min_mial:
            out["min_mial"] = str(self.min_mial)
        if self.min_maal:
            out["min_maal"] = str(self.min_maal)
        items = [f"{k}>={v}" for k, v in sorted(self.dimensions.items()) if v]
        if items:
            out["min_assurance"] = " ".join(items)
        if self.max_age is not None:
            out["max_age"] = str(self.max_age)
        return out


def _parse_int(name: str, text: str) -> int:
    if not _INT.match(text):
        raise ValueError(f"{name} must be a non-negative integer")
    return int(text)


def _parse_level(name: str, text: str | None, top: int) -> int:
    if text is None or text == "":
        return 0
    value = _parse_int(name, text)
    if value > top:
        raise ValueError(f"{name} must be 0..{top}")
    return value


def _check_int(name: str, value: object, top: int) -> int:
    if type(value) is not int or not 0 <= value <= top:
        raise ValueError(f"{name} must be an integer 0..{top}")
    return value
