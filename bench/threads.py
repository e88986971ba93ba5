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
import secrets
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path

from cpu import CpuMeter, tree_switches
from credentials import basic
from loadgen import Load, run_wrk
from servers import Server, as_server, start_ours, start_python_peer

AUDIENCE = "https://api.bench"
CC_BODY = "grant_type=client_credentials"


def _ours(tmp: Path, threads: int) -> tuple[Server, Load]:
    live = start_ours(tmp / f"ours-{threads}", {"threads": threads}, workers=1)
    server = as_server(live, f"ours {threads}t")
    try:
        reg = live.add_client("bench", "--audience", AUDIENCE)
    except BaseException:
        server.stop()
        raise
    auth = {"Authorization": basic(reg["client_id"], reg["client_secret"])}
    return server, Load(live.url + "/token", CC_BODY, auth)


def _bare(tmp: Path, threads: int) -> tuple[Server, Load]:
    secret = secrets.token_urlsafe(32)
    env = {
        "BENCH_CLIENT_ID": "bench",
        "BENCH_CLIENT_SECRET": secret,
        "BENCH_AUDIENCE": AUDIENCE,
        "BENCH_ISSUER": "http://127.0.0.1",
        "BENCH_DB": str(tmp / f"bare-{threads}.db"),
    }
    log = tmp / f"bare-{threads}.log"
    server = start_python_peer(f"bare {threads}t", "bare_wsgi:app", env, log, threads)
    auth = {"Authorization": basic("bench", secret)}
    return server, Load(server.url + "/token", CC_BODY, auth)


def _measure(
    name: str,
    start: Callable[[], tuple[Server, Load]],
    args: argparse.Namespace,
) -> None:
    server, load = start()
    try:
        run_wrk(load, 2, args.connections)  # warm-up
        for _ in range(args.rounds):
            meter = CpuMeter(server.pid)
            switches = tree_switches(server.pid)
            meter.start()
            result = run_wrk(load, args.duration, args.connections)
            use = meter.stop()
            switched = tree_switches(server.pid) - switches
            tokens = result.tokens_per_s * result.seconds
            per_token_ms = use.server * result.seconds / tokens * 1000 if tokens else 0
            print(
                f"{name:<22} {result.tokens_per_s:>9,.0f} {result.p99_ms:>7.2f}"
                f" {per_token_ms:>8.3f} {switched / tokens if tokens else 0:>9.1f}"
                f" {result.errors:>6} {use.others:>6.2f}",
                flush=True,
            )
    finally:
        server.stop()


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
