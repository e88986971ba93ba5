"""Mutual-TLS client authentication and X.509-SVIDs (issuer/mtls.py).

A test CA is made with cryptography when the tests run. The SPIFFE samples
in ../shared/data/spiffe-x509-svid are real SVIDs with their bundles (see
SOURCE.md there); each is checked at an instant inside its validity window.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import json
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from jwt.algorithms import ECAlgorithm

from issuer.errors import OAuthError
from issuer.mtls import (
    TlsClientAuth,
    X509Bundle,
    certificate_thumbprint,
    client_cert_from_header,
    parse_trusted_proxies,
    validate_tls_client_metadata,
    verify_x509_svid,
)

SVID = (
    Path(__file__).resolve().parents[1].parent / "shared" / "data" / "spiffe-x509-svid"
)
# Instants inside the validity windows listed in SOURCE.md.
PROVIDER_NOW = 1584662400  # 2020-03-20T00:00:00Z
PROVIDER2_NOW = 1584648000  # 2020-03-19T20:00:00Z
HELPER_NOW = 1591030800  # 2020-06-01T17:00:00Z

NOW = time.time()
DAY = dt.timedelta(days=1)
SPIFFE_ID = "spiffe://example.test/ns/prod/sa/api"


def error_of(call: Callable[[], object]) -> OAuthError:
    with pytest.raises(OAuthError) as info:
        call()
    return info.value


def at(offset: dt.timedelta = dt.timedelta()) -> dt.datetime:
    return dt.datetime.fromtimestamp(NOW, dt.UTC) + offset


@dataclass
class Issued:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(Encoding.DER)

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(Encoding.PEM)


def name(cn: str, org: str = "Example Corp") -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def make_ca(cn: str, issuer: Issued | None = None) -> Issued:
    """A root (``issuer`` None) or an intermediate CA, Web PKI shaped."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(name(cn))
        .issuer_name(issuer.cert.subject if issuer else name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(at(-DAY))
        .not_valid_after(at(365 * DAY))
        .add_extension(
            x509.BasicConstraints(ca=True, path_length=None if issuer is None else 0),
            critical=True,
        )
        .add_extension(key_usage(cert_sign=True), critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
            critical=False,
        )
    signer = issuer.key if issuer else key
    return Issued(key, builder.sign(signer, hashes.SHA256()))


def issue(
    ca: Issued | None,
    *,
    cn: str = "workload-a",
    sans: Sequence[x509.GeneralName] = (),
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    eku: Sequence[x509.ObjectIdentifier] | None = (ExtendedKeyUsageOID.CLIENT_AUTH,),
    usage: x509.KeyUsage | None = None,
    is_ca: bool = False,
    key: ec.EllipticCurvePrivateKey | None = None,
) -> Issued:
    """A client certificate issued by ``ca``, or self-signed when it is None."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    subject = name(cn)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.cert.subject if ca else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or at(-DAY))
        .not_valid_after(not_after or at(30 * DAY))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        .add_extension(usage or key_usage(cert_sign=False), critical=True)
    )
    if sans:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(list(sans)), critical=False
        )
    if eku is not None:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage(list(eku)), critical=False
        )
    if ca is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
    return Issued(key, builder.sign(ca.key if ca else key, hashes.SHA256()))


@pytest.fixture(scope="module")
def ca() -> Issued:
    return make_ca("Test Root")


@pytest.fixture(scope="module")
def other_ca() -> Issued:
    return make_ca("Unrelated Root")


@pytest.fixture(scope="module")
def auth(ca: Issued) -> TlsClientAuth:
    return TlsClientAuth.from_pem(ca.pem)


def der_of(path: Path) -> bytes:
    return x509.load_pem_x509_certificate(path.read_bytes()).public_bytes(Encoding.DER)


def load_bundle(trust_domain: str, filename: str) -> X509Bundle:
    # The SPIRE roots in these samples have serial number 0, which
    # cryptography reports as deprecated; the warning is expected here.
    with pytest.warns(CryptographyDeprecationWarning, match="serial number"):
        return X509Bundle.from_pem(trust_domain, (SVID / filename).read_bytes())


@pytest.fixture(scope="module")
def provider_bundle() -> X509Bundle:
    return load_bundle("example.org", "provider-bundle.pem")


# -- x5t#S256 -----------------------------------------------------------------


def test_thumbprint_is_base64url_sha256_of_der() -> None:
    der = der_of(SVID / "provider-cert.pem")
    thumbprint = certificate_thumbprint(der)

    assert len(thumbprint) == 43
    assert "=" not in thumbprint
    assert base64.urlsafe_b64decode(thumbprint + "=") == hashlib.sha256(der).digest()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
def test_thumbprint_agrees_with_openssl() -> None:
    out = subprocess.run(
        [
            "openssl",
            "x509",
            "-in",
            str(SVID / "provider-cert.pem"),
            "-noout",
            "-fingerprint",
            "-sha256",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    digest = bytes.fromhex(out.strip().split("=", 1)[1].replace(":", ""))
    expected = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    assert certificate_thumbprint(der_of(SVID / "provider-cert.pem")) == expected


# -- tls_client_auth ------------------------------------------------------------


def test_accepts_good_cert_by_subject_dn(auth: TlsClientAuth, ca: Issued) -> None:
    # No SAN at all: RFC 8705 lets a client be known by its subject DN alone.
    leaf = issue(ca)
    metadata = {"tls_client_auth_subject_dn": "CN=workload-a,O=Example Corp,C=US"}

    result = auth.tls_client_auth(leaf.der, metadata, now=NOW)

    assert result.method == "tls_client_auth"
    assert result.matched == "tls_client_auth_subject_dn"
    assert result.x5t_s256 == certificate_thumbprint(leaf.der)
    assert result.not_after == leaf.cert.not_valid_after_utc.timestamp()


def test_subject_dn_compares_by_rfc4514_rules(auth: TlsClientAuth, ca: Issued) -> None:
    leaf = issue(ca)
    metadata = {"tls_client_auth_subject_dn": "cn=WORKLOAD-A, o=example  corp, c=us"}

    assert auth.tls_client_auth(leaf.der, metadata, now=NOW).method == "tls_client_auth"


@pytest.mark.parametrize(
    "dn",
    [
        "CN=workload-b,O=Example Corp,C=US",
        "CN=workload-a,O=Example Corp",
        "O=Example Corp,CN=workload-a,C=US",
        "CN=workload-a+O=Example Corp,C=US",
    ],
)
def test_rejects_other_subject_dn(auth: TlsClientAuth, ca: Issued, dn: str) -> None:
    leaf = issue(ca)

    exc = error_of(
        lambda: auth.tls_client_auth(
            leaf.der, {"tls_client_auth_subject_dn": dn}, now=NOW
        )
    )

    assert exc.error == "invalid_client"


def test_accepts_good_cert_by_san_dns(auth: TlsClientAuth, ca: Issued) -> None:
    leaf = issue(ca, sans=[x509.DNSName("workload.example.test")])
    metadata = {"tls_client_auth_san_dns": "Workload.Example.Test"}

    assert auth.tls_client_auth(leaf.der, metadata, now=NOW).matched == (
        "tls_client_auth_san_dns"
    )


def test_accepts_good_cert_by_spiffe_uri(auth: TlsClientAuth, ca: Issued) -> None:
    leaf = issue(ca, sans=[x509.UniformResourceIdentifier(SPIFFE_ID)])

    result = auth.tls_client_auth(
        leaf.der, {"tls_client_auth_san_uri": SPIFFE_ID}, now=NOW
    )

    assert result.matched == "tls_client_auth_san_uri"


def test_rejects_spiffe_uri_among_several_uri_sans(
    auth: TlsClientAuth, ca: Issued
) -> None:
    leaf = issue(
        ca,
        sans=[
            x509.UniformResourceIdentifier(SPIFFE_ID),
            x509.UniformResourceIdentifier("https://workload.example.test/"),
        ],
    )

    exc = error_of(
        lambda: auth.tls_client_auth(
            leaf.der, {"tls_client_auth_san_uri": SPIFFE_ID}, now=NOW
        )
    )

    assert exc.error == "invalid_client"


def test_accepts_san_ip_compared_in_binary(auth: TlsClientAuth, ca: Issued) -> None:
    leaf = issue(ca, sans=[x509.IPAddress(ipaddress.ip_address("2001:db8::1"))])
    metadata = {"tls_client_auth_san_ip": "2001:0db8:0:0:0:0:0:1"}

    assert auth.tls_client_auth(leaf.der, metadata, now=NOW).matched == (
        "tls_client_auth_san_ip"
    )


def test_accepts_san_email_with_domain_in_other_case(
    auth: TlsClientAuth, ca: Issued
) -> None:
    leaf = issue(ca, sans=[x509.RFC822Name("Robot@Example.test")])

    result = auth.tls_client_auth(
        leaf.der, {"tls_client_auth_san_email": "Robot@example.TEST"}, now=NOW
    )

    assert result.matched == "tls_client_auth_san_email"


@pytest.mark.parametrize(
    "metadata",
    [
        {"tls_client_auth_san_dns": "other.example.test"},
        {"tls_client_auth_san_dns": "*.example.test"},
        {"tls_client_auth_san_uri": "spiffe://example.test/ns/prod/sa/other"},
        {"tls_client_auth_san_ip": "192.0.2.1"},
        {"tls_client_auth_san_email": "robot@example.test"},
    ],
)
def test_rejects_wrong_san(
    auth: TlsClientAuth, ca: Issued, metadata: dict[str, str]
) -> None:
    leaf = issue(
        ca,
        sans=[
            x509.DNSName("workload.example.test"),
            x509.UniformResourceIdentifier(SPIFFE_ID),
            x509.RFC822Name("Robot@example.test"),
        ],
    )

    exc = error_of(lambda: auth.tls_client_auth(leaf.der, metadata, now=NOW))

    assert exc.error == "invalid_client"


def test_rejects_cert_not_chained_to_the_bundle(
    auth: TlsClientAuth, other_ca: Issued
) -> None:
    leaf = issue(other_ca, sans=[x509.DNSName("workload.example.test")])

    exc = error_of(
        lambda: auth.tls_client_auth(
            leaf.der, {"tls_client_auth_san_dns": "workload.example.test"}, now=NOW
        )
    )

    assert exc.error == "invalid_client"


def test_rejects_self_signed_cert_for_tls_client_auth(auth: TlsClientAuth) -> None:
    leaf = issue(None, sans=[x509.DNSName("workload.example.test")])

    exc = error_of(
        lambda: auth.tls_client_auth(
            leaf.der, {"tls_client_auth_san_dns": "workload.example.test"}, now=NOW
        )
    )

    assert exc.error == "invalid_client"


@pytest.mark.parametrize(
    ("not_before", "not_after"),
    [(at(-30 * DAY), at(-DAY)), (at(DAY), at(30 * DAY))],
    ids=["expired", "not-yet-valid"],
)
def test_rejects_cert_outside_its_validity(
    auth: TlsClientAuth, ca: Issued, not_before: dt.datetime, not_after: dt.datetime
) -> None:
    leaf = issue(ca, not_before=not_before, not_after=not_after)

    exc = error_of(
        lambda: auth.tls_client_auth(
            leaf.der,
            {"tls_client_auth_subject_dn": "CN=workload-a,O=Example Corp,C=US"},
            now=NOW,
        )
    )

    assert exc.error == "invalid_client"


def test_rejects_server_only_certificate(auth: TlsClientAuth, ca: Issued) -> None:
    leaf = issue(ca, eku=[ExtendedKeyUsageOID.SERVER_AUTH])

    exc = error_of(
        lambda: auth.tls_client_auth(
            leaf.der,
            {"tls_client_auth_subject_dn": "CN=workload-a,O=Example Corp,C=US"},
            now=NOW,
        )
    )

    assert exc.error == "invalid_client"


def test_rejects_ca_certificate_as_client(auth: TlsClientAuth, ca: Issued) -> None:
    leaf = issue(ca, is_ca=True, usage=key_usage(cert_sign=True))

    exc = error_of(
        lambda: auth.tls_client_auth(
            leaf.der,
            {"tls_client_auth_subject_dn": "CN=workload-a,O=Example Corp,C=US"},
            now=NOW,
        )
    )

    assert exc.error == "invalid_client"


def test_accepts_chain_through_intermediate(auth: TlsClientAuth, ca: Issued) -> None:
    intermediate = make_ca("Test Issuing CA", ca)
    leaf = issue(intermediate, sans=[x509.DNSName("workload.example.test")])
    metadata = {"tls_client_auth_san_dns": "workload.example.test"}

    auth.tls_client_auth(leaf.der, metadata, intermediates=[intermediate.der], now=NOW)
    exc = error_of(lambda: auth.tls_client_auth(leaf.der, metadata, now=NOW))

    assert exc.error == "invalid_client"


@pytest.mark.parametrize(
    "metadata",
    [
        {},
        {
            "tls_client_auth_san_dns": "workload.example.test",
            "tls_client_auth_subject_dn": "CN=workload-a,O=Example Corp,C=US",
        },
        {"tls_client_auth_san_dns": ""},
        {"tls_client_auth_subject_dn": "not a dn"},
    ],
)
def test_rejects_client_without_exactly_one_subject_parameter(
    auth: TlsClientAuth, ca: Issued, metadata: dict[str, str]
) -> None:
    leaf = issue(ca, sans=[x509.DNSName("workload.example.test")])

    exc = error_of(lambda: auth.tls_client_auth(leaf.der, metadata, now=NOW))

    assert exc.error == "invalid_client"
    with pytest.raises(ValueError):
        validate_tls_client_metadata(metadata)


def test_registration_check_names_the_subject_parameter() -> None:
    assert (
        validate_tls_client_metadata({"tls_client_auth_san_uri": SPIFFE_ID})
        == "tls_client_auth_san_uri"
    )
    with pytest.raises(ValueError):
        validate_tls_client_metadata({"tls_client_auth_san_ip": "not-an-ip"})
    with pytest.raises(ValueError):
        validate_tls_client_metadata({"tls_client_auth_subject_dn": "CN=#0403616263"})


def test_tls_client_auth_fails_without_a_ca_bundle(ca: Issued) -> None:
    leaf = issue(ca)

    exc = error_of(
        lambda: TlsClientAuth().tls_client_auth(
            leaf.der,
            {"tls_client_auth_subject_dn": "CN=workload-a,O=Example Corp,C=US"},
            now=NOW,
        )
    )

    assert exc.error == "invalid_client"


def test_rejects_certificate_that_does_not_parse(auth: TlsClientAuth) -> None:
    exc = error_of(
        lambda: auth.tls_client_auth(
            b"\x30\x03\x02\x01\x00", {"tls_client_auth_san_dns": "x.test"}, now=NOW
        )
    )

    assert exc.error == "invalid_request"


def test_accepts_real_svid_by_spiffe_uri_with_the_bundle_as_ca(
    provider_bundle: X509Bundle,
) -> None:
    auth = TlsClientAuth(provider_bundle.roots)

    result = auth.tls_client_auth(
        der_of(SVID / "provider-cert.pem"),
        {"tls_client_auth_san_uri": "spiffe://example.org/test"},
        now=PROVIDER_NOW,
    )

    assert result.matched == "tls_client_auth_san_uri"


# -- self_signed_tls_client_auth --------------------------------------------------


def public_jwk(key: ec.EllipticCurvePrivateKey) -> dict[str, Any]:
    jwk: dict[str, Any] = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return jwk


def test_accepts_self_signed_cert_matching_registered_key(auth: TlsClientAuth) -> None:
    leaf = issue(None, cn="self-signed-client")
    jwks = {
        "keys": [
            public_jwk(ec.generate_private_key(ec.SECP256R1())),
            public_jwk(leaf.key),
        ]
    }

    result = auth.self_signed_tls_client_auth(leaf.der, jwks, now=NOW)

    assert result.method == "self_signed_tls_client_auth"
    assert result.matched == "jwks"
    assert result.x5t_s256 == certificate_thumbprint(leaf.der)


def test_accepts_self_signed_cert_registered_in_x5c(auth: TlsClientAuth) -> None:
    leaf = issue(None, cn="self-signed-client")
    jwk = {**public_jwk(leaf.key), "x5c": [base64.b64encode(leaf.der).decode()]}

    result = auth.authenticate(
        "self_signed_tls_client_auth", leaf.der, {"jwks": {"keys": [jwk]}}, now=NOW
    )

    assert result.method == "self_signed_tls_client_auth"


def test_rejects_self_signed_cert_with_unregistered_key(auth: TlsClientAuth) -> None:
    leaf = issue(None, cn="self-signed-client")
    jwks = {"keys": [public_jwk(ec.generate_private_key(ec.SECP256R1()))]}

    exc = error_of(lambda: auth.self_signed_tls_client_auth(leaf.der, jwks, now=NOW))

    assert exc.error == "invalid_client"


def test_rejects_other_cert_than_the_registered_x5c(auth: TlsClientAuth) -> None:
    registered = issue(None, cn="self-signed-client")
    # Same key, different certificate: RFC 8705 section 2.2 matches the
    # certificate when the registration holds one.
    presented = issue(None, cn="self-signed-client", key=registered.key)
    jwk = {
        **public_jwk(registered.key),
        "x5c": [base64.b64encode(registered.der).decode()],
    }

    exc = error_of(
        lambda: auth.self_signed_tls_client_auth(
            presented.der, {"keys": [jwk]}, now=NOW
        )
    )

    assert exc.error == "invalid_client"


def test_rejects_expired_self_signed_cert(auth: TlsClientAuth) -> None:
    leaf = issue(None, not_before=at(-30 * DAY), not_after=at(-DAY))
    jwks = {"keys": [public_jwk(leaf.key)]}

    exc = error_of(lambda: auth.self_signed_tls_client_auth(leaf.der, jwks, now=NOW))

    assert exc.error == "invalid_client"


@pytest.mark.parametrize("jwks", [{}, {"keys": "x"}, {"keys": [{"kty": "oct"}]}])
def test_rejects_self_signed_cert_with_unusable_jwks(
    auth: TlsClientAuth, jwks: dict[str, Any]
) -> None:
    leaf = issue(None)

    exc = error_of(lambda: auth.self_signed_tls_client_auth(leaf.der, jwks, now=NOW))

    assert exc.error == "invalid_client"


def test_rejects_unknown_method(auth: TlsClientAuth, ca: Issued) -> None:
    exc = error_of(
        lambda: auth.authenticate("client_secret_basic", issue(ca).der, {}, now=NOW)
    )

    assert exc.error == "invalid_client"


# -- proxy header ----------------------------------------------------------------

PROXIES = ["127.0.0.1/32", "::1/128"]


def escaped(pem: bytes) -> str:
    """What nginx puts in $ssl_client_escaped_cert."""
    return quote(pem.decode("ascii"), safe="")


def test_reads_certificate_forwarded_by_trusted_proxy(ca: Issued) -> None:
    leaf = issue(ca)

    der = client_cert_from_header(
        escaped(leaf.pem), remote_addr="127.0.0.1", trusted_proxies=PROXIES
    )

    assert der == leaf.der


def test_reads_certificate_from_ipv4_mapped_proxy_address(ca: Issued) -> None:
    leaf = issue(ca)
    networks = parse_trusted_proxies(["127.0.0.0/8"])

    der = client_cert_from_header(
        escaped(leaf.pem), remote_addr="::ffff:127.0.0.1", trusted_proxies=networks
    )

    assert der == leaf.der


def test_reads_rfc9440_client_cert_field(ca: Issued) -> None:
    leaf = issue(ca)
    value = ":" + base64.b64encode(leaf.der).decode() + ":"

    der = client_cert_from_header(
        value, remote_addr="::1", trusted_proxies=PROXIES, header_format="rfc9440"
    )

    assert der == leaf.der


@pytest.mark.parametrize(
    ("remote_addr", "proxies"),
    [
        ("192.0.2.10", PROXIES),
        ("127.0.0.2", PROXIES),
        ("127.0.0.1", []),
        ("unix:/run/socket", PROXIES),
    ],
)
def test_rejects_forwarded_header_from_untrusted_address(
    ca: Issued, remote_addr: str, proxies: list[str]
) -> None:
    value = escaped(issue(ca).pem)

    exc = error_of(
        lambda: client_cert_from_header(
            value, remote_addr=remote_addr, trusted_proxies=proxies
        )
    )

    assert exc.error == "invalid_client"


def test_rejects_empty_forwarded_header(ca: Issued) -> None:
    exc = error_of(
        lambda: client_cert_from_header(
            "", remote_addr="127.0.0.1", trusted_proxies=PROXIES
        )
    )

    assert exc.error == "invalid_client"


@pytest.mark.parametrize(
    "make_value",
    [
        lambda pem: "not a certificate",
        lambda pem: escaped(pem + pem),
        lambda pem: escaped(pem)[:-40],
        lambda pem: escaped(pem.replace(b"MI", b"M!", 1)),
        lambda pem: escaped(b"junk\n" + pem),
        lambda pem: escaped(
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
        ),
        lambda pem: "%" * 20000,
        lambda pem: "%ff%fe",
    ],
    ids=[
        "text",
        "two-certs",
        "truncated",
        "bad-base64",
        "junk",
        "not-der",
        "huge",
        "utf8",
    ],
)
def test_rejects_malformed_forwarded_header(
    ca: Issued, make_value: Callable[[bytes], str]
) -> None:
    value = make_value(issue(ca).pem)

    exc = error_of(
        lambda: client_cert_from_header(
            value, remote_addr="127.0.0.1", trusted_proxies=PROXIES
        )
    )

    assert exc.error == "invalid_request"


@pytest.mark.parametrize("value", ["AAAA", ":not base64:", "::"])
def test_rejects_malformed_rfc9440_field(value: str) -> None:
    exc = error_of(
        lambda: client_cert_from_header(
            value,
            remote_addr="127.0.0.1",
            trusted_proxies=PROXIES,
            header_format="rfc9440",
        )
    )

    assert exc.error == "invalid_request"


def test_refuses_bad_proxy_configuration() -> None:
    with pytest.raises(ValueError):
        parse_trusted_proxies(["10.0.0.1/8"])
    with pytest.raises(ValueError):
        client_cert_from_header(
            "x", remote_addr="127.0.0.1", trusted_proxies=PROXIES, header_format="xfcc"
        )


# -- X.509-SVIDs ---------------------------------------------------------------------


def test_accepts_real_provider_svid(provider_bundle: X509Bundle) -> None:
    spiffe_id = verify_x509_svid(
        der_of(SVID / "provider-cert.pem"), [provider_bundle], now=PROVIDER_NOW
    )

    assert str(spiffe_id) == "spiffe://example.org/test"
    assert spiffe_id.trust_domain == "example.org"


def test_accepts_real_helper_svid_against_three_root_bundle() -> None:
    bundle = load_bundle("example.org", "helper-bundle.pem")
    assert len(bundle.roots) == 3

    spiffe_id = verify_x509_svid(
        der_of(SVID / "helper-svid.pem"), [bundle], now=HELPER_NOW
    )

    assert str(spiffe_id) == "spiffe://example.org/workload-server"


@pytest.mark.parametrize("under_own_name", [False, True])
def test_rejects_svid_of_foreign_trust_domain(
    provider_bundle: X509Bundle, under_own_name: bool
) -> None:
    # provider-cert2 is spiffe://other.org/test. Without an other.org bundle
    # there is nothing to check it against; with the provider roots filed
    # under other.org, they still do not sign it.
    bundles = [provider_bundle]
    if under_own_name:
        bundles.append(X509Bundle("other.org", provider_bundle.roots))

    exc = error_of(
        lambda: verify_x509_svid(
            der_of(SVID / "provider-cert2.pem"), bundles, now=PROVIDER2_NOW
        )
    )

    assert exc.error == "invalid_client"


def test_rejects_real_svid_outside_its_validity(provider_bundle: X509Bundle) -> None:
    exc = error_of(
        lambda: verify_x509_svid(
            der_of(SVID / "provider-cert.pem"), [provider_bundle], now=HELPER_NOW
        )
    )

    assert exc.error == "invalid_client"


def test_rejects_real_svid_against_another_bundle() -> None:
    helper_roots = load_bundle("example.org", "helper-bundle.pem")

    exc = error_of(
        lambda: verify_x509_svid(
            der_of(SVID / "provider-cert.pem"), [helper_roots], now=PROVIDER_NOW
        )
    )

    assert exc.error == "invalid_client"


def test_bundle_from_spiffe_jwks_takes_x509_svid_entries(
    provider_bundle: X509Bundle,
) -> None:
    sample = json.loads((SVID / "go-spiffe-spiffebundle_valid_2.json").read_text())
    parsed = X509Bundle.from_jwks("local", sample)
    assert len(parsed.roots) == 1
    assert parsed.roots[0].extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://local"]

    root = provider_bundle.roots[0]
    root_key = root.public_key()
    assert isinstance(root_key, ec.EllipticCurvePublicKey)
    jwks = {
        "keys": [
            {
                **ECAlgorithm.to_jwk(root_key, as_dict=True),
                "use": "x509-svid",
                "x5c": [base64.b64encode(root.public_bytes(Encoding.DER)).decode()],
            },
            {"use": "jwt-svid", "kty": "EC", "crv": "P-256", "x": "x", "y": "y"},
        ]
    }
    with pytest.warns(CryptographyDeprecationWarning, match="serial number"):
        bundle = X509Bundle.from_jwks("example.org", jwks)

    spiffe_id = verify_x509_svid(
        der_of(SVID / "provider-cert.pem"), [bundle], now=PROVIDER_NOW
    )
    assert str(spiffe_id) == "spiffe://example.org/test"


def test_bundle_without_x509_entries_is_a_configuration_error() -> None:
    with pytest.raises(ValueError):
        X509Bundle.from_jwks("example.org", {"keys": [{"use": "jwt-svid"}]})
    with pytest.raises(ValueError):
        X509Bundle.from_pem("Example.org", b"")


@pytest.fixture(scope="module")
def svid_ca() -> tuple[Issued, X509Bundle]:
    root = make_ca("SPIFFE Test Root")
    return root, X509Bundle("example.test", (root.cert,))


def test_accepts_generated_svid(svid_ca: tuple[Issued, X509Bundle]) -> None:
    root, bundle = svid_ca
    leaf = issue(
        root,
        sans=[x509.UniformResourceIdentifier(SPIFFE_ID), x509.DNSName("api.test")],
        eku=[ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
    )

    assert str(verify_x509_svid(leaf.der, [bundle], now=NOW)) == SPIFFE_ID


@pytest.mark.parametrize(
    "variant",
    [
        {
            "sans": [
                x509.UniformResourceIdentifier(SPIFFE_ID),
                x509.UniformResourceIdentifier("spiffe://example.test/other"),
            ]
        },
        {"sans": [x509.DNSName("api.test")]},
        {"sans": [x509.UniformResourceIdentifier("spiffe://example.test")]},
        {"sans": [x509.UniformResourceIdentifier("https://example.test/api")]},
        {"is_ca": True, "usage": key_usage(cert_sign=True)},
        {
            "usage": x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            )
        },
    ],
    ids=["two-uri-sans", "no-uri-san", "no-path", "not-spiffe", "ca", "no-digsig"],
)
def test_rejects_svid_that_breaks_the_x509_svid_rules(
    svid_ca: tuple[Issued, X509Bundle], variant: dict[str, Any]
) -> None:
    root, bundle = svid_ca
    args: dict[str, Any] = {"sans": [x509.UniformResourceIdentifier(SPIFFE_ID)]}
    args.update(variant)
    leaf = issue(root, **args)

    exc = error_of(lambda: verify_x509_svid(leaf.der, [bundle], now=NOW))

    assert exc.error == "invalid_client"


def test_rejects_svid_without_key_usage(svid_ca: tuple[Issued, X509Bundle]) -> None:
    root, bundle = svid_ca
    leaf = issue(root, sans=[x509.UniformResourceIdentifier(SPIFFE_ID)])
    # Rebuild the same certificate without its key usage extension.
    builder = (
        x509.CertificateBuilder()
        .subject_name(leaf.cert.subject)
        .issuer_name(leaf.cert.issuer)
        .public_key(leaf.key.public_key())
        .serial_number(leaf.cert.serial_number)
        .not_valid_before(leaf.cert.not_valid_before_utc)
        .not_valid_after(leaf.cert.not_valid_after_utc)
    )
    for ext in leaf.cert.extensions:
        if not isinstance(ext.value, x509.KeyUsage):
            builder = builder.add_extension(ext.value, ext.critical)
    der = builder.sign(root.key, hashes.SHA256()).public_bytes(Encoding.DER)

    exc = error_of(lambda: verify_x509_svid(der, [bundle], now=NOW))

    assert exc.error == "invalid_client"
