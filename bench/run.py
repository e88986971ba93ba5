"""Token issuance side by side, in one run on this machine.

Usage: ``python bench/run.py`` (see ``--help`` and bench/README.md), or
``python bench/run.py --profile`` to profile our issuer with py-spy.

Every target is driven by the same load generator (wrk, one thread, the
same connections and duration) on 127.0.0.1 and answers client_credentials
with an ES256-signed RFC 9068 access token:

- our issuer (``wimse-issuer serve``, one worker): client_secret_basic,
  private_key_jwt with a fresh assertion per request, token exchange of a
  Kubernetes token, and DPoP when the issuer advertises it;
- our issuer with two workers;
- a bare WSGI handler doing only the essential work (the limit reference);
- Authlib's documented RFC 9068 generator in a minimal Flask app;
- node oidc-provider 9, installed from npm into a temporary folder.

All targets are started first and then measured in rounds, the order
reversed every other round, so that a busy moment on a shared machine
does not fall on one target only; the table shows each row's median.
Everything the bench starts it stops, and its temporary folder goes too.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import jwt
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cpu import CpuMeter
from loadgen import Load, run_wrk
from report import Row, print_report, versions, write_json
from targets import STARTERS, Options, Scenario, Target

# Headroom when sizing a pool of single-use values from an observed rate.
POOL_HEADROOM = 1.3
# Rate assumed for single-use pools before anything was measured.
FALLBACK_RATE = 5000.0


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def pool_size(rate: float, seconds: float) -> int:
    """How many single-use values cover ``seconds`` at up to ``rate`` per s."""
    return int(rate * seconds * POOL_HEADROOM) + 500


class Runner:
    """Measures the scenarios of started targets, in rounds."""

    def __init__(self, args: argparse.Namespace, targets: list[Target]) -> None:
        self.args = args
        self.rows: dict[str, Row] = {}
        self.live: list[Scenario] = []
        self.pids: dict[str, int] = {}
        for target in targets:
            for sc in target.scenarios:
                self.rows[sc.key] = Row(sc.key, sc.label)
                self.live.append(sc)
                self.pids[sc.key] = target.pid
            for key, label, why in target.skipped:
                self.rows[key] = Row(key, label, notes=[why])

    def run(self) -> list[Row]:
        for number in range(self.args.rounds):
            order = self.live if number % 2 == 0 else self.live[::-1]
            _say(f"round {number + 1} of {self.args.rounds}")
            for sc in list(order):
                if number == 0 and not self._prepare(sc):
                    self.live.remove(sc)
                    continue
                self._measure(sc)
        return list(self.rows.values())

    def _rate(self, sc: Scenario) -> float:
        """Expected rate of ``sc``: its own, else our secret-basic rate."""
        for key in (sc.key, "ours1-cc"):
            row = self.rows.get(key)
            if row is not None and row.results:
                return max(r.tokens_per_s for r in row.results)
        return FALLBACK_RATE

    def _prepare(self, sc: Scenario) -> bool:
        """Probe once and warm up; False (with a note) when it fails."""
        problem = probe(sc.make(1, "probe"))
        if problem:
            self.rows[sc.key].notes.append(f"not measured: {problem}")
            return False
        if self.args.warmup > 0:
            warm = sc.make(pool_size(self._rate(sc), self.args.warmup), "warm")
            run_wrk(warm, self.args.warmup, self.args.connections)
        return True

    def _measure(self, sc: Scenario) -> None:
        count = pool_size(self._rate(sc), self.args.duration)
        started = time.monotonic()
        load = sc.make(count, "main")
        made = time.monotonic() - started
        meter = CpuMeter(self.pids[sc.key])
        meter.start()
        try:
            result = run_wrk(load, self.args.duration, self.args.connections)
        except (subprocess.SubprocessError, ValueError) as exc:
            self.rows[sc.key].notes.append(f"a round failed: {exc}")
            return
        result.cpu = meter.stop()
        row = self.rows[sc.key]
        row.results.append(result)
        if sc.single_use is not None:
            _note_pool(row, sc.single_use, count, result.requests, made)
        _say(
            f"  {sc.label}: {result.tokens_per_s:,.0f} tokens/s, "
            f"p99 {result.p99_ms:.2f} ms, {result.errors} errors, cores: "
            f"server {result.cpu.server:.2f}, others {result.cpu.others:.2f}"
        )


def _note_pool(row: Row, what: str, count: int, used: int, made: float) -> None:
    if used > count:
        row.notes.append(
            f"{used:,} requests for {count:,} {what}: the excess reused values "
            "and were refused (counted as errors)"
        )
    elif len(row.results) == 1:
        row.notes.append(
            f"each round has its own {what}, made just before it "
            f"({count:,} in {made:.1f}s, {used:,} used in round 1)"
        )


def probe(load: Load) -> str | None:
    """Send one request as wrk will; describe what is wrong, or ``None``."""
    body = load.body
    headers = {"Content-Type": "application/x-www-form-urlencoded", **load.headers}
    if load.values is not None:
        first = load.values.read_text().split("\n", 1)[0]
        if load.field == "body":
            body = first
        else:
            headers[load.field] = first
    try:
        resp = requests.post(load.url, data=body, headers=headers, timeout=10)
    except requests.RequestException as exc:
        return f"probe failed: {type(exc).__name__}"
    if resp.status_code != 200:
        return f"probe answered {resp.status_code}: {resp.text[:200]}"
    try:
        header = jwt.get_unverified_header(resp.json().get("access_token", ""))
    except (ValueError, jwt.InvalidTokenError):
        return "probe got no JWT access token"
    if header.get("alg") != "ES256" or header.get("typ") != "at+jwt":
        return f"probe got alg {header.get('alg')}, typ {header.get('typ')}"
    return None


def start_targets(
    tmp: Path, groups: list[str], options: Options, stack: contextlib.ExitStack
) -> list[Target]:
    """Start each selected target; ``stack`` stops them all at the end."""
    targets = []
    for group in STARTERS:
        if group in groups:
            _say(f"starting {group}")
            target = STARTERS[group](tmp, options)
            stack.callback(target.stop)
            targets.append(target)
    return targets


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Token issuance side by side: our issuer and its peers."
    )
    parser.add_argument(
        "--duration", type=float, default=5, help="seconds per round. Default 5."
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds per target. Default 3."
    )
    parser.add_argument(
        "--warmup", type=float, default=2, help="warm-up seconds. Default 2."
    )
    parser.add_argument(
        "--connections", type=int, default=8, help="wrk connections. Default 8."
    )
    parser.add_argument(
        "--peer-threads",
        type=int,
        default=Options.peer_threads,
        help="granian blocking threads of the Python peers; keep it equal to "
        "wimse-issuer serve's. Default 4.",
    )
    parser.add_argument(
        "--only",
        default=",".join(STARTERS),
        help=f"comma-separated subset of {','.join(STARTERS)}. Default all.",
    )
    parser.add_argument("--json", type=Path, help="also write every round here")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="profile our issuer (client_credentials) with py-spy instead",
    )
    parser.add_argument(
        "--top", type=int, default=20, help="profile entries shown. Default 20."
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: apt-get install wrk")
    groups = [g for g in args.only.split(",") if g]
    unknown = set(groups) - set(STARTERS)
    if unknown:
        sys.exit(f"unknown targets: {', '.join(sorted(unknown))}")

    with (
        tempfile.TemporaryDirectory(prefix="wimse-bench-") as tmp_name,
        contextlib.ExitStack() as stack,
    ):
        tmp = Path(tmp_name)
        if args.profile:
            from profiling import profile_issuer

            profile_issuer(tmp, args, stack)
            return
        settings: dict[str, Any] = {
            "duration": args.duration,
            "rounds": args.rounds,
            "warmup": args.warmup,
            "connections": args.connections,
            "peer_threads": args.peer_threads,
            "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        }
        options = Options(peer_threads=args.peer_threads)
        targets = start_targets(tmp, groups, options, stack)
        rows = Runner(args, targets).run()
        extra = {k: v for t in targets for k, v in t.versions.items()}
        found = versions(extra)
        print_report(rows, settings, found)
        if args.json:
            write_json(args.json, rows, settings, found)


if __name__ == "__main__":
    main()
