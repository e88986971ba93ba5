"""Median time of one evidence verification per kind, on the real samples.

Usage: ``python bench/bench_evidence.py [--rounds 200]``. Needs the samples
in ``../shared/data`` beside the repository; touches no network (the
Sigstore trusted root is read from a file).

Each round verifies the unchanged sample bytes from the start: size check,
parsing, signatures, certificate path validation, Sigstore bundle checks and
the rating. Policies and trust anchors are built once, as the issuer builds
them once at start-up. Prints the median and the 90th percentile in
microseconds per kind.
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from issuer.evidence import ear, nitro, provenance, tpm  # noqa: E402
from issuer.evidence.tpm_structures import parse_public  # noqa: E402

DATA = ROOT.parent / "shared" / "data"

# The clocks the samples are valid at (their SOURCE.md files).
EAR_NOW = 1677628800
NITRO_NOW = 1725721200
PROVENANCE_NOW = 1767225600


def ear_case() -> Callable[[], object]:
    raw = (DATA / "ear" / "ear.jwt").read_bytes()
    policy = ear.EarPolicy(
        keys=ear.load_verifier_keys(DATA / "ear" / "pkey.pem"), max_age=400 * 86400
    )
    return lambda: ear.verify(raw, policy=policy, expected_nonce=None, now=EAR_NOW)


def nitro_case() -> Callable[[], object]:
    folder = DATA / "nitro-attestation"
    raw = (folder / "nitro_attestation.b64").read_bytes()
    policy = nitro.NitroPolicy(
        roots=nitro.load_roots(folder / "AWS_NitroEnclaves_Root-G1.root.pem"),
        max_age=3600,
    )
    return lambda: nitro.verify(raw, policy=policy, expected_nonce=None, now=NITRO_NOW)


def provenance_case() -> Callable[[], object]:
    folder = DATA / "slsa-provenance"
    raw = (folder / "reusable-workflow-attestation.sigstore.json").read_bytes()
    policy = provenance.ProvenancePolicy(
        trusted_root=provenance.load_trusted_root(
            folder / "trusted-root-public-good.json"
        ),
        builders=(
            provenance.TrustedBuilder(
                identity=(
                    "https://github.com/github/artifact-attestations-workflows/"
                    ".github/workflows/attest.yml@"
                    "09b495c3f12c7881b3cc17209a327792065c1a1d"
                ),
                issuer="https://token.actions.githubusercontent.com",
                builder_id="https://github.com/actions/runner/github-hosted",
                level=3,
            ),
        ),
        source_repositories=("https://github.com/malancas/attest-demo",),
    )
    return lambda: provenance.verify(
        raw,
        policy=policy,
        expected_nonce=None,
        now=PROVENANCE_NOW,
        expected_subject_digest=(
            "sha256:49a3aa6075e0f49f82843e74b5baa614ad2a588e6675612bf108a0a008c5ac25"
        ),
    )


def tpm_case() -> Callable[[], object]:
    """The GCE Shielded VM quote: SHA-1, no nonce, AK pinned, event log
    replayed (docs/evidence.md, "The real samples")."""
    sample = json.loads(
        (DATA / "tpm2-quote" / "windows_gcp_shielded_vm.json").read_text()
    )
    pcrs = {
        str(p["Index"]): base64.b64decode(p["Digest"]).hex()
        for p in sample["Log"]["PCRs"]
    }
    bundle = {
        "ak_public": sample["AK"]["Public"],
        "quote": sample["Quote"]["Quote"],
        "signature": sample["Quote"]["Signature"],
        "pcrs": {"sha1": pcrs},
        "event_log": sample["Log"]["Raw"],
    }
    name = parse_public(base64.b64decode(sample["AK"]["Public"])).name
    policy = tpm.TpmPolicy(trusted_ak_names=frozenset({name}), allow_sha1=True)
    raw = json.dumps(bundle)
    return lambda: tpm.verify_quote(raw, policy=policy, expected_nonce=None, now=0)


def measure(run: Callable[[], object], rounds: int) -> list[float]:
    for _ in range(min(10, rounds)):
        run()
    samples = []
    for _ in range(rounds):
        start = time.perf_counter_ns()
        run()
        samples.append((time.perf_counter_ns() - start) / 1000)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()

    cases = {
        "ear (ear.jwt)": ear_case(),
        "nitro_attestation (nitro_attestation.b64)": nitro_case(),
        "slsa_provenance (reusable-workflow-attestation)": provenance_case(),
        "tpm_quote (windows_gcp_shielded_vm.json, log)": tpm_case(),
    }
    print(f"{'kind (sample)':<50} {'median µs':>10} {'p90 µs':>10}")
    for name, run in cases.items():
        samples = measure(run, args.rounds)
        p90 = statistics.quantiles(samples, n=10)[-1]
        print(f"{name:<50} {statistics.median(samples):>10.0f} {p90:>10.0f}")


if __name__ == "__main__":
    main()
