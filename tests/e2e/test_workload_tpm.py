"""End to end: a workload on a software TPM gets attested tokens from the
real ``wimse-issuer serve`` through the ``wimse-workload`` command.

swtpm runs with an EK certificate from a test CA (tests/evidence/swtpm.py);
the issuer reads a policy file whose ``[evidence.*]`` tables trust that CA,
the published Veraison EAR key, the public-good Sigstore root with GitHub's
reusable attestation workflow as an SLSA level 3 builder, and the AWS Nitro
root. ``wimse-workload`` runs as a subprocess, as an operator would run it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from issuer.workload.client import IssuerError, Workload, load_evidence
from issuer.workload.tpm import Tpm2Tools

from ..evidence.swtpm import DEBIAN_PACKAGES, SwTpm, missing_tools

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
EAR_KEY = DATA / "ear" / "veraison-ear-skey.json"
EAR_PUBLIC = DATA / "ear" / "pkey.pem"
SLSA = DATA / "slsa-provenance"
BUNDLE = SLSA / "reusable-workflow-attestation.sigstore.json"
NITRO_ROOT = DATA / "nitro-attestation" / "AWS_NitroEnclaves_Root-G1.root.pem"
# slsa-provenance/SOURCE.md: the bundle is signed by GitHub's reusable
# attestation workflow for a build of malancas/attest-demo on a
# GitHub-hosted runner.
SIGNER = (
    "https://github.com/github/artifact-attestations-workflows/.github/workflows/"
    "attest.yml@09b495c3f12c7881b3cc17209a327792065c1a1d"
)
GITHUB = "https://token.actions.githubusercontent.com"
BUILDER_ID = "https://github.com/actions/runner/github-hosted"
REPOSITORY = "https://github.com/malancas/attest-demo"
# The subject digest of the bundle (its SOURCE.md): the artifact this workload runs.
ARTIFACT = "sha256:49a3aa6075e0f49f82843e74b5baa614ad2a588e6675612bf108a0a008c5ac25"
AUDIENCE = "https://api.test"
# What the fixture measures into PCR 7, standing in for a secure-boot state.
MEASUREMENT = b"secure boot: enabled"
ZERO = bytes(32)


def _pcr7() -> str:
    # TPM2_PCR_Extend from reset, computed here rather than read back.
    digest = hashlib.sha256(MEASUREMENT).digest()
    return hashlib.sha256(ZERO + digest).hexdigest()


@pytest.fixture(scope="module")
def swtpm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SwTpm]:
    missing = missing_tools()
    if missing:
        pytest.fail(
            f"TPM tests need {', '.join(missing)}: apt-get install {DEBIAN_PACKAGES}"
        )
    started = SwTpm.start(tmp_path_factory.mktemp("swtpm"))
    Tpm2Tools(tmp_path_factory.mktemp("measure"), tcti=started.tcti).extend(
        7, MEASUREMENT
    )
    yield started
    started.stop()


def _policy_file(folder: Path, swtpm: SwTpm) -> Path:
    ca = swtpm.root / "ca" / "swtpm-localca-rootca-cert.pem"
    path = folder / "policy.toml"
    path.write_text(
        f"""version = "e2e-1"

[evidence.tpm]
ek_ca_files = [{json.dumps(str(ca))}]
pcr_reference = {{ sha256 = {{ "0" = ["{ZERO.hex()}"], "7" = ["{_pcr7()}"] }} }}

[evidence.ear]
key_files = [{json.dumps(str(EAR_PUBLIC))}]
max_age = 300

[evidence.provenance]
trusted_root_file = {json.dumps(str(SLSA / "trusted-root-public-good.json"))}
source_repositories = ["{REPOSITORY}"]
artifact_digests = ["{ARTIFACT}"]

[[evidence.provenance.builders]]
identity = "{SIGNER}"
issuer = "{GITHUB}"
builder_id = "{BUILDER_ID}"
level = 3

[evidence.nitro]
root_files = [{json.dumps(str(NITRO_ROOT))}]
"""
    )
    return path


def _command() -> list[str]:
    # The console script exists once `pip install -e .` has run with the
    # current pyproject; the same entry point is called directly otherwise.
    script = shutil.which("wimse-workload")
    if script is not None:
        return [script]
    return [
        sys.executable,
        "-c",
        "from issuer.workload.cli import main; main()",
    ]


@dataclass
class Agent:
    """``wimse-workload`` for one state folder, against one issuer."""

    state: Path
    tcti: str
    issuer: str

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ)
        env["WIMSE_WORKLOAD_TCTI"] = self.tcti
        env["WIMSE_WORKLOAD_ISSUER"] = self.issuer
        command, *rest = args
        done = subprocess.run(
            [*_command(), command, "--state", str(self.state), *rest],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"wimse-workload {command} failed: {done.stderr}")
        return done

    def token(self, *args: str) -> dict[str, Any]:
        body: dict[str, Any] = json.loads(self.run("token", "--json", *args).stdout)
        return body


def _enroll_and_register(
    live: Any, swtpm: SwTpm, tmp_path: Path, *enroll_args: str
) -> tuple[Agent, str]:
    agent = Agent(tmp_path / "workload", swtpm.tcti, live.url)
    jwks_file = tmp_path / "workload-jwks.json"
    intermediate = swtpm.root / "ca" / "issuercert.pem"
    out = agent.run(
        "enroll",
        "--ek-chain",
        str(intermediate),
        "--jwks-out",
        str(jwks_file),
        *enroll_args,
    )
    printed = json.loads(out.stdout)
    assert printed == json.loads(jwks_file.read_text())
    assert [k["kty"] for k in printed["keys"]] == ["EC"]
    assert "d" not in printed["keys"][0]
    registration = live.add_client(
        "tpm-workload", "--audience", AUDIENCE, "--jwks", str(jwks_file)
    )
    return agent, registration["client_id"]


def _verified_claims(url: str, token: str) -> dict[str, Any]:
    jwks = requests.get(url + "/jwks.json", timeout=5).json()
    kid = jwt.get_unverified_header(token)["kid"]
    jwk = next(k for k in jwks["keys"] if k["kid"] == kid)
    claims: dict[str, Any] = jwt.decode(
        token, jwt.PyJWK(jwk).key, algorithms=["ES256"], audience=AUDIENCE, issuer=url
    )
    return claims


def _audit(live: Any, jti: str) -> dict[str, Any]:
    record: dict[str, Any] = json.loads(live.cli("audit", "show", jti).stdout)
    return record


def _mint_ear(nonce: str) -> str:
    """An attestation result as Veraison would sign it, with its published
    test key, appraising executables and configuration as affirming."""
    key = ECAlgorithm.from_jwk(EAR_KEY.read_text())
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    claims = {
        "eat_profile": "tag:github.com,2023:veraison/ear",
        "iat": int(time.time()),
        "eat_nonce": nonce,
        "ear.verifier-id": {"build": "e2e", "developer": "tests"},
        "submods": {
            "workload": {
                "ear.status": "affirming",
                "ear.trustworthiness-vector": {"executables": 2, "configuration": 2},
                "ear.appraisal-policy-id": "policy:e2e",
            }
        },
    }
    return jwt.encode(claims, key, algorithm="ES256")


def test_workload_on_a_software_tpm_earns_hardware_levels(
    live_issuer: Any, swtpm: SwTpm, tmp_path: Path
) -> None:
    live = live_issuer({"policy_file": str(_policy_file(tmp_path, swtpm))})
    agent, client_id = _enroll_and_register(
        live, swtpm, tmp_path, "--key-pcrs", "sha256:0,7"
    )

    # TPM evidence only: the quote proves the platform, the certify proves
    # the private_key_jwt key lives in the TPM, bound to PCRs 0 and 7.
    done = agent.run("token", "--client-id", client_id, "--json", "--explain")
    response = json.loads(done.stdout)
    assert response["token_type"] == "Bearer"
    claims = _verified_claims(live.url, response["access_token"])
    levels = claims["assurance_levels"]
    assert levels["maal"]["containment"] == 3
    assert levels["maal"]["unlocking"] == 3
    assert levels["mial"]["identity_attestation"] == 3
    assert levels["mial"]["deployment_environment"] == 3
    assert claims["mial"] == 2
    assert "mial 2:" in done.stderr

    # The audit record names each piece by kind and digest, as the token does.
    record = _audit(live, claims["jti"])
    assert record["decision"] == "issued"
    assert sorted(e["kind"] for e in record["evidence"]) == [
        "tpm2_certify",
        "tpm_quote",
    ]
    assert all(e["digest"].startswith("sha-256:") for e in record["evidence"])
    assert {e["digest"] for e in record["evidence"]} == {
        e["digest"] for e in levels["evidence"]
    }

    # Signed provenance and an attestation result bound to a fresh nonce
    # raise MIAL above the platform-token path's 2.
    nonce = agent.run("challenge").stdout.strip()
    ear_file = tmp_path / "result.jwt"
    ear = _mint_ear(nonce)
    ear_file.write_text(ear + "\n")
    response = agent.token(
        "--nonce",
        nonce,
        "--evidence",
        f"ear={ear_file}",
        "--evidence",
        f"slsa_provenance={BUNDLE}",
    )
    claims = _verified_claims(live.url, response["access_token"])
    levels = claims["assurance_levels"]
    assert claims["mial"] == 4
    assert claims["mial"] > 2
    assert levels["mial"]["supply_chain"] == 3
    assert levels["mial"]["software_integrity"] == 3
    assert levels["mial"]["configuration"] == 3
    assert levels["maal"]["containment"] == 3
    record = _audit(live, claims["jti"])
    kinds = {e["kind"]: e["digest"] for e in record["evidence"]}
    assert set(kinds) == {"tpm_quote", "tpm2_certify", "ear", "slsa_provenance"}
    assert kinds["ear"] == "sha-256:" + hashlib.sha256(ear.encode()).hexdigest()

    # A DPoP-bound token, its key in the TPM as well.
    response = agent.token("--dpop")
    assert response["token_type"] == "DPoP"
    claims = _verified_claims(live.url, response["access_token"])
    assert claims["cnf"]["jkt"]
    assert claims["assurance_levels"]["maal"]["containment"] == 3

    # Neither tokens nor the activation secret reach the issuer's log.
    state = json.loads((agent.state / "workload.json").read_text())
    log = live.log_once(claims["jti"])
    assert response["access_token"] not in log
    assert state["activation"]["secret"] not in log


def test_refuses_a_certify_of_another_key_and_a_reused_nonce(
    live_issuer: Any, swtpm: SwTpm, tmp_path: Path
) -> None:
    config = {
        "policy_file": str(_policy_file(tmp_path, swtpm)),
        "dpop_require_nonce": True,
    }
    live = live_issuer(config)
    agent, client_id = _enroll_and_register(live, swtpm, tmp_path)

    # A certify of a TPM key the client does not authenticate with.
    workload = Workload(
        agent.state, tcti=swtpm.tcti, issuer=live.url, client_id=client_id
    )
    with workload.lock():
        other = workload.tpm.create_signing_key("other")
        nonce = workload.challenge().nonce
        pieces = [workload.quote(nonce), workload.certify(nonce, other)]
        with pytest.raises(IssuerError) as refused:
            workload.request_token(nonce=nonce, evidence=pieces)
    assert refused.value.error == "invalid_request"
    assert refused.value.status == 400

    # A nonce serves one token request only.
    nonce = agent.run("challenge").stdout.strip()
    first = agent.token("--nonce", nonce)
    assert _verified_claims(live.url, first["access_token"])["mial"] == 2
    again = agent.run("token", "--nonce", nonce, "--json", check=False)
    assert again.returncode == 1
    assert json.loads(again.stdout)["error"] == "invalid_request"

    # A server that demands DPoP nonces (RFC 9449 section 8) gets one retry.
    response = agent.token("--dpop", "--dpop-key", "memory")
    assert response["token_type"] == "DPoP"


def test_evidence_files_are_read_by_kind(tmp_path: Path) -> None:
    sample = DATA / "nitro-attestation" / "nitro_attestation.b64"
    text = load_evidence("nitro_attestation", sample).value
    assert isinstance(text, str)
    cbor = tmp_path / "document.cbor"
    cbor.write_bytes(base64.b64decode(text))
    assert load_evidence("nitro_attestation", cbor).value == text

    bundle = load_evidence("slsa_provenance", BUNDLE)
    assert json.loads(bundle.param()) == {
        "kind": "slsa_provenance",
        "value": json.loads(BUNDLE.read_bytes()),
    }
    ear = load_evidence("ear", DATA / "ear" / "ear.jwt")
    assert ear.value == (DATA / "ear" / "ear.jwt").read_text().strip()

    for kind, path in (
        ("ear", BUNDLE),
        ("tpm_quote", DATA / "ear" / "ear.jwt"),
        ("nitro_attestation", BUNDLE),
        ("sev_snp", BUNDLE),
    ):
        with pytest.raises(ValueError):
            load_evidence(kind, path)
