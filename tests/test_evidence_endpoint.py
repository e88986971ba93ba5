"""Attestation evidence sent with a token request (docs/evidence.md,
"Sending evidence"): nonces, EAR trust vectors, signed provenance, caps,
refusals, and the audit record."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from jwt.algorithms import ECAlgorithm

from issuer.errors import InvalidRequest

from .conftest import DATA, basic

EAR = DATA / "ear"
SLSA = DATA / "slsa-provenance"
ARTIFACT = "sha256:49a3aa6075e0f49f82843e74b5baa614ad2a588e6675612bf108a0a008c5ac25"
SIGNER = (
    "https://github.com/github/artifact-attestations-workflows/.github/workflows/"
    "attest.yml@09b495c3f12c7881b3cc17209a327792065c1a1d"
)
CC = ["client_credentials"]


@pytest.fixture
def evidence_service(make_service: Any, tmp_path: Path) -> Any:
    policy = tmp_path / "policy.toml"
    policy.write_text(
        f"""
version = "ev-1"
[evidence.ear]
key_files = ["{EAR / "pkey.pem"}"]
max_age = 300
[evidence.provenance]
trusted_root_file = "{SLSA / "trusted-root-public-good.json"}"
source_repositories = ["https://github.com/malancas/attest-demo"]
artifact_digests = ["{ARTIFACT}"]
[[evidence.provenance.builders]]
identity = "{SIGNER}"
issuer = "https://token.actions.githubusercontent.com"
builder_id = "https://github.com/actions/runner/github-hosted"
level = 3
"""
    )
    return make_service(policy_file=str(policy))


@pytest.fixture
def client(evidence_service: Any) -> str:
    c, secret = evidence_service.clients.add("att", audiences=["https://api.test"])
    return basic(c.client_id, secret)


def mint_ear(nonce: str | None, status: str = "affirming", **vector: int) -> str:
    claims: dict[str, Any] = json.loads(
        (EAR / "veraison-ear-ear-claims-tv-ok.json").read_text()
    )
    claims["iat"] = int(time.time()) - 5
    appraisal = claims["submods"]["test"]
    appraisal["ear.status"] = status
    if vector:
        appraisal["ear.trustworthiness-vector"] = {
            k.replace("_", "-"): v for k, v in vector.items()
        }
    if nonce is not None:
        claims["eat_nonce"] = nonce
    key = ECAlgorithm.from_jwk((EAR / "veraison-ear-skey.json").read_text())
    return jwt.encode(claims, key, algorithm="ES256")  # type: ignore[arg-type]


def piece(kind: str, value: Any) -> str:
    return json.dumps({"kind": kind, "value": value})


def request(service: Any, auth: str, *pieces: str, nonce: str | None = None) -> Any:
    params: dict[str, list[str]] = {"grant_type": CC, "evidence": list(pieces)}
    if nonce is not None:
        params["nonce"] = [nonce]
    body = service.token(params, auth).body
    return jwt.decode(body["access_token"], options={"verify_signature": False})


def test_fresh_ear_and_provenance_reach_mial4(
    evidence_service: Any, client: str
) -> None:
    nonce = evidence_service.challenge({}, client)["nonce"]
    ear_token = mint_ear(
        nonce,
        instance_identity=2,
        hardware=2,
        executables=2,
        configuration=2,
        file_system=2,
    )
    bundle = json.loads(
        (SLSA / "reusable-workflow-attestation.sigstore.json").read_text()
    )
    claims = request(
        evidence_service,
        client,
        piece("ear", ear_token),
        piece("slsa_provenance", bundle),
        nonce=nonce,
    )
    levels = claims["assurance_levels"]
    assert levels["mial"] == {
        "identity_attestation": 3,
        "deployment_environment": 3,
        "software_integrity": 3,
        "configuration": 3,
        "supply_chain": 3,
    }
    assert claims["mial"] == 4
    kinds = [e["kind"] for e in levels["evidence"]]
    assert kinds == ["ear", "slsa_provenance"]
    record = evidence_service.audit.by_jti(claims["jti"])
    assert [{"kind": e["kind"], "digest": e["digest"]} for e in record["evidence"]] == (
        levels["evidence"]
    )
    assert all(e["digest"].startswith("sha-256:") for e in record["evidence"])
    assert record["evidence"][0]["details"]["status"] == "affirming"


def test_warning_status_caps_mial_at_2(evidence_service: Any, client: str) -> None:
    nonce = evidence_service.challenge({}, client)["nonce"]
    token = mint_ear(
        nonce, status="warning", instance_identity=2, hardware=2, executables=2,
        configuration=2,
    )  # fmt: skip
    claims = request(evidence_service, client, piece("ear", token), nonce=nonce)
    assert claims["mial"] <= 2
    assert claims["assurance_levels"]["mial"]["configuration"] <= 1


@pytest.mark.parametrize(
    "case",
    [
        "no-nonce",
        "wrong-nonce",
        "reused-nonce",
        "other-clients-nonce",
        "contraindicated",
        "unknown-kind",
        "not-json",
        "wrong-shape",
        "too-many",
        "tampered-provenance",
        "signature-by-other-key",
    ],
)
def test_bad_evidence_is_invalid_request_and_audited(
    evidence_service: Any, client: str, case: str
) -> None:
    service = evidence_service
    nonce = service.challenge({}, client)["nonce"]
    pieces = [piece("ear", mint_ear(nonce, instance_identity=2))]
    send_nonce: str | None = nonce
    if case == "no-nonce":
        send_nonce = None
    elif case == "wrong-nonce":
        pieces = [piece("ear", mint_ear("x" * 43, instance_identity=2))]
    elif case == "reused-nonce":
        request(service, client, *pieces, nonce=nonce)
        pieces = [piece("ear", mint_ear(nonce, instance_identity=2))]
    elif case == "other-clients-nonce":
        other, secret = service.clients.add("other", audiences=["https://api.test"])
        send_nonce = service.challenge({}, basic(other.client_id, secret))["nonce"]
        pieces = [piece("ear", mint_ear(send_nonce, instance_identity=2))]
    elif case == "contraindicated":
        pieces = [piece("ear", mint_ear(nonce, status="contraindicated"))]
    elif case == "unknown-kind":
        pieces = [piece("tee_magic", "x")]
    elif case == "not-json":
        pieces = ["{not json"]
    elif case == "wrong-shape":
        pieces = [json.dumps({"kind": "ear"})]
    elif case == "too-many":
        pieces = pieces * 9
    elif case == "tampered-provenance":
        text = (SLSA / "reusable-workflow-attestation.sigstore.json").read_text()
        bundle = json.loads(text)
        envelope = bundle["dsseEnvelope"]
        envelope["payload"] = envelope["payload"][:-8] + "AAAAAAA="
        pieces = [piece("slsa_provenance", bundle)]
    elif case == "signature-by-other-key":
        from cryptography.hazmat.primitives.asymmetric import ec

        claims = jwt.decode(
            mint_ear(nonce, instance_identity=2), options={"verify_signature": False}
        )
        token = jwt.encode(claims, ec.generate_private_key(ec.SECP256R1()), "ES256")
        pieces = [piece("ear", token)]
    with pytest.raises(InvalidRequest) as info:
        request(service, client, *pieces, nonce=send_nonce)
    assert info.value.error == "invalid_request"
    record = service.audit.recent(limit=1)[0]
    assert (record["decision"], record["error"]) == ("refused", "invalid_request")


def test_evidence_is_not_accepted_without_configuration(
    service: Any,
) -> None:
    c, secret = service.clients.add("plain", audiences=["https://api.test"])
    auth = basic(c.client_id, secret)
    nonce = service.challenge({}, auth)["nonce"]
    with pytest.raises(InvalidRequest) as info:
        request(service, auth, piece("ear", mint_ear(nonce)), nonce=nonce)
    assert "kind_not_accepted" in info.value.detail


def test_policy_check_reports_bad_evidence_tables(tmp_path: Path) -> None:
    from issuer.policy import Policy, PolicyError

    bad = tmp_path / "bad.toml"
    bad.write_text('version = "x"\n[evidence.ear]\nkey_files = ["missing.pem"]\n')
    with pytest.raises(PolicyError, match=r"evidence\.ear"):
        Policy.load(str(bad))
    bad.write_text('version = "x"\n[evidence.tee]\nx = 1\n')
    with pytest.raises(PolicyError, match="unknown keys"):
        Policy.load(str(bad))


def test_metadata_lists_configured_evidence_kinds(evidence_service: Any) -> None:
    kinds = evidence_service.metadata()["evidence_kinds_supported"]
    assert "ear" in kinds and "slsa_provenance" in kinds
    assert "tpm_quote" not in kinds


def test_cli_explains_a_saved_evidence_bundle(
    evidence_service: Any, client: str, home: Path, tmp_path: Path
) -> None:
    from click.testing import CliRunner

    from issuer.cli import main

    client_id = evidence_service.clients.all()[0].client_id
    bundle = tmp_path / "bundle.json"
    saved = [
        {"kind": "ear", "value": mint_ear(None, instance_identity=2, hardware=2)},
        {
            "kind": "slsa_provenance",
            "value": json.loads(
                (SLSA / "reusable-workflow-attestation.sigstore.json").read_text()
            ),
        },
    ]
    bundle.write_text(json.dumps(saved))
    policy = evidence_service.settings.policy_file
    result = CliRunner().invoke(
        main,
        ["--home", str(home), "policy", "explain", "--client", client_id,
         "--policy", policy, "--bundle", str(bundle)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    vector = out["assurance_levels"]["mial"]
    # Saved evidence carries no fresh nonce: capped at 2, but supply chain
    # (not a freshness property) keeps the builder's level.
    assert vector["identity_attestation"] == 2
    assert vector["deployment_environment"] == 2
    assert vector["supply_chain"] == 3
    assert [e["kind"] for e in out["assurance_levels"]["evidence"]] == [
        "ear",
        "slsa_provenance",
    ]


def test_provenance_for_an_artifact_not_known_to_run_here_is_refused(
    make_service: Any, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(
        f"""
version = "ev-2"
[evidence.provenance]
trusted_root_file = "{SLSA / "trusted-root-public-good.json"}"
source_repositories = ["https://github.com/malancas/attest-demo"]
artifact_digests = ["sha256:{"0" * 64}"]
[[evidence.provenance.builders]]
identity = "{SIGNER}"
issuer = "https://token.actions.githubusercontent.com"
builder_id = "https://github.com/actions/runner/github-hosted"
level = 3
"""
    )
    service = make_service(policy_file=str(policy))
    c, secret = service.clients.add("pub", audiences=["https://api.test"])
    bundle = json.loads(
        (SLSA / "reusable-workflow-attestation.sigstore.json").read_text()
    )
    with pytest.raises(InvalidRequest) as info:
        request(service, basic(c.client_id, secret), piece("slsa_provenance", bundle))
    assert "subject_mismatch" in info.value.detail


@pytest.mark.parametrize(
    "text",
    [
        "[" * 5000,
        json.dumps({"kind": "slsa_provenance", "value": "\ud800"}),
        '{"kind": "ear", "kind": "slsa_provenance", "value": "x"}',
    ],
)
@pytest.mark.usefixtures("quiet_gc")
def test_malformed_evidence_is_refused_and_audited(
    evidence_service: Any, client: str, text: str
) -> None:
    with pytest.raises(InvalidRequest) as info:
        request(evidence_service, client, text)
    assert "malformed" in info.value.detail
    record = evidence_service.audit.recent(limit=1)[0]
    assert (record["decision"], record["error"]) == ("refused", "invalid_request")


def test_refusals_record_the_pieces_already_verified(
    evidence_service: Any, client: str
) -> None:
    nonce = evidence_service.challenge({}, client)["nonce"]
    good = piece("ear", mint_ear(nonce, instance_identity=2))
    bundle = json.loads(
        (SLSA / "reusable-workflow-attestation.sigstore.json").read_text()
    )
    bundle["dsseEnvelope"]["signatures"][0]["sig"] = "AAAA"
    with pytest.raises(InvalidRequest):
        request(
            evidence_service, client, good, piece("slsa_provenance", bundle),
            nonce=nonce,
        )  # fmt: skip
    record = evidence_service.audit.recent(limit=1)[0]
    assert [e["kind"] for e in record["evidence"]] == ["ear"]
    assert record["evidence"][0]["details"]["status"] == "affirming"


def test_policy_values_of_the_wrong_type_are_policy_errors(tmp_path: Path) -> None:
    from issuer.policy import Policy, PolicyError

    bad = tmp_path / "bad.toml"
    for table in (
        f'[evidence.ear]\nkey_files = ["{EAR / "pkey.pem"}"]\nmax_age = [1]\n',
        f'[evidence.ear]\nkey_files = ["{EAR / "pkey.pem"}"]\nprofile = 5\n',
        '[evidence.nitro]\nroot_files = ["'
        + str(DATA / "nitro-attestation" / "AWS_NitroEnclaves_Root-G1.root.pem")
        + '"]\nallow_debug = "false"\n',
    ):
        bad.write_text('version = "x"\n' + table)
        with pytest.raises(PolicyError):
            Policy.load(str(bad))
