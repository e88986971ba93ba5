"""Start and stop every target the bench measures, on 127.0.0.1 only.

Our issuer is started by ``tests/conftest.py``'s ``start_issuer`` (a real
``wimse-issuer serve``); the Python peers by ``peers/serve.py`` on the same
granian settings; node oidc-provider 9 from a throwaway npm install. Each
start returns a ``Server`` whose ``stop`` ends the process it started.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import requests

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import (  # noqa: E402
    LiveIssuer,
    free_port,
    start_issuer,
    stop_issuer,
)

__all__ = [
    "LiveIssuer",
    "NodeUnavailable",
    "Server",
    "install_oidc_provider",
    "start_node_provider",
    "start_ours",
    "start_python_peer",
]

NODE_PACKAGE = "oidc-provider@9"
START_TIMEOUT = 30.0


class NodeUnavailable(RuntimeError):
    """node or npm is missing, or installing oidc-provider failed."""


@dataclass
class Server:
    """A started target: its base URL, its main process, and how to stop it."""

    name: str
    url: str
    pid: int
    stop: Callable[[], None]


def start_ours(home: Path, config: dict[str, Any], workers: int) -> LiveIssuer:
    """Start ``wimse-issuer serve --workers N`` in ``home``."""
    home.mkdir(parents=True, exist_ok=True)
    return start_issuer(home, config, workers=workers)


def as_server(live: LiveIssuer, name: str) -> Server:
    """Wrap a live issuer so that it stops like every other target."""
    return Server(name, live.url, live.process.pid, lambda: stop_issuer(live))


def start_python_peer(
    name: str,
    target: str,
    env: dict[str, str],
    log_path: Path,
    threads: int,
    workers: int = 1,
) -> Server:
    """Serve ``target`` (``module:app`` under ``bench/peers``) with granian,
    ``threads`` blocking threads per worker."""
    port = free_port()
    cmd = [sys.executable, str(HERE / "peers" / "serve.py"), target, str(port)]
    cmd += [str(workers), str(threads)]
    return _spawn(name, cmd, {**os.environ, **env}, log_path, port, "/healthz", None)


def install_oidc_provider(folder: Path) -> str:
    """``npm install oidc-provider@9`` into ``folder``; return its version.

    Raises ``NodeUnavailable`` when node or npm is missing or npm fails.
    """
    if shutil.which("node") is None or shutil.which("npm") is None:
        raise NodeUnavailable("node or npm not found")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "package.json").write_text(
        '{"name": "bench-oidc-provider", "private": true, "type": "module"}\n'
    )
    try:
        subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", NODE_PACKAGE],
            cwd=folder,
            capture_output=True,
            text=True,
            check=True,
            timeout=300,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        raise NodeUnavailable(f"npm install {NODE_PACKAGE} failed: {detail}") from None
    shutil.copy(HERE / "peers" / "oidc_provider.mjs", folder / "server.mjs")
    manifest = folder / "node_modules" / "oidc-provider" / "package.json"
    version: str = json.loads(manifest.read_text())["version"]
    return version


def start_node_provider(folder: Path, env: dict[str, str], log_path: Path) -> Server:
    """Start the installed oidc-provider (see ``peers/oidc_provider.mjs``)."""
    port = free_port()
    full_env = {**os.environ, **env, "BENCH_PORT": str(port), "NODE_ENV": "production"}
    cmd = ["node", "server.mjs"]
    return _spawn(
        "node oidc-provider",
        cmd,
        full_env,
        log_path,
        port,
        "/.well-known/openid-configuration",
        folder,
    )


def _spawn(
    name: str,
    cmd: list[str],
    env: dict[str, str],
    log_path: Path,
    port: int,
    ready_path: str,
    cwd: Path | None,
) -> Server:
    log = open(log_path, "wb")  # noqa: SIM115 - closed by stop()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    url = f"http://127.0.0.1:{port}"

    def stop() -> None:
        _terminate(proc, log)

    try:
        _wait_ready(proc, url + ready_path, log_path)
    except BaseException:
        stop()
        raise
    return Server(name, url, proc.pid, stop)


def _wait_ready(proc: subprocess.Popen[bytes], url: str, log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited at start: {log_path.read_text()[-2000:]}")
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"did not start in time: {log_path.read_text()[-2000:]}")


def _terminate(proc: subprocess.Popen[bytes], log: IO[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    log.close()
