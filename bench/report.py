"""The results table, the targets of the product brief (section 6), and JSON output."""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

from loadgen import Measurement

__all__ = ["Row", "print_report", "write_json"]

# Peers that the ratio columns divide by, in column order.
PEERS = {"bare": "x bare", "authlib": "x authlib", "node": "x node"}
# (description, our row, peer row, lowest acceptable ratio)
AIMS = (
    ("1 worker vs bare WSGI reference", "ours1-cc", "bare", 0.8),
    ("1 worker vs Authlib RFC 9068", "ours1-cc", "authlib", 2.5),
    ("2 workers vs node oidc-provider", "ours2-cc", "node", 1.0),
)
P99_AIM_MS = 10.0
LABEL_WIDTH = 46


@dataclass
class Row:
    """One line of the table: the rounds measured, or why there are none."""

    key: str
    label: str
    results: list[Measurement] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def _median(self, name: str) -> float | None:
        if not self.results:
            return None
        return float(statistics.median(getattr(r, name) for r in self.results))

    @property
    def tokens(self) -> float | None:
        return self._median("tokens_per_s")

    @property
    def p50(self) -> float | None:
        return self._median("p50_ms")

    @property
    def p99(self) -> float | None:
        return self._median("p99_ms")

    def _cpu(self, name: str) -> float | None:
        cpus = [getattr(r.cpu, name) for r in self.results if r.cpu is not None]
        return float(statistics.median(cpus)) if cpus else None

    @property
    def server_cores(self) -> float | None:
        return self._cpu("server")

    @property
    def other_cores(self) -> float | None:
        return self._cpu("others")

    @property
    def cpu_ms_per_token(self) -> float | None:
        """Server CPU per issued token: less swayed by a busy machine."""
        costs = [
            1000 * r.cpu.server / r.tokens_per_s
            for r in self.results
            if r.cpu is not None and r.tokens_per_s
        ]
        return float(statistics.median(costs)) if costs else None

    @property
    def errors(self) -> int:
        return sum(r.errors for r in self.results)

    @property
    def spread(self) -> str:
        """Lowest to highest tokens/s over the rounds."""
        if len(self.results) < 2:
            return ""
        rates = [r.tokens_per_s for r in self.results]
        return f"{min(rates):,.0f}-{max(rates):,.0f}"


def versions(extra: dict[str, str]) -> dict[str, str]:
    """Versions of everything that serves or loads, for the header line."""
    found = {"python": platform.python_version()}
    for dist in ("granian", "Flask", "Authlib", "PyJWT", "cryptography"):
        found[dist.lower()] = version(dist)
    if shutil.which("node"):
        node = subprocess.run(["node", "--version"], capture_output=True, text=True)
        found["node"] = node.stdout.strip()
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
    found["wrk"] = (wrk.stdout + wrk.stderr).split()[1]
    return {**found, **extra}


def _ratio(row: Row, peer: Row | None) -> str:
    if row.tokens is None or peer is None or not peer.tokens:
        return "-"
    return f"{row.tokens / peer.tokens:.2f}"


def print_report(
    rows: list[Row], settings: dict[str, Any], vers: dict[str, str]
) -> None:
    """Print the table, the notes and the targets."""
    by_key = {r.key: r for r in rows}
    print(
        f"\nwrk -t1 -c{settings['connections']} -d{settings['duration']:g}s per "
        f"round, {settings['rounds']} round(s), median shown (after a "
        f"{settings['warmup']:g}s warm-up); Python peers on granian with "
        f"{settings['peer_threads']} blocking threads; 127.0.0.1; "
        f"{os.cpu_count()} CPUs; "
        f"load average at start {settings['loadavg']}"
    )
    print(", ".join(f"{k} {v}" for k, v in vers.items()) + "\n")
    head = (
        f"{'target':{LABEL_WIDTH}} {'tokens/s':>8} {'range':>11} {'p50 ms':>7} "
        f"{'p99 ms':>7} {'errors':>6} {'srv cpu':>7} {'others':>6} {'cpu/tok':>7}"
    )
    head += "".join(f" {name:>9}" for name in PEERS.values())
    print(head)
    print("-" * len(head))
    for row in rows:
        ratios = "".join(f" {_ratio(row, by_key.get(k)):>9}" for k in PEERS)
        if row.tokens is None:
            cells = f"{'-':>8} {'':>11}" + "".join(
                f" {'-':>{w}}" for w in (7, 7, 6, 7, 6, 7)
            )
        else:
            cells = (
                f"{row.tokens:>8,.0f} {row.spread:>11} {row.p50:>7.2f} "
                f"{row.p99:>7.2f} {row.errors:>6,} {_cores(row.server_cores):>7} "
                f"{_cores(row.other_cores):>6} {_cores(row.cpu_ms_per_token):>7}"
            )
        print(f"{row.label:{LABEL_WIDTH}} {cells}{ratios}")
    print(
        "\nsrv cpu: cores the target's processes used; others: cores used "
        "meanwhile by everything but the target and wrk; cpu/tok: the "
        "target's CPU milliseconds per token (medians over rounds)."
    )
    notes = [f"{r.label}: {n}" for r in rows for n in r.notes]
    if notes:
        print("\nnotes:")
        for note in notes:
            print(f"  - {note}")
    _print_targets(by_key, settings["connections"])


def _share(
    top: Row | None, bottom: Row | None, value: Callable[[Row], float | None]
) -> float | None:
    if top is None or bottom is None:
        return None
    a, b = value(top), value(bottom)
    return a / b if a and b else None


def _cores(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _verdict(ok: bool | None) -> str:
    return "not measured" if ok is None else ("met" if ok else "MISSED")


def _print_targets(by_key: dict[str, Row], connections: int) -> None:
    print("\ntargets (product brief section 6; client_credentials, secret_basic):")
    print(f"  {'':34}    aim  tokens/s         by CPU per token")
    for name, ours_key, peer_key, aim in AIMS:
        ours, peer = by_key.get(ours_key), by_key.get(peer_key)
        value = _share(ours, peer, lambda r: r.tokens)
        # The inverse ratio of CPU per token: what the rate would be with
        # the same CPU for both, whatever else ran on the machine.
        by_cpu = _share(peer, ours, lambda r: r.cpu_ms_per_token)
        shown = f"{value:.2f}x" if value is not None else "-"
        cpu = f"{by_cpu:.2f}x" if by_cpu is not None else "-"
        ok = None if value is None else value >= aim
        print(f"  {name:34} >= {aim:.1f}x  {shown:>6} {_verdict(ok):12} {cpu:>6}")
    one, two = by_key.get("ours1-cc"), by_key.get("ours2-cc")
    if one and two and one.tokens and two.tokens:
        scaling = two.tokens / one.tokens
        print(f"  {'scaling, 2 workers / 1 worker':34}         {scaling:.2f}x")
    print(f"  p99 < {P99_AIM_MS:g} ms at {connections} connections:")
    for row in by_key.values():
        if row.key.startswith("ours") and row.p99 is not None:
            ok = row.p99 < P99_AIM_MS
            print(f"    {row.label:{LABEL_WIDTH}} {row.p99:>7.2f} ms  {_verdict(ok)}")


def write_json(
    path: Path, rows: list[Row], settings: dict[str, Any], vers: dict[str, str]
) -> None:
    """Every round of every row, with the settings and versions."""
    data = {
        "settings": settings,
        "versions": vers,
        "rows": [
            {
                "key": r.key,
                "label": r.label,
                "tokens_per_s": r.tokens,
                "p50_ms": r.p50,
                "p99_ms": r.p99,
                "server_cores": r.server_cores,
                "other_cores": r.other_cores,
                "cpu_ms_per_token": r.cpu_ms_per_token,
                "notes": r.notes,
                "rounds": [
                    {**asdict(m), "tokens_per_s": m.tokens_per_s} for m in r.results
                ],
            }
            for r in rows
        ],
    }
    path.write_text(json.dumps(data, indent=2) + "\n")
