"""Start and stop a software TPM (swtpm) for the TPM evidence tests.

``SwTpm.start`` manufactures a fresh TPM 2.0 in a temporary directory with
``swtpm_setup``: RSA and ECC EKs, and EK certificates issued by a test CA
that ``swtpm_localca`` creates in the same directory (a root CA and an
intermediate). It then runs ``swtpm socket`` on two free ports of
127.0.0.1 and returns the TCTI string for tpm2-tools. ``stop`` ends that
one process, by its id.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

TOOLS = (
    "swtpm",
    "swtpm_setup",
    "swtpm_localca",
    "tpm2_createak",
    "tpm2_quote",
    "tpm2_certify",
    "tpm2_sign",
    "tpm2_activatecredential",
    "tpm2_eventlog",
)
DEBIAN_PACKAGES = "swtpm swtpm-tools tpm2-tools"


def missing_tools() -> list[str]:
    """The commands the TPM tests need that are not on PATH."""
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def _free_ports() -> tuple[int, int]:
    # The tss2 swtpm TCTI talks to the control channel on the server port
    # plus one, so two adjacent free ports are needed. Both stay bound until
    # chosen; another process may still take one before swtpm binds it,
    # which ``start`` answers by trying again.
    for _ in range(50):
        with socket.socket() as a, socket.socket() as b:
            a.bind(("127.0.0.1", 0))
            port = int(a.getsockname()[1])
            try:
                b.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port, port + 1
    raise OSError("no two adjacent free ports on 127.0.0.1")


@dataclass
class SwTpm:
    """A running swtpm and the test CA that issued its EK certificates."""

    root: Path
    process: subprocess.Popen[bytes]
    port: int

    @property
    def tcti(self) -> str:
        """The tpm2-tools TCTI configuration for this TPM."""
        return f"swtpm:host=127.0.0.1,port={self.port}"

    @property
    def ca_certificates(self) -> tuple[x509.Certificate, x509.Certificate]:
        """The test CA's root and intermediate, in that order."""
        ca = self.root / "ca"
        root = (ca / "swtpm-localca-rootca-cert.pem").read_bytes()
        intermediate = (ca / "issuercert.pem").read_bytes()
        return (
            x509.load_pem_x509_certificate(root),
            x509.load_pem_x509_certificate(intermediate),
        )

    @classmethod
    def start(cls, root: Path) -> SwTpm:
        """Manufacture a TPM under ``root`` and start it on loopback ports."""
        ca, state = root / "ca", root / "state"
        ca.mkdir()
        state.mkdir()
        (root / "localca.conf").write_text(
            f"statedir = {ca}\n"
            f"signingkey = {ca}/signkey.pem\n"
            f"issuercert = {ca}/issuercert.pem\n"
            f"certserial = {ca}/certserial\n"
        )
        (root / "localca.options").write_text(
            "--platform-manufacturer Test\n--platform-version 2.1\n"
            "--platform-model swtpm\n"
        )
        (root / "setup.conf").write_text(
            f"create_certs_tool = {shutil.which('swtpm_localca')}\n"
            f"create_certs_tool_config = {root}/localca.conf\n"
            f"create_certs_tool_options = {root}/localca.options\n"
            "active_pcr_banks = sha1,sha256\n"
        )
        subprocess.run(
            [
                "swtpm_setup", "--tpm2", "--tpm-state", str(state),
                "--create-ek-cert", "--config", str(root / "setup.conf"),
                "--pcr-banks", "sha1,sha256", "--logfile", str(root / "setup.log"),
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )  # fmt: skip
        last: Exception | None = None
        for _ in range(5):
            port, ctrl = _free_ports()
            process = subprocess.Popen(
                [
                    "swtpm", "socket", "--tpm2",
                    "--tpmstate", f"dir={state}",
                    "--server", f"type=tcp,port={port},bindaddr=127.0.0.1",
                    "--ctrl", f"type=tcp,port={ctrl},bindaddr=127.0.0.1",
                    "--flags", "not-need-init,startup-clear",
                    "--log", f"file={root}/swtpm.log",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
            tpm = cls(root, process, port)
            try:
                tpm._wait_ready()
                return tpm
            except OSError as exc:
                last = exc
                tpm.stop()
        raise RuntimeError(f"swtpm did not start: {last}")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 10
        while True:
            if self.process.poll() is not None:
                raise OSError("swtpm exited (port taken?)")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        """Stop this swtpm process (only it) and wait for it to exit."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
