"""Mutual-TLS client authentication (RFC 8705) and X.509-SVIDs.

- ``certificate_thumbprint``: the ``x5t#S256`` confirmation value of RFC 8705
  section 3.1 for certificate-bound access tokens.
- ``TlsClientAuth``: the two client authentication methods of RFC 8705
  section 2. ``tls_client_auth`` (section 2.1) validates the chain against
  the configured CA bundle and matches the one subject value the client
  registered (section 2.1.2). ``self_signed_tls_client_auth`` (section 2.2)
  validates no chain and matches the certificate against the client's
  registered JWK Set (section 2.2.2).
- ``verify_x509_svid``: an X.509-SVID (SPIFFE X509-SVID specification,
  section 5) checked against the trust bundle of its trust domain; returns
  its SPIFFE ID.
- ``client_cert_from_header``: the certificate a TLS-terminating proxy
  forwarded, accepted only from configured proxy addresses.

Every function takes the DER certificate the TLS layer verified possession
of; none of them proves possession itself. Chains are validated by
cryptography's ``x509.verification`` under its Web PKI profile (RFC 5280
plus the CA/Browser Forum rules), relaxed only so that a client certificate
may carry no subjectAltName, which RFC 8705 subject DN matching allows.
Authentication failures raise ``InvalidClient``, malformed input
``InvalidRequest``, configuration mistakes ``ValueError``.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import ipaddress
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import unquote

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import verification
from jwt.algorithms import get_default_algorithms
from jwt.exceptions import PyJWTError

from .errors import InvalidClient, InvalidRequest
from .platforms.spiffe import SpiffeId, parse_spiffe_id, validate_trust_domain

__all__ = [
    "HEADER_FORMATS",
    "SUBJECT_METADATA",
    "ClientCertificate",
    "TlsClientAuth",
    "X509Bundle",
    "certificate_thumbprint",
    "client_cert_from_header",
    "client_cert_from_pem",
    "from_trusted_proxy",
    "parse_trusted_proxies",
    "validate_tls_client_metadata",
    "verify_x509_svid",
]

#: RFC 8705 section 2.1.2: the client metadata naming the expected subject;
#: a ``tls_client_auth`` client registers exactly one of them.
SUBJECT_METADATA = (
    "tls_client_auth_subject_dn",
    "tls_client_auth_san_dns",
    "tls_client_auth_san_uri",
    "tls_client_auth_san_ip",
    "tls_client_auth_san_email",
)
#: Header formats ``client_cert_from_header`` reads.
HEADER_FORMATS = ("pem-urlencoded", "rfc9440")

# A URL-encoded PEM certificate with a 4096-bit RSA key is about 3 KB; a
# chain or hostile input beyond this is refused before any parsing.
_MAX_HEADER_CHARS = 16384
_PEM_CERT = re.compile(
    r"-----BEGIN CERTIFICATE-----\s*([A-Za-z0-9+/=\s]+?)-----END CERTIFICATE-----"
)
_KTY_ALGORITHM = {"EC": "ES256", "RSA": "RS256", "OKP": "EdDSA"}
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_Ext = TypeVar("_Ext", bound=x509.ExtensionType)
# Names beyond RFC 4514's table that client certificate subjects often use;
# cryptography knows the others (CN, L, ST, O, OU, C, STREET, DC, UID).
_DN_NAMES = {
    "EMAILADDRESS": x509.NameOID.EMAIL_ADDRESS,
    "E": x509.NameOID.EMAIL_ADDRESS,
    "SERIALNUMBER": x509.NameOID.SERIAL_NUMBER,
    "GN": x509.NameOID.GIVEN_NAME,
    "SN": x509.NameOID.SURNAME,
}


@dataclass(frozen=True)
class ClientCertificate:
    """A client certificate that authenticated a client (RFC 8705 section 2).

    ``x5t_s256`` goes into ``cnf`` of a bound token (section 3.1);
    ``subject_dn`` (RFC 4514) and ``matched`` (the metadata name that
    matched, or ``jwks``) are for the audit record; ``not_after`` is the
    certificate's expiry in seconds since the epoch.
    """

    method: str
    x5t_s256: str
    subject_dn: str
    matched: str
    not_after: float


def certificate_thumbprint(der: bytes) -> str:
    """Return the ``x5t#S256`` of a DER certificate (RFC 8705 section 3.1).

    base64url, without padding, of the SHA-256 of the DER bytes.
    """
    digest = hashlib.sha256(der).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def validate_tls_client_metadata(metadata: Mapping[str, Any]) -> str:
    """Check ``tls_client_auth`` registration metadata (RFC 8705 section 2.1.2).

    Exactly one subject parameter must be set, to a non-empty string that
    parses: an RFC 4514 DN, an IP address, a URI with a scheme, a mailbox
    with ``@``. Returns
    the name of that parameter; raises ``ValueError`` otherwise.
    """
    present = [name for name in SUBJECT_METADATA if metadata.get(name) is not None]
    if len(present) != 1:
        raise ValueError("set exactly one tls_client_auth subject parameter")
    name = present[0]
    value = metadata[name]
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a non-empty string")
    if name == "tls_client_auth_subject_dn":
        _parse_dn(value)
    elif name == "tls_client_auth_san_ip":
        ipaddress.ip_address(value)
    elif name == "tls_client_auth_san_uri" and ":" not in value:
        raise ValueError("tls_client_auth_san_uri must be an absolute URI")
    elif name == "tls_client_auth_san_email" and "@" not in value:
        raise ValueError("tls_client_auth_san_email must be a mailbox")
    return name


class TlsClientAuth:
    """RFC 8705 client authentication with a certificate from the TLS layer.

    ``trust_roots`` are the CAs ``tls_client_auth`` certificates must chain
    to; with none, ``tls_client_auth`` always fails and only
    ``self_signed_tls_client_auth`` works. ``max_chain_depth`` bounds the
    number of intermediates (default 4). ``now`` arguments are seconds since
    the epoch, so validity can be checked at any instant.
    """

    def __init__(
        self, trust_roots: Sequence[x509.Certificate] = (), *, max_chain_depth: int = 4
    ) -> None:
        self.trust_roots = tuple(trust_roots)
        self.max_chain_depth = max_chain_depth
        self._store = (
            verification.Store(list(self.trust_roots)) if trust_roots else None
        )

    @classmethod
    def from_pem(cls, pem: bytes, *, max_chain_depth: int = 4) -> TlsClientAuth:
        """Build from a PEM CA bundle; raises ``ValueError`` if it holds none."""
        return cls(
            x509.load_pem_x509_certificates(pem), max_chain_depth=max_chain_depth
        )

    def authenticate(
        self,
        method: str,
        leaf_der: bytes,
        metadata: Mapping[str, Any],
        *,
        intermediates: Sequence[bytes] = (),
        now: float,
    ) -> ClientCertificate:
        """Authenticate by ``method``, the client's registered auth method.

        ``metadata`` is the client's registration: the subject parameter of
        RFC 8705 section 2.1.2, or ``jwks`` for the self-signed method.
        Raises ``InvalidClient``, or ``InvalidRequest`` for a certificate
        that does not parse.
        """
        if method == "tls_client_auth":
            return self.tls_client_auth(
                leaf_der, metadata, intermediates=intermediates, now=now
            )
        if method == "self_signed_tls_client_auth":
            return self.self_signed_tls_client_auth(
                leaf_der, metadata.get("jwks") or {}, now=now
            )
        raise InvalidClient("client authentication failed", detail=f"method {method}")

    def tls_client_auth(
        self,
        leaf_der: bytes,
        metadata: Mapping[str, Any],
        *,
        intermediates: Sequence[bytes] = (),
        now: float,
    ) -> ClientCertificate:
        """The PKI method (RFC 8705 section 2.1).

        The chain must validate to a configured root at ``now`` (validity
        periods included) and the certificate must carry the one subject
        value of ``metadata`` (section 2.1.2). A registered
        ``tls_client_auth_san_uri`` that is a SPIFFE ID also demands exactly
        one URI SAN, as X509-SVID section 2 does. Raises ``InvalidClient``,
        or ``InvalidRequest`` for a certificate that does not parse.
        """
        leaf = _load_der(leaf_der)
        chain = [_load_der(der) for der in intermediates]
        try:
            name = validate_tls_client_metadata(metadata)
        except ValueError as exc:
            raise InvalidClient(
                "client authentication failed", detail=f"bad registration: {exc}"
            ) from None
        if self._store is None:
            raise InvalidClient(
                "client authentication failed", detail="no tls_client_auth CA bundle"
            )
        _validate_chain(
            self._store,
            leaf,
            chain,
            now,
            self.max_chain_depth,
            _client_cert_policy(),
        )
        if not _subject_matches(leaf, name, metadata[name]):
            raise InvalidClient(
                "client authentication failed",
                detail=f"certificate does not match {name}",
            )
        return _result("tls_client_auth", leaf_der, leaf, name)

    def self_signed_tls_client_auth(
        self, leaf_der: bytes, jwks: Mapping[str, Any], *, now: float
    ) -> ClientCertificate:
        """The self-signed method (RFC 8705 section 2.2).

        No chain is validated. The certificate must be within its validity
        period at ``now`` and match a key of the registered JWK Set: its
        public key must equal the JWK's, and when the JWK has ``x5c`` its
        first certificate must be this very certificate (section 2.2.2).
        Raises ``InvalidClient``, or ``InvalidRequest`` for a certificate
        that does not parse.
        """
        leaf = _load_der(leaf_der)
        _check_validity(leaf, now)
        spki = _spki(leaf.public_key())
        if spki is None:
            raise InvalidRequest("client certificate key is not supported")
        for jwk in _jwk_list(jwks):
            if _jwk_matches(jwk, spki, leaf_der):
                return _result("self_signed_tls_client_auth", leaf_der, leaf, "jwks")
        raise InvalidClient(
            "client authentication failed",
            detail="certificate matches no registered key",
        )


@dataclass(frozen=True)
class X509Bundle:
    """The X.509-SVID CA certificates of one trust domain.

    SPIFFE Trust Domain and Bundle specification: a bundle belongs to one
    trust domain, and an SVID is validated against the bundle of the trust
    domain its SPIFFE ID names.
    """

    trust_domain: str
    roots: tuple[x509.Certificate, ...]

    @classmethod
    def from_pem(cls, trust_domain: str, pem: bytes) -> X509Bundle:
        """Read PEM CA certificates; raises ``ValueError`` if there are none."""
        validate_trust_domain(trust_domain)
        return cls(trust_domain, tuple(x509.load_pem_x509_certificates(pem)))

    @classmethod
    def from_jwks(cls, trust_domain: str, bundle: Mapping[str, Any]) -> X509Bundle:
        """Read a SPIFFE bundle (JWK Set) per X509-SVID section 6.2.

        Entries whose ``use`` is ``x509-svid`` contribute the first
        certificate of their ``x5c``; entries without ``x5c`` are ignored.
        Raises ``ValueError`` when no entry yields a certificate, which
        means the trust domain does not support X.509-SVIDs.
        """
        validate_trust_domain(trust_domain)
        roots = []
        for jwk in _jwk_list(bundle):
            x5c = jwk.get("x5c")
            if jwk.get("use") != "x509-svid" or not isinstance(x5c, list) or not x5c:
                continue
            der = _b64_std(x5c[0])
            if der is None:
                raise ValueError("x5c entry is not base64")
            roots.append(x509.load_der_x509_certificate(der))
        if not roots:
            raise ValueError("bundle has no x509-svid certificates")
        return cls(trust_domain, tuple(roots))


def verify_x509_svid(
    leaf_der: bytes,
    bundles: Sequence[X509Bundle],
    *,
    intermediates: Sequence[bytes] = (),
    now: float,
    max_chain_depth: int = 4,
) -> SpiffeId:
    """Validate an X.509-SVID and return its SPIFFE ID (X509-SVID section 5).

    Exactly one URI SAN holding a workload SPIFFE ID with a path (sections 2
    and 3.1); a key usage extension with ``digitalSignature`` and without
    ``keyCertSign`` or ``cRLSign``, and no ``cA`` (sections 4.1, 4.3, 5.2);
    a chain to the bundle of the ID's trust domain valid at ``now`` (section
    5.1). Raises ``InvalidClient``, or ``InvalidRequest`` for a certificate
    that does not parse.
    """
    leaf = _load_der(leaf_der)
    chain = [_load_der(der) for der in intermediates]
    uris = _san_values(leaf, x509.UniformResourceIdentifier)
    if len(uris) != 1:
        raise InvalidClient(
            "client authentication failed", detail="SVID needs exactly one URI SAN"
        )
    try:
        spiffe_id = parse_spiffe_id(uris[0])
    except ValueError:
        raise InvalidClient(
            "client authentication failed", detail="URI SAN is not a SPIFFE ID"
        ) from None
    _check_svid_leaf(leaf)

    roots = [
        r for b in bundles if b.trust_domain == spiffe_id.trust_domain for r in b.roots
    ]
    if not roots:
        raise InvalidClient(
            "client authentication failed",
            detail=f"no bundle for trust domain {spiffe_id.trust_domain}",
        )
    # The default Web PKI profile applies unchanged: an SVID always has a
    # subjectAltName, and its EKU, when present, includes clientAuth
    # (X509-SVID section 4.4).
    policy = verification.ExtensionPolicy.webpki_defaults_ee()
    _validate_chain(
        verification.Store(roots), leaf, chain, now, max_chain_depth, policy
    )
    return spiffe_id


def parse_trusted_proxies(
    values: Sequence[str],
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """Parse proxy networks such as ``127.0.0.1/32``; raises ``ValueError``.

    Host bits must be zero, so that a typo cannot widen the network.
    """
    return tuple(ipaddress.ip_network(v, strict=True) for v in values)


def client_cert_from_header(
    value: str,
    *,
    remote_addr: str,
    trusted_proxies: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network | str],
    header_format: str = "pem-urlencoded",
) -> bytes:
    """Return the DER certificate a TLS-terminating proxy forwarded.

    The header is believed only when the connection comes from
    ``remote_addr`` inside one of ``trusted_proxies``; an empty list trusts
    nobody. Formats: ``pem-urlencoded`` is nginx's
    ``$ssl_client_escaped_cert`` (URL-encoded PEM), ``rfc9440`` is the
    ``Client-Cert`` field of RFC 9440 section 2.2 (a structured-field byte
    sequence of the DER). Raises ``InvalidClient`` when the sender is not a
    trusted proxy or no certificate was forwarded, ``InvalidRequest`` when
    the value is malformed, ``ValueError`` for an unknown format or a bad
    network.
    """
    if header_format not in HEADER_FORMATS:
        raise ValueError(f"unknown client certificate header format {header_format}")
    networks = [
        n if not isinstance(n, str) else ipaddress.ip_network(n, strict=True)
        for n in trusted_proxies
    ]
    if not _trusted(remote_addr, networks):
        raise InvalidClient(
            "client authentication failed",
            detail="certificate header from an untrusted address",
        )
    value = value.strip()
    if not value:
        raise InvalidClient(
            "client authentication failed", detail="proxy forwarded no certificate"
        )
    if len(value) > _MAX_HEADER_CHARS:
        raise InvalidRequest("client certificate header is too large")
    if header_format == "rfc9440":
        der = _from_rfc9440(value)
    else:
        der = _from_escaped_pem(value)
    _load_der(der)
    return der


def client_cert_from_pem(pem: str) -> bytes:
    """Return the DER form of one PEM certificate.

    For the certificate the issuer's own TLS server verified in the
    handshake, which cheroot hands over as PEM (``SSL_CLIENT_CERT``).
    Raises ``InvalidRequest`` unless ``pem`` holds exactly one certificate.
    """
    blocks = _PEM_CERT.findall(pem)
    if len(blocks) != 1 or _PEM_CERT.sub("", pem).strip():
        raise InvalidRequest("client certificate must be one PEM certificate")
    der = _b64_std("".join(blocks[0].split()))
    if der is None:
        raise InvalidRequest("client certificate is not valid PEM")
    _load_der(der)
    return der


def from_trusted_proxy(
    remote_addr: str | None,
    trusted_proxies: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network],
) -> bool:
    """Whether the connection's peer address lies in ``trusted_proxies``.

    An IPv4-mapped IPv6 address counts as its IPv4 address.
    """
    return bool(remote_addr) and _trusted(remote_addr or "", trusted_proxies)


def _trusted(
    remote_addr: str, networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]
) -> bool:
    try:
        addr = ipaddress.ip_address(remote_addr)
    except ValueError:
        return False
    # A dual-stack socket reports an IPv4 peer as ::ffff:a.b.c.d; compare the
    # IPv4 address so that IPv4 proxy networks still apply.
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr in n for n in networks)


def _from_escaped_pem(value: str) -> bytes:
    # unquote, not unquote_plus: base64 uses "+", which must stay a plus.
    try:
        text = unquote(value, errors="strict")
    except UnicodeDecodeError:
        raise InvalidRequest(
            "client certificate header is not URL-encoded PEM"
        ) from None
    blocks = _PEM_CERT.findall(text)
    rest = _PEM_CERT.sub("", text).strip()
    if len(blocks) != 1 or rest:
        raise InvalidRequest("client certificate header must hold one PEM certificate")
    der = _b64_std("".join(blocks[0].split()))
    if der is None:
        raise InvalidRequest("client certificate header is not valid PEM")
    return der


def _from_rfc9440(value: str) -> bytes:
    # RFC 8941 section 3.3.5: a byte sequence is base64 between colons.
    if len(value) < 3 or value[0] != ":" or value[-1] != ":":
        raise InvalidRequest("Client-Cert header is not a byte sequence")
    der = _b64_std(value[1:-1])
    if der is None:
        raise InvalidRequest("Client-Cert header is not base64")
    return der


def _b64_std(text: object) -> bytes | None:
    if not isinstance(text, str):
        return None
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def _load_der(der: bytes) -> x509.Certificate:
    try:
        return x509.load_der_x509_certificate(der)
    except (ValueError, TypeError):
        raise InvalidRequest("client certificate is not a DER certificate") from None


def _client_cert_policy() -> verification.ExtensionPolicy:
    # The Web PKI profile demands a subjectAltName on every end-entity
    # certificate. RFC 8705 section 2.1.2 lets a client be matched by subject
    # DN alone, and enterprise CAs issue such certificates, so the extension
    # is made optional here; everything else of the profile still applies.
    return verification.ExtensionPolicy.webpki_defaults_ee().may_be_present(
        x509.SubjectAlternativeName, verification.Criticality.AGNOSTIC, None
    )


def _validate_chain(
    store: verification.Store,
    leaf: x509.Certificate,
    chain: list[x509.Certificate],
    now: float,
    max_chain_depth: int,
    ee_policy: verification.ExtensionPolicy,
) -> None:
    when = dt.datetime.fromtimestamp(now, dt.UTC)
    verifier = (
        verification.PolicyBuilder()
        .store(store)
        .time(when)
        .max_chain_depth(max_chain_depth)
        .extension_policies(
            ca_policy=verification.ExtensionPolicy.webpki_defaults_ca(),
            ee_policy=ee_policy,
        )
        .build_client_verifier()
    )
    try:
        verifier.verify(leaf, chain)
    except (verification.VerificationError, ValueError) as exc:
        # The library's message names the failing certificate and check; it
        # holds no secret, so it goes to the operator's detail.
        raise InvalidClient(
            "client authentication failed", detail=f"chain: {exc}"[:300]
        ) from None


def _check_validity(cert: x509.Certificate, now: float) -> None:
    when = dt.datetime.fromtimestamp(now, dt.UTC)
    if not cert.not_valid_before_utc <= when <= cert.not_valid_after_utc:
        raise InvalidClient(
            "client authentication failed", detail="certificate outside its validity"
        )


def _check_svid_leaf(leaf: x509.Certificate) -> None:
    """X509-SVID sections 4.1, 4.3 and 5.2 on the leaf."""
    constraints = _extension(leaf, x509.BasicConstraints)
    # RFC 5280 section 4.2.1.9: without the extension the certificate is not
    # a CA, which is what section 5.2 asks the validator to ensure.
    is_ca = constraints is not None and constraints.ca
    usage = _extension(leaf, x509.KeyUsage)
    if (
        is_ca
        or usage is None
        or not usage.digital_signature
        or usage.key_cert_sign
        or usage.crl_sign
    ):
        raise InvalidClient(
            "client authentication failed", detail="SVID is not a leaf certificate"
        )


def _subject_matches(cert: x509.Certificate, name: str, expected: str) -> bool:
    """RFC 8705 section 2.1.2 matching of one registered subject value."""
    if name == "tls_client_auth_subject_dn":
        return _dn_equal(cert.subject, _parse_dn(expected))
    if name == "tls_client_auth_san_dns":
        # DNS names compare without case (RFC 4343); the registered value is
        # matched literally, so a wildcard SAN never matches a concrete name.
        dns = _san_values(cert, x509.DNSName)
        return expected.lower().rstrip(".") in {d.lower().rstrip(".") for d in dns}
    if name == "tls_client_auth_san_uri":
        uris = _san_values(cert, x509.UniformResourceIdentifier)
        if expected.startswith("spiffe://") and len(uris) != 1:
            return False
        return expected in uris
    if name == "tls_client_auth_san_ip":
        # Section 2.1.2 (after RFC 5952 section 8): compare in binary form.
        return ipaddress.ip_address(expected) in _san_ips(cert)
    emails = _san_values(cert, x509.RFC822Name)
    return any(_email_equal(expected, e) for e in emails)


def _extension(cert: x509.Certificate, kind: type[_Ext]) -> _Ext | None:
    """The value of one extension of ``cert``, or ``None`` when absent."""
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None
    except (x509.DuplicateExtension, ValueError):
        raise InvalidRequest("client certificate extensions do not parse") from None


def _san_names(cert: x509.Certificate) -> list[x509.GeneralName]:
    san = _extension(cert, x509.SubjectAlternativeName)
    return [] if san is None else list(san)


def _san_values(cert: x509.Certificate, kind: type[x509.GeneralName]) -> list[str]:
    """The string values of the SAN entries of one type (DNS, URI, email)."""
    return [str(n.value) for n in _san_names(cert) if isinstance(n, kind)]


def _san_ips(
    cert: x509.Certificate,
) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The iPAddress SAN entries that are addresses rather than networks."""
    return [
        n.value
        for n in _san_names(cert)
        if isinstance(n, x509.IPAddress)
        and isinstance(n.value, ipaddress.IPv4Address | ipaddress.IPv6Address)
    ]


def _email_equal(expected: str, actual: str) -> bool:
    # RFC 5280 section 7.5: the local part is case-sensitive, the domain not.
    e_local, _, e_domain = expected.rpartition("@")
    a_local, _, a_domain = actual.rpartition("@")
    return e_local == a_local and e_domain.lower() == a_domain.lower()


def _parse_dn(value: str) -> x509.Name:
    """Parse an RFC 4514 DN string; raises ``ValueError``.

    Attribute type names are case-insensitive (RFC 4514 section 3 refers to
    RFC 4512 descriptors), and the whitespace that OpenSSL-style strings put
    after a comma is tolerated. Hex-encoded values (``CN=#0403...``) are
    refused: the parser would keep their DER header in the value, which then
    never matches.
    """
    out: list[str] = []
    in_type, escaped, value_start = True, False, False
    for ch in value:
        if in_type:
            if ch == "=":
                in_type, value_start = False, True
                out.append(ch)
            elif not ch.isspace():
                out.append(ch.upper())
            continue
        if value_start and ch == "#":
            raise ValueError("hex-encoded DN attribute values are not supported")
        value_start = False
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch in ",+":
            in_type = True
        out.append(ch)
    try:
        return x509.Name.from_rfc4514_string("".join(out), _DN_NAMES)
    except ValueError:
        raise ValueError(
            f"{value!r} is not an RFC 4514 distinguished name: write it most "
            "specific first, comma-separated, e.g. CN=api,O=Example (what "
            "openssl x509 -noout -subject -nameopt RFC2253 prints)"
        ) from None


def _dn_equal(a: x509.Name, b: x509.Name) -> bool:
    """Distinguished name equality in the spirit of RFC 4517 section 4.2.15.

    The RDNs must agree in number and order; within an RDN the attribute
    sets must agree. Values compare after RFC 4518-style preparation:
    Unicode NFKC, case folding and collapsed inner whitespace, since the
    attribute types of subject names match case-insensitively. The ASN.1
    string type (PrintableString, UTF8String) does not matter.
    """
    rdns_a, rdns_b = a.rdns, b.rdns
    if len(rdns_a) != len(rdns_b):
        return False
    return all(_rdn_key(x) == _rdn_key(y) for x, y in zip(rdns_a, rdns_b, strict=True))


def _rdn_key(rdn: x509.RelativeDistinguishedName) -> frozenset[tuple[str, str]]:
    return frozenset((attr.oid.dotted_string, _prepare(attr.value)) for attr in rdn)


def _prepare(value: str | bytes) -> str:
    if isinstance(value, bytes):
        return value.hex()
    folded = unicodedata.normalize("NFKC", value).casefold()
    return " ".join(folded.split())


def _jwk_list(jwks: Mapping[str, Any]) -> list[dict[str, Any]]:
    keys = jwks.get("keys") if isinstance(jwks, Mapping) else None
    if not isinstance(keys, list):
        return []
    return [k for k in keys if isinstance(k, dict)]


def _jwk_matches(jwk: dict[str, Any], spki: bytes, leaf_der: bytes) -> bool:
    x5c = jwk.get("x5c")
    if x5c is not None:
        first = _b64_std(x5c[0]) if isinstance(x5c, list) and x5c else None
        if first != leaf_der:
            return False
    return _jwk_spki(jwk) == spki


def _jwk_spki(jwk: dict[str, Any]) -> bytes | None:
    """The SubjectPublicKeyInfo of a registered JWK, or ``None``."""
    alg = _KTY_ALGORITHM.get(str(jwk.get("kty")))
    if alg is None:
        return None
    # Only the public members are read, so a registration that by mistake
    # holds a private key is still compared by its public half.
    public = {k: v for k, v in jwk.items() if k not in _PRIVATE_MEMBERS}
    try:
        key = get_default_algorithms()[alg].from_jwk(public)
    except (PyJWTError, ValueError, TypeError, KeyError):
        return None
    return _spki(key)


def _spki(key: object) -> bytes | None:
    public_bytes = getattr(key, "public_bytes", None)
    if public_bytes is None:
        return None
    data = public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return data if isinstance(data, bytes) else None


def _result(
    method: str, der: bytes, cert: x509.Certificate, matched: str
) -> ClientCertificate:
    return ClientCertificate(
        method=method,
        x5t_s256=certificate_thumbprint(der),
        subject_dn=cert.subject.rfc4514_string(),
        matched=matched,
        not_after=cert.not_valid_after_utc.timestamp(),
    )
