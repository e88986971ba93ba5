"""Key sources: pinned files, and JWK Sets fetched from a local HTTPS server."""

from __future__ import annotations

import datetime
import ipaddress
import json
import logging
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from jwt.api_jws import PyJWS

from issuer.config import ConfigError
from issuer.errors import EvidenceError
from issuer.platforms import TrustSources, keysource
from issuer.platforms.keysource import (
    RemoteJWKS,
    keys_from_jwks,
    load_jwks_file,
    load_pem_file,
)

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
NOW = 1763985600
ISSUER = "https://cluster.test"
AUDIENCE = "https://issuer.test"


def reason(call: Callable[[], object]) -> str:
    with pytest.raises(EvidenceError) as info:
        call()
    return info.value.reason


# A test CA and a server certificate for 127.0.0.1.


@dataclass(frozen=True)
class Pki:
    ca_file: Path
    cert_file: Path
    key_file: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("wimse test CA"))
        .issuer_name(_name("wimse test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca_cert.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pki = Pki(folder / "ca.pem", folder / "server.pem", folder / "server.key")
    pki.ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    pki.cert_file.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    pki.key_file.write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return pki


# A JWKS server on 127.0.0.1 that counts the requests per path.


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    send_length: bool = True
    delay: float = 0.0


@dataclass
class JwksServer:
    base: str
    routes: dict[str, Reply]
    hits: Counter[str]
    stop: Callable[[], None]


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that stops reading early breaks the pipe; that is the
        # behaviour under test, not a server fault.
        pass


def _handler(
    routes: dict[str, Reply], hits: Counter[str]
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits[self.path] += 1
            reply = routes.get(self.path, Reply(status=404))
            if reply.delay:
                time.sleep(reply.delay)
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            if reply.send_length:
                self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            self.wfile.write(reply.body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def serve(pki: Pki) -> Iterator[Callable[..., JwksServer]]:
    stops: list[Callable[[], None]] = []

    def start(tls: bool = True) -> JwksServer:
        routes: dict[str, Reply] = {}
        hits: Counter[str] = Counter()
        httpd = _QuietServer(("127.0.0.1", 0), _handler(routes, hits))
        if tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(pki.cert_file, pki.key_file)
            httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
        thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        thread.start()
        stopped = threading.Event()

        def stop() -> None:
            if not stopped.is_set():
                stopped.set()
                httpd.shutdown()
                httpd.server_close()
                thread.join()

        stops.append(stop)
        port = httpd.server_address[1]
        scheme = "https" if tls else "http"
        return JwksServer(f"{scheme}://127.0.0.1:{port}", routes, hits, stop)

    yield start
    for stop in stops:
        stop()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def signer() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def jwks_body(*keys: tuple[str, ec.EllipticCurvePrivateKey]) -> bytes:
    entries = []
    for kid, key in keys:
        jwk = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
        jwk.update({"kid": kid, "use": "sig", "alg": "ES256"})
        entries.append(jwk)
    return json.dumps({"keys": entries}).encode()


def mint(key: ec.EllipticCurvePrivateKey, kid: str) -> str:
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "workload-7", "exp": NOW + 60}
    return PyJWS().encode(
        json.dumps(claims).encode(), key, algorithm="ES256", headers={"kid": kid}
    )


def remote(server: JwksServer, pki: Pki, path: str = "/jwks", **kw: Any) -> RemoteJWKS:
    return RemoteJWKS(server.base + path, ca_file=str(pki.ca_file), **kw)


# Fetching.


def test_fetches_over_https_with_ca_file_and_reports_managed_keys(
    serve: Callable[..., JwksServer], pki: Pki, signer: ec.EllipticCurvePrivateKey
) -> None:
    server = serve()
    server.routes["/jwks"] = Reply(body=jwks_body(("k1", signer)))
    sources = TrustSources(
        {
            "cluster": {
                "platform": "oidc",
                "issuer": ISSUER,
                "jwks_url": server.base + "/jwks",
                "ca_file": str(pki.ca_file),
            }
        },
        issuer_url=AUDIENCE,
    )

    first = sources.verify(mint(signer, "k1"), NOW)
    second = sources.verify(mint(signer, "k1"), NOW)

    assert first.keys_managed is True
    assert (first.platform, first.evidence_kind, first.subject) == (
        "oidc",
        "oidc_token",
        "workload-7",
    )
    assert first.attributes == {}
    assert second.subject == "workload-7"
    assert server.hits["/jwks"] == 1


def test_untrusted_server_certificate_is_a_fetch_failure(
    serve: Callable[..., JwksServer], signer: ec.EllipticCurvePrivateKey
) -> None:
    server = serve()
    server.routes["/jwks"] = Reply(body=jwks_body(("k1", signer)))
    source = RemoteJWKS(server.base + "/jwks")

    assert reason(lambda: source.find("k1", "ES256")) == "fetch_failed"
    assert server.hits["/jwks"] == 0


def test_redirect_is_a_fetch_failure(
    serve: Callable[..., JwksServer], pki: Pki, signer: ec.EllipticCurvePrivateKey
) -> None:
    server = serve()
    server.routes["/moved"] = Reply(status=302, headers={"Location": "/jwks"})
    server.routes["/jwks"] = Reply(body=jwks_body(("k1", signer)))

    assert reason(lambda: remote(server, pki, "/moved").find("k1", "ES256")) == (
        "fetch_failed"
    )
    assert server.hits == Counter({"/moved": 1})


@pytest.mark.parametrize("send_length", [True, False])
def test_oversized_body_is_a_fetch_failure(
    serve: Callable[..., JwksServer],
    pki: Pki,
    signer: ec.EllipticCurvePrivateKey,
    send_length: bool,
) -> None:
    server = serve()
    document = json.loads(jwks_body(("k1", signer)))
    document["padding"] = "x" * (1024 * 1024)
    server.routes["/jwks"] = Reply(
        body=json.dumps(document).encode(), send_length=send_length
    )

    assert reason(lambda: remote(server, pki).find("k1", "ES256")) == "fetch_failed"


@pytest.mark.parametrize(
    "reply",
    [
        Reply(status=500, body=b"{}"),
        Reply(status=404),
        Reply(body=b"not json"),
        Reply(body=b"[]"),
        Reply(body=b'{"keys": {}}'),
        Reply(body=b'{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}'),
        Reply(body=b"{}", headers={"Content-Encoding": "gzip"}),
        Reply(body=b'{"keys": [{"kty": "EC", "use": "enc"}]}'),
        Reply(body=b"[" * 100000),
    ],
    ids=[
        "500",
        "404",
        "not-json",
        "array",
        "keys-object",
        "symmetric",
        "gzip",
        "no-usable-key",
        "deep-nesting",
    ],
)
@pytest.mark.usefixtures("quiet_gc")
def test_unusable_responses_are_fetch_failures(
    serve: Callable[..., JwksServer], pki: Pki, reply: Reply
) -> None:
    server = serve()
    server.routes["/jwks"] = reply

    assert reason(lambda: remote(server, pki).find("k1", "ES256")) == "fetch_failed"


def test_jwks_with_private_key_is_never_cached(
    serve: Callable[..., JwksServer], pki: Pki, signer: ec.EllipticCurvePrivateKey
) -> None:
    server = serve()
    private = ECAlgorithm.to_jwk(signer, as_dict=True)
    private["kid"] = "k1"
    server.routes["/jwks"] = Reply(body=json.dumps({"keys": [private]}).encode())

    assert reason(lambda: remote(server, pki).find("k1", "ES256")) == "fetch_failed"


def test_keeps_last_good_keys_when_the_server_goes_down(
    serve: Callable[..., JwksServer], pki: Pki, signer: ec.EllipticCurvePrivateKey
) -> None:
    server = serve()
    server.routes["/jwks"] = Reply(body=jwks_body(("k1", signer)))
    clock = Clock()
    source = remote(server, pki, clock=clock)
    assert source.find("k1", "ES256").kid == "k1"

    server.stop()
    clock.now += 3600

    assert source.find("k1", "ES256").kid == "k1"
    assert server.hits["/jwks"] == 1
    clock.now += 31
    assert reason(lambda: source.find("k2", "ES256")) == "unknown_kid"
    assert server.hits["/jwks"] == 1


def test_fetch_failure_is_logged_without_token_or_query(
    caplog: pytest.LogCaptureFixture,
    serve: Callable[..., JwksServer],
    pki: Pki,
    signer: ec.EllipticCurvePrivateKey,
) -> None:
    server = serve()
    server.routes["/jwks?key=s3cret"] = Reply(status=503)
    sources = TrustSources(
        {
            "cluster": {
                "platform": "oidc",
                "issuer": ISSUER,
                "jwks_url": server.base + "/jwks?key=s3cret",
                "ca_file": str(pki.ca_file),
            }
        },
        issuer_url=AUDIENCE,
    )
    token = mint(signer, "k1")

    with caplog.at_level(logging.DEBUG):
        assert reason(lambda: sources.verify(token, NOW)) == "fetch_failed"

    [record] = [r for r in caplog.records if r.name == keysource.__name__]
    fields = record.__dict__["fields"]
    assert fields["jwks_url"] == server.base + "/jwks"
    assert fields["error"] == "JWK Set URL answered 503"
    assert "s3cret" not in record.getMessage()
    assert token not in caplog.text


def test_first_fetch_failure_is_not_retried_within_30_seconds(
    serve: Callable[..., JwksServer], pki: Pki, signer: ec.EllipticCurvePrivateKey
) -> None:
    server = serve()
    server.routes["/jwks"] = Reply(status=503)
    clock = Clock()
    source = remote(server, pki, clock=clock)

    for _ in range(5):
        assert reason(lambda: source.find("k1", "ES256")) == "fetch_failed"
    assert server.hits["/jwks"] == 1

    server.routes["/jwks"] = Reply(body=jwks_body(("k1", signer)))
    clock.now += 30
    assert source.find("k1", "ES256").kid == "k1"
    assert server.hits["/jwks"] == 2


def test_unknown_kid_refetch_is_rate_limited(
    serve: Callable[..., JwksServer], pki: Pki, signer: ec.EllipticCurvePrivateKey
) -> None:
    server = serve()
    server.routes["/jwks"] = Reply(body=jwks_body(("k1", signer)))
    clock = Clock()
    source = remote(server, pki, clock=clock)
    source.find("k1", "ES256")

    clock.now += 10
    for _ in range(5):
        assert reason(lambda: source.find("k2", "ES256")) == "unknown_kid"
    assert server.hits["/jwks"] == 1

    clock.now += 21
    for _ in range(5):
        assert reason(lambda: source.find("k2", "ES256")) == "unknown_kid"
    assert server.hits["/jwks"] == 2

    rotated = ec.generate_private_key(ec.SECP256R1())
    server.routes["/jwks"] = Reply(body=jwks_body(("k1", signer), ("k2", rotated)))
    clock.now += 30
    assert source.find("k2", "ES256").kid == "k2"
    assert server.hits["/jwks"] == 3


@pytest.mark.parametrize(
    ("cache_control", "fresh_for"),
    [
        (None, 300),
        ("public, max-age=60", 60),
        ("max-age=5", 30),
        ("no-store", 30),
        ("max-age=86400", 300),
    ],
)
def test_cache_lifetime_follows_config_and_shorter_max_age(
    serve: Callable[..., JwksServer],
    pki: Pki,
    signer: ec.EllipticCurvePrivateKey,
    cache_control: str | None,
    fresh_for: int,
) -> None:
    server = serve()
    headers = {"Cache-Control": cache_control} if cache_control else {}
    server.routes["/jwks"] = Reply(body=jwks_body(("k1", signer)), headers=headers)
    clock = Clock()
    source = remote(server, pki, clock=clock, cache_seconds=300)
    source.find("k1", "ES256")

    clock.now += fresh_for - 1
    source.find("k1", "ES256")
    assert server.hits["/jwks"] == 1

    clock.now += 1
    source.find("k1", "ES256")
    assert server.hits["/jwks"] == 2


def test_fetch_is_cut_at_the_total_budget(
    monkeypatch: pytest.MonkeyPatch,
    serve: Callable[..., JwksServer],
    pki: Pki,
    signer: ec.EllipticCurvePrivateKey,
) -> None:
    monkeypatch.setattr(keysource, "FETCH_BUDGET", 0.5)
    server = serve()
    server.routes["/jwks"] = Reply(body=jwks_body(("k1", signer)), delay=2.0)
    clock = Clock()
    source = remote(server, pki, clock=clock)

    started = time.monotonic()
    assert reason(lambda: source.find("k1", "ES256")) == "fetch_failed"
    assert time.monotonic() - started < 1.5

    # The stuck fetch is still running; no second one is started beside it.
    clock.now += 31
    assert reason(lambda: source.find("k1", "ES256")) == "fetch_failed"
    assert server.hits["/jwks"] == 1


def test_concurrent_lookups_share_one_fetch(
    serve: Callable[..., JwksServer], pki: Pki, signer: ec.EllipticCurvePrivateKey
) -> None:
    server = serve()
    server.routes["/jwks"] = Reply(body=jwks_body(("k1", signer)), delay=0.2)
    source = remote(server, pki)
    found: list[str | None] = []

    def look() -> None:
        found.append(source.find("k1", "ES256").kid)

    threads = [threading.Thread(target=look) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert found == ["k1"] * 8
    assert server.hits["/jwks"] == 1


def test_plain_http_needs_allow_http_and_is_not_managed(
    serve: Callable[..., JwksServer], signer: ec.EllipticCurvePrivateKey
) -> None:
    server = serve(tls=False)
    server.routes["/jwks"] = Reply(body=jwks_body(("k1", signer)))
    table: dict[str, object] = {
        "platform": "oidc",
        "issuer": ISSUER,
        "jwks_url": server.base + "/jwks",
    }
    with pytest.raises(ConfigError, match=r"trust_sources\.plain.*jwks_url"):
        TrustSources({"plain": table}, issuer_url=AUDIENCE)

    table["allow_http"] = True
    identity = TrustSources({"plain": table}, issuer_url=AUDIENCE).verify(
        mint(signer, "k1"), NOW
    )

    assert identity.keys_managed is False


# Loading pinned keys.


def short_rsa_key() -> rsa.RSAPrivateKey:
    """A key below the 2048-bit floor, which loading must skip or refuse."""
    return rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505


def test_loads_certificate_and_public_key_pem(tmp_path: Path) -> None:
    cert_key = load_pem_file(DATA / "github-actions-oidc" / "RS256.pem", None)
    ec_key = ec.generate_private_key(ec.SECP384R1())
    pem = ec_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "p384.pem").write_bytes(pem)

    pinned = load_pem_file(tmp_path / "p384.pem", "kid-1")

    assert cert_key.match_any and cert_key.kid is None
    assert cert_key.algorithms == {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
    assert (pinned.kid, pinned.match_any) == ("kid-1", False)
    assert pinned.algorithms == {"ES384"}


def test_refuses_mislabelled_and_short_pem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load_pem_file(DATA / "spiffe-jwt-svid" / "ec-secp256k1-priv-key.pem", None)
    short = short_rsa_key()
    (tmp_path / "short.pem").write_bytes(
        short.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    with pytest.raises(ConfigError):
        load_pem_file(tmp_path / "short.pem", None)
    with pytest.raises(ConfigError):
        load_pem_file(tmp_path / "missing.pem", None)


def test_jwks_reading_skips_keys_it_cannot_use_for_signatures() -> None:
    good = RSAAlgorithm.to_jwk(
        rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key(),
        as_dict=True,
    )
    short = RSAAlgorithm.to_jwk(
        short_rsa_key().public_key(),
        as_dict=True,
    )
    okp = OKPAlgorithm.to_jwk(
        ed25519.Ed25519PrivateKey.generate().public_key(), as_dict=True
    )
    document = {
        "keys": [
            {**good, "kid": "rs", "alg": "PS256"},
            {**good, "kid": "enc", "use": "enc"},
            {**good, "kid": "ops", "key_ops": ["encrypt"]},
            {**good, "kid": "mismatch", "alg": "ES256"},
            {**short, "kid": "short"},
            {**okp, "kid": "ed"},
            {"kty": "XYZ", "kid": "unknown"},
            {**good, "kid": 7},
        ]
    }

    keys = keys_from_jwks(document)

    assert [(k.kid, sorted(k.algorithms)) for k in keys] == [
        ("rs", ["PS256"]),
        ("ed", ["EdDSA"]),
    ]


@pytest.mark.parametrize(
    "document",
    [
        [],
        {},
        {"keys": "none"},
        {"keys": ["not an object"]},
        {"keys": [{"kty": "oct", "k": "AAAA"}]},
        {"keys": [{"kty": "RSA", "n": "AQAB", "e": "AQAB", "d": "AQAB"}]},
    ],
)
def test_jwks_reading_refuses_documents_with_secrets_or_no_keys_array(
    document: object,
) -> None:
    with pytest.raises(ValueError):
        keys_from_jwks(document)


def test_real_eks_jwks_loads_all_thirteen_keys() -> None:
    keys = load_jwks_file(DATA / "k8s-sa-token" / "jwks.json")

    assert len(keys) == 13
    assert all(key.algorithms == {"RS256"} for key in keys)


# Configuration.


def _table(**values: object) -> dict[str, object]:
    base: dict[str, object] = {
        "platform": "kubernetes",
        "issuer": ISSUER,
        "jwks_file": str(DATA / "k8s-sa-token" / "jwks.json"),
    }
    base.update(values)
    return {k: v for k, v in base.items() if v is not None}


@pytest.mark.parametrize(
    ("table", "key"),
    [
        (_table(platform="aws"), "platform"),
        (_table(platform=None), "platform"),
        (_table(colour="blue"), "colour"),
        (_table(algorithms=["none"]), "algorithms"),
        (_table(algorithms=["HS256"]), "algorithms"),
        (_table(algorithms=["hs512"]), "algorithms"),
        (_table(algorithms=[]), "algorithms"),
        (_table(algorithms="RS256"), "algorithms"),
        (_table(algorithms=["RS257"]), "algorithms"),
        (_table(pem_file="x.pem"), "jwks_file"),
        (_table(jwks_file=None), "jwks_file"),
        (_table(kid="abc"), "kid"),
        (_table(ca_file="ca.pem"), "ca_file"),
        (_table(allow_http=True), "allow_http"),
        (_table(cache_seconds=60), "cache_seconds"),
        (_table(max_lifetime=0), "max_lifetime"),
        (_table(max_lifetime="1h"), "max_lifetime"),
        (_table(audience=""), "audience"),
        (_table(issuer=5), "issuer"),
        (_table(trust_domain="example.org"), "trust_domain"),
        (_table(jwks_file="does-not-exist.json"), "jwks_file"),
        (_table(jwks_file=None, jwks_url="ftp://127.0.0.1/jwks"), "jwks_url"),
        (_table(jwks_file=None, jwks_url="https://u:p@127.0.0.1/jwks"), "jwks_url"),
        (
            _table(jwks_file=None, jwks_url="https://127.0.0.1/", cache_seconds=10),
            "cache_seconds",
        ),
        (
            _table(jwks_file=None, jwks_url="https://127.0.0.1/", ca_file="nope.pem"),
            "ca_file",
        ),
        (
            _table(jwks_file=None, jwks_url="https://127.0.0.1/", allow_http="yes"),
            "allow_http",
        ),
    ],
)
def test_bad_config_names_source_and_key(table: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=rf"trust_sources\.src\b.*{key}"):
        TrustSources({"src": table}, issuer_url=AUDIENCE)


def test_duplicate_issuer_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"trust_sources\.b.*issuer"):
        TrustSources({"a": _table(), "b": _table()}, issuer_url=AUDIENCE)


def test_relative_paths_resolve_against_the_current_directory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(DATA)
    sources = TrustSources(
        {"eks": _table(jwks_file="k8s-sa-token/jwks.json")}, issuer_url=AUDIENCE
    )
    monkeypatch.chdir("/")

    # The file was read while the relative path still pointed at it.
    assert sources.names() == ["eks"]


def test_empty_config_knows_no_issuer() -> None:
    sources = TrustSources({}, issuer_url=AUDIENCE)
    token = (DATA / "k8s-sa-token" / "token.jwt").read_text().strip()

    assert sources.names() == []
    assert reason(lambda: sources.verify(token, NOW)) == "unknown_issuer"


@pytest.mark.parametrize(
    "options",
    [{"clock_skew": -1}, {"clock_skew": True}, {"max_token_bytes": 0}],
)
def test_bad_limits_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        TrustSources({}, issuer_url=AUDIENCE, **options)
