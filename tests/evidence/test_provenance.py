"""SLSA provenance in Sigstore bundles, verified offline: the real GitHub
artifact attestation, the npm bundles the library cannot verify, and
tampered copies."""

from __future__ import annotations

import base64
import datetime
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from issuer.config import ConfigError
from issuer.errors import EvidenceError
from issuer.evidence import digest_of, provenance

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
SLSA = DATA / "slsa-provenance"
BUNDLE = SLSA / "reusable-workflow-attestation.sigstore.json"

# From SOURCE.md: the signer is GitHub's reusable attestation workflow, the
# build ran in malancas/attest-demo, logged at 2024-05-24T19:14:24Z.
SIGNER = (
    "https://github.com/github/artifact-attestations-workflows/.github/workflows/"
    "attest.yml@09b495c3f12c7881b3cc17209a327792065c1a1d"
)
GITHUB = "https://token.actions.githubusercontent.com"
BUILDER_ID = "https://github.com/actions/runner/github-hosted"
REPOSITORY = "https://github.com/malancas/attest-demo"
SUBJECT = "sha256:49a3aa6075e0f49f82843e74b5baa614ad2a588e6675612bf108a0a008c5ac25"
INTEGRATED = 1716578064
# Any later time will do: the certificate is judged at the integrated time.
NOW = 1767225600


@pytest.fixture(scope="module")
def trusted_root() -> Any:
    return provenance.load_trusted_root(SLSA / "trusted-root-public-good.json")


def builder(**changes: Any) -> provenance.TrustedBuilder:
    row: dict[str, Any] = {
        "identity": SIGNER,
        "issuer": GITHUB,
        "builder_id": BUILDER_ID,
        "level": 3,
    }
    row.update(changes)
    return provenance.TrustedBuilder(**row)


def policy(trusted_root: Any, **changes: Any) -> provenance.ProvenancePolicy:
    settings: dict[str, Any] = {
        "trusted_root": trusted_root,
        "builders": (builder(),),
        "source_repositories": (REPOSITORY,),
    }
    settings.update(changes)
    return provenance.ProvenancePolicy(**settings)


def check(
    trusted_root: Any,
    raw: bytes | str | None = None,
    *,
    subject: str | None = SUBJECT,
    now: float = NOW,
    **changes: Any,
) -> Any:
    return provenance.verify(
        BUNDLE.read_bytes() if raw is None else raw,
        policy=policy(trusted_root, **changes),
        expected_nonce=None,
        now=now,
        expected_subject_digest=subject,
    )


def reason(exc: pytest.ExceptionInfo[EvidenceError]) -> str:
    return exc.value.reason


def bundle_json() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(BUNDLE.read_bytes())
    return document


def encode(document: dict[str, Any]) -> bytes:
    return json.dumps(document).encode()


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Any attempt to open a connection fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("provenance verification tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    yield


# The real GitHub artifact attestation.


class TestRealBundle:
    def test_verifies_offline_and_rates_the_configured_build_level(
        self, trusted_root: Any
    ) -> None:
        raw = BUNDLE.read_bytes()
        evidence = check(trusted_root, raw)

        assert evidence.kind == "slsa_provenance"
        assert {d: r.value for d, r in evidence.mial.items()} == {"supply_chain": 3}
        assert evidence.subjects == (SUBJECT,)
        assert evidence.digest == digest_of(raw)
        assert evidence.nonce is None
        assert evidence.bound_key is None
        assert evidence.details["source_repository"] == REPOSITORY
        assert evidence.details["integrated_time"] == str(INTEGRATED)

    def test_a_builder_credited_with_level_two_rates_two(
        self, trusted_root: Any
    ) -> None:
        evidence = check(trusted_root, builders=(builder(level=2),))
        assert evidence.mial["supply_chain"].value == 2

    def test_verifies_without_an_expected_subject(self, trusted_root: Any) -> None:
        assert check(trusted_root, subject=None).subjects == (SUBJECT,)

    def test_matches_the_subject_digest_case_insensitively(
        self, trusted_root: Any
    ) -> None:
        assert check(trusted_root, subject=SUBJECT.upper()).subjects == (SUBJECT,)

    def test_accepts_text_input(self, trusted_root: Any) -> None:
        assert check(trusted_root, BUNDLE.read_text()).mial["supply_chain"].value == 3

    def test_picks_the_matching_row_of_the_builder_table(
        self, trusted_root: Any
    ) -> None:
        table = (
            builder(identity=SIGNER.replace("attest.yml", "other.yml"), level=1),
            builder(level=2),
        )
        assert check(trusted_root, builders=table).mial["supply_chain"].value == 2

    def test_ignores_the_nonce_since_provenance_describes_a_build(
        self, trusted_root: Any
    ) -> None:
        evidence = provenance.verify(
            BUNDLE.read_bytes(),
            policy=policy(trusted_root),
            expected_nonce=b"any nonce",
            now=NOW,
        )
        assert evidence.nonce is None
        assert evidence.mial["supply_chain"].value == 3


class TestPolicyMatching:
    def test_refuses_another_artifact(self, trusted_root: Any) -> None:
        with pytest.raises(EvidenceError) as exc:
            check(trusted_root, subject="sha256:" + "0" * 64)
        assert reason(exc) == "subject_mismatch"

    def test_refuses_the_callers_workflow_as_signer(self, trusted_root: Any) -> None:
        # The caller's workflow ran the build, but the reusable workflow
        # signed it; only the signer's identity counts.
        caller = f"{REPOSITORY}/.github/workflows/shared.yml@refs/heads/main"
        with pytest.raises(EvidenceError) as exc:
            check(trusted_root, builders=(builder(identity=caller),))
        assert reason(exc) == "untrusted_builder"

    def test_refuses_another_oidc_issuer(self, trusted_root: Any) -> None:
        other = builder(issuer="https://accounts.google.com")
        with pytest.raises(EvidenceError) as exc:
            check(trusted_root, builders=(other,))
        assert reason(exc) == "untrusted_builder"

    def test_refuses_another_builder_id(self, trusted_root: Any) -> None:
        other = builder(builder_id="https://github.com/actions/runner/self-hosted")
        with pytest.raises(EvidenceError) as exc:
            check(trusted_root, builders=(other,))
        assert reason(exc) == "untrusted_builder"

    def test_refuses_another_source_repository(self, trusted_root: Any) -> None:
        with pytest.raises(EvidenceError) as exc:
            check(trusted_root, source_repositories=("https://github.com/other/repo",))
        assert reason(exc) == "untrusted_source"

    def test_policy_refuses_empty_tables_and_levels_outside_one_to_three(
        self, trusted_root: Any
    ) -> None:
        with pytest.raises(ValueError):
            policy(trusted_root, builders=())
        with pytest.raises(ValueError):
            policy(trusted_root, source_repositories=())
        for level in (0, 4):
            with pytest.raises(ValueError):
                builder(level=level)


# Bundles the library cannot verify (known limit, docs/evidence.md).


class TestUnsupported:
    @pytest.mark.parametrize(
        "name", ["sigstore.js@2.0.0-provenance.sigstore.json", "bundle-provenance.json"]
    )
    def test_refuses_npm_bundles_with_intoto_log_entries(
        self, trusted_root: Any, name: str
    ) -> None:
        with pytest.raises(EvidenceError) as exc:
            check(trusted_root, (SLSA / name).read_bytes(), subject=None)
        assert reason(exc) == "unsupported"

    @pytest.mark.parametrize("media_type", ["application/vnd.example+json", {}, None])
    def test_refuses_an_unknown_bundle_media_type(
        self, trusted_root: Any, media_type: Any
    ) -> None:
        document = bundle_json()
        document["mediaType"] = media_type
        with pytest.raises(EvidenceError) as exc:
            check(trusted_root, encode(document))
        assert reason(exc) == "unsupported"

    def test_refuses_a_bundle_without_a_dsse_envelope(self, trusted_root: Any) -> None:
        document = bundle_json()
        document["messageSignature"] = document.pop("dsseEnvelope")
        with pytest.raises(EvidenceError) as exc:
            check(trusted_root, encode(document))
        assert reason(exc) == "unsupported"


# Tampering and trust.


def with_payload(document: dict[str, Any], payload: bytes) -> bytes:
    document["dsseEnvelope"]["payload"] = base64.b64encode(payload).decode()
    return encode(document)


class TestTampering:
    def test_refuses_a_flipped_payload_byte(self, trusted_root: Any) -> None:
        document = bundle_json()
        payload = bytearray(base64.b64decode(document["dsseEnvelope"]["payload"]))
        payload[100] ^= 0x01
        with pytest.raises(EvidenceError) as exc:
            check(trusted_root, with_payload(document, bytes(payload)), subject=None)
        assert reason(exc) == "bad_signature"

    def test_refuses_a_signature_over_another_statement(
        self, trusted_root: Any
    ) -> None:
        document = bundle_json()
        statement = json.loads(base64.b64decode(document["dsseEnvelope"]["payload"]))
        statement["subject"][0]["digest"]["sha256"] = "0" * 64
        forged = with_payload(document, json.dumps(statement).encode())
        with pytest.raises(EvidenceError) as exc:
            check(trusted_root, forged, subject="sha256:" + "0" * 64)
        assert reason(exc) == "bad_signature"

    def test_refuses_a_changed_signature(self, trusted_root: Any) -> None:
        document = bundle_json()
        signature = bytearray(
            base64.b64decode(document["dsseEnvelope"]["signatures"][0]["sig"])
        )
        signature[-3] ^= 0x01
        document["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(
            bytes(signature)
        ).decode()
        with pytest.raises(EvidenceError) as exc:
            check(trusted_root, encode(document))
        assert reason(exc) == "bad_signature"

    def test_refuses_a_changed_log_index(self, trusted_root: Any) -> None:
        document = bundle_json()
        entry = document["verificationMaterial"]["tlogEntries"][0]
        entry["logIndex"] = str(int(entry["logIndex"]) + 1)
        with pytest.raises(EvidenceError) as exc:
            check(trusted_root, encode(document))
        assert reason(exc) == "bad_signature"

    def test_refuses_a_certificate_logged_after_it_expired(
        self, trusted_root: Any
    ) -> None:
        document = bundle_json()
        document["verificationMaterial"]["tlogEntries"][0]["integratedTime"] = str(
            INTEGRATED + 3600
        )
        with pytest.raises(EvidenceError) as exc:
            check(trusted_root, encode(document))
        assert reason(exc) == "expired"

    def test_refuses_a_certificate_logged_before_it_was_valid(
        self, trusted_root: Any
    ) -> None:
        document = bundle_json()
        document["verificationMaterial"]["tlogEntries"][0]["integratedTime"] = str(
            INTEGRATED - 3600
        )
        with pytest.raises(EvidenceError) as exc:
            check(trusted_root, encode(document))
        assert reason(exc) == "not_yet_valid"

    def test_refuses_a_log_entry_dated_after_now(self, trusted_root: Any) -> None:
        with pytest.raises(EvidenceError) as exc:
            check(trusted_root, now=INTEGRATED - 3600)
        assert reason(exc) == "not_yet_valid"

    def test_refuses_a_chain_to_an_untrusted_root(self, tmp_path: Path) -> None:
        key = ec.generate_private_key(ec.SECP384R1())
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sigstore.dev"),
                x509.NameAttribute(NameOID.COMMON_NAME, "sigstore"),
            ]
        )
        start = datetime.datetime(2021, 1, 1, tzinfo=datetime.UTC)
        ca = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
            .sign(key, hashes.SHA384())
        )
        der = base64.b64encode(ca.public_bytes(serialization.Encoding.DER)).decode()
        root = json.loads((SLSA / "trusted-root-public-good.json").read_text())
        for authority in root["certificateAuthorities"]:
            authority["certChain"]["certificates"] = [{"rawBytes": der}]
        (tmp_path / "root.json").write_text(json.dumps(root))
        impostor = provenance.load_trusted_root(tmp_path / "root.json")

        with pytest.raises(EvidenceError) as exc:
            check(impostor)
        assert reason(exc) == "untrusted_chain"


class TestBadInput:
    def test_refuses_an_oversized_bundle_before_parsing(
        self, trusted_root: Any
    ) -> None:
        with pytest.raises(EvidenceError) as exc:
            check(trusted_root, b"{" + b" " * 300000 + b"}")
        assert reason(exc) == "too_large"

    @pytest.mark.parametrize("keep", [1, 100, 5000, -1])
    def test_refuses_a_truncated_bundle(self, trusted_root: Any, keep: int) -> None:
        with pytest.raises(EvidenceError) as exc:
            check(trusted_root, BUNDLE.read_bytes()[:keep])
        assert reason(exc) == "malformed"

    @pytest.mark.parametrize(
        "raw",
        [b"[]", b"null", b'{"mediaType": 1, "mediaType": 2}', b"\xff\xfe", b"NaN"],
    )
    def test_refuses_json_that_is_not_a_bundle_object(
        self, trusted_root: Any, raw: bytes
    ) -> None:
        with pytest.raises(EvidenceError) as exc:
            check(trusted_root, raw)
        assert reason(exc) == "malformed"

    def test_refuses_a_bundle_with_a_broken_certificate(
        self, trusted_root: Any
    ) -> None:
        document = bundle_json()
        document["verificationMaterial"]["certificate"]["rawBytes"] = "AAAA"
        with pytest.raises(EvidenceError) as exc:
            check(trusted_root, encode(document))
        assert reason(exc) == "malformed"

    def test_refuses_a_non_numeric_integrated_time(self, trusted_root: Any) -> None:
        document = bundle_json()
        document["verificationMaterial"]["tlogEntries"][0]["integratedTime"] = "soon"
        with pytest.raises(EvidenceError) as exc:
            check(trusted_root, encode(document))
        assert reason(exc) == "malformed"

    def test_refuses_a_payload_that_is_not_json(self, trusted_root: Any) -> None:
        # The signature check fails first: the payload is what was signed.
        with pytest.raises(EvidenceError) as exc:
            check(trusted_root, with_payload(bundle_json(), b"not json"))
        assert reason(exc) == "bad_signature"

    def test_refuses_a_trusted_root_file_that_is_not_one(self, tmp_path: Path) -> None:
        (tmp_path / "root.json").write_text('{"mediaType": "nope"}')
        with pytest.raises(ConfigError):
            provenance.load_trusted_root(tmp_path / "root.json")
        with pytest.raises(ConfigError):
            provenance.load_trusted_root(tmp_path / "missing.json")
