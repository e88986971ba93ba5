"""EAT Attestation Results: the real Veraison sample and EARs minted with its
published test key from the published claim-set templates."""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm
from jwt.api_jws import PyJWS

from issuer.config import ConfigError
from issuer.errors import EvidenceError
from issuer.evidence import digest_of, ear
from issuer.platforms.keysource import VerificationKey

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
EAR = DATA / "ear"

# Inside the sample's validity: after its nbf (2023-02-24T14:11:19Z).
SAMPLE_NOW = 1677628800
SAMPLE_IAT = 1666529184
# The sample's appraisal is four months old at SAMPLE_NOW.
OLD_ENOUGH = 400 * 86400

NOW = 1767225600
NONCE = "mI6vGQ2ZFzbqR5R3M6f2Hh3V2sPp3ak1oNtqXyXyBvA"


def sample_policy(**overrides: Any) -> ear.EarPolicy:
    settings: dict[str, Any] = {
        "keys": ear.load_verifier_keys(EAR / "pkey.pem"),
        "max_age": OLD_ENOUGH,
    }
    settings.update(overrides)
    return ear.EarPolicy(**settings)


def veraison_test_key() -> ec.EllipticCurvePrivateKey:
    jwk = (EAR / "veraison-ear-skey.json").read_text()
    key = ECAlgorithm.from_jwk(jwk)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def template(name: str, **changes: Any) -> dict[str, Any]:
    """A published claim set, dated NOW, with ``changes`` applied."""
    claims: dict[str, Any] = json.loads((EAR / f"veraison-ear-{name}.json").read_text())
    claims["iat"] = NOW - 10
    claims.update(changes)
    return claims


def mint(
    claims: dict[str, Any], key: Any = None, alg: str = "ES256", **headers: Any
) -> str:
    return jwt.encode(
        claims, key or veraison_test_key(), algorithm=alg, headers=headers or None
    )


def check(
    token: str | bytes, nonce: bytes | None = NONCE.encode(), **policy: Any
) -> Any:
    settings: dict[str, Any] = {"keys": ear.load_verifier_keys(EAR / "pkey.pem")}
    settings.update(policy)
    return ear.verify(
        token, policy=ear.EarPolicy(**settings), expected_nonce=nonce, now=NOW
    )


def values(evidence: Any) -> dict[str, int]:
    return {dim: rating.value for dim, rating in evidence.mial.items()}


def caps(evidence: Any) -> dict[str, int]:
    return {dim: rating.value for dim, rating in evidence.caps.items()}


def appraisal(claims: dict[str, Any]) -> dict[str, Any]:
    submod: dict[str, Any] = next(iter(claims["submods"].values()))
    return submod


def reason(exc: pytest.ExceptionInfo[EvidenceError]) -> str:
    return exc.value.reason


def independent_thumbprint(spki_b64url: str) -> str:
    """RFC 7638 thumbprint computed by hand, not through PyJWT's JWK writer."""
    der = base64.urlsafe_b64decode(spki_b64url + "=" * (-len(spki_b64url) % 4))
    key = serialization.load_der_public_key(der)
    assert isinstance(key, ec.EllipticCurvePublicKey)
    numbers = key.public_numbers()

    def coordinate(n: int) -> str:
        raw = n.to_bytes(32, "big")
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    canonical = (
        f'{{"crv":"P-256","kty":"EC","x":"{coordinate(numbers.x)}",'
        f'"y":"{coordinate(numbers.y)}"}}'
    )
    digest = hashlib.sha256(canonical.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


# The real sample.


class TestRealSample:
    @pytest.mark.parametrize("key_file", ["pkey.pem", "veraison-ear-pkey.json"])
    def test_rates_the_veraison_sample_without_a_nonce_at_two(
        self, key_file: str
    ) -> None:
        raw = (EAR / "ear.jwt").read_bytes()
        policy = sample_policy(keys=ear.load_verifier_keys(EAR / key_file))

        evidence = ear.verify(raw, policy=policy, expected_nonce=None, now=SAMPLE_NOW)

        assert evidence.kind == "ear"
        assert values(evidence) == {
            "identity_attestation": 2,
            "deployment_environment": 2,
            "software_integrity": 2,
        }
        assert evidence.caps == {}
        assert evidence.contraindicated is False
        assert evidence.nonce is None
        assert evidence.expires_at is None
        assert evidence.digest == digest_of(raw)
        assert evidence.details["status"] == "affirming"
        assert evidence.details["appraised_at"] == str(SAMPLE_IAT)

    def test_binds_the_attested_key_by_its_rfc7638_thumbprint(self) -> None:
        raw = (EAR / "ear.jwt").read_text().strip()
        claims = jwt.decode(raw, options={"verify_signature": False})
        akpub = claims["submods"]["PARSEC_TPM"]["ear.veraison.key-attestation"]["akpub"]

        evidence = ear.verify(
            raw, policy=sample_policy(), expected_nonce=None, now=SAMPLE_NOW
        )

        assert evidence.bound_key == independent_thumbprint(akpub)
        assert evidence.bound_key == "DUAlaH20R3H8h9SAjFgpOjS2pX6niLPy4lwPWmpLicM"

    def test_refuses_the_sample_when_a_nonce_is_expected(self) -> None:
        with pytest.raises(EvidenceError) as exc:
            ear.verify(
                (EAR / "ear.jwt").read_bytes(),
                policy=sample_policy(),
                expected_nonce=NONCE.encode(),
                now=SAMPLE_NOW,
            )
        assert reason(exc) == "nonce_missing"

    def test_refuses_the_sample_as_too_old_under_the_default_max_age(self) -> None:
        policy = sample_policy(max_age=300)
        with pytest.raises(EvidenceError) as exc:
            ear.verify(
                (EAR / "ear.jwt").read_bytes(),
                policy=policy,
                expected_nonce=None,
                now=SAMPLE_NOW,
            )
        assert reason(exc) == "expired"

    def test_refuses_the_sample_before_its_nbf(self) -> None:
        with pytest.raises(EvidenceError) as exc:
            ear.verify(
                (EAR / "ear.jwt").read_bytes(),
                policy=sample_policy(),
                expected_nonce=None,
                now=1677247879 - 3600,
            )
        assert reason(exc) == "not_yet_valid"

    def test_refuses_the_sample_under_another_verifier_key(self) -> None:
        other = ec.generate_private_key(ec.SECP256R1()).public_key()
        key = VerificationKey(kid=None, key=other, algorithms=frozenset({"ES256"}))
        with pytest.raises(EvidenceError) as exc:
            ear.verify(
                (EAR / "ear.jwt").read_bytes(),
                policy=sample_policy(keys=(key,)),
                expected_nonce=None,
                now=SAMPLE_NOW,
            )
        assert reason(exc) == "bad_signature"


# Trust vector mapping (LEVELS.md section 3.5).


class TestTrustVector:
    def test_fresh_affirming_vector_rates_every_mapped_dimension_three(self) -> None:
        evidence = check(mint(template("ear-claims-tv-ok", eat_nonce=NONCE)))

        assert values(evidence) == {
            "identity_attestation": 3,
            "deployment_environment": 3,
            "software_integrity": 3,
            "configuration": 3,
        }
        assert evidence.nonce == NONCE.encode()
        assert "confidential" in evidence.details
        assert "storage_opaque" in evidence.details

    def test_without_a_nonce_the_same_vector_stops_at_two(self) -> None:
        evidence = check(mint(template("ear-claims-tv-ok")), nonce=None)
        assert set(values(evidence).values()) == {2}

    def test_instance_identity_without_hardware_stays_at_two_even_fresh(self) -> None:
        claims = template("ear-claims-tv-ok", eat_nonce=NONCE)
        del appraisal(claims)["ear.trustworthiness-vector"]["hardware"]
        evidence = check(mint(claims))
        assert values(evidence)["identity_attestation"] == 2
        assert "deployment_environment" not in evidence.mial

    def test_file_system_other_than_two_withholds_software_integrity(self) -> None:
        claims = template("ear-claims-tv-ok", eat_nonce=NONCE)
        appraisal(claims)["ear.trustworthiness-vector"]["file-system"] = 0
        assert "software_integrity" not in check(mint(claims)).mial

    def test_the_newer_claim_spellings_rate_the_same(self) -> None:
        claims = template("ear-claims-tv-ok", eat_nonce=NONCE)
        submod = appraisal(claims)
        submod["ear_status"] = submod.pop("ear.status")
        submod["ear_trustworthiness_vector"] = submod.pop("ear.trustworthiness-vector")
        submod["ear_appraisal_policy_id"] = submod.pop("ear.appraisal-policy-id")

        old = check(mint(template("ear-claims-tv-ok", eat_nonce=NONCE)))
        new = check(mint(claims))

        assert values(new) == values(old)
        assert new.details["policy_ids"] == old.details["policy_ids"]

    def test_both_spellings_agreeing_are_accepted(self) -> None:
        claims = template("ear-claims-tv-ok", eat_nonce=NONCE)
        appraisal(claims)["ear_status"] = "affirming"
        assert check(mint(claims)).contraindicated is False

    def test_both_spellings_disagreeing_are_refused(self) -> None:
        claims = template("ear-claims-tv-ok", eat_nonce=NONCE)
        appraisal(claims)["ear_status"] = "warning"
        with pytest.raises(EvidenceError) as exc:
            check(mint(claims))
        assert reason(exc) == "malformed"

    def test_contraindicated_template_is_flagged_and_forces_zero(self) -> None:
        evidence = check(
            mint(template("ear-claims-key-attestation-ko", eat_nonce=NONCE))
        )

        assert evidence.contraindicated is True
        assert caps(evidence)["identity_attestation"] == 0
        assert caps(evidence)["software_integrity"] == 0
        assert values(evidence) == {}
        assert evidence.bound_key is None
        assert evidence.details["status"] == "contraindicated"

    def test_a_contraindicated_claim_under_an_affirming_status_still_refuses(
        self,
    ) -> None:
        claims = template("ear-claims-tv-ok", eat_nonce=NONCE)
        appraisal(claims)["ear.trustworthiness-vector"]["hardware"] = 96
        evidence = check(mint(claims))
        assert evidence.contraindicated is True
        assert caps(evidence)["deployment_environment"] == 0

    def test_negative_contraindicated_values_count_too(self) -> None:
        claims = template("ear-claims-tv-ok", eat_nonce=NONCE)
        appraisal(claims)["ear.trustworthiness-vector"]["configuration"] = -100
        evidence = check(mint(claims))
        assert evidence.contraindicated is True
        assert caps(evidence)["configuration"] == 0

    def test_warning_status_caps_mapped_dimensions_at_two(self) -> None:
        claims = template("ear-claims-tv-ok", eat_nonce=NONCE)
        appraisal(claims)["ear.status"] = "warning"
        evidence = check(mint(claims))

        assert evidence.contraindicated is False
        assert set(values(evidence).values()) == {2}
        assert caps(evidence) == {
            "identity_attestation": 2,
            "deployment_environment": 2,
            "software_integrity": 2,
            "configuration": 2,
        }

    @pytest.mark.parametrize(
        ("claim", "value", "dimension", "cap"),
        [
            ("executables", 32, "software_integrity", 2),
            ("executables", 33, "software_integrity", 1),
            ("configuration", 36, "configuration", 1),
            ("configuration", 32, "configuration", 2),
            ("file-system", 32, "software_integrity", 1),
            ("hardware", 32, "deployment_environment", 2),
            ("runtime-opaque", 32, "deployment_environment", 2),
            ("storage-opaque", 32, "containment", 2),
        ],
    )
    def test_warning_values_cap_their_dimension(
        self, claim: str, value: int, dimension: str, cap: int
    ) -> None:
        claims = template("ear-claims-tv-ok", eat_nonce=NONCE)
        submod = appraisal(claims)
        submod["ear.status"] = "warning"
        submod["ear.trustworthiness-vector"][claim] = value

        evidence = check(mint(claims))

        assert caps(evidence)[dimension] == cap
        if dimension in evidence.mial:
            assert evidence.mial[dimension].value <= cap

    def test_the_worst_submodule_wins(self) -> None:
        claims = template("ear-claims-tv-ok", eat_nonce=NONCE)
        good = appraisal(claims)
        worse = copy.deepcopy(good)
        worse["ear.status"] = "warning"
        worse["ear.trustworthiness-vector"] = {"executables": 33}
        claims["submods"] = {"good": good, "worse": worse}

        evidence = check(mint(claims))

        assert values(evidence)["software_integrity"] == 1
        assert values(evidence)["identity_attestation"] == 2
        assert evidence.details["status"] == "warning"

    def test_a_submodule_with_status_none_affirms_nothing(self) -> None:
        claims = template("ear-claims-tv-ok", eat_nonce=NONCE)
        appraisal(claims)["ear.status"] = "none"
        evidence = check(mint(claims))
        assert values(evidence) == {}
        assert evidence.contraindicated is False

    def test_contraindicated_sourced_data_is_only_noted(self) -> None:
        claims = template("ear-claims-tv-ok", eat_nonce=NONCE)
        appraisal(claims)["ear.trustworthiness-vector"]["sourced-data"] = 96
        evidence = check(mint(claims))
        assert evidence.contraindicated is False
        assert "sourced_data" in evidence.details
        assert values(evidence)["software_integrity"] == 3

    def test_a_failed_evidence_signature_at_the_verifier_is_refused(self) -> None:
        claims = template("ear-claims-tv-ok", eat_nonce=NONCE)
        appraisal(claims)["ear.trustworthiness-vector"]["executables"] = 99
        with pytest.raises(EvidenceError) as exc:
            check(mint(claims))
        assert reason(exc) == "contraindicated"

    @pytest.mark.parametrize("value", [128, -129, "2", 2.0, True, None])
    def test_claim_values_outside_the_ar4si_range_are_malformed(
        self, value: Any
    ) -> None:
        claims = template("ear-claims-tv-ok", eat_nonce=NONCE)
        appraisal(claims)["ear.trustworthiness-vector"]["hardware"] = value
        with pytest.raises(EvidenceError) as exc:
            check(mint(claims))
        assert reason(exc) == "malformed"

    @pytest.mark.parametrize("status", ["fine", ["affirming"], {"a": 1}, 2, None])
    def test_unknown_status_is_malformed(self, status: Any) -> None:
        claims = template("ear-claims", eat_nonce=NONCE)
        appraisal(claims)["ear.status"] = status
        with pytest.raises(EvidenceError) as exc:
            check(mint(claims))
        assert reason(exc) == "malformed"

    def test_minimal_claim_set_rates_nothing(self) -> None:
        evidence = check(mint(template("ear-claims", eat_nonce=NONCE)))
        assert values(evidence) == {}
        assert evidence.contraindicated is False

    def test_extensions_are_ignored(self) -> None:
        evidence = check(mint(template("ear-claims-extension-ok", eat_nonce=NONCE)))
        assert evidence.contraindicated is False


# Freshness (RFC 9711 section 4.1) and time claims.


class TestFreshness:
    def test_accepts_the_nonce_in_base64url_form(self) -> None:
        raw = b"\x00\x01binary nonce\xff"
        encoded = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
        evidence = check(
            mint(template("ear-claims-tv-ok", eat_nonce=encoded)), nonce=raw
        )
        assert values(evidence)["identity_attestation"] == 3

    def test_accepts_a_nonce_array_containing_the_issued_one(self) -> None:
        token = mint(template("ear-claims-tv-ok", eat_nonce=["another-nonce-1", NONCE]))
        assert values(check(token))["identity_attestation"] == 3

    def test_refuses_a_wrong_nonce(self) -> None:
        with pytest.raises(EvidenceError) as exc:
            check(mint(template("ear-claims-tv-ok", eat_nonce="not-the-issued-nonce")))
        assert reason(exc) == "nonce_mismatch"

    def test_refuses_a_missing_nonce_when_one_is_expected(self) -> None:
        with pytest.raises(EvidenceError) as exc:
            check(mint(template("ear-claims-tv-ok")))
        assert reason(exc) == "nonce_missing"

    @pytest.mark.parametrize("nonce", [5, "", [], [3], {"n": NONCE}])
    def test_refuses_a_nonce_that_is_not_text(self, nonce: Any) -> None:
        with pytest.raises(EvidenceError) as exc:
            check(mint(template("ear-claims-tv-ok", eat_nonce=nonce)))
        assert reason(exc) == "malformed"

    def test_refuses_an_old_appraisal(self) -> None:
        token = mint(template("ear-claims-tv-ok", eat_nonce=NONCE, iat=NOW - 301))
        with pytest.raises(EvidenceError) as exc:
            check(token)
        assert reason(exc) == "expired"

    def test_refuses_an_appraisal_from_the_future(self) -> None:
        token = mint(template("ear-claims-tv-ok", eat_nonce=NONCE, iat=NOW + 120))
        with pytest.raises(EvidenceError) as exc:
            check(token)
        assert reason(exc) == "not_yet_valid"

    def test_refuses_an_expired_result_and_reports_exp(self) -> None:
        with pytest.raises(EvidenceError) as exc:
            check(mint(template("ear-claims-tv-ok", eat_nonce=NONCE, exp=NOW - 61)))
        assert reason(exc) == "expired"
        token = mint(template("ear-claims-tv-ok", eat_nonce=NONCE, exp=NOW + 600))
        assert check(token).expires_at == NOW + 600

    @pytest.mark.parametrize("iat", [None, "1767225590", True, 10**400, 1e308 * 10])
    def test_refuses_a_missing_or_non_numeric_iat(self, iat: Any) -> None:
        claims = template("ear-claims-tv-ok", eat_nonce=NONCE)
        if iat is None:
            del claims["iat"]
        else:
            claims["iat"] = iat
        with pytest.raises(EvidenceError) as exc:
            check(mint(claims))
        assert reason(exc) == "malformed"


# Key binding.


class TestBoundKey:
    def test_require_bound_key_returns_the_evidence_for_the_same_key(self) -> None:
        evidence = check(
            mint(template("ear-claims-key-attestation-ok", eat_nonce=NONCE))
        )
        assert evidence.bound_key is not None
        assert ear.require_bound_key(evidence, evidence.bound_key) is evidence

    def test_require_bound_key_refuses_another_key(self) -> None:
        evidence = check(
            mint(template("ear-claims-key-attestation-ok", eat_nonce=NONCE))
        )
        other = ec.generate_private_key(ec.SECP256R1()).public_key()
        with pytest.raises(EvidenceError) as exc:
            ear.require_bound_key(evidence, ear.public_key_thumbprint(other))
        assert reason(exc) == "key_mismatch"

    def test_require_bound_key_refuses_evidence_binding_no_key(self) -> None:
        evidence = check(mint(template("ear-claims-tv-ok", eat_nonce=NONCE)))
        with pytest.raises(EvidenceError) as exc:
            ear.require_bound_key(evidence, "x" * 43)
        assert reason(exc) == "key_missing"

    def test_refuses_an_attested_key_that_does_not_parse(self) -> None:
        claims = template("ear-claims-key-attestation-ok", eat_nonce=NONCE)
        appraisal(claims)["ear.veraison.key-attestation"]["akpub"] = "AAAA"
        with pytest.raises(EvidenceError) as exc:
            check(mint(claims))
        assert reason(exc) == "malformed"

    def test_refuses_two_submodules_attesting_different_keys(self) -> None:
        claims = template("ear-claims-key-attestation-ok", eat_nonce=NONCE)
        second = copy.deepcopy(appraisal(claims))
        other = ec.generate_private_key(ec.SECP256R1()).public_key()
        spki = other.public_bytes(
            serialization.Encoding.DER,
            serialization.PublicFormat.SubjectPublicKeyInfo,
        )
        second["ear.veraison.key-attestation"]["akpub"] = (
            base64.urlsafe_b64encode(spki).rstrip(b"=").decode()
        )
        claims["submods"]["second"] = second
        with pytest.raises(EvidenceError) as exc:
            check(mint(claims))
        assert reason(exc) == "malformed"


# The JWS (RFC 7515, RFC 8725).


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TestSignature:
    def test_refuses_a_payload_changed_after_signing(self) -> None:
        token = mint(template("ear-claims-key-attestation-ko", eat_nonce=NONCE))
        header, _, signature = token.split(".")
        claims = template("ear-claims-key-attestation-ko", eat_nonce=NONCE)
        appraisal(claims)["ear.status"] = "affirming"
        appraisal(claims)["ear.trustworthiness-vector"]["executables"] = 2
        forged = ".".join([header, b64(json.dumps(claims).encode()), signature])
        with pytest.raises(EvidenceError) as exc:
            check(forged)
        assert reason(exc) == "bad_signature"

    def test_refuses_a_signature_by_an_unconfigured_key(self) -> None:
        stranger = ec.generate_private_key(ec.SECP256R1())
        with pytest.raises(EvidenceError) as exc:
            check(mint(template("ear-claims-tv-ok", eat_nonce=NONCE), key=stranger))
        assert reason(exc) == "bad_signature"

    def test_refuses_a_flipped_signature_byte(self) -> None:
        token = mint(template("ear-claims-tv-ok", eat_nonce=NONCE))
        head, _, signature = token.rpartition(".")
        raw = bytearray(base64.urlsafe_b64decode(signature + "=="))
        raw[5] ^= 0x01
        with pytest.raises(EvidenceError) as exc:
            check(f"{head}.{b64(bytes(raw))}")
        assert reason(exc) == "bad_signature"

    def test_refuses_alg_none(self) -> None:
        header = b64(b'{"alg":"none","typ":"JWT"}')
        payload = b64(
            json.dumps(template("ear-claims-tv-ok", eat_nonce=NONCE)).encode()
        )
        with pytest.raises(EvidenceError) as exc:
            check(f"{header}.{payload}.")
        assert reason(exc) == "unsupported"

    def test_refuses_hmac_keyed_with_the_public_key(self) -> None:
        pem = (EAR / "pkey.pem").read_bytes()
        claims = template("ear-claims-tv-ok", eat_nonce=NONCE)
        token = _hs256(claims, pem)
        with pytest.raises(EvidenceError) as exc:
            check(token)
        assert reason(exc) == "unsupported"

    def test_refuses_critical_header_extensions(self) -> None:
        token = mint(template("ear-claims-tv-ok", eat_nonce=NONCE), crit=["exp"], exp=1)
        with pytest.raises(EvidenceError) as exc:
            check(token)
        assert reason(exc) == "unsupported"

    def test_refuses_an_algorithm_outside_the_allow_list(self) -> None:
        key = ec.generate_private_key(ec.SECP521R1())
        vk = VerificationKey(
            kid=None, key=key.public_key(), algorithms=frozenset({"ES512"})
        )
        token = mint(
            template("ear-claims-tv-ok", eat_nonce=NONCE), key=key, alg="ES512"
        )
        with pytest.raises(EvidenceError) as exc:
            check(token, keys=(vk,))
        assert reason(exc) == "unsupported"

    def test_refuses_an_algorithm_the_policy_narrowed_away(self) -> None:
        with pytest.raises(EvidenceError) as exc:
            check(
                mint(template("ear-claims-tv-ok", eat_nonce=NONCE)),
                algorithms=frozenset({"EdDSA"}),
            )
        assert reason(exc) == "unsupported"

    @pytest.mark.parametrize("alg", ["EdDSA", "PS256", "ES384"])
    def test_accepts_each_allowed_algorithm(self, alg: str, tmp_path: Path) -> None:
        private: Any
        if alg == "EdDSA":
            private = ed25519.Ed25519PrivateKey.generate()
        elif alg == "PS256":
            private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        else:
            private = ec.generate_private_key(ec.SECP384R1())
        pem = private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        (tmp_path / "verifier.pem").write_bytes(pem)
        keys = ear.load_verifier_keys(tmp_path / "verifier.pem")
        token = mint(
            template("ear-claims-tv-ok", eat_nonce=NONCE), key=private, alg=alg
        )
        assert values(check(token, keys=keys))["configuration"] == 3

    def test_picks_the_key_named_by_kid(self, tmp_path: Path) -> None:
        stranger = ec.generate_private_key(ec.SECP256R1())
        jwks = {
            "keys": [
                {**ECAlgorithm.to_jwk(stranger.public_key(), as_dict=True), "kid": "a"},
                {
                    **json.loads((EAR / "veraison-ear-pkey.json").read_text()),
                    "kid": "b",
                },
            ]
        }
        (tmp_path / "jwks.json").write_text(json.dumps(jwks))
        keys = ear.load_verifier_keys(tmp_path / "jwks.json")
        claims = template("ear-claims-tv-ok", eat_nonce=NONCE)
        assert check(mint(claims, kid="b"), keys=keys).contraindicated is False
        with pytest.raises(EvidenceError) as exc:
            check(mint(claims, kid="a"), keys=keys)
        assert reason(exc) == "bad_signature"

    def test_refuses_another_profile(self) -> None:
        token = mint(template("ear-claims-tv-ok", eat_nonce=NONCE, eat_profile="tag:x"))
        with pytest.raises(EvidenceError) as exc:
            check(token)
        assert reason(exc) == "unsupported"

    def test_accepts_a_configured_newer_profile(self) -> None:
        profile = "tag:ietf.org,2025-07:ear"
        token = mint(template("ear-claims-tv-ok", eat_nonce=NONCE, eat_profile=profile))
        assert check(token, profile=profile).details["profile"] == profile


def _hs256(claims: dict[str, Any], secret: bytes) -> str:
    """An HS256 JWS built by hand: PyJWT refuses PEM text as an HMAC secret."""
    header = b64(b'{"alg":"HS256","typ":"JWT"}')
    payload = b64(json.dumps(claims).encode())
    mac = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256)
    return f"{header}.{payload}.{b64(mac.digest())}"


# Bad input.


class TestBadInput:
    def test_refuses_an_oversized_ear_before_parsing(self) -> None:
        with pytest.raises(EvidenceError) as exc:
            check("a" * 70000)
        assert reason(exc) == "too_large"

    def test_refuses_a_truncated_ear(self) -> None:
        token = mint(template("ear-claims-tv-ok", eat_nonce=NONCE))
        with pytest.raises(EvidenceError) as exc:
            check(token[: token.index(".") + 20])
        assert reason(exc) == "malformed"

    @pytest.mark.parametrize("cut", [1, 2, 12])
    def test_refuses_a_truncated_signature(self, cut: int) -> None:
        # Cutting 2 characters leaves 63 bytes that decode cleanly; other
        # cuts decode or not depending on the signature's random bits.
        # Every one is malformed, every time.
        for _ in range(20):
            token = mint(template("ear-claims-tv-ok", eat_nonce=NONCE))
            with pytest.raises(EvidenceError) as exc:
                check(token[:-cut])
            assert reason(exc) == "malformed"

    @pytest.mark.parametrize(
        "payload",
        [
            b"{not json",
            b"[1, 2]",
            b'{"iat": 1, "iat": 2}',
            b'{"iat": NaN}',
            b"\xff\xfe",
        ],
    )
    def test_refuses_signed_payloads_that_are_not_a_json_object(
        self, payload: bytes
    ) -> None:
        token = PyJWS().encode(payload, veraison_test_key(), algorithm="ES256")
        with pytest.raises(EvidenceError) as exc:
            check(token)
        assert reason(exc) == "malformed"

    @pytest.mark.parametrize("submods", [None, {}, [], {"a": "affirming"}])
    def test_refuses_missing_or_malformed_submods(self, submods: Any) -> None:
        claims = template("ear-claims", eat_nonce=NONCE, submods=submods)
        with pytest.raises(EvidenceError) as exc:
            check(mint(claims))
        assert reason(exc) == "malformed"

    def test_refuses_non_ascii_input(self) -> None:
        with pytest.raises(EvidenceError) as exc:
            check("é.b.c".encode())
        assert reason(exc) == "malformed"

    def test_refuses_a_header_that_is_not_json(self) -> None:
        with pytest.raises(EvidenceError) as exc:
            check(f"{b64(b'nope')}.{b64(b'{}')}.{b64(b'sig')}")
        assert reason(exc) == "malformed"


# Configuration.


class TestPolicy:
    def test_refuses_hmac_or_none_in_the_policy(self) -> None:
        keys = ear.load_verifier_keys(EAR / "pkey.pem")
        for algorithms in (frozenset({"HS256"}), frozenset({"none"}), frozenset()):
            with pytest.raises(ValueError):
                ear.EarPolicy(keys=keys, algorithms=algorithms)

    def test_refuses_a_policy_without_keys(self) -> None:
        with pytest.raises(ValueError):
            ear.EarPolicy(keys=())

    def test_refuses_a_private_jwk_as_verifier_key(self) -> None:
        with pytest.raises(ConfigError):
            ear.load_verifier_keys(EAR / "veraison-ear-skey.json")

    def test_refuses_a_file_that_is_not_a_key(self, tmp_path: Path) -> None:
        (tmp_path / "k").write_text("hello")
        with pytest.raises(ConfigError):
            ear.load_verifier_keys(tmp_path / "k")
