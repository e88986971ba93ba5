"""The one load generator for every target: wrk, with the same settings.

``Load`` describes the request (fixed, or cycling through pre-made values);
``run_wrk`` drives it and parses wrk's summary into a ``Measurement``.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from cpu import CpuUse

__all__ = ["Load", "Measurement", "run_wrk"]

HERE = Path(__file__).resolve().parent
FIXED_SCRIPT = HERE / "fixed.lua"
CYCLE_SCRIPT = HERE / "cycle.lua"
FORM = "application/x-www-form-urlencoded"


@dataclass
class Load:
    """One kind of request against one URL.

    With ``values`` set, each request carries the next value (as the body
    when ``field`` is ``"body"``, else in the header ``field``); otherwise
    every request is the same.
    """

    url: str
    body: str
    headers: dict[str, str]
    values: Path | None = None
    field: str = "body"

    def wrk_args(self) -> list[str]:
        """The script and its arguments for wrk's command line."""
        headers = [
            f"{k}: {v}" for k, v in {"Content-Type": FORM, **self.headers}.items()
        ]
        if self.values is None:
            return ["-s", str(FIXED_SCRIPT), self.url, "--", self.body, *headers]
        body = self.body if self.field != "body" else "-"
        return [
            "-s",
            str(CYCLE_SCRIPT),
            self.url,
            "--",
            str(self.values),
            self.field,
            body,
            *headers,
        ]


@dataclass
class Measurement:
    """What one wrk run saw. ``tokens_per_s`` counts only 2xx answers."""

    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int
    notes: list[str] = field(default_factory=list)
    cpu: CpuUse | None = None

    @property
    def errors(self) -> int:
        return self.non_2xx + self.socket_errors

    @property
    def tokens_per_s(self) -> float:
        ok = max(self.requests - self.non_2xx, 0)
        return ok / self.seconds if self.seconds else 0.0


def run_wrk(load: Load, duration: float, connections: int) -> Measurement:
    """Run wrk (one thread, ``connections`` connections) for ``duration`` s."""
    cmd = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{duration:g}s",
        "--timeout",
        "5s",
        "--latency",
        *load.wrk_args(),
    ]
    out = subprocess.run(
        cmd, capture_output=True, text=True, check=True, timeout=duration + 60
    ).stdout
    return parse(out)


def parse(out: str) -> Measurement:
    """Read wrk's summary; raises ``ValueError`` when a line is missing."""
    total = re.search(r"^\s*(\d+) requests in ([\d.]+)(\w+)", out, re.M)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if total is None or rps is None:
        raise ValueError("wrk printed no summary:\n" + out)
    lat = dict(re.findall(r"^\s+(50|99)%\s+([\d.]+\w+)", out, re.M))
    if "50" not in lat or "99" not in lat:
        raise ValueError("wrk printed no latency distribution:\n" + out)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    return Measurement(
        requests=int(total.group(1)),
        seconds=_duration_s(total.group(2), total.group(3)),
        rps=float(rps.group(1)),
        p50_ms=_to_ms(lat["50"]),
        p99_ms=_to_ms(lat["99"]),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(n) for n in sock.groups()) if sock else 0,
    )


def _to_ms(text: str) -> float:
    found = re.match(r"([\d.]+)(us|ms|s)$", text)
    if found is None:
        raise ValueError(f"unexpected latency {text!r}")
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[found.group(2)]
    return float(found.group(1)) * scale


def _duration_s(value: str, unit: str) -> float:
    scale = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[unit]
    return float(value) * scale
