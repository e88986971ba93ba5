"""Key sets: RFC 7638 thumbprints, JWK parsing, RFC 8414 discovery, and the
JWKS cache against a loopback server that counts requests."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from tests.verifier import (
    AUDIENCE,
    FakeIssuer,
    Reply,
    counting_server,
)
from verifier import (
    InsecureTransport,
    InvalidKeySet,
    InvalidMetadata,
    KeyFetchError,
    RemoteKeySource,
    StaticKeySource,
    TokenVerifier,
    UnknownKeyId,
)
from verifier.keys import (
    SUPPORTED_ALGORITHMS,
    jwk_thumbprint,
    metadata_url,
    parse_jwk,
    parse_jwks,
)

# RFC 7638 section 3.1: the example RSA key and its thumbprint.
RFC7638_JWK = {
    "kty": "RSA",
    "n": (
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR"
        "1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6"
        "Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajr"
        "n1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0"
        "Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
    ),
    "e": "AQAB",
    "alg": "RS256",
    "kid": "2011-04-29",
}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- thumbprints and parsing -------------------------------------------------


def test_rfc7638_thumbprint_known_answer() -> None:
    assert jwk_thumbprint(RFC7638_JWK) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_thumbprint_matches_the_issuers_kid() -> None:
    from issuer.keys import jwk_thumbprint as issuer_thumbprint

    for alg in ("ES256", "EdDSA", "RS256"):
        jwk = FakeIssuer(alg).jwk
        assert jwk_thumbprint(jwk) == issuer_thumbprint(jwk) == jwk["kid"]


def test_parse_jwk_ties_algorithms_to_key_type() -> None:
    assert parse_jwk(FakeIssuer("ES256").jwk, SUPPORTED_ALGORITHMS).algorithms == {
        "ES256"
    }
    assert parse_jwk(FakeIssuer("EdDSA").jwk, SUPPORTED_ALGORITHMS).algorithms == {
        "EdDSA"
    }
    rsa_jwk = dict(FakeIssuer("RS256").jwk)
    del rsa_jwk["alg"]
    algs = parse_jwk(rsa_jwk, SUPPORTED_ALGORITHMS).algorithms
    assert {"RS256", "PS256"} <= algs


@pytest.mark.parametrize(
    "change",
    [
        {"d": "AAAA"},
        {"use": "enc"},
        {"kty": "oct", "k": "c2VjcmV0"},
        {"crv": "secp256k1"},
        {"alg": "ES384"},
        {"kid": 7},
    ],
)
def test_parse_jwk_refuses_unusable_keys(change: dict[str, Any]) -> None:
    jwk = dict(FakeIssuer("ES256").jwk, **change)

    with pytest.raises(ValueError):
        parse_jwk(jwk, SUPPORTED_ALGORITHMS)


def test_parse_jwk_refuses_short_rsa_keys() -> None:
    # A weak key on purpose: the parser must refuse it.
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505
    jwk = RSAAlgorithm.to_jwk(small.public_key(), as_dict=True)

    with pytest.raises(ValueError):
        parse_jwk(jwk, SUPPORTED_ALGORITHMS)


def test_parse_jwks_skips_unusable_keys_and_keeps_usable_ones() -> None:
    good = FakeIssuer("ES256").jwk
    private = dict(FakeIssuer("ES256").jwk, d="AAAA")
    keys = parse_jwks(
        {"keys": [private, {"kty": "oct", "k": "x"}, good]}, SUPPORTED_ALGORITHMS
    )

    assert set(keys) == {good["kid"]}


@pytest.mark.parametrize(
    "jwks",
    [
        {},
        {"keys": {}},
        {"keys": []},
        {"keys": ["x"]},
        {"keys": [{"kty": "oct", "k": "x"}]},
    ],
)
def test_parse_jwks_refuses_sets_without_usable_keys(jwks: dict[str, Any]) -> None:
    with pytest.raises(InvalidKeySet):
        parse_jwks(jwks, SUPPORTED_ALGORITHMS)


def test_parse_jwks_refuses_repeated_kid() -> None:
    jwk = FakeIssuer("ES256").jwk

    with pytest.raises(InvalidKeySet):
        parse_jwks({"keys": [jwk, dict(jwk)]}, SUPPORTED_ALGORITHMS)


def test_static_key_source_unknown_kid() -> None:
    source = StaticKeySource(FakeIssuer("ES256").jwks())

    with pytest.raises(UnknownKeyId):
        source.key_for("other")


def test_single_key_without_kid_serves_tokens_without_kid() -> None:
    issuer = FakeIssuer("ES256")
    jwk = dict(issuer.jwk)
    del jwk["kid"]
    verifier = TokenVerifier(issuer.issuer, AUDIENCE, jwks={"keys": [jwk]})
    header = {"alg": "ES256", "typ": "at+jwt"}

    assert verifier.verify(issuer.sign_raw(header, issuer.claims())).sub


@pytest.mark.parametrize(
    ("issuer", "expected"),
    [
        ("https://a.test", "https://a.test/.well-known/oauth-authorization-server"),
        (
            "https://a.test/tenant/1",
            "https://a.test/.well-known/oauth-authorization-server/tenant/1",
        ),
    ],
)
def test_metadata_url_follows_rfc8414(issuer: str, expected: str) -> None:
    assert metadata_url(issuer) == expected


# -- transport rules ---------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:9/", "ftp://issuer.test", "issuer.test", "https://u:p@i.test"],
)
def test_refuses_insecure_or_odd_issuer_urls(url: str) -> None:
    with pytest.raises(InsecureTransport):
        TokenVerifier(url, AUDIENCE)


def test_refuses_http_jwks_uri_without_allow_http() -> None:
    with pytest.raises(InsecureTransport):
        TokenVerifier("https://issuer.test", AUDIENCE, jwks_uri="http://127.0.0.1:9/k")


def test_refuses_http_jwks_uri_named_by_metadata() -> None:
    issuer = FakeIssuer("ES256")
    with counting_server() as server:
        https_issuer = server.url
        server.routes["/.well-known/oauth-authorization-server"] = Reply(
            200, {"issuer": https_issuer, "jwks_uri": "ftp://elsewhere/keys"}
        )
        issuer.issuer = https_issuer
        verifier = TokenVerifier(https_issuer, AUDIENCE, allow_http=True)

        with pytest.raises(InsecureTransport):
            verifier.verify(issuer.mint())


# -- fetching and caching ----------------------------------------------------


def _serve_issuer(server: Any, issuer: FakeIssuer, max_age: int | None = 300) -> None:
    issuer.issuer = server.url
    server.routes["/.well-known/oauth-authorization-server"] = Reply(
        200, {"issuer": server.url, "jwks_uri": server.url + "/jwks.json"}
    )
    headers = {} if max_age is None else {"Cache-Control": f"public, max-age={max_age}"}
    server.routes["/jwks.json"] = Reply(200, issuer.jwks(), headers)


def test_discovers_keys_through_metadata_and_caches_them() -> None:
    issuer = FakeIssuer("ES256")
    with counting_server() as server:
        _serve_issuer(server, issuer)
        verifier = TokenVerifier(server.url, AUDIENCE, allow_http=True)

        for _ in range(20):
            assert verifier.verify(issuer.mint()).iss == server.url

        assert server.count("/.well-known/oauth-authorization-server") == 1
        assert server.count("/jwks.json") == 1


def test_refuses_metadata_naming_another_issuer() -> None:
    issuer = FakeIssuer("ES256")
    with counting_server() as server:
        _serve_issuer(server, issuer)
        server.routes["/.well-known/oauth-authorization-server"] = Reply(
            200, {"issuer": "https://evil.test", "jwks_uri": server.url + "/jwks.json"}
        )
        verifier = TokenVerifier(server.url, AUDIENCE, allow_http=True)

        with pytest.raises(InvalidMetadata):
            verifier.verify(issuer.mint())
        assert server.count("/jwks.json") == 0


def test_honours_cache_control_max_age() -> None:
    issuer = FakeIssuer("ES256")
    clock = Clock()
    with counting_server() as server:
        _serve_issuer(server, issuer, max_age=120)
        source = RemoteKeySource(
            jwks_uri=server.url + "/jwks.json", allow_http=True, clock=clock
        )

        source.key_for(issuer.kid)
        clock.now += 119
        source.key_for(issuer.kid)
        assert server.count("/jwks.json") == 1

        clock.now += 2
        source.key_for(issuer.kid)
        assert server.count("/jwks.json") == 2


def test_bounds_cache_control_max_age() -> None:
    issuer = FakeIssuer("ES256")
    clock = Clock()
    with counting_server() as server:
        _serve_issuer(server, issuer, max_age=0)
        source = RemoteKeySource(
            jwks_uri=server.url + "/jwks.json",
            allow_http=True,
            clock=clock,
            min_ttl=30,
            max_ttl=600,
        )
        source.key_for(issuer.kid)
        clock.now += 29
        source.key_for(issuer.kid)
        assert server.count("/jwks.json") == 1

        _serve_issuer(server, issuer, max_age=10**9)
        clock.now += 2
        source.key_for(issuer.kid)
        clock.now += 599
        source.key_for(issuer.kid)
        assert server.count("/jwks.json") == 2
        clock.now += 2
        source.key_for(issuer.kid)
        assert server.count("/jwks.json") == 3


def test_default_ttl_without_cache_control() -> None:
    issuer = FakeIssuer("ES256")
    clock = Clock()
    with counting_server() as server:
        _serve_issuer(server, issuer, max_age=None)
        source = RemoteKeySource(
            jwks_uri=server.url + "/jwks.json",
            allow_http=True,
            clock=clock,
            default_ttl=300,
        )
        source.key_for(issuer.kid)
        clock.now += 299
        source.key_for(issuer.kid)
        assert server.count("/jwks.json") == 1


def test_unknown_kid_refetch_is_rate_limited() -> None:
    issuer = FakeIssuer("ES256")
    clock = Clock()
    with counting_server() as server:
        _serve_issuer(server, issuer)
        source = RemoteKeySource(
            jwks_uri=server.url + "/jwks.json",
            allow_http=True,
            clock=clock,
            refetch_interval=60,
        )
        source.key_for(issuer.kid)

        clock.now += 61
        for i in range(50):
            with pytest.raises(UnknownKeyId):
                source.key_for(f"bogus-{i}")
        assert server.count("/jwks.json") == 2
        assert source.key_for(issuer.kid).kid == issuer.kid

        clock.now += 30
        with pytest.raises(UnknownKeyId):
            source.key_for("bogus")
        assert server.count("/jwks.json") == 2


def test_unknown_kid_flood_right_after_a_fetch_causes_no_refetch() -> None:
    issuer = FakeIssuer("ES256")
    with counting_server() as server:
        _serve_issuer(server, issuer)
        verifier = TokenVerifier(server.url, AUDIENCE, allow_http=True)
        assert verifier.verify(issuer.mint()).sub

        for i in range(30):
            with pytest.raises(UnknownKeyId):
                verifier.verify(issuer.mint(kid=f"bogus-{i}"))

        assert server.count("/jwks.json") == 1
        assert verifier.verify(issuer.mint()).sub


def test_picks_up_a_rotated_key_after_the_interval() -> None:
    old, new = FakeIssuer("ES256"), FakeIssuer("ES256")
    clock = Clock()
    with counting_server() as server:
        _serve_issuer(server, old)
        source = RemoteKeySource(
            jwks_uri=server.url + "/jwks.json",
            allow_http=True,
            clock=clock,
            refetch_interval=60,
        )
        source.key_for(old.kid)
        server.routes["/jwks.json"] = Reply(200, {"keys": [old.jwk, new.jwk]})

        clock.now += 61
        assert source.key_for(new.kid).kid == new.kid
        assert source.key_for(old.kid).kid == old.kid
        assert server.count("/jwks.json") == 2


def test_keeps_last_good_keys_when_the_server_fails() -> None:
    issuer = FakeIssuer("ES256")
    clock = Clock()
    with counting_server() as server:
        _serve_issuer(server, issuer, max_age=60)
        source = RemoteKeySource(
            jwks_uri=server.url + "/jwks.json",
            allow_http=True,
            clock=clock,
            refetch_interval=60,
        )
        source.key_for(issuer.kid)
        server.routes["/jwks.json"] = Reply(500, {"error": "boom"})

        clock.now += 61
        assert source.key_for(issuer.kid).kid == issuer.kid
        assert server.count("/jwks.json") == 2
        clock.now += 30
        assert source.key_for(issuer.kid).kid == issuer.kid
        assert server.count("/jwks.json") == 2

        _serve_issuer(server, issuer, max_age=60)
        clock.now += 31
        assert source.key_for(issuer.kid).kid == issuer.kid
        assert server.count("/jwks.json") == 3


@pytest.mark.parametrize(
    "reply",
    [
        Reply(500, {"error": "boom"}),
        Reply(200, ["not", "a", "set"]),
        Reply(200, {"keys": []}),
        Reply(302, {}, {"Location": "http://127.0.0.1:9/elsewhere"}),
    ],
)
def test_keeps_last_good_keys_when_the_answer_is_bad(reply: Reply) -> None:
    issuer = FakeIssuer("ES256")
    clock = Clock()
    with counting_server() as server:
        _serve_issuer(server, issuer, max_age=60)
        source = RemoteKeySource(
            jwks_uri=server.url + "/jwks.json", allow_http=True, clock=clock
        )
        source.key_for(issuer.kid)
        server.routes["/jwks.json"] = reply

        clock.now += 61
        assert source.key_for(issuer.kid).kid == issuer.kid
        assert server.count("/jwks.json") == 2


def test_first_fetch_failure_raises_and_waits_before_retrying() -> None:
    clock = Clock()
    with counting_server() as server:
        server.routes["/jwks.json"] = Reply(500, {"error": "boom"})
        source = RemoteKeySource(
            jwks_uri=server.url + "/jwks.json",
            allow_http=True,
            clock=clock,
            refetch_interval=60,
        )

        with pytest.raises(KeyFetchError):
            source.key_for("k")
        with pytest.raises(KeyFetchError):
            source.key_for("k")
        assert server.count("/jwks.json") == 1

        issuer = FakeIssuer("ES256")
        server.routes["/jwks.json"] = Reply(200, issuer.jwks())
        clock.now += 61
        assert source.key_for(issuer.kid).kid == issuer.kid


@pytest.mark.parametrize(
    "reply",
    [
        Reply(302, {}, {"Location": "http://127.0.0.1:9/keys"}),
        Reply(404, {}),
        Reply(200, "text"),
    ],
)
def test_first_fetch_of_a_bad_answer_is_a_key_source_error(reply: Reply) -> None:
    with counting_server() as server:
        server.routes["/jwks.json"] = reply
        source = RemoteKeySource(jwks_uri=server.url + "/jwks.json", allow_http=True)

        with pytest.raises((KeyFetchError, InvalidKeySet)):
            source.key_for("k")


def test_unreachable_issuer_is_a_key_fetch_error() -> None:
    from tests.conftest import free_port

    url = f"http://127.0.0.1:{free_port()}"
    verifier = TokenVerifier(url, AUDIENCE, allow_http=True, timeout=2)
    issuer = FakeIssuer("ES256", issuer=url)

    with pytest.raises(KeyFetchError):
        verifier.verify(issuer.mint())
