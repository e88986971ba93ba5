"""``run.py --profile``: where our issuer spends its time under load.

Starts ``wimse-issuer serve`` with one worker, drives client_credentials
(client_secret_basic) with wrk as the bench does, and samples the server
and its granian worker with py-spy (``pip install py-spy``) meanwhile.
For each pass it prints the functions with the most samples on top of the
stack (self), the same grouped by package, and the functions most often
anywhere on the stack (inclusive). py-spy itself takes CPU from the two
cores, so the rate printed while sampling is below the bench's.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from loadgen import run_wrk
from targets import start_our_issuer

__all__ = ["Profile", "profile_issuer"]

SAMPLE_RATE = 250
# Entries below this share (percent) are left out of the tables.
MIN_SHARE = 0.5
PASSES = (
    ("thread holding the GIL (CPU)", ("--gil",)),
    ("all threads (CPU and waits)", ()),
)
# "function (path/to/file.py:123)" as py-spy's raw format writes a frame.
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")
_PACKAGES = (
    ("issuer/", "issuer (ours)"),
    ("verifier/", "verifier (ours)"),
    ("sqlalchemy/", "sqlalchemy"),
    ("sqlite3/", "sqlite3"),
    ("flask/", "flask"),
    ("werkzeug/", "werkzeug"),
    ("jwt/", "pyjwt"),
    ("cryptography/", "cryptography"),
    ("logging/", "logging"),
    ("json/", "json"),
    ("granian/", "granian"),
)


class Profile:
    """Counts from py-spy's raw (collapsed stack) output."""

    def __init__(self, raw: str) -> None:
        self.total = 0
        self.self_time: Counter[str] = Counter()
        self.inclusive: Counter[str] = Counter()
        self.packages: Counter[str] = Counter()
        for line in raw.splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            frames = [_frame(f) for f in stack.split(";") if _FRAME.match(f)]
            if not frames:
                continue
            n = int(count)
            self.total += n
            self.self_time[frames[-1]] += n
            self.packages[_package(frames[-1])] += n
            for name in set(frames):
                self.inclusive[name] += n

    def print_top(self, top: int) -> None:
        """Print the three tables, ``top`` entries each, in % of samples."""
        if not self.total:
            print("py-spy recorded no samples")
            return
        print(f"\n{self.total:,} samples of the issuer's threads\n")
        for title, counts, width in (
            ("self (top of stack)", self.self_time, top),
            ("self, by package", self.packages, len(self.packages)),
            ("inclusive (anywhere on the stack)", self.inclusive, top),
        ):
            print(f"{title}:")
            for name, n in counts.most_common(width):
                share = 100 * n / self.total
                if share >= MIN_SHARE:
                    print(f"  {share:5.1f}%  {name}")
            print()


def _frame(text: str) -> str:
    found = _FRAME.match(text)
    if found is None:
        return text
    return f"{found['func']} ({_short(found['file'])})"


def _short(path: str) -> str:
    for marker in ("site-packages/", "lib/python3.11/", "/work/main/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def _package(frame: str) -> str:
    file = frame.rpartition("(")[2]
    for prefix, name in _PACKAGES:
        if file.startswith(prefix):
            return name
    return "other (" + file.split("/", 1)[0].rstrip(")") + ")"


def profile_issuer(
    tmp: Path, args: argparse.Namespace, stack: contextlib.ExitStack
) -> None:
    """Profile client_credentials on one worker; print the top entries.

    Two passes of ``args.duration`` seconds each: the thread holding the GIL
    only (where the CPU goes), then every thread (also where they wait).
    """
    if shutil.which("py-spy") is None:
        sys.exit("py-spy not found: pip install py-spy")
    target = start_our_issuer(tmp, 1, extended=False)
    stack.callback(target.stop)
    load = target.scenarios[0].make(0, "profile")
    if args.warmup > 0:
        run_wrk(load, args.warmup, args.connections)
    print(f"{target.scenarios[0].label}, wrk -c{args.connections}")

    for title, flags in PASSES:
        raw = tmp / f"profile-{len(flags)}.txt"
        spy = _start_py_spy(target.pid, raw, args.duration + 2, flags)
        stack.callback(_stop, spy)
        time.sleep(1)
        result = run_wrk(load, args.duration, args.connections)
        _, err = spy.communicate(timeout=args.duration + 60)
        if spy.returncode != 0 or not raw.exists():
            sys.exit(f"py-spy failed: {err.strip()[-1000:]}")
        print(
            f"\n== {title}: {result.tokens_per_s:,.0f} tokens/s while sampled, "
            f"p50 {result.p50_ms:.2f} ms, p99 {result.p99_ms:.2f} ms, "
            f"{result.errors} errors"
        )
        profile = Profile(raw.read_text())
        if "--gil" in flags:
            # Samples are kept only while some thread holds the GIL, and the
            # server is idle outside the load, so their share of the sampling
            # instants under load roughly says how busy the worker was.
            expected = SAMPLE_RATE * args.duration
            share = min(100 * profile.total / expected, 100)
            print(f"GIL held at roughly {share:.0f}% of the instants under load")
        profile.print_top(args.top)


def _start_py_spy(
    pid: int, out: Path, seconds: float, flags: tuple[str, ...]
) -> subprocess.Popen[str]:
    # --nonblocking: the server is not paused for each sample, so the load
    # it sees stays close to the bench's.
    cmd = [
        "py-spy",
        "record",
        "--pid",
        str(pid),
        "--subprocesses",
        "--nonblocking",
        *flags,
        "--rate",
        str(SAMPLE_RATE),
        "--duration",
        str(int(seconds)),
        "--format",
        "raw",
        "--output",
        str(out),
    ]
    return subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        proc.wait(timeout=10)
