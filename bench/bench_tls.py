"""What terminating mutual TLS in the issuer costs: client_credentials
issuance over granian plain HTTP, cheroot plain HTTP, and cheroot with TLS.

Usage: ``python bench/bench_tls.py [--duration S] [--rounds N]
[--connections C] [--json PATH]``. Run by hand, never by CI; listens on
127.0.0.1 only and stops every server it started.

Load: ApacheBench (``ab`` from Debian's apache2-utils), the same command
for every row: ``ab -k -c C -t S`` POSTing the token request with
keep-alive. wrk is not used because it cannot present a client
certificate; ``ab -E`` can. Every row is measured after a warm-up, in
``--rounds`` rounds; the table shows the median round and the range of
tokens/s. p50 and p99 come from ab's percentile table (``-e``).

Rows:

- granian http: ``wimse-issuer serve`` without TLS (granian);
  client_secret_basic.
- cheroot http: the same app on cheroot over plain HTTP
  (``bench/peers/cheroot_plain.py``, issuer/tlsserve.py without a
  context); client_secret_basic.
- cheroot tls, secret_basic: ``wimse-issuer serve`` with ``tls_cert_file``;
  client_secret_basic, no client certificate.
- cheroot mtls, tls_client_auth: ``wimse-issuer serve`` with
  ``tls_cert_file`` and ``mtls_ca_file``; the client authenticates by its
  certificate (subject DN) and gets a certificate-bound token.

The "tls, secret" row separates the cost of TLS itself from that of
certificate authentication (chain validation and subject match per
request, and the ``x5t#S256`` binding).
"""

from __future__ import annotations

import argparse
import base64
import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import jwt
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cpu import CpuMeter
from servers import HERE, _spawn, free_port, start_issuer, stop_issuer

AB = shutil.which("ab") or "/usr/bin/ab"
FORM = "application/x-www-form-urlencoded"


@dataclass
class Round:
    tokens_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int
    failed: int
    keep_alive: int
    server_cores: float


@dataclass
class Row:
    name: str
    rounds: list[Round] = field(default_factory=list)

    def median(self) -> Round:
        ordered = sorted(self.rounds, key=lambda r: r.tokens_per_s)
        return ordered[len(ordered) // 2]


@dataclass
class Target:
    """How to reach one server: URL, request body and headers, client cert."""

    url: str
    body: str
    headers: dict[str, str]
    pid: int
    client_pem: Path | None = None


def run_ab(target: Target, seconds: int, connections: int, tmp: Path) -> Round:
    body = tmp / "body.txt"
    body.write_text(target.body)
    percentiles = tmp / "percentiles.csv"
    cmd = [AB, "-q", "-k", "-c", str(connections), "-t", str(seconds)]
    # -n after -t: -t alone caps the run at 50,000 requests.
    cmd += ["-n", "10000000", "-p", str(body), "-T", FORM, "-e", str(percentiles)]
    for name, value in target.headers.items():
        cmd += ["-H", f"{name}: {value}"]
    if target.client_pem is not None:
        cmd += ["-E", str(target.client_pem)]
    meter = CpuMeter(target.pid)
    meter.start()
    out = subprocess.run(
        [*cmd, target.url], capture_output=True, text=True, check=True
    ).stdout
    cpu = meter.stop()
    return _parse(out, percentiles, cpu.server)


def _number(pattern: str, text: str, default: float = 0.0) -> float:
    match = re.search(pattern, text, re.MULTILINE)
    return float(match.group(1)) if match else default


def _parse(out: str, percentiles: Path, server_cores: float) -> Round:
    complete = int(_number(r"^Complete requests:\s+(\d+)", out))
    non_2xx = int(_number(r"^Non-2xx responses:\s+(\d+)", out))
    failed = int(_number(r"^Failed requests:\s+(\d+)", out))
    seconds = _number(r"^Time taken for tests:\s+([\d.]+)", out, 1.0)
    keep_alive = int(_number(r"^Keep-Alive requests:\s+(\d+)", out))
    table: dict[int, float] = {}
    with percentiles.open() as fh:
        for row in csv.reader(fh):
            if row and row[0].isdigit():
                table[int(row[0])] = float(row[1])
    ok = max(complete - non_2xx - failed, 0)
    return Round(
        tokens_per_s=ok / seconds,
        p50_ms=table.get(50, 0.0),
        p99_ms=table.get(99, 0.0),
        requests=complete,
        non_2xx=non_2xx,
        failed=failed,
        keep_alive=keep_alive,
        server_cores=server_cores,
    )


def _cli(home: Path, *args: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "issuer", "--home", str(home), *args],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    data: dict[str, Any] = json.loads(out)
    return data


def _basic(client_id: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()


def _probe(target: Target, ca: Path | None) -> str:
    """The token_type and whether the token is bound, from one request."""
    cert = None
    if target.client_pem is not None:
        cert = str(target.client_pem)
    resp = requests.post(
        target.url,
        data=target.body,
        headers={"Content-Type": FORM, **target.headers},
        cert=cert,
        verify=str(ca) if ca else True,
        timeout=10,
    )
    resp.raise_for_status()
    claims = jwt.decode(
        resp.json()["access_token"], options={"verify_signature": False}
    )
    return f"{resp.json()['token_type']}, cnf={sorted(claims.get('cnf', {}))}"


@contextmanager
def servers(tmp: Path) -> Iterator[list[tuple[str, Callable[[], Target], Path | None]]]:
    """Yield (row name, start function, CA) for each row; every start
    function returns a running target; all are stopped on exit."""
    # servers.py put the repository on sys.path; the tests' PKI helper.
    from tests.e2e.test_nginx_mtls import DN, Pair, make_pair

    pki = tmp / "pki"
    pki.mkdir()
    ca = make_pair(pki, "Bench Root", is_ca=True)
    server = make_pair(pki, "issuer", ca, server=True)
    client: Pair = make_pair(pki, "workload-a", ca)
    client_pem = pki / "client-with-key.pem"
    client_pem.write_bytes(client.cert_file.read_bytes() + client.key_file.read_bytes())
    client_pem.chmod(0o600)
    home = tmp / "home"
    home.mkdir()
    # One home for every row, so they share clients and keys; the servers
    # run one after the other.
    secret = _cli(
        home, "client", "add", "bench", "--audience", "https://api.bench", "--json"
    )
    mtls = _cli(
        home,
        "client",
        "add",
        "bench-mtls",
        "--audience",
        "https://api.bench",
        "--tls-auth",
        f"subject_dn={DN}",
        "--json",
    )
    cc = "grant_type=client_credentials"
    basic = {"Authorization": _basic(secret["client_id"], secret["client_secret"])}
    tls = {"tls_cert_file": str(server.cert_file), "tls_key_file": str(server.key_file)}
    stops: list[Callable[[], None]] = []

    def granian() -> Target:
        live = start_issuer(home, {}, name="granian")
        stops.append(lambda: stop_issuer(live))
        return Target(live.url + "/token", cc, basic, live.process.pid)

    def cheroot_plain() -> Target:
        port = free_port()
        metrics = tmp / "metrics-cheroot"
        metrics.mkdir()
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics)}
        cmd = [sys.executable, str(HERE / "peers" / "cheroot_plain.py"), str(home)]
        srv = _spawn(
            "cheroot",
            [*cmd, str(port)],
            env,
            tmp / "cheroot.log",
            port,
            "/healthz",
            None,
        )
        stops.append(srv.stop)
        return Target(srv.url + "/token", cc, basic, srv.pid)

    def cheroot_tls_secret() -> Target:
        live = start_issuer(home, tls, name="tls", tls_ca=ca.cert_file)
        stops.append(lambda: stop_issuer(live))
        return Target(live.url + "/token", cc, basic, live.process.pid)

    def cheroot_mtls() -> Target:
        config = {**tls, "mtls_ca_file": str(ca.cert_file)}
        live = start_issuer(home, config, name="mtls", tls_ca=ca.cert_file)
        stops.append(lambda: stop_issuer(live))
        body = f"{cc}&client_id={mtls['client_id']}"
        return Target(live.url + "/token", body, {}, live.process.pid, client_pem)

    try:
        yield [
            ("granian http, secret_basic", granian, None),
            ("cheroot http, secret_basic", cheroot_plain, None),
            ("cheroot tls, secret_basic", cheroot_tls_secret, ca.cert_file),
            ("cheroot mtls, tls_client_auth", cheroot_mtls, ca.cert_file),
        ]
    finally:
        for stop in stops:
            stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # ab takes whole seconds (-t 0 would mean no limit).
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.duration < 1 or args.warmup < 1 or args.rounds < 1:
        parser.error("--duration, --warmup and --rounds must be at least 1")
    if not Path(AB).exists():
        raise SystemExit("needs ab: apt-get install apache2-utils")
    # SIGTERM unwinds like Ctrl-C, so every started server is stopped.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(1))
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-tls-") as folder:
        tmp = Path(folder)
        with servers(tmp) as plan:
            for name, start, ca in plan:
                target = start()
                print(f"{name}: {_probe(target, ca)}", file=sys.stderr)
                # ab does not check the server certificate.
                run_ab(target, args.warmup, args.connections, tmp)
                row = Row(name)
                for _ in range(args.rounds):
                    row.rounds.append(
                        run_ab(target, args.duration, args.connections, tmp)
                    )
                    time.sleep(0.5)
                rows.append(row)
    print(
        f"\nclient_credentials, ab -k -c {args.connections}, "
        f"{args.rounds} x {args.duration} s, median round\n"
    )
    print(
        "| row | tokens/s (range) | p50 ms | p99 ms | srv cores | "
        "srv cpu ms/token | errors | keep-alive |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        m = row.median()
        low = min(r.tokens_per_s for r in row.rounds)
        high = max(r.tokens_per_s for r in row.rounds)
        errors = sum(r.non_2xx + r.failed for r in row.rounds)
        cpu_ms = m.server_cores * 1000 / m.tokens_per_s if m.tokens_per_s else 0.0
        share = m.keep_alive / m.requests if m.requests else 0.0
        print(
            f"| {row.name} | {m.tokens_per_s:,.0f} ({low:,.0f}-{high:,.0f}) | "
            f"{m.p50_ms:.2f} | {m.p99_ms:.2f} | {m.server_cores:.2f} | "
            f"{cpu_ms:.2f} | {errors} | {share:.0%} |"
        )
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2))


if __name__ == "__main__":
    main()
