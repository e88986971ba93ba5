"""One worker by thread count: tokens/s, CPU and context switches per token.

Run from the repository root: ``python bench/threads.py [--threads 1,4]
[--duration 5] [--rounds 2] [--connections 8]``.

For each thread count it starts our issuer (``wimse-issuer serve``, one
worker, ``threads`` set in its configuration) and the bare WSGI reference
(``peers/bare_wsgi.py`` on the same granian settings), loads each with
client_credentials (client_secret_basic) through wrk, and reports per
round the rate, the server's CPU milliseconds per token and its context
switches per token: how often a thread of the server left the CPU, which
under the GIL is mostly one thread handing the interpreter to another.
Loopback only; scratch files in a temporary folder removed at the end.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path

from cpu import CpuMeter, tree_switches
from loadgen import run_wrk
from targets import Options, Target, start_bare, start_our_issuer


def _ours(tmp: Path, threads: int) -> Target:
    folder = tmp / f"ours-{threads}"
    folder.mkdir()
    return start_our_issuer(folder, 1, extended=False, threads=threads)


def _bare(tmp: Path, threads: int) -> Target:
    folder = tmp / f"bare-{threads}"
    folder.mkdir()
    return start_bare(folder, Options(peer_threads=threads))


def _measure(name: str, start: Callable[[], Target], args: argparse.Namespace) -> None:
    """Rounds of client_credentials (client_secret_basic) against the
    target ``start`` returns: its first scenario."""
    target = start()
    try:
        load = target.scenarios[0].make(0, "")
        run_wrk(load, 2, args.connections)  # warm-up
        for _ in range(args.rounds):
            meter = CpuMeter(target.pid)
            switches = tree_switches(target.pid)
            meter.start()
            result = run_wrk(load, args.duration, args.connections)
            use = meter.stop()
            switched = tree_switches(target.pid) - switches
            tokens = result.tokens_per_s * result.seconds
            per_token_ms = use.server * result.seconds / tokens * 1000 if tokens else 0
            print(
                f"{name:<22} {result.tokens_per_s:>9,.0f} {result.p99_ms:>7.2f}"
                f" {per_token_ms:>8.3f} {switched / tokens if tokens else 0:>9.1f}"
                f" {result.errors:>6} {use.others:>6.2f}",
                flush=True,
            )
    finally:
        target.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", default="1,4", help="comma-separated counts")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args()
    counts = [int(n) for n in args.threads.split(",")]
    print(
        f"{'target':<22} {'tokens/s':>9} {'p99 ms':>7} {'cpu/tok':>8}"
        f" {'sw/token':>9} {'errors':>6} {'others':>6}"
    )
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(scratch)
        for threads in counts:
            _measure(f"ours, {threads} threads", partial(_ours, tmp, threads), args)
            _measure(f"bare, {threads} threads", partial(_bare, tmp, threads), args)
    print(
        "\ncpu/tok: the server's CPU ms per token; sw/token: context switches of"
        " the server's threads per token; others: cores used meanwhile by"
        " everything but the server and wrk."
    )


if __name__ == "__main__":
    main()
