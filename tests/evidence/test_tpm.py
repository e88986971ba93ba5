"""TPM 2.0 evidence against a real software TPM and the real GCE sample.

One swtpm per module (tests/evidence/swtpm.py) with EK certificates from a
test CA; the workload side runs through ``issuer.workload.tpm`` and
tpm2-tools, the issuer side through ``issuer.evidence.tpm``. Event-log
replay is cross-checked against ``tpm2_eventlog``, an independent parser.
"""

from __future__ import annotations

import base64
import copy
import datetime
import hashlib
import json
import os
import struct
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from issuer.errors import EvidenceError
from issuer.evidence import tpm
from issuer.evidence.tpm_structures import (
    parse_event_log,
    parse_public,
    replay_event_log,
)
from issuer.keys import jwk_thumbprint
from issuer.workload.tpm import Tpm2Tools, TpmKey, TpmToolError

from .swtpm import DEBIAN_PACKAGES, SwTpm, missing_tools

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "tpm2-quote"
WINDOWS = DATA / "windows_gcp_shielded_vm.json"
UBUNTU_LOG = DATA / "ubuntu_2104_shielded_vm_no_secure_boot_eventlog"
ZERO = bytes(32)
NONCE = tpm.qualifying_data("nonce-from-POST-challenge")
OTHER_NONCE = tpm.qualifying_data("another-nonce")
ACTIVATION_KEY = b"k" * 32
SELECTION = {"sha256": (0, 1, 2, 3, 4, 5, 6, 7)}
# What the fixture measures into PCR 7, standing in for a secure-boot state.
MEASUREMENT = b"secure boot: enabled"


def _pcr7() -> bytes:
    # TPM2_PCR_Extend from reset: SHA-256(zeros || SHA-256(data)), computed
    # here independently of the TPM.
    return hashlib.sha256(ZERO + hashlib.sha256(MEASUREMENT).digest()).digest()


REFERENCE = {"sha256": {0: (ZERO,), 7: (_pcr7(),)}}


def _expect(reason: str, call: Any, *args: Any, **kwargs: Any) -> EvidenceError:
    with pytest.raises(EvidenceError) as info:
        call(*args, **kwargs)
    assert info.value.reason == reason, info.value
    return info.value


# --- certificates made with cryptography ----------------------------------


def _ca(
    name: str, *, not_before: float, not_after: float
) -> tuple[Any, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(datetime.datetime.fromtimestamp(not_before, datetime.UTC))
        .not_valid_after(datetime.datetime.fromtimestamp(not_after, datetime.UTC))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _leaf(
    ca: tuple[Any, x509.Certificate], public_key: Any, *, not_after: float
) -> x509.Certificate:
    key, issuer = ca
    now = time.time()
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "tpm")]))
        .issuer_name(issuer.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(datetime.datetime.fromtimestamp(now - 3600, datetime.UTC))
        .not_valid_after(datetime.datetime.fromtimestamp(not_after, datetime.UTC))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )


def _der(cert: x509.Certificate) -> str:
    return base64.b64encode(cert.public_bytes(Encoding.DER)).decode()


# --- the software TPM and an enrolled workload ----------------------------


@dataclass
class Enrolled:
    swtpm: SwTpm
    driver: Tpm2Tools
    ak: TpmKey
    ek_public: bytes
    ek_chain: list[bytes]
    binding: dict[str, Any]
    policy: tpm.TpmPolicy

    def quote(self, nonce: bytes = NONCE, selection: Any = SELECTION) -> dict[str, Any]:
        return {**self.binding, **self.driver.quote(self.ak, nonce, selection)}

    def certify(self, key: TpmKey, nonce: bytes = NONCE) -> dict[str, Any]:
        return {**self.binding, **self.driver.certify(key, self.ak, nonce)}


@pytest.fixture(scope="module")
def swtpm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SwTpm]:
    missing = missing_tools()
    if missing:
        pytest.fail(
            f"TPM tests need {', '.join(missing)}: apt-get install {DEBIAN_PACKAGES}"
        )
    started = SwTpm.start(tmp_path_factory.mktemp("swtpm"))
    yield started
    started.stop()


@pytest.fixture(scope="module")
def enrolled(swtpm: SwTpm, tmp_path_factory: pytest.TempPathFactory) -> Enrolled:
    driver = Tpm2Tools(tmp_path_factory.mktemp("workload"), tcti=swtpm.tcti)
    driver.extend(7, MEASUREMENT)
    root, intermediate = swtpm.ca_certificates
    ek_public, ek_cert = driver.endorsement()
    chain = [ek_cert, intermediate.public_bytes(Encoding.DER)]
    policy = tpm.TpmPolicy(
        ek_ca_certificates=(root,),
        activation_key=ACTIVATION_KEY,
        pcr_reference=REFERENCE,
    )
    ak = driver.create_ak()
    # The issuer's half of credential activation, done in Python, and the
    # TPM's half in swtpm: the secret only comes back if both agree.
    challenge = tpm.make_activation_challenge(
        ek_certificates=chain,
        ek_public=ek_public,
        ak_public=ak.public,
        policy=policy,
        now=time.time(),
    )
    secret = driver.activate_credential(ak, challenge)
    binding = Tpm2Tools.binding(ak, chain, secret)
    return Enrolled(swtpm, driver, ak, ek_public, chain, binding, policy)


@pytest.fixture(scope="module")
def good_quote(enrolled: Enrolled) -> dict[str, Any]:
    return enrolled.quote()


@pytest.fixture(scope="module")
def es256_key(enrolled: Enrolled) -> TpmKey:
    return enrolled.driver.create_signing_key("es256")


@pytest.fixture(scope="module")
def good_certify(enrolled: Enrolled, es256_key: TpmKey) -> dict[str, Any]:
    return enrolled.certify(es256_key)


def _verify_quote(enrolled: Enrolled, bundle: Any, **overrides: Any) -> Any:
    options: dict[str, Any] = {
        "policy": enrolled.policy,
        "expected_nonce": NONCE,
        "now": time.time(),
    }
    options.update(overrides)
    return tpm.verify_quote(bundle, **options)


def _verify_certify(enrolled: Enrolled, bundle: Any, **overrides: Any) -> Any:
    options: dict[str, Any] = {
        "policy": enrolled.policy,
        "ak_public": enrolled.ak.public,
        "expected_nonce": NONCE,
        "expected_key_thumbprint": None,
        "now": time.time(),
    }
    options.update(overrides)
    return tpm.verify_certify(bundle, **options)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _raw(bundle: dict[str, Any], member: str) -> bytes:
    return base64.b64decode(bundle[member])


def _unbound(bundle: dict[str, Any]) -> dict[str, Any]:
    """The bundle without the members that prove the AK's binding."""
    binding = ("ek_certificates", "activation_secret")
    return {k: v for k, v in bundle.items() if k not in binding}


def _with(bundle: dict[str, Any], **members: Any) -> dict[str, Any]:
    out = copy.deepcopy(bundle)
    out.update(members)
    return out


# --- good quotes ----------------------------------------------------------


class TestQuote:
    def test_fresh_chained_quote_with_matching_pcrs_rates_3(
        self, enrolled: Enrolled, good_quote: dict[str, Any]
    ) -> None:
        now = time.time()
        ev = _verify_quote(enrolled, good_quote, now=now)
        assert ev.kind == "tpm_quote"
        assert ev.mial["identity_attestation"].value == 3
        assert ev.mial["deployment_environment"].value == 3
        assert ev.nonce == NONCE
        assert ev.details["ak_trust"] == "ek_certificate"
        assert ev.subjects == (f"tpm-ak:{parse_public(enrolled.ak.public).name.hex()}",)
        assert ev.expires_at == int(now + 3600)

    def test_digest_names_the_bytes_received(
        self, enrolled: Enrolled, good_quote: dict[str, Any]
    ) -> None:
        raw = json.dumps(good_quote).encode()
        ev = _verify_quote(enrolled, raw)
        assert ev.digest == "sha-256:" + hashlib.sha256(raw).hexdigest()

    def test_quote_without_nonce_is_capped_at_2(
        self, enrolled: Enrolled, good_quote: dict[str, Any]
    ) -> None:
        ev = _verify_quote(enrolled, good_quote, expected_nonce=None)
        assert ev.mial["identity_attestation"].value == 2
        assert ev.mial["deployment_environment"].value == 2
        assert "fresh" in ev.mial["identity_attestation"].reason

    def test_without_reference_values_environment_is_2(
        self, enrolled: Enrolled, good_quote: dict[str, Any]
    ) -> None:
        policy = tpm.TpmPolicy(
            ek_ca_certificates=enrolled.policy.ek_ca_certificates,
            activation_key=ACTIVATION_KEY,
        )
        ev = _verify_quote(enrolled, good_quote, policy=policy)
        assert ev.mial["identity_attestation"].value == 3
        assert ev.mial["deployment_environment"].value == 2

    def test_ak_certificate_from_a_privacy_ca_rates_3(
        self, enrolled: Enrolled, good_quote: dict[str, Any]
    ) -> None:
        now = time.time()
        ca = _ca("privacy CA", not_before=now - 60, not_after=now + 86400)
        ak_key = parse_public(enrolled.ak.public).public_key()
        cert = _leaf(ca, ak_key, not_after=now + 600)
        bundle = {
            k: v
            for k, v in good_quote.items()
            if k not in ("ek_certificates", "activation_secret")
        }
        bundle["ak_certificates"] = [_der(cert)]
        policy = tpm.TpmPolicy(ak_ca_certificates=(ca[1],), pcr_reference=REFERENCE)
        ev = _verify_quote(enrolled, bundle, policy=policy, now=now)
        assert ev.mial["identity_attestation"].value == 3
        assert ev.details["ak_trust"] == "ak_certificate"
        # A token never outlives the AK certificate it rests on.
        assert ev.expires_at == int(now + 600)

    def test_pinned_ak_rates_1(
        self, enrolled: Enrolled, good_quote: dict[str, Any]
    ) -> None:
        bundle = {"ak_public": good_quote["ak_public"]} | {
            k: good_quote[k] for k in ("quote", "signature", "pcrs")
        }
        name = parse_public(enrolled.ak.public).name
        policy = tpm.TpmPolicy(
            trusted_ak_names=frozenset({name}), pcr_reference=REFERENCE
        )
        ev = _verify_quote(enrolled, bundle, policy=policy)
        assert ev.mial["identity_attestation"].value == 1
        assert ev.mial["deployment_environment"].value == 1

    def test_sha1_bank_needs_the_legacy_switch(self, enrolled: Enrolled) -> None:
        bundle = enrolled.quote(selection={"sha1": (0, 7), "sha256": (0, 7)})
        _expect("unsupported", _verify_quote, enrolled, bundle)
        legacy = tpm.TpmPolicy(
            ek_ca_certificates=enrolled.policy.ek_ca_certificates,
            activation_key=ACTIVATION_KEY,
            pcr_reference=REFERENCE,
            allow_sha1=True,
        )
        ev = _verify_quote(enrolled, bundle, policy=legacy)
        assert ev.details["pcr_selection"] == "sha1:0,7; sha256:0,7"


# --- bad quotes -----------------------------------------------------------


class TestBadQuote:
    def test_rejects_signature_over_other_data(
        self, enrolled: Enrolled, good_quote: dict[str, Any]
    ) -> None:
        other = enrolled.quote(OTHER_NONCE)
        bundle = _with(good_quote, signature=other["signature"])
        _expect("bad_signature", _verify_quote, enrolled, bundle)

    def test_rejects_wrong_nonce(
        self, enrolled: Enrolled, good_quote: dict[str, Any]
    ) -> None:
        _expect(
            "nonce_mismatch",
            _verify_quote,
            enrolled,
            good_quote,
            expected_nonce=OTHER_NONCE,
        )

    def test_rejects_quote_without_nonce_when_one_is_expected(
        self, enrolled: Enrolled
    ) -> None:
        _expect("nonce_missing", _verify_quote, enrolled, enrolled.quote(b""))

    def test_rejects_edited_nonce(
        self, enrolled: Enrolled, good_quote: dict[str, Any]
    ) -> None:
        attest = bytearray(_raw(good_quote, "quote"))
        start = attest.index(NONCE)
        attest[start : start + len(NONCE)] = OTHER_NONCE
        bundle = _with(good_quote, quote=_b64(bytes(attest)))
        _expect(
            "bad_signature", _verify_quote, enrolled, bundle, expected_nonce=OTHER_NONCE
        )

    def test_rejects_chain_to_untrusted_ca(
        self, enrolled: Enrolled, good_quote: dict[str, Any]
    ) -> None:
        now = time.time()
        _, stranger = _ca("another CA", not_before=now - 60, not_after=now + 3600)
        policy = tpm.TpmPolicy(
            ek_ca_certificates=(stranger,), activation_key=ACTIVATION_KEY
        )
        _expect("untrusted_chain", _verify_quote, enrolled, good_quote, policy=policy)

    def test_rejects_ek_chain_without_intermediate(
        self, enrolled: Enrolled, good_quote: dict[str, Any]
    ) -> None:
        bundle = _with(good_quote, ek_certificates=good_quote["ek_certificates"][:1])
        _expect("untrusted_chain", _verify_quote, enrolled, bundle)

    def _ek_cert_under(
        self, enrolled: Enrolled, ca_life: tuple[float, float], ek_not_after: float
    ) -> tuple[x509.Certificate, x509.Certificate]:
        ca = _ca("expiring CA", not_before=ca_life[0], not_after=ca_life[1])
        ek_key = x509.load_der_x509_certificate(enrolled.ek_chain[0]).public_key()
        return ca[1], _leaf(ca, ek_key, not_after=ek_not_after)

    def test_rejects_expired_ca(
        self, enrolled: Enrolled, good_quote: dict[str, Any]
    ) -> None:
        now = time.time()
        ca, ek = self._ek_cert_under(enrolled, (now - 86400, now - 60), now + 3600)
        bundle = _with(good_quote, ek_certificates=[_der(ek)])
        policy = tpm.TpmPolicy(ek_ca_certificates=(ca,), activation_key=ACTIVATION_KEY)
        _expect("expired", _verify_quote, enrolled, bundle, policy=policy)

    def test_rejects_expired_ek_certificate(
        self, enrolled: Enrolled, good_quote: dict[str, Any]
    ) -> None:
        now = time.time()
        ca, ek = self._ek_cert_under(enrolled, (now - 86400, now + 86400), now - 60)
        bundle = _with(good_quote, ek_certificates=[_der(ek)])
        policy = tpm.TpmPolicy(ek_ca_certificates=(ca,), activation_key=ACTIVATION_KEY)
        _expect("expired", _verify_quote, enrolled, bundle, policy=policy)

    def test_same_ek_under_a_valid_ca_is_accepted(
        self, enrolled: Enrolled, good_quote: dict[str, Any]
    ) -> None:
        # The control for the two tests above: only the dates differ.
        now = time.time()
        ca, ek = self._ek_cert_under(enrolled, (now - 86400, now + 86400), now + 3600)
        bundle = _with(good_quote, ek_certificates=[_der(ek)])
        policy = tpm.TpmPolicy(
            ek_ca_certificates=(ca,),
            activation_key=ACTIVATION_KEY,
            pcr_reference=REFERENCE,
        )
        ev = _verify_quote(enrolled, bundle, policy=policy, now=now)
        assert ev.mial["identity_attestation"].value == 3

    def test_rejects_ek_certificate_issued_by_a_non_ca(
        self, enrolled: Enrolled, good_quote: dict[str, Any]
    ) -> None:
        now = time.time()
        root = _ca("root", not_before=now - 60, not_after=now + 86400)
        issuer_key = ec.generate_private_key(ec.SECP256R1())
        not_ca = _leaf(root, issuer_key.public_key(), not_after=now + 3600)
        ek_key = x509.load_der_x509_certificate(enrolled.ek_chain[0]).public_key()
        ek = _leaf((issuer_key, not_ca), ek_key, not_after=now + 3600)
        bundle = _with(good_quote, ek_certificates=[_der(ek), _der(not_ca)])
        policy = tpm.TpmPolicy(
            ek_ca_certificates=(root[1],), activation_key=ACTIVATION_KEY
        )
        _expect("untrusted_chain", _verify_quote, enrolled, bundle, policy=policy)

    def test_rejects_wrong_activation_secret(
        self, enrolled: Enrolled, good_quote: dict[str, Any]
    ) -> None:
        bundle = _with(good_quote, activation_secret=_b64(bytes(32)))
        _expect("activation_failed", _verify_quote, enrolled, bundle)

    def test_rejects_activation_secret_of_another_ak(
        self, enrolled: Enrolled, good_quote: dict[str, Any]
    ) -> None:
        other = enrolled.driver.create_ak("ak2")
        bundle = {**good_quote, **enrolled.driver.quote(other, NONCE, SELECTION)}
        bundle["ak_public"] = _b64(other.public)
        _expect("activation_failed", _verify_quote, enrolled, bundle)

    def test_rejects_unbound_ak(
        self, enrolled: Enrolled, good_quote: dict[str, Any]
    ) -> None:
        bundle = {k: good_quote[k] for k in ("ak_public", "quote", "signature", "pcrs")}
        _expect("ak_not_trusted", _verify_quote, enrolled, bundle)

    def test_rejects_ak_certificate_for_another_key(
        self, enrolled: Enrolled, good_quote: dict[str, Any]
    ) -> None:
        now = time.time()
        ca = _ca("privacy CA", not_before=now - 60, not_after=now + 86400)
        cert = _leaf(
            ca,
            ec.generate_private_key(ec.SECP256R1()).public_key(),
            not_after=now + 600,
        )
        bundle = {k: good_quote[k] for k in ("ak_public", "quote", "signature", "pcrs")}
        bundle["ak_certificates"] = [_der(cert)]
        policy = tpm.TpmPolicy(ak_ca_certificates=(ca[1],))
        _expect(
            "ak_certificate_mismatch", _verify_quote, enrolled, bundle, policy=policy
        )

    def test_rejects_pcrs_differing_from_reference(
        self, enrolled: Enrolled, good_quote: dict[str, Any]
    ) -> None:
        policy = tpm.TpmPolicy(
            ek_ca_certificates=enrolled.policy.ek_ca_certificates,
            activation_key=ACTIVATION_KEY,
            pcr_reference={"sha256": {7: (ZERO,)}},
        )
        _expect("pcr_mismatch", _verify_quote, enrolled, good_quote, policy=policy)

    def test_rejects_supplied_pcr_values_the_quote_did_not_sign(
        self, enrolled: Enrolled, good_quote: dict[str, Any]
    ) -> None:
        bundle = copy.deepcopy(good_quote)
        bundle["pcrs"]["sha256"]["7"] = ZERO.hex()
        _expect("pcr_digest_mismatch", _verify_quote, enrolled, bundle)

    def test_rejects_reference_pcr_outside_the_signed_selection(
        self, enrolled: Enrolled
    ) -> None:
        # PCR 7 is left out of the quote, then claimed with its true value:
        # the claim is unsigned, so it does not count.
        bundle = enrolled.quote(selection={"sha256": (0, 1, 2)})
        bundle["pcrs"]["sha256"]["7"] = _pcr7().hex()
        _expect("pcr_not_quoted", _verify_quote, enrolled, bundle)

    def test_rejects_missing_pcr_value(
        self, enrolled: Enrolled, good_quote: dict[str, Any]
    ) -> None:
        bundle = copy.deepcopy(good_quote)
        del bundle["pcrs"]["sha256"]["3"]
        _expect("pcr_missing", _verify_quote, enrolled, bundle)

    def test_rejects_certify_attest_as_quote(
        self,
        enrolled: Enrolled,
        good_quote: dict[str, Any],
        good_certify: dict[str, Any],
    ) -> None:
        bundle = _with(
            good_quote,
            quote=good_certify["attest"],
            signature=good_certify["signature"],
        )
        _expect("wrong_attest_type", _verify_quote, enrolled, bundle)

    def test_rejects_attest_not_generated_by_the_tpm(
        self, enrolled: Enrolled, good_quote: dict[str, Any]
    ) -> None:
        attest = b"\x00" + _raw(good_quote, "quote")[1:]
        _expect(
            "bad_magic", _verify_quote, enrolled, _with(good_quote, quote=_b64(attest))
        )

    def test_rejects_non_restricted_key_as_ak(
        self, enrolled: Enrolled, good_quote: dict[str, Any], es256_key: TpmKey
    ) -> None:
        bundle = _with(good_quote, ak_public=_b64(es256_key.public))
        _expect("ak_attributes", _verify_quote, enrolled, bundle)


class TestMalformedQuote:
    @pytest.mark.parametrize(
        "member,edit",
        [
            ("quote", lambda b: b[:-1]),
            ("quote", lambda b: b + b"\0"),
            ("quote", lambda b: b[:8]),
            # qualifiedSigner's TPM2B size set to 0xffff: beyond any Name.
            ("quote", lambda b: b[:6] + b"\xff\xff" + b[8:]),
            ("signature", lambda b: b[:-2]),
            ("signature", lambda b: b + b"\0\0"),
            ("ak_public", lambda b: b[:20]),
            ("ak_public", lambda b: b + b"\0"),
        ],
    )
    def test_rejects_truncated_or_oversized_structures(
        self, enrolled: Enrolled, good_quote: dict[str, Any], member: str, edit: Any
    ) -> None:
        bundle = _with(good_quote, **{member: _b64(edit(_raw(good_quote, member)))})
        _expect("malformed", _verify_quote, enrolled, bundle)

    @pytest.mark.parametrize(
        "raw",
        [b"{not json", b"[1, 2]", b"\xff\xfe", b'"a string"', b""],
    )
    def test_rejects_malformed_json(self, enrolled: Enrolled, raw: bytes) -> None:
        _expect("malformed", _verify_quote, enrolled, raw)

    @pytest.mark.parametrize(
        "edit",
        [
            {"quote": "not base64!"},
            {"quote": "QUJ"},
            {"signature": 17},
            {"pcrs": []},
            {"pcrs": {"sha256": {"0": "zz"}}},
            {"pcrs": {"sha256": {"0": "00"}}},
            {"pcrs": {"sha256": {"x": "00" * 32}}},
            {"ek_certificates": "not a list"},
            {"ek_certificates": []},
        ],
    )
    def test_rejects_malformed_members(
        self, enrolled: Enrolled, good_quote: dict[str, Any], edit: dict[str, Any]
    ) -> None:
        _expect("malformed", _verify_quote, enrolled, _with(good_quote, **edit))

    def test_rejects_missing_member(
        self, enrolled: Enrolled, good_quote: dict[str, Any]
    ) -> None:
        bundle = {k: v for k, v in good_quote.items() if k != "signature"}
        _expect("malformed", _verify_quote, enrolled, bundle)

    def test_rejects_non_certificate(
        self, enrolled: Enrolled, good_quote: dict[str, Any]
    ) -> None:
        bundle = _with(good_quote, ek_certificates=[_b64(b"0\x03\x02\x01\x00")])
        _expect("malformed", _verify_quote, enrolled, bundle)

    def test_rejects_oversized_bundle(
        self, enrolled: Enrolled, good_quote: dict[str, Any]
    ) -> None:
        bundle = _with(good_quote, padding="A" * (256 * 1024))
        _expect("too_large", _verify_quote, enrolled, bundle)
        _expect("too_large", _verify_quote, enrolled, json.dumps(bundle))


# --- TPM2_Certify ---------------------------------------------------------


class TestCertify:
    def test_certified_es256_key_rates_containment_3(
        self, enrolled: Enrolled, es256_key: TpmKey, good_certify: dict[str, Any]
    ) -> None:
        thumbprint = jwk_thumbprint(es256_key.jwk())
        ev = _verify_certify(enrolled, good_certify, expected_key_thumbprint=thumbprint)
        assert ev.kind == "tpm2_certify"
        assert ev.bound_key == thumbprint
        assert ev.maal["containment"].value == 3
        assert ev.maal["enrollment"].value == 3
        assert ev.maal["unlocking"].value == 1
        assert "userWithAuth" in ev.maal["unlocking"].reason

    def test_tpm_signed_client_assertion_verifies_with_the_bound_key(
        self, enrolled: Enrolled, es256_key: TpmKey, good_certify: dict[str, Any]
    ) -> None:
        now = int(time.time())
        assertion = enrolled.driver.client_assertion(
            es256_key, client_id="tpm-client", audience="https://issuer.test", now=now
        )
        # PyJWT checks the TPM's ES256 signature, independently of our code.
        jwk = jwt.PyJWK(es256_key.jwk())
        claims = jwt.decode(
            assertion, jwk.key, algorithms=["ES256"], audience="https://issuer.test"
        )
        assert claims["sub"] == "tpm-client"
        header = jwt.get_unverified_header(assertion)
        ev = _verify_certify(
            enrolled, good_certify, expected_key_thumbprint=header["kid"]
        )
        assert ev.bound_key == header["kid"]

    def test_without_nonce_enrollment_is_2(
        self, enrolled: Enrolled, good_certify: dict[str, Any]
    ) -> None:
        ev = _verify_certify(enrolled, good_certify, expected_nonce=None)
        assert ev.maal["containment"].value == 3
        assert ev.maal["enrollment"].value == 2

    def test_pcr_bound_key_rates_unlocking_3(self, enrolled: Enrolled) -> None:
        key = enrolled.driver.create_signing_key(
            "sealed", pcr_policy={"sha256": (0, 7)}
        )
        bundle = enrolled.certify(key)
        ev = _verify_certify(enrolled, bundle)
        assert ev.maal["unlocking"].value == 3
        # The TPM signs with it through a PolicyPCR session, and the result
        # verifies with PyJWT.
        token = enrolled.driver.sign_jwt(key, {"sub": "x"})
        assert jwt.decode(token, jwt.PyJWK(key.jwk()).key, algorithms=["ES256"]) == {
            "sub": "x"
        }

    def test_pcr_bound_key_is_refused_by_the_tpm_once_pcrs_change(
        self, enrolled: Enrolled, swtpm: SwTpm
    ) -> None:
        # PCR 16 is the debug PCR, resettable at locality 0, so the module's
        # other tests still see the state they expect afterwards.
        key = enrolled.driver.create_signing_key("debug", pcr_policy={"sha256": (16,)})
        enrolled.driver.extend(16, b"changed")
        try:
            with pytest.raises(TpmToolError):
                enrolled.driver.sign_jwt(key, {"sub": "x"})
        finally:
            env = {**os.environ, "TPM2TOOLS_TCTI": swtpm.tcti}
            subprocess.run(
                ["tpm2_pcrreset", "16"], env=env, check=True, capture_output=True
            )
        assert enrolled.driver.sign_jwt(key, {"sub": "x"})
        # Certified, it rates unlocking 3 only with a reference for PCR 16.
        bundle = enrolled.certify(key)
        assert _verify_certify(enrolled, bundle).maal["unlocking"].value == 1
        policy = tpm.TpmPolicy(
            ek_ca_certificates=enrolled.policy.ek_ca_certificates,
            activation_key=ACTIVATION_KEY,
            pcr_reference={"sha256": {16: (ZERO,)}},
        )
        assert (
            _verify_certify(enrolled, bundle, policy=policy).maal["unlocking"].value
            == 3
        )

    def test_pinned_ak_caps_containment_at_2(
        self, enrolled: Enrolled, good_certify: dict[str, Any]
    ) -> None:
        bundle = _unbound(good_certify)
        name = parse_public(enrolled.ak.public).name
        policy = tpm.TpmPolicy(trusted_ak_names=frozenset({name}))
        ev = _verify_certify(enrolled, bundle, policy=policy)
        assert ev.maal["containment"].value == 2
        assert ev.maal["enrollment"].value == 2


class TestBadCertify:
    def test_rejects_key_that_is_not_the_clients(
        self, enrolled: Enrolled, good_certify: dict[str, Any]
    ) -> None:
        other = ec.generate_private_key(ec.SECP256R1()).public_key()
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(other))
        _expect(
            "key_mismatch",
            _verify_certify,
            enrolled,
            good_certify,
            expected_key_thumbprint=jwk_thumbprint(jwk),
        )

    def test_rejects_key_created_without_fixed_tpm(self, enrolled: Enrolled) -> None:
        key = enrolled.driver.create_signing_key(
            "loose", attributes="sensitivedataorigin|userwithauth|sign"
        )
        bundle = enrolled.certify(key)
        error = _expect("key_attributes", _verify_certify, enrolled, bundle)
        assert "fixedTPM" in str(error)

    def test_rejects_public_with_edited_attributes(
        self, enrolled: Enrolled, good_certify: dict[str, Any]
    ) -> None:
        public = bytearray(_raw(good_certify, "public"))
        public[7] ^= 0x02  # TPMA_OBJECT fixedTPM (Part 2 section 8.3)
        _expect(
            "name_mismatch",
            _verify_certify,
            enrolled,
            _with(good_certify, public=_b64(bytes(public))),
        )

    def test_rejects_attest_edited_to_certify_another_name(
        self, enrolled: Enrolled, good_certify: dict[str, Any]
    ) -> None:
        # Editing the attributes and the certified Name together keeps them
        # consistent, but then the AK's signature no longer covers the attest.
        original = _raw(good_certify, "public")
        public = bytearray(original)
        public[7] ^= 0x02
        old_name = parse_public(original).name
        new_name = parse_public(bytes(public)).name
        attest = _raw(good_certify, "attest").replace(old_name, new_name)
        bundle = _with(good_certify, public=_b64(bytes(public)), attest=_b64(attest))
        _expect("bad_signature", _verify_certify, enrolled, bundle)

    def test_rejects_certify_by_another_ak(
        self, enrolled: Enrolled, good_certify: dict[str, Any]
    ) -> None:
        other = enrolled.driver.create_ak("ak3")
        _expect(
            "bad_signature",
            _verify_certify,
            enrolled,
            good_certify,
            ak_public=other.public,
        )

    def test_rejects_wrong_nonce(
        self, enrolled: Enrolled, good_certify: dict[str, Any]
    ) -> None:
        _expect(
            "nonce_mismatch",
            _verify_certify,
            enrolled,
            good_certify,
            expected_nonce=OTHER_NONCE,
        )

    def test_rejects_certify_without_the_nonce(
        self, enrolled: Enrolled, es256_key: TpmKey
    ) -> None:
        # Without a time attest only tpm2-tools' fixed qualifyingData
        # (00ff55aa) is there, which is not the issuer's nonce.
        bundle = enrolled.certify(es256_key, b"")
        assert "time_attest" not in bundle
        _expect("nonce_mismatch", _verify_certify, enrolled, bundle)

    def test_rejects_certify_made_before_the_nonce(
        self, enrolled: Enrolled, es256_key: TpmKey, good_certify: dict[str, Any]
    ) -> None:
        # A certify made earlier, sent with a newer time attest over the
        # nonce: its Clock is below the attest's, so it is not fresh.
        newer = enrolled.certify(es256_key)
        bundle = _with(
            newer, attest=good_certify["attest"], signature=good_certify["signature"]
        )
        _expect("stale_certify", _verify_certify, enrolled, bundle)

    def test_rejects_time_attest_signed_by_another_key(
        self,
        enrolled: Enrolled,
        good_certify: dict[str, Any],
        good_quote: dict[str, Any],
    ) -> None:
        bundle = _with(good_certify, time_signature=good_quote["signature"])
        _expect("bad_signature", _verify_certify, enrolled, bundle)

    def test_rejects_quote_as_certify(
        self,
        enrolled: Enrolled,
        good_quote: dict[str, Any],
        good_certify: dict[str, Any],
    ) -> None:
        bundle = _with(
            good_certify, attest=good_quote["quote"], signature=good_quote["signature"]
        )
        _expect("wrong_attest_type", _verify_certify, enrolled, bundle)

    def test_rejects_unproven_ak(
        self, enrolled: Enrolled, good_certify: dict[str, Any]
    ) -> None:
        bundle = _unbound(good_certify)
        _expect("ak_not_trusted", _verify_certify, enrolled, bundle)

    @pytest.mark.parametrize("member", ["attest", "signature", "public"])
    def test_rejects_truncated_structures(
        self, enrolled: Enrolled, good_certify: dict[str, Any], member: str
    ) -> None:
        bundle = _with(good_certify, **{member: _b64(_raw(good_certify, member)[:-1])})
        _expect("malformed", _verify_certify, enrolled, bundle)

    def test_rejects_malformed_json(self, enrolled: Enrolled) -> None:
        _expect("malformed", _verify_certify, enrolled, "{")


# --- credential activation ------------------------------------------------


class TestActivation:
    def test_ecc_ek_credential_activates_in_the_tpm(
        self, enrolled: Enrolled, swtpm: SwTpm, tmp_path: Path
    ) -> None:
        # A transient ECC EK (TCG template L-2) exercises the ECDH branch of
        # MakeCredential; the TPM is the cross-check.
        env = {**os.environ, "TPM2TOOLS_TCTI": swtpm.tcti}
        ctx, pub = tmp_path / "eccek.ctx", tmp_path / "eccek.pub"
        subprocess.run(
            ["tpm2_createek", "-G", "ecc", "-c", str(ctx), "-u", str(pub)],
            env=env,
            check=True,
            capture_output=True,
        )
        subprocess.run(["tpm2_flushcontext", "-t"], env=env, check=True)
        ek = parse_public(pub.read_bytes()[2:])
        ak_name = parse_public(enrolled.ak.public).name
        challenge = tpm.make_credential(ek, ak_name, b"ecc secret")
        driver = Tpm2Tools(enrolled.driver.workdir, tcti=swtpm.tcti, ek_handle=str(ctx))
        assert driver.activate_credential(enrolled.ak, challenge) == b"ecc secret"

    def test_credential_for_another_name_is_refused_by_the_tpm(
        self, enrolled: Enrolled
    ) -> None:
        ek = parse_public(enrolled.ek_public)
        challenge = tpm.make_credential(ek, b"\x00\x0b" + bytes(32), b"secret")
        with pytest.raises(TpmToolError):
            enrolled.driver.activate_credential(enrolled.ak, challenge)

    def test_challenge_refuses_ek_not_named_by_the_certificate(
        self, enrolled: Enrolled
    ) -> None:
        _expect(
            "ek_mismatch",
            tpm.make_activation_challenge,
            ek_certificates=enrolled.ek_chain,
            ek_public=enrolled.ak.public,
            ak_public=enrolled.ak.public,
            policy=enrolled.policy,
            now=time.time(),
        )

    def test_challenge_refuses_untrusted_ek(self, enrolled: Enrolled) -> None:
        _expect(
            "untrusted_chain",
            tpm.make_activation_challenge,
            ek_certificates=enrolled.ek_chain,
            ek_public=enrolled.ek_public,
            ak_public=enrolled.ak.public,
            policy=tpm.TpmPolicy(activation_key=ACTIVATION_KEY),
            now=time.time(),
        )


# --- the real GCE Shielded VM sample --------------------------------------


def _sample_bundle() -> tuple[dict[str, Any], bytes]:
    sample = json.loads(WINDOWS.read_text())
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
    return bundle, parse_public(base64.b64decode(sample["AK"]["Public"])).name


def _sample_policy(name: bytes, **extra: Any) -> tpm.TpmPolicy:
    return tpm.TpmPolicy(trusted_ak_names=frozenset({name}), allow_sha1=True, **extra)


def _tpm2_eventlog(raw: bytes, tmp_path: Path) -> dict[str, dict[int, bytes]]:
    # tpm2_eventlog prints YAML; its closing "pcrs:" block lists each bank's
    # replayed values as "  <index> : 0x<hex>".
    path = tmp_path / "log.bin"
    path.write_bytes(raw)
    out = subprocess.run(
        ["tpm2_eventlog", str(path)], check=True, capture_output=True, text=True
    ).stdout
    values: dict[str, dict[int, bytes]] = {}
    bank = ""
    for line in out[out.rindex("\npcrs:") :].splitlines()[1:]:
        if line.startswith("  ") and not line.startswith("    ") and line.endswith(":"):
            bank = line.strip()[:-1]
            values[bank] = {}
        elif ":" in line and line.startswith("    "):
            index, value = line.split(":")
            values[bank][int(index)] = bytes.fromhex(value.strip()[2:])
    return values


class TestRealSample:
    def test_gce_windows_quote_verifies_and_log_replays(self) -> None:
        bundle, name = _sample_bundle()
        sample = json.loads(WINDOWS.read_text())
        reference = {
            "sha1": {
                p["Index"]: (base64.b64decode(p["Digest"]),)
                for p in sample["Log"]["PCRs"]
                if p["Index"] in (0, 7)
            }
        }
        ev = tpm.verify_quote(
            bundle,
            policy=_sample_policy(name, pcr_reference=reference),
            expected_nonce=None,
            now=time.time(),
        )
        assert ev.mial["identity_attestation"].value == 1
        assert ev.mial["deployment_environment"].value == 1
        assert ev.nonce is None
        assert ev.details["ak_trust"] == "pinned"
        assert ev.details["event_log"] == (
            "21 events replayed; matches sha1:0, sha1:4, sha1:5, sha1:7, "
            "sha1:11, sha1:12, sha1:13, sha1:14"
        )

    def test_gce_quote_needs_legacy_sha1(self) -> None:
        bundle, name = _sample_bundle()
        policy = tpm.TpmPolicy(trusted_ak_names=frozenset({name}))
        _expect(
            "unsupported",
            tpm.verify_quote,
            bundle,
            policy=policy,
            expected_nonce=None,
            now=time.time(),
        )

    def test_gce_quote_without_a_trusted_ak_is_refused(self) -> None:
        bundle, _ = _sample_bundle()
        _expect(
            "ak_not_trusted",
            tpm.verify_quote,
            bundle,
            policy=tpm.TpmPolicy(allow_sha1=True),
            expected_nonce=None,
            now=time.time(),
        )

    def test_gce_quote_has_no_nonce_to_match(self) -> None:
        bundle, name = _sample_bundle()
        _expect(
            "nonce_missing",
            tpm.verify_quote,
            bundle,
            policy=_sample_policy(name),
            expected_nonce=NONCE,
            now=time.time(),
        )

    def test_rejects_edited_event_log(self) -> None:
        bundle, name = _sample_bundle()
        raw = bytearray(base64.b64decode(bundle["event_log"]))
        raw[8] ^= 1  # first byte of the first event's SHA-1 digest (PCR 0)
        bundle["event_log"] = _b64(bytes(raw))
        _expect(
            "event_log_mismatch",
            tpm.verify_quote,
            bundle,
            policy=_sample_policy(name),
            expected_nonce=None,
            now=time.time(),
        )

    def test_rejects_truncated_event_log(self) -> None:
        bundle, name = _sample_bundle()
        bundle["event_log"] = _b64(base64.b64decode(bundle["event_log"])[:-3])
        _expect(
            "malformed",
            tpm.verify_quote,
            bundle,
            policy=_sample_policy(name),
            expected_nonce=None,
            now=time.time(),
        )

    def test_rejects_edited_pcr_value(self) -> None:
        bundle, name = _sample_bundle()
        bundle["pcrs"]["sha1"]["9"] = "11" * 20
        _expect(
            "pcr_digest_mismatch",
            tpm.verify_quote,
            bundle,
            policy=_sample_policy(name),
            expected_nonce=None,
            now=time.time(),
        )

    def test_windows_log_replay_matches_tpm2_eventlog(self, tmp_path: Path) -> None:
        sample = json.loads(WINDOWS.read_text())
        raw = base64.b64decode(sample["Log"]["Raw"])
        log = parse_event_log(raw)
        assert not log.crypto_agile
        ours = replay_event_log(log)
        theirs = _tpm2_eventlog(raw, tmp_path)
        assert ours == {0x0004: theirs["sha1"]}

    def test_ubuntu_crypto_agile_log_replay_matches_tpm2_eventlog(
        self, tmp_path: Path
    ) -> None:
        raw = UBUNTU_LOG.read_bytes()
        log = parse_event_log(raw)
        assert log.crypto_agile
        assert log.algorithms == (0x0004, 0x000B, 0x000C)
        assert len(log.events) == 105
        ours = replay_event_log(log)
        theirs = _tpm2_eventlog(raw, tmp_path)
        assert ours == {
            0x0004: theirs["sha1"],
            0x000B: theirs["sha256"],
            0x000C: theirs["sha384"],
        }

    def test_ubuntu_log_rejects_truncation(self) -> None:
        raw = UBUNTU_LOG.read_bytes()
        _expect("malformed", parse_event_log, raw[:-1])
        # A digest count larger than the banks the header declared.
        _expect("malformed", parse_event_log, raw[:0x51] + struct.pack("<I", 9))
