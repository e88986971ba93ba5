"""AWS Nitro Enclaves attestation documents: the real samples under the AWS
root, and documents built here under a test root CA made with cryptography."""

from __future__ import annotations

import base64
import datetime
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from issuer.errors import EvidenceError
from issuer.evidence import digest_of, nitro
from issuer.evidence.ear import public_key_thumbprint, require_bound_key

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
NITRO = DATA / "nitro-attestation"

# Inside the real documents' leaf validity (14:37:36Z to 17:37:39Z).
SAMPLE_NOW = 1725721200
SAMPLE_LEAF_NOT_AFTER = 1725730659
# The real document was made 1340 s before SAMPLE_NOW.
SAMPLE_MAX_AGE = 3600
SAMPLE_PCR0 = (
    "e72a46ca80a260fb044a125442f0c7e331813bcbaf9724d9"
    "f3857758992766f2d65710a27aa94ae3949dd54e7c9fe86a"
)

NOW = 1767225600
NONCE = b"mI6vGQ2ZFzbqR5R3M6f2Hh3V2sPp3ak1oNtqXyXyBvA"
PCR0 = bytes(range(48))
PCR1 = bytes(range(48, 96))
PCR2 = bytes(range(96, 144))


def aws_roots() -> tuple[x509.Certificate, ...]:
    return nitro.load_roots(NITRO / "AWS_NitroEnclaves_Root-G1.root.pem")


def sample(name: str = "nitro_attestation.b64") -> bytes:
    return (NITRO / name).read_bytes()


def sample_cose(name: str = "nitro_attestation.b64") -> bytes:
    return base64.b64decode(sample(name))


def sample_policy(**overrides: Any) -> nitro.NitroPolicy:
    settings: dict[str, Any] = {"roots": aws_roots(), "max_age": SAMPLE_MAX_AGE}
    settings.update(overrides)
    return nitro.NitroPolicy(**settings)


def sample_pcrs(*indices: int) -> dict[int, bytes]:
    document = cbor2.loads(cbor2.loads(sample_cose())[2])
    return {i: document["pcrs"][i] for i in indices}


def values(evidence: Any) -> dict[str, int]:
    return {dim: rating.value for dim, rating in evidence.mial.items()}


def reason(exc: pytest.ExceptionInfo[EvidenceError]) -> str:
    return exc.value.reason


# A test PKI shaped like AWS's: P-384 root, intermediate, leaf without SAN.


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _at(seconds: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    not_before: float,
    not_after: float,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer.subject if issuer else _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_at(not_before))
        .not_valid_after(_at(not_after))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=not ca,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    if ca:
        builder = builder.add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
        if issuer is not None:
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    issuer_key.public_key()
                ),
                critical=False,
            )
    return builder.sign(issuer_key, hashes.SHA384())


@dataclass
class Pki:
    root: x509.Certificate
    intermediate: x509.Certificate
    leaf: x509.Certificate
    leaf_key: ec.EllipticCurvePrivateKey
    intermediate_key: ec.EllipticCurvePrivateKey

    def policy(self, **overrides: Any) -> nitro.NitroPolicy:
        settings: dict[str, Any] = {"roots": (self.root,)}
        settings.update(overrides)
        return nitro.NitroPolicy(**settings)


def make_pki(leaf_not_after: float = NOW + 3 * 3600) -> Pki:
    root_key = ec.generate_private_key(ec.SECP384R1())
    inter_key = ec.generate_private_key(ec.SECP384R1())
    leaf_key = ec.generate_private_key(ec.SECP384R1())
    start, end = NOW - 86400, NOW + 365 * 86400
    root = _certificate(
        "test nitro root",
        root_key,
        None,
        root_key,
        ca=True,
        not_before=start,
        not_after=end,
    )
    inter = _certificate(
        "test nitro zone",
        inter_key,
        root,
        root_key,
        ca=True,
        not_before=start,
        not_after=end,
    )
    leaf = _certificate(
        "i-0123.enc0123",
        leaf_key,
        inter,
        inter_key,
        ca=False,
        not_before=NOW - 3600,
        not_after=leaf_not_after,
    )
    return Pki(root, inter, leaf, leaf_key, inter_key)


@pytest.fixture(scope="module")
def pki() -> Pki:
    return make_pki()


@pytest.fixture(scope="module")
def good(pki: Pki) -> bytes:
    """A fresh, well-formed document whose PCRs match the reference values."""
    return build(pki)


def workload_key() -> ec.EllipticCurvePublicKey:
    return ec.generate_private_key(ec.SECP256R1()).public_key()


def spki(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def document(pki: Pki, **changes: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "module_id": "i-0123-enc0123",
        "digest": "SHA384",
        "timestamp": (NOW - 5) * 1000,
        "pcrs": {0: PCR0, 1: PCR1, 2: PCR2, 3: bytes(48), 4: bytes(range(1, 49))},
        "certificate": pki.leaf.public_bytes(serialization.Encoding.DER),
        "cabundle": [
            pki.root.public_bytes(serialization.Encoding.DER),
            pki.intermediate.public_bytes(serialization.Encoding.DER),
        ],
        "public_key": None,
        "user_data": None,
        "nonce": NONCE,
    }
    fields.update(changes)
    return fields


def es384(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA384())))
    return r.to_bytes(48, "big") + s.to_bytes(48, "big")


def sign1(
    pki: Pki,
    payload: bytes,
    *,
    alg: int = -35,
    signed_payload: bytes | None = None,
    protected: dict[int, Any] | None = None,
) -> bytes:
    """A COSE_Sign1 over ``signed_payload`` (default: ``payload``)."""
    header = cbor2.dumps(protected if protected is not None else {1: alg})
    to_sign = cbor2.dumps(["Signature1", header, b"", signed_payload or payload])
    return cbor2.dumps([header, {}, payload, es384(pki.leaf_key, to_sign)])


def build(pki: Pki, **changes: Any) -> bytes:
    return sign1(pki, cbor2.dumps(document(pki, **changes)))


def policy_with_references(pki: Pki, **overrides: Any) -> nitro.NitroPolicy:
    return pki.policy(reference_pcrs={0: PCR0, 1: PCR1, 2: PCR2}, **overrides)


Check = Callable[..., Any]


@pytest.fixture
def check(pki: Pki) -> Check:
    def run(raw: bytes | str, nonce: bytes | None = NONCE, **overrides: Any) -> Any:
        policy = overrides.pop("policy", None) or policy_with_references(
            pki, **overrides
        )
        return nitro.verify(raw, policy=policy, expected_nonce=nonce, now=NOW)

    return run


# The real samples.


class TestRealSamples:
    def test_rates_the_real_document_without_a_nonce_at_two(self) -> None:
        raw = sample()
        evidence = nitro.verify(
            raw, policy=sample_policy(), expected_nonce=None, now=SAMPLE_NOW
        )

        assert evidence.kind == "nitro_attestation"
        assert values(evidence) == {
            "identity_attestation": 2,
            "deployment_environment": 2,
            "software_integrity": 2,
        }
        assert evidence.expires_at == SAMPLE_LEAF_NOT_AFTER
        assert evidence.digest == digest_of(raw)
        assert evidence.subjects == (f"nitro-pcr0:{SAMPLE_PCR0}",)
        # Its public_key field is 1024 filler bytes, not a key.
        assert evidence.bound_key is None
        assert (
            evidence.details["module_id"] == "i-0a22e5c5f24d22174-enc0191cceb4289903f"
        )
        assert evidence.details["debug"] == "no"

    def test_reference_pcrs_alone_do_not_reach_three(self) -> None:
        policy = sample_policy(reference_pcrs=sample_pcrs(0, 1, 2))
        evidence = nitro.verify(
            sample(), policy=policy, expected_nonce=None, now=SAMPLE_NOW
        )
        assert set(values(evidence).values()) == {2}

    def test_the_real_document_reaches_three_when_its_nonce_was_expected(self) -> None:
        # The sample's nonce is 1024 bytes of 0x01: expecting exactly that
        # shows the nonce path on a document AWS signed.
        policy = sample_policy(reference_pcrs=sample_pcrs(0, 1, 2))
        evidence = nitro.verify(
            sample(), policy=policy, expected_nonce=b"\x01" * 1024, now=SAMPLE_NOW
        )
        assert set(values(evidence).values()) == {3}

    def test_refuses_the_real_document_against_other_reference_values(self) -> None:
        policy = sample_policy(reference_pcrs={0: bytes(48)})
        with pytest.raises(EvidenceError) as exc:
            nitro.verify(sample(), policy=policy, expected_nonce=None, now=SAMPLE_NOW)
        assert reason(exc) == "reference_mismatch"

    def test_refuses_the_real_document_with_a_wrong_nonce(self) -> None:
        with pytest.raises(EvidenceError) as exc:
            nitro.verify(
                sample(), policy=sample_policy(), expected_nonce=NONCE, now=SAMPLE_NOW
            )
        assert reason(exc) == "nonce_mismatch"

    def test_refuses_the_debug_mode_document(self) -> None:
        with pytest.raises(EvidenceError) as exc:
            nitro.verify(
                sample("nitro_attestation_debug.b64"),
                policy=sample_policy(),
                expected_nonce=None,
                now=SAMPLE_NOW,
            )
        assert reason(exc) == "debug_mode"

    def test_the_debug_document_fails_production_reference_values_when_allowed(
        self,
    ) -> None:
        raw = sample("nitro_attestation_debug.b64")
        allowed = sample_policy(allow_debug=True)
        evidence = nitro.verify(
            raw, policy=allowed, expected_nonce=None, now=SAMPLE_NOW
        )
        assert evidence.details["debug"] == "yes"

        strict = sample_policy(allow_debug=True, reference_pcrs=sample_pcrs(0, 1, 2))
        with pytest.raises(EvidenceError) as exc:
            nitro.verify(raw, policy=strict, expected_nonce=None, now=SAMPLE_NOW)
        assert reason(exc) == "reference_mismatch"

    def test_refuses_the_self_signed_document(self) -> None:
        with pytest.raises(EvidenceError) as exc:
            nitro.verify(
                sample("selfsigned_attestation.b64"),
                policy=sample_policy(),
                expected_nonce=None,
                now=SAMPLE_NOW,
            )
        assert reason(exc) == "untrusted_chain"

    def test_the_self_signed_document_does_not_chain_even_to_its_own_cert(self) -> None:
        # Trusting its signer does not help: it carries no CA bundle, and a
        # leaf is never its own trust anchor here.
        own = x509.load_der_x509_certificate(
            (NITRO / "selfsigned_cert.der").read_bytes()
        )
        with pytest.raises(EvidenceError) as exc:
            nitro.verify(
                sample("selfsigned_attestation.b64"),
                policy=sample_policy(roots=(own,)),
                expected_nonce=None,
                now=SAMPLE_NOW,
            )
        assert reason(exc) == "untrusted_chain"

    def test_refuses_the_real_document_after_its_leaf_expired(self) -> None:
        with pytest.raises(EvidenceError) as exc:
            nitro.verify(
                sample(),
                policy=sample_policy(max_age=10**9),
                expected_nonce=None,
                now=SAMPLE_LEAF_NOT_AFTER + 1,
            )
        assert reason(exc) == "expired"

    def test_refuses_the_real_document_before_its_leaf_is_valid(self) -> None:
        with pytest.raises(EvidenceError) as exc:
            nitro.verify(
                sample(), policy=sample_policy(), expected_nonce=None, now=1725719000
            )
        assert reason(exc) == "not_yet_valid"

    def test_refuses_the_real_document_as_too_old_under_the_default_max_age(
        self,
    ) -> None:
        with pytest.raises(EvidenceError) as exc:
            nitro.verify(
                sample(),
                policy=nitro.NitroPolicy(roots=aws_roots()),
                expected_nonce=None,
                now=SAMPLE_NOW,
            )
        assert reason(exc) == "expired"

    @pytest.mark.parametrize("form", ["raw", "tagged", "urlsafe", "wrapped"])
    def test_accepts_every_encoding_of_the_real_document(self, form: str) -> None:
        cose = sample_cose()
        raw = {
            "raw": cose,
            "tagged": b"\xd2" + cose,
            "urlsafe": base64.urlsafe_b64encode(cose).rstrip(b"="),
            "wrapped": base64.encodebytes(cose),
        }[form]
        evidence = nitro.verify(
            raw, policy=sample_policy(), expected_nonce=None, now=SAMPLE_NOW
        )
        assert evidence.mial["identity_attestation"].value == 2

    def test_refuses_the_real_document_with_one_payload_byte_changed(self) -> None:
        cose = sample_cose()
        at = cose.index(b"i-0a22e5c5f24d22174")
        forged = cose[:at] + b"i-0b" + cose[at + 4 :]
        with pytest.raises(EvidenceError) as exc:
            nitro.verify(
                forged, policy=sample_policy(), expected_nonce=None, now=SAMPLE_NOW
            )
        assert reason(exc) == "bad_signature"


# Documents under the test root.


class TestRatings:
    def test_fresh_document_with_matching_pcrs_rates_three(
        self, good: bytes, check: Check
    ) -> None:
        evidence = check(good)
        assert values(evidence) == {
            "identity_attestation": 3,
            "deployment_environment": 3,
            "software_integrity": 3,
        }
        assert evidence.nonce == NONCE

    def test_without_a_nonce_it_stays_at_two(self, good: bytes, check: Check) -> None:
        assert set(values(check(good, nonce=None)).values()) == {2}

    def test_without_a_pcr0_reference_it_stays_at_two(
        self, good: bytes, pki: Pki, check: Check
    ) -> None:
        evidence = check(good, policy=pki.policy(reference_pcrs={1: PCR1}))
        assert set(values(evidence).values()) == {2}

    def test_without_reference_values_it_stays_at_two(
        self, good: bytes, pki: Pki, check: Check
    ) -> None:
        assert set(values(check(good, policy=pki.policy())).values()) == {2}


class TestFreshness:
    def test_refuses_a_wrong_nonce(self, pki: Pki, check: Check) -> None:
        with pytest.raises(EvidenceError) as exc:
            check(build(pki, nonce=b"another nonce"))
        assert reason(exc) == "nonce_mismatch"

    @pytest.mark.parametrize("nonce", [None, b""])
    def test_refuses_a_missing_nonce(self, pki: Pki, check: Check, nonce: Any) -> None:
        with pytest.raises(EvidenceError) as exc:
            check(build(pki, nonce=nonce))
        assert reason(exc) == "nonce_missing"

    def test_refuses_an_old_document(self, pki: Pki, check: Check) -> None:
        with pytest.raises(EvidenceError) as exc:
            check(build(pki, timestamp=(NOW - 301) * 1000))
        assert reason(exc) == "expired"

    def test_refuses_a_timestamp_in_seconds(self, pki: Pki, check: Check) -> None:
        # The self-signed sample's mistake: seconds read as milliseconds
        # date the document in January 1970.
        with pytest.raises(EvidenceError) as exc:
            check(build(pki, timestamp=NOW - 5))
        assert reason(exc) == "expired"

    def test_refuses_a_document_from_the_future(self, pki: Pki, check: Check) -> None:
        with pytest.raises(EvidenceError) as exc:
            check(build(pki, timestamp=(NOW + 120) * 1000))
        assert reason(exc) == "not_yet_valid"


class TestReferenceValues:
    @pytest.mark.parametrize("index", [0, 1, 2])
    def test_refuses_a_pcr_that_differs(
        self, pki: Pki, check: Check, index: int
    ) -> None:
        pcrs = {0: PCR0, 1: PCR1, 2: PCR2}
        pcrs[index] = bytes(reversed(pcrs[index]))
        with pytest.raises(EvidenceError) as exc:
            check(build(pki, pcrs=pcrs))
        assert reason(exc) == "reference_mismatch"

    def test_refuses_a_referenced_pcr_that_is_absent(
        self, pki: Pki, check: Check
    ) -> None:
        with pytest.raises(EvidenceError) as exc:
            check(build(pki, pcrs={0: PCR0, 1: PCR1}))
        assert reason(exc) == "reference_mismatch"

    def test_refuses_debug_mode(self, pki: Pki, check: Check) -> None:
        zero = bytes(48)
        with pytest.raises(EvidenceError) as exc:
            check(build(pki, pcrs={0: zero, 1: zero, 2: zero}), policy=pki.policy())
        assert reason(exc) == "debug_mode"

    def test_policy_refuses_reference_values_of_a_wrong_size(self, pki: Pki) -> None:
        with pytest.raises(ValueError):
            pki.policy(reference_pcrs={0: b"short"})
        with pytest.raises(ValueError):
            pki.policy(reference_pcrs={40: PCR0})


class TestBoundKey:
    def test_binds_a_der_public_key(self, pki: Pki, check: Check) -> None:
        key = workload_key()
        evidence = check(build(pki, public_key=spki(key)))
        assert evidence.bound_key == public_key_thumbprint(key)
        assert require_bound_key(evidence, public_key_thumbprint(key)) is evidence

    def test_binds_an_uncompressed_ec_point(self, pki: Pki, check: Check) -> None:
        key = workload_key()
        point = key.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        assert check(build(pki, public_key=point)).bound_key == public_key_thumbprint(
            key
        )

    def test_a_key_other_than_the_clients_is_refused(
        self, pki: Pki, check: Check
    ) -> None:
        evidence = check(build(pki, public_key=spki(workload_key())))
        with pytest.raises(EvidenceError) as exc:
            require_bound_key(evidence, public_key_thumbprint(workload_key()))
        assert reason(exc) == "key_mismatch"

    def test_bytes_that_are_not_a_key_bind_nothing(
        self, pki: Pki, check: Check
    ) -> None:
        evidence = check(build(pki, public_key=b"\x04" + b"\x01" * 64))
        assert evidence.bound_key is None
        with pytest.raises(EvidenceError) as exc:
            require_bound_key(evidence, public_key_thumbprint(workload_key()))
        assert reason(exc) == "key_missing"


class TestChain:
    def test_refuses_a_document_chaining_to_an_untrusted_root(self, pki: Pki) -> None:
        with pytest.raises(EvidenceError) as exc:
            nitro.verify(
                build(pki), policy=sample_policy(), expected_nonce=NONCE, now=NOW
            )
        assert reason(exc) == "untrusted_chain"

    def test_refuses_a_document_whose_bundle_names_the_real_root(
        self, pki: Pki
    ) -> None:
        # Putting AWS's root in the bundle proves nothing: only the
        # configured copy is an anchor, and it did not sign the test CA.
        aws = aws_roots()[0].public_bytes(serialization.Encoding.DER)
        intermediate = pki.intermediate.public_bytes(serialization.Encoding.DER)
        raw = build(pki, cabundle=[aws, intermediate])
        with pytest.raises(EvidenceError) as exc:
            nitro.verify(raw, policy=sample_policy(), expected_nonce=NONCE, now=NOW)
        assert reason(exc) == "untrusted_chain"

    def test_refuses_a_bundle_missing_the_intermediate(
        self, pki: Pki, check: Check
    ) -> None:
        root = pki.root.public_bytes(serialization.Encoding.DER)
        with pytest.raises(EvidenceError) as exc:
            check(build(pki, cabundle=[root]))
        assert reason(exc) == "untrusted_chain"

    def test_refuses_an_expired_leaf_certificate(self) -> None:
        stale = make_pki(leaf_not_after=NOW - 60)
        with pytest.raises(EvidenceError) as exc:
            nitro.verify(
                build(stale), policy=stale.policy(), expected_nonce=NONCE, now=NOW
            )
        assert reason(exc) == "expired"

    def test_refuses_a_leaf_that_is_a_ca(self, pki: Pki) -> None:
        # A CA certificate is no enclave: path validation refuses it as leaf.
        key = ec.generate_private_key(ec.SECP384R1())
        rogue = _certificate(
            "rogue",
            key,
            pki.intermediate,
            pki.intermediate_key,
            ca=True,
            not_before=NOW - 60,
            not_after=NOW + 60,
        )
        other = Pki(pki.root, pki.intermediate, rogue, key, pki.intermediate_key)
        with pytest.raises(EvidenceError) as exc:
            nitro.verify(
                build(other), policy=pki.policy(), expected_nonce=NONCE, now=NOW
            )
        assert reason(exc) == "untrusted_chain"

    def test_refuses_a_leaf_whose_name_has_an_unknown_string_type(
        self, pki: Pki, check: Check
    ) -> None:
        # Found by fuzzing: cryptography raises KeyError, not ValueError,
        # while validating such a name; it must still be a clean refusal.
        der = pki.leaf.public_bytes(serialization.Encoding.DER)
        name = b"i-0123.enc0123"
        at = der.index(bytes([0x0C, len(name)]) + name)
        broken = der[:at] + b"\xcd" + der[at + 1 :]
        with pytest.raises(EvidenceError) as exc:
            check(build(pki, certificate=broken))
        assert reason(exc) == "untrusted_chain"


class TestSignature:
    def test_refuses_a_signature_over_other_data(self, pki: Pki, check: Check) -> None:
        honest = cbor2.dumps(document(pki, nonce=b"old nonce"))
        forged = cbor2.dumps(document(pki))
        with pytest.raises(EvidenceError) as exc:
            check(sign1(pki, forged, signed_payload=honest))
        assert reason(exc) == "bad_signature"

    def test_refuses_a_signature_by_a_key_other_than_the_leaf(
        self, pki: Pki, check: Check
    ) -> None:
        stranger = Pki(
            pki.root,
            pki.intermediate,
            pki.leaf,
            ec.generate_private_key(ec.SECP384R1()),
            pki.intermediate_key,
        )
        with pytest.raises(EvidenceError) as exc:
            check(build(stranger))
        assert reason(exc) == "bad_signature"

    def test_refuses_a_signature_of_a_wrong_size(
        self, good: bytes, pki: Pki, check: Check
    ) -> None:
        header, unprotected, payload, signature = cbor2.loads(good)
        with pytest.raises(EvidenceError) as exc:
            check(cbor2.dumps([header, unprotected, payload, signature[:-1]]))
        assert reason(exc) == "bad_signature"

    @pytest.mark.parametrize("alg", [-7, -36, -37, 0])
    def test_refuses_other_cose_algorithms(
        self, pki: Pki, check: Check, alg: int
    ) -> None:
        with pytest.raises(EvidenceError) as exc:
            check(sign1(pki, cbor2.dumps(document(pki)), alg=alg))
        assert reason(exc) == "unsupported"

    def test_refuses_critical_headers(self, pki: Pki, check: Check) -> None:
        raw = sign1(pki, cbor2.dumps(document(pki)), protected={1: -35, 2: [99]})
        with pytest.raises(EvidenceError) as exc:
            check(raw)
        assert reason(exc) == "unsupported"

    def test_accepts_a_null_unprotected_header(
        self, good: bytes, pki: Pki, check: Check
    ) -> None:
        header, _, payload, signature = cbor2.loads(good)
        assert check(cbor2.dumps([header, None, payload, signature])).mial


class TestBadInput:
    def test_refuses_an_oversized_document_before_parsing(self, check: Check) -> None:
        with pytest.raises(EvidenceError) as exc:
            check(b"\x84" + b"\x00" * 40000)
        assert reason(exc) == "too_large"

    @pytest.mark.parametrize("keep", [1, 10, 200, -1])
    def test_refuses_a_truncated_document(
        self, good: bytes, check: Check, keep: int
    ) -> None:
        with pytest.raises(EvidenceError) as exc:
            check(good[:keep])
        assert reason(exc) == "malformed"

    def test_refuses_trailing_bytes(self, good: bytes, check: Check) -> None:
        with pytest.raises(EvidenceError) as exc:
            check(good + b"\x00")
        assert reason(exc) == "malformed"

    @pytest.mark.parametrize(
        "raw", [b"not base64 at all!", "é", b"\x84\x01\x02\x03\x04", b"\xd2\xd2\x84"]
    )
    def test_refuses_input_that_is_neither_cose_nor_base64(
        self, check: Check, raw: bytes | str
    ) -> None:
        with pytest.raises(EvidenceError) as exc:
            check(raw)
        assert reason(exc) == "malformed"

    def test_refuses_indefinite_length_cbor(self, good: bytes, check: Check) -> None:
        header, unprotected, payload, signature = cbor2.loads(good)
        indefinite = (
            b"\x9f"
            + b"".join(
                cbor2.dumps(v) for v in (header, unprotected, payload, signature)
            )
            + b"\xff"
        )
        with pytest.raises(EvidenceError) as exc:
            check(indefinite)
        assert reason(exc) == "malformed"

    def test_refuses_a_signed_payload_with_duplicate_keys(
        self, pki: Pki, check: Check
    ) -> None:
        fields = document(pki)
        body = b"".join(cbor2.dumps(k) + cbor2.dumps(v) for k, v in fields.items())
        # Ten entries declared, a duplicate "nonce" appended as the tenth.
        payload = (
            bytes([0xA0 + len(fields) + 1])
            + body
            + cbor2.dumps("nonce")
            + cbor2.dumps(b"x")
        )
        with pytest.raises(EvidenceError) as exc:
            check(sign1(pki, payload))
        assert reason(exc) == "malformed"

    def test_refuses_tags_inside_the_document(self, pki: Pki, check: Check) -> None:
        tagged = cbor2.CBORTag(1, NOW)
        with pytest.raises(EvidenceError) as exc:
            check(build(pki, timestamp=tagged))
        assert reason(exc) == "malformed"

    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("pcrs", {0: b"short"}),
            ("pcrs", {}),
            ("pcrs", {-1: PCR0}),
            ("pcrs", {"0": PCR0}),
            ("module_id", ""),
            ("timestamp", "now"),
            ("user_data", b"x" * 1025),
            ("public_key", "not bytes"),
            ("certificate", b"not a certificate"),
            ("cabundle", "not a list"),
        ],
    )
    def test_refuses_signed_fields_that_break_the_specification(
        self, pki: Pki, check: Check, field: str, value: Any
    ) -> None:
        with pytest.raises(EvidenceError) as exc:
            check(build(pki, **{field: value}))
        assert reason(exc) == "malformed"

    def test_refuses_a_digest_other_than_sha384(self, pki: Pki, check: Check) -> None:
        with pytest.raises(EvidenceError) as exc:
            check(build(pki, digest="SHA256"))
        assert reason(exc) == "unsupported"

    def test_refuses_a_payload_that_is_not_a_map(self, pki: Pki, check: Check) -> None:
        with pytest.raises(EvidenceError) as exc:
            check(sign1(pki, cbor2.dumps([1, 2, 3])))
        assert reason(exc) == "malformed"

    def test_refuses_a_cose_array_of_three(self, good: bytes, check: Check) -> None:
        header, unprotected, payload, _ = cbor2.loads(good)
        with pytest.raises(EvidenceError) as exc:
            check(cbor2.dumps([header, unprotected, payload]))
        assert reason(exc) == "malformed"


class TestPolicy:
    def test_refuses_a_policy_without_roots(self) -> None:
        with pytest.raises(ValueError):
            nitro.NitroPolicy(roots=())

    def test_load_roots_reads_the_aws_root(self) -> None:
        (root,) = aws_roots()
        assert root.fingerprint(hashes.SHA256()).hex() == (
            "641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b"
        )
