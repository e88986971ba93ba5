"""Shared fixtures: settings in a temporary home, the service, a live server."""

from __future__ import annotations

import base64
import gc
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"

K8S_ISSUER = (
    "https://oidc.eks.eu-west-1.amazonaws.com/id/B88E7287E54DB073AC9CDC2FD1BE0969"
)
K8S_NOW = 1763985600
GITHUB_NOW = 1674498780


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def basic(client_id: str, secret: str) -> str:
    """An RFC 6749 section 2.3.1 Basic header (values are URL-safe already)."""
    raw = f"{client_id}:{secret}".encode()
    return "Basic " + base64.b64encode(raw).decode()


def sample_trust_sources() -> dict[str, dict[str, Any]]:
    """Trust sources for the real samples in ../shared/data."""
    return {
        "eks": {
            "platform": "kubernetes",
            "issuer": K8S_ISSUER,
            "audience": "sts.amazonaws.com",
            "jwks_file": str(DATA / "k8s-sa-token" / "jwks.json"),
            "algorithms": ["RS256"],
        },
        "github": {
            "platform": "github_actions",
            "issuer": "https://token.actions.githubusercontent.com",
            "audience": "https://github.com/nickolashkraus",
            "pem_file": str(DATA / "github-actions-oidc" / "RS256.pem"),
            "algorithms": ["RS256"],
        },
    }


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def quiet_gc() -> Iterator[None]:
    """Collect garbage first and pause the collector during the test.

    Input nested thousands deep makes the JSON parser recurse to Python's
    limit. Should the collector run there and finalize an object an earlier
    test left behind, pytest's unraisable-exception hook would itself hit
    the limit while formatting and fail the test, depending on timing.
    """
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@pytest.fixture
def make_service(home: Path) -> Callable[..., Any]:
    """Build an ``IssuerService`` in a temporary home with given settings."""
    from issuer.config import Settings
    from issuer.service import IssuerService

    def build(**overrides: Any) -> IssuerService:
        values: dict[str, Any] = {
            "home": str(home),
            "issuer_url": "https://issuer.test",
            "trust_sources": sample_trust_sources(),
        }
        values.update(overrides)
        return IssuerService(Settings(**values).validate())

    return build


@pytest.fixture
def service(make_service: Callable[..., Any]) -> Any:
    return make_service()


@pytest.fixture
def client_app(service: Any) -> Any:
    from issuer.web import create_app

    app = create_app(service)
    return app.test_client()


@dataclass
class LiveIssuer:
    """A real ``wimse-issuer serve`` process on a loopback port."""

    url: str
    home: Path
    process: subprocess.Popen[bytes]
    config: Path | None
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    log_file: Any = None

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "issuer", "--home", str(self.home)]
        if self.config is not None:
            cmd += ["--config", str(self.config)]
        result = subprocess.run(
            [*cmd, *args], capture_output=True, text=True, check=False, env=self.env
        )
        # The command's own error output, so a failure says why.
        assert result.returncode == 0, (
            f"{' '.join(args)} exited {result.returncode}:\n{result.stderr}"
        )
        return result

    def add_client(self, name: str, *args: str) -> dict[str, Any]:
        out = self.cli("client", "add", name, "--json", *args)
        data: dict[str, Any] = json.loads(out.stdout)
        return data

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_once(self, text: str, timeout: float = 5.0) -> str:
        """The log once ``text`` shows in it: the issuer writes its lines in
        batches (issuer/logs.py), so a line lands within a fraction of a
        second, not at once. Fails the test when it never shows."""
        deadline = time.monotonic() + timeout
        while True:
            log = self.log_text()
            if text in log:
                return log
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not logged within {timeout} s")
            time.sleep(0.05)


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything a server sends on ``sock`` until it closes the connection."""
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    return answer


def start_issuer(
    home: Path,
    config: dict[str, Any] | None = None,
    workers: int = 1,
    name: str = "issuer",
    tls_ca: Path | None = None,
    tls_files: tuple[Path, Path] | None = None,
) -> LiveIssuer:
    """Start ``wimse-issuer serve`` and wait until ``/healthz`` answers.

    ``name`` keeps the config and log files of several servers sharing one
    home apart. With ``tls_ca`` the issuer terminates TLS (``tls_cert_file``
    in ``config``, or ``tls_files``: its certificate and key files, passed
    to ``serve``) and is reached over https, its certificate checked
    against ``tls_ca``.
    """
    port = free_port()
    config_path = None
    env = dict(os.environ)
    env.pop("WIMSE_ISSUER_CONFIG", None)
    if config is not None:
        config_path = home / f"{name}.toml"
        config_path.write_text(_toml(config))
    cmd = [sys.executable, "-m", "issuer", "--home", str(home)]
    if config_path is not None:
        cmd += ["--config", str(config_path)]
    cmd += ["serve", "--port", str(port), "--workers", str(workers)]
    if tls_files is not None:
        cmd += ["--tls-cert", str(tls_files[0]), "--tls-key", str(tls_files[1])]
    log_path = home / f"{name}.log"
    log = open(log_path, "wb")  # noqa: SIM115 - closed when the process ends
    proc = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=home
    )
    url = f"{'https' if tls_ca else 'http'}://127.0.0.1:{port}"
    verify: str | bool = str(tls_ca) if tls_ca is not None else True
    deadline = time.time() + 30
    while time.time() < deadline:
        if proc.poll() is not None:
            log.close()
            raise RuntimeError("issuer exited: " + log_path.read_text())
        try:
            probe = requests.get(url + "/healthz", timeout=1, verify=verify)
            if probe.status_code == 200:
                return LiveIssuer(url, home, proc, config_path, log_path, env, log)
        except requests.ConnectionError:
            time.sleep(0.1)
    proc.kill()
    proc.wait()
    log.close()
    raise RuntimeError("issuer did not start: " + log_path.read_text())


def serving_worker_pids(url: str) -> set[int]:
    """The pids in ``wimse_policy_info`` on ``/metrics``: with several
    workers, those that finished loading the application."""
    text = requests.get(url + "/metrics", timeout=10).text
    return {
        int(row.split('pid="')[1].split('"')[0])
        for row in text.splitlines()
        if row.startswith("wimse_policy_info{")
    }


def wait_for_workers(live: LiveIssuer, count: int, timeout: float = 30.0) -> None:
    """Wait until ``count`` workers have loaded the application: ``/healthz``
    answers as soon as the first one has."""
    deadline = time.monotonic() + timeout
    while len(serving_worker_pids(live.url)) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"{count} workers not serving within {timeout} s")
        time.sleep(0.1)


def stop_issuer(live: LiveIssuer) -> None:
    live.process.terminate()
    try:
        live.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        live.process.kill()
        live.process.wait()
    if live.log_file is not None:
        live.log_file.close()


def _toml(data: dict[str, Any], prefix: str = "") -> str:
    """Enough TOML for test configs: scalars, lists of scalars, nested tables."""
    lines = []
    tables = []
    for key, value in data.items():
        if isinstance(value, dict):
            tables.append((key, value))
        else:
            lines.append(f"{key} = {json.dumps(value)}")
    out = "\n".join(lines) + "\n"
    for key, value in tables:
        name = f'{prefix}."{key}"' if prefix else f'"{key}"'
        out += f"\n[{name}]\n" + _toml(value, name)
    return out


@pytest.fixture
def live_issuer(tmp_path: Path) -> Iterator[Callable[..., LiveIssuer]]:
    """Factory starting real issuers; all are stopped after the test."""
    started: list[LiveIssuer] = []

    def start(
        config: dict[str, Any] | None = None,
        workers: int = 1,
        home: Path | None = None,
    ) -> LiveIssuer:
        if home is None:
            home = tmp_path / f"issuer{len(started)}"
            home.mkdir()
        live = start_issuer(home, config, workers, name=f"issuer{len(started)}")
        started.append(live)
        return live

    yield start
    for live in started:
        stop_issuer(live)
