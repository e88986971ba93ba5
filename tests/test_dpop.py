"""DPoP proofs at the token endpoint (issuer/dpop.py, RFC 9449).

Known answers come from RFC 9449 (sections 4.1, 4.2, 6.1 and 7.1) and RFC
7638 (section 3.1); joserfc, an independent JOSE implementation, cross-checks
thumbprints and signs proofs the verifier must accept.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from joserfc import jwk as jose_jwk
from joserfc import jws as jose_jws
from jwt.algorithms import get_default_algorithms
from jwt.warnings import InsecureKeyLengthWarning

from issuer.dpop import (
    DPoPProof,
    DPoPVerifier,
    InvalidDPoPProof,
    UseDPoPNonce,
    access_token_hash,
    normalize_htu,
    single_proof,
)
from issuer.errors import OAuthError
from issuer.keys import jwk_thumbprint
from issuer.replay import DatabaseReplayStore, MemoryReplayStore, ReplayStore
from issuer.storage import Database

HTU = "https://issuer.test/token"
SECRET = bytes(range(32))

# RFC 9449 section 4.1, Figure 2: the example proof of a token request (the
# RFC 8792 line wrapping removed). Section 4.2, Figure 4, shows its content.
RFC9449_TOKEN_PROOF = (
    "eyJ0eXAiOiJkcG9wK2p3dCIsImFsZyI6IkVTMjU2IiwiandrIjp7Imt0eSI6Ik"
    "VDIiwieCI6Imw4dEZyaHgtMzR0VjNoUklDUkRZOXpDa0RscEJoRjQyVVFVZldWQVdCR"
    "nMiLCJ5IjoiOVZFNGpmX09rX282NHpiVFRsY3VOSmFqSG10NnY5VERWclUwQ2R2R1JE"
    "QSIsImNydiI6IlAtMjU2In19.eyJqdGkiOiItQndDM0VTYzZhY2MybFRjIiwiaHRtIj"
    "oiUE9TVCIsImh0dSI6Imh0dHBzOi8vc2VydmVyLmV4YW1wbGUuY29tL3Rva2VuIiwia"
    "WF0IjoxNTYyMjYyNjE2fQ.2-GxA6T8lP4vfrg8v-FdWP0A0zdrj8igiMLvqRMUvwnQg"
    "4PtFLbdLXiOSsX0x7NVY-FNyJK70nfbV37xRZT3Lg"
)
# RFC 9449 section 7.1, Figure 13: a proof for a protected resource request,
# carrying the ath of the access token shown in its Authorization header.
RFC9449_RESOURCE_PROOF = (
    "eyJ0eXAiOiJkcG9wK2p3dCIsImFsZyI6IkVTMjU2IiwiandrIjp7Imt0eSI6Ik"
    "VDIiwieCI6Imw4dEZyaHgtMzR0VjNoUklDUkRZOXpDa0RscEJoRjQyVVFVZldWQVdCR"
    "nMiLCJ5IjoiOVZFNGpmX09rX282NHpiVFRsY3VOSmFqSG10NnY5VERWclUwQ2R2R1JE"
    "QSIsImNydiI6IlAtMjU2In19.eyJqdGkiOiJlMWozVl9iS2ljOC1MQUVCIiwiaHRtIj"
    "oiR0VUIiwiaHR1IjoiaHR0cHM6Ly9yZXNvdXJjZS5leGFtcGxlLm9yZy9wcm90ZWN0Z"
    "WRyZXNvdXJjZSIsImlhdCI6MTU2MjI2MjYxOCwiYXRoIjoiZlVIeU8ycjJaM0RaNTNF"
    "c05yV0JiMHhXWG9hTnk1OUlpS0NBcWtzbVFFbyJ9.2oW9RP35yRqzhrtNP86L-Ey71E"
    "OptxRimPPToA1plemAgR6pxHF8y6-yqyVnmcw6Fy1dqd-jfxSYoMxhAJpLjA"
)
RFC9449_ACCESS_TOKEN = "Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU"
RFC9449_ATH = "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo"
# RFC 9449 section 4.2, Figure 4: the example proof key.
RFC9449_JWK: dict[str, Any] = {
    "kty": "EC",
    "x": "l8tFrhx-34tV3hRICRDY9zCkDlpBhF42UQUfWVAWBFs",
    "y": "9VE4jf_Ok_o64zbTTlcuNJajHmt6v9TDVrU0CdvGRDA",
    "crv": "P-256",
}
# RFC 9449 section 6.1, Figure 9: the jkt of that key.
RFC9449_JKT = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"
# RFC 7638 section 3.1: the example RSA key and its thumbprint.
RFC7638_JWK: dict[str, Any] = {
    "kty": "RSA",
    "n": (
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFx"
        "uhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_"
        "RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQv"
        "RL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_"
        "xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
    ),
    "e": "AQAB",
    "alg": "RS256",
    "kid": "2011-04-29",
}
RFC7638_THUMBPRINT = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"

_DROP = object()


class PinnedStore:
    """A replay store that never forgets, for proofs with pinned old times."""

    started_at = 0.0

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def use_once(self, key: str, expires_at: float) -> bool:
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def error_of(call: Callable[[], object]) -> OAuthError:
    with pytest.raises(OAuthError) as info:
        call()
    return info.value


def public_jwk(key: Any, alg: str) -> dict[str, Any]:
    jwk: dict[str, Any] = get_default_algorithms()[alg].to_jwk(
        key.public_key(), as_dict=True
    )
    return jwk


class Client:
    """A workload holding one DPoP key and making proofs with it."""

    def __init__(self, key: Any = None, alg: str = "ES256") -> None:
        self.key = key if key is not None else ec.generate_private_key(ec.SECP256R1())
        self.alg = alg
        self.jwk = public_jwk(self.key, alg)

    def proof(
        self,
        *,
        header: dict[str, Any] | None = None,
        alg: str | None = None,
        signing_key: Any = None,
        **claims: Any,
    ) -> str:
        """A proof for ``POST HTU`` now; keyword claims override or drop."""
        body: dict[str, Any] = {
            "jti": secrets.token_urlsafe(16),
            "htm": "POST",
            "htu": HTU,
            "iat": int(time.time()),
        }
        body.update(claims)
        body = {k: v for k, v in body.items() if v is not _DROP}
        headers = {"typ": "dpop+jwt", "jwk": self.jwk}
        headers.update(header or {})
        headers = {k: v for k, v in headers.items() if v is not _DROP}
        return jwt.encode(
            body,
            signing_key if signing_key is not None else self.key,
            algorithm=alg or self.alg,
            headers=headers,
        )


@pytest.fixture
def client() -> Client:
    return Client()


@pytest.fixture
def verifier() -> DPoPVerifier:
    return DPoPVerifier(MemoryReplayStore(), nonce_secret=None, require_nonce=False)


@pytest.fixture
def nonce_verifier() -> DPoPVerifier:
    return DPoPVerifier(MemoryReplayStore(), nonce_secret=SECRET, require_nonce=True)


def check(verifier: DPoPVerifier, proof: str, **kwargs: Any) -> DPoPProof:
    args: dict[str, Any] = {"htm": "POST", "htu": HTU, "now": time.time()}
    args.update(kwargs)
    return verifier.verify(proof, **args)


def nonce_from(call: Callable[[], object]) -> str:
    exc = error_of(call)
    assert isinstance(exc, UseDPoPNonce)
    return exc.headers()["DPoP-Nonce"]


# -- known answers ------------------------------------------------------


def test_rfc7638_example_thumbprint() -> None:
    assert jwk_thumbprint(RFC7638_JWK) == RFC7638_THUMBPRINT
    assert jose_jwk.RSAKey.import_key(RFC7638_JWK).thumbprint() == RFC7638_THUMBPRINT


def test_rfc9449_example_jwk_has_the_jkt_of_section_6_1() -> None:
    assert jwk_thumbprint(RFC9449_JWK) == RFC9449_JKT
    assert jose_jwk.ECKey.import_key(RFC9449_JWK).thumbprint() == RFC9449_JKT


def test_rfc9449_example_proof_has_the_structure_of_section_4_2() -> None:
    header = jwt.get_unverified_header(RFC9449_TOKEN_PROOF)
    claims = jwt.decode(RFC9449_TOKEN_PROOF, options={"verify_signature": False})

    assert header == {"typ": "dpop+jwt", "alg": "ES256", "jwk": RFC9449_JWK}
    assert claims == {
        "jti": "-BwC3ESc6acc2lTc",
        "htm": "POST",
        "htu": "https://server.example.com/token",
        "iat": 1562262616,
    }


def test_accepts_rfc9449_example_proof_and_returns_its_jkt() -> None:
    verifier = DPoPVerifier(PinnedStore(), nonce_secret=None, require_nonce=False)

    proof = verifier.verify(
        RFC9449_TOKEN_PROOF,
        htm="POST",
        htu="https://server.example.com/token",
        now=1562262616,
    )

    assert proof.jkt == RFC9449_JKT
    assert proof.jti == "-BwC3ESc6acc2lTc"
    assert proof.iat == 1562262616
    assert proof.nonce_checked is False


def test_rfc9449_access_token_hash() -> None:
    assert access_token_hash(RFC9449_ACCESS_TOKEN) == RFC9449_ATH


def test_accepts_rfc9449_resource_proof_with_its_access_token() -> None:
    verifier = DPoPVerifier(PinnedStore(), nonce_secret=None, require_nonce=False)

    proof = verifier.verify(
        RFC9449_RESOURCE_PROOF,
        htm="GET",
        htu="https://resource.example.org/protectedresource",
        access_token=RFC9449_ACCESS_TOKEN,
        now=1562262618,
    )

    assert proof.jkt == RFC9449_JKT


@pytest.mark.parametrize(
    ("make_key", "alg"),
    [
        (lambda: ec.generate_private_key(ec.SECP384R1()), "ES384"),
        (
            lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
            "PS256",
        ),
        (ed25519.Ed25519PrivateKey.generate, "EdDSA"),
    ],
    ids=["EC", "RSA", "OKP"],
)
def test_jkt_agrees_with_joserfc(
    verifier: DPoPVerifier, make_key: Callable[[], Any], alg: str
) -> None:
    client = Client(make_key(), alg)

    proof = check(verifier, client.proof())

    assert proof.jkt == jose_jwk.import_key(client.jwk).thumbprint()


@pytest.mark.parametrize("alg", ["ES256", "PS256"])
def test_accepts_proof_signed_by_joserfc(verifier: DPoPVerifier, alg: str) -> None:
    key = (
        jose_jwk.ECKey.generate_key("P-256")
        if alg == "ES256"
        else jose_jwk.RSAKey.generate_key(2048)
    )
    claims = {"jti": "joserfc-1", "htm": "POST", "htu": HTU, "iat": int(time.time())}
    protected = {"typ": "dpop+jwt", "alg": alg, "jwk": key.as_dict(private=False)}
    proof = jose_jws.serialize_compact(
        protected, json.dumps(claims), key, algorithms=[alg]
    )

    assert check(verifier, proof).jkt == key.thumbprint()


# -- accepted variants ---------------------------------------------------


def test_accepts_fresh_proof(verifier: DPoPVerifier, client: Client) -> None:
    proof = check(verifier, client.proof(jti="one"))

    assert proof.jti == "one"
    assert proof.jkt == jwk_thumbprint(client.jwk)
    assert proof.replay_checked is False
    assert proof.nonce_checked is False


@pytest.mark.parametrize(
    "htu",
    [
        "HTTPS://Issuer.TEST/token",
        "https://issuer.test:443/token",
        "https://issuer.test/token?x=1#frag",
        "https://issuer.test/a/../token",
        "https://issuer.test/%74oken",
    ],
)
def test_accepts_htu_equal_after_normalisation(
    verifier: DPoPVerifier, client: Client, htu: str
) -> None:
    check(verifier, client.proof(htu=htu))


def test_normalize_htu() -> None:
    assert normalize_htu("HTTP://Example.COM:80") == "http://example.com/"
    assert (
        normalize_htu("https://[::1]:8443/a/./b/%7e%2f")
        == "https://[::1]:8443/a/b/~%2F"
    )
    assert normalize_htu("https://user@issuer.test/token") is None
    assert normalize_htu("ftp://issuer.test/token") is None
    assert normalize_htu("/token") is None


# -- bad input ------------------------------------------------------------


def test_rejects_proof_replayed_verbatim(
    verifier: DPoPVerifier, client: Client
) -> None:
    proof = client.proof()
    check(verifier, proof)

    exc = error_of(lambda: check(verifier, proof))

    assert isinstance(exc, InvalidDPoPProof)
    assert (exc.error, exc.status) == ("invalid_dpop_proof", 400)


def test_rejects_jti_reused_under_fresh_nonce(
    nonce_verifier: DPoPVerifier, client: Client
) -> None:
    first = nonce_verifier.new_nonce(time.time())
    check(nonce_verifier, client.proof(jti="same", nonce=first))
    second = nonce_verifier.new_nonce(time.time())
    assert second != first

    exc = error_of(
        lambda: check(nonce_verifier, client.proof(jti="same", nonce=second))
    )

    assert exc.error == "invalid_dpop_proof"


def test_rejects_jti_reused_at_second_verifier_sharing_database(
    tmp_path: Path, client: Client
) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    Database(url).migrate()
    # Two Database objects, two engines: what two processes on one file have.
    verifiers = [
        DPoPVerifier(
            DatabaseReplayStore(Database(url)), nonce_secret=SECRET, require_nonce=True
        )
        for _ in range(2)
    ]
    nonce = verifiers[0].new_nonce(time.time())
    accepted = check(verifiers[0], client.proof(jti="shared", nonce=nonce))
    assert accepted.replay_checked is True
    assert accepted.nonce_checked is True

    fresh = verifiers[1].new_nonce(time.time())
    exc = error_of(lambda: check(verifiers[1], client.proof(jti="shared", nonce=fresh)))

    assert exc.error == "invalid_dpop_proof"


_SECOND_PROCESS = """
import json, sys, time
from issuer.dpop import DPoPVerifier
from issuer.errors import OAuthError
from issuer.replay import DatabaseReplayStore
from issuer.storage import Database

data = json.load(sys.stdin)
verifier = DPoPVerifier(
    DatabaseReplayStore(Database(data["url"])),
    nonce_secret=bytes.fromhex(data["secret"]),
    require_nonce=True,
)
try:
    verifier.verify(data["proof"], htm="POST", htu=data["htu"], now=time.time())
except OAuthError as exc:
    print(exc.error)
else:
    print("accepted")
"""


def test_rejects_jti_reused_in_another_process_sharing_database(
    tmp_path: Path, client: Client
) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    Database(url).migrate()
    verifier = DPoPVerifier(
        DatabaseReplayStore(Database(url)), nonce_secret=SECRET, require_nonce=True
    )
    check(verifier, client.proof(jti="cross", nonce=verifier.new_nonce(time.time())))

    def other_process(proof: str) -> str:
        request = {"url": url, "secret": SECRET.hex(), "proof": proof, "htu": HTU}
        done = subprocess.run(
            [sys.executable, "-c", _SECOND_PROCESS],
            input=json.dumps(request),
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONWARNINGS": "error"},
        )
        return done.stdout.strip()

    # The other process accepts this process's nonce, so the refusal below
    # comes from the shared jti store and not from the nonce.
    fresh = other_process(client.proof(nonce=verifier.new_nonce(time.time())))
    reused = other_process(
        client.proof(jti="cross", nonce=verifier.new_nonce(time.time()))
    )

    assert fresh == "accepted"
    assert reused == "invalid_dpop_proof"


def test_rejects_other_htu(verifier: DPoPVerifier, client: Client) -> None:
    proof = client.proof(htu="https://issuer.test/introspect")

    assert error_of(lambda: check(verifier, proof)).error == "invalid_dpop_proof"


@pytest.mark.parametrize(
    "htu", ["http://issuer.test/token", "https://issuer.test:8443/token", "token"]
)
def test_rejects_htu_with_other_scheme_port_or_no_host(
    verifier: DPoPVerifier, client: Client, htu: str
) -> None:
    proof = client.proof(htu=htu)

    assert error_of(lambda: check(verifier, proof)).error == "invalid_dpop_proof"


@pytest.mark.parametrize("htm", ["GET", "post"])
def test_rejects_other_htm(verifier: DPoPVerifier, client: Client, htm: str) -> None:
    proof = client.proof(htm=htm)

    assert error_of(lambda: check(verifier, proof)).error == "invalid_dpop_proof"


def test_rejects_proof_too_old(verifier: DPoPVerifier, client: Client) -> None:
    proof = client.proof(iat=int(time.time()) - 120)

    assert error_of(lambda: check(verifier, proof)).error == "invalid_dpop_proof"


def test_rejects_proof_from_the_future(verifier: DPoPVerifier, client: Client) -> None:
    proof = client.proof(iat=int(time.time()) + 60)

    assert error_of(lambda: check(verifier, proof)).error == "invalid_dpop_proof"


def test_accepts_iat_within_clock_skew(client: Client) -> None:
    store = MemoryReplayStore()
    store.started_at -= 120
    verifier = DPoPVerifier(store, nonce_secret=None, require_nonce=False)

    check(verifier, client.proof(iat=int(time.time()) + 3))
    check(verifier, client.proof(iat=int(time.time()) - 63))


def test_rejects_proof_made_before_the_replay_store_started(client: Client) -> None:
    store = MemoryReplayStore()
    store.started_at += 30
    verifier = DPoPVerifier(store, nonce_secret=None, require_nonce=False)
    proof = client.proof()

    assert error_of(lambda: check(verifier, proof)).error == "invalid_dpop_proof"


@pytest.mark.parametrize("alg", ["HS256", "HS512"])
def test_rejects_symmetric_alg(
    verifier: DPoPVerifier, client: Client, alg: str
) -> None:
    secret = secrets.token_bytes(64)
    proof = client.proof(
        alg=alg,
        signing_key=secret,
        header={"jwk": {"kty": "oct", "k": b64url(secret)}},
    )

    assert error_of(lambda: check(verifier, proof)).error == "invalid_dpop_proof"


def test_rejects_unsigned_proof(verifier: DPoPVerifier, client: Client) -> None:
    header = {"typ": "dpop+jwt", "alg": "none", "jwk": client.jwk}
    claims = {"jti": "n", "htm": "POST", "htu": HTU, "iat": int(time.time())}
    proof = ".".join(
        [
            b64url(json.dumps(header).encode()),
            b64url(json.dumps(claims).encode()),
            "AAAA",
        ]
    )

    assert error_of(lambda: check(verifier, proof)).error == "invalid_dpop_proof"


def test_rejects_alg_outside_the_allow_list(client: Client) -> None:
    verifier = DPoPVerifier(
        MemoryReplayStore(),
        algorithms=("EdDSA",),
        nonce_secret=None,
        require_nonce=False,
    )

    exc = error_of(lambda: check(verifier, client.proof()))

    assert exc.error == "invalid_dpop_proof"


def test_rejects_private_key_in_jwk_header(
    verifier: DPoPVerifier, client: Client
) -> None:
    private: dict[str, Any] = get_default_algorithms()["ES256"].to_jwk(
        client.key, as_dict=True
    )
    assert "d" in private

    proof = client.proof(header={"jwk": private})

    assert error_of(lambda: check(verifier, proof)).error == "invalid_dpop_proof"


def test_rejects_mismatched_ath(verifier: DPoPVerifier, client: Client) -> None:
    proof = client.proof(ath=access_token_hash("another-token"))

    exc = error_of(lambda: check(verifier, proof, access_token="the-token"))

    assert exc.error == "invalid_dpop_proof"


def test_rejects_missing_ath_when_access_token_presented(
    verifier: DPoPVerifier, client: Client
) -> None:
    proof = client.proof()

    exc = error_of(lambda: check(verifier, proof, access_token="the-token"))

    assert exc.error == "invalid_dpop_proof"


def test_accepts_matching_ath(verifier: DPoPVerifier, client: Client) -> None:
    proof = client.proof(ath=access_token_hash("the-token"))

    check(verifier, proof, access_token="the-token")


def test_rejects_rfc9449_resource_proof_with_another_access_token() -> None:
    verifier = DPoPVerifier(PinnedStore(), nonce_secret=None, require_nonce=False)

    exc = error_of(
        lambda: verifier.verify(
            RFC9449_RESOURCE_PROOF,
            htm="GET",
            htu="https://resource.example.org/protectedresource",
            access_token=RFC9449_ACCESS_TOKEN + "x",
            now=1562262618,
        )
    )

    assert exc.error == "invalid_dpop_proof"


@pytest.mark.parametrize("typ", ["JWT", "at+jwt", _DROP])
def test_rejects_wrong_typ(verifier: DPoPVerifier, client: Client, typ: Any) -> None:
    proof = client.proof(header={"typ": typ})

    assert error_of(lambda: check(verifier, proof)).error == "invalid_dpop_proof"


@pytest.mark.parametrize(
    "values", [["a.b.c", "d.e.f"], ["a.b.c, d.e.f"], [], [""]], ids=str
)
def test_rejects_two_proofs_or_none(values: list[str]) -> None:
    assert error_of(lambda: single_proof(values)).error == "invalid_dpop_proof"


def test_single_proof_returns_the_one_proof() -> None:
    assert single_proof([" a.b.c "]) == "a.b.c"


def test_rejects_signature_by_another_key(
    verifier: DPoPVerifier, client: Client
) -> None:
    proof = client.proof(signing_key=ec.generate_private_key(ec.SECP256R1()))

    assert error_of(lambda: check(verifier, proof)).error == "invalid_dpop_proof"


def test_a_key_seen_before_still_needs_a_valid_signature_every_time(
    verifier: DPoPVerifier, client: Client
) -> None:
    # The first proof puts the client's key among the checked keys; proofs
    # that name the same key must still verify, and a weak or non-canonical
    # key is refused however often it comes.
    check(verifier, client.proof())
    header, payload, signature = client.proof().split(".")
    forged = f"{header}.{payload}.{signature[:-4]}AAAA"
    assert error_of(lambda: check(verifier, forged)).error == "invalid_dpop_proof"
    other = client.proof(signing_key=ec.generate_private_key(ec.SECP256R1()))
    assert error_of(lambda: check(verifier, other)).error == "invalid_dpop_proof"
    padded = {**client.jwk, "x": client.jwk["x"] + "="}
    for proof in (client.proof(header={"jwk": padded}) for _ in range(2)):
        exc = error_of(lambda p=proof: check(verifier, p))
        assert exc.error == "invalid_dpop_proof"
    check(verifier, client.proof())


def test_rejects_tampered_payload(verifier: DPoPVerifier, client: Client) -> None:
    header, _, signature = client.proof().split(".")
    payload = b64url(
        json.dumps(
            {"jti": "x", "htm": "POST", "htu": HTU, "iat": int(time.time())}
        ).encode()
    )

    exc = error_of(lambda: check(verifier, f"{header}.{payload}.{signature}"))

    assert exc.error == "invalid_dpop_proof"


@pytest.mark.parametrize(
    "jwk_change",
    [
        {"crv": "P-384"},
        {"kty": "RSA"},
        {"x": _DROP},
        {"x": "not+base64url"},
    ],
)
def test_rejects_jwk_that_does_not_suit_the_alg(
    verifier: DPoPVerifier, client: Client, jwk_change: dict[str, Any]
) -> None:
    jwk = {**client.jwk, **jwk_change}
    jwk = {k: v for k, v in jwk.items() if v is not _DROP}
    proof = client.proof(header={"jwk": jwk})

    assert error_of(lambda: check(verifier, proof)).error == "invalid_dpop_proof"


def test_rejects_short_rsa_key(verifier: DPoPVerifier) -> None:
    weak = Client(
        # The weak key is the point of the test.
        rsa.generate_private_key(public_exponent=65537, key_size=1024),  # noqa: S505
        "RS256",
    )
    with pytest.warns(InsecureKeyLengthWarning):
        proof = weak.proof()

    exc = error_of(lambda: check(verifier, proof))

    assert exc.error == "invalid_dpop_proof"


@pytest.mark.parametrize(
    "claims",
    [
        {"jti": _DROP},
        {"htm": _DROP},
        {"htu": _DROP},
        {"iat": _DROP},
        {"iat": True},
        {"iat": "1700000000"},
        {"jti": ""},
        {"jti": "j" * 257},
        # Not encodable as UTF-8, and a control character.
        {"jti": "\ud800"},
        {"jti": "a\nb"},
    ],
)
def test_rejects_missing_or_mistyped_claims(
    verifier: DPoPVerifier, client: Client, claims: dict[str, Any]
) -> None:
    proof = client.proof(**claims)

    assert error_of(lambda: check(verifier, proof)).error == "invalid_dpop_proof"


@pytest.mark.parametrize(
    "proof",
    ["", "a.b", "a.b.c.d", "e30.e30.", "W10.e30.AA", "e30.e30.AA" + "A" * 9000],
)
def test_rejects_malformed_proof(verifier: DPoPVerifier, proof: str) -> None:
    assert error_of(lambda: check(verifier, proof)).error == "invalid_dpop_proof"


def test_rejects_duplicate_header_members(
    verifier: DPoPVerifier, client: Client
) -> None:
    _, payload, signature = client.proof().split(".")
    header = b64url(b'{"typ":"dpop+jwt","alg":"ES256","alg":"HS256","jwk":{}}')

    exc = error_of(lambda: check(verifier, f"{header}.{payload}.{signature}"))

    assert exc.error == "invalid_dpop_proof"


def test_rejects_crit_header(verifier: DPoPVerifier, client: Client) -> None:
    proof = client.proof(header={"crit": ["exp"], "exp": 1})

    assert error_of(lambda: check(verifier, proof)).error == "invalid_dpop_proof"


# -- server nonces ---------------------------------------------------------


def test_missing_nonce_when_required_gets_use_dpop_nonce(
    nonce_verifier: DPoPVerifier, client: Client
) -> None:
    exc = error_of(lambda: check(nonce_verifier, client.proof()))

    assert isinstance(exc, UseDPoPNonce)
    assert exc.error == "use_dpop_nonce"
    assert exc.status == 400
    assert exc.body()["error"] == "use_dpop_nonce"
    assert exc.headers()["DPoP-Nonce"]


def test_accepts_proof_with_the_nonce_it_was_given(
    nonce_verifier: DPoPVerifier, client: Client
) -> None:
    nonce = nonce_from(lambda: check(nonce_verifier, client.proof()))

    proof = check(nonce_verifier, client.proof(nonce=nonce))

    assert proof.nonce_checked is True


def test_nonce_works_across_instances_sharing_only_the_secret(client: Client) -> None:
    issuing = DPoPVerifier(MemoryReplayStore(), nonce_secret=SECRET, require_nonce=True)
    other = DPoPVerifier(MemoryReplayStore(), nonce_secret=SECRET, require_nonce=True)
    nonce = nonce_from(lambda: check(issuing, client.proof()))

    assert check(other, client.proof(nonce=nonce)).nonce_checked is True


def test_stale_nonce_gets_use_dpop_nonce(
    nonce_verifier: DPoPVerifier, client: Client
) -> None:
    stale = nonce_verifier.new_nonce(time.time() - 3600)

    fresh = nonce_from(lambda: check(nonce_verifier, client.proof(nonce=stale)))

    assert fresh != stale
    check(nonce_verifier, client.proof(nonce=fresh))


@pytest.mark.parametrize("forge", ["flip", "other-secret", "garbage", "future"])
def test_forged_nonce_gets_use_dpop_nonce(
    nonce_verifier: DPoPVerifier, client: Client, forge: str
) -> None:
    now = time.time()
    if forge == "flip":
        good = nonce_verifier.new_nonce(now)
        nonce = good[:-2] + ("A" if good[-2] != "A" else "B") + good[-1]
    elif forge == "other-secret":
        other = DPoPVerifier(
            MemoryReplayStore(), nonce_secret=b"x" * 32, require_nonce=True
        )
        nonce = other.new_nonce(now)
    elif forge == "future":
        nonce = nonce_verifier.new_nonce(now + 600)
    else:
        nonce = "eyJ7S_zG.eyJH0-Z.HX4w-7v"

    exc = error_of(lambda: check(nonce_verifier, client.proof(nonce=nonce)))

    assert exc.error == "use_dpop_nonce"


def test_optional_nonces_check_a_nonce_that_is_sent(client: Client) -> None:
    verifier = DPoPVerifier(
        MemoryReplayStore(), nonce_secret=SECRET, require_nonce=False
    )

    assert check(verifier, client.proof()).nonce_checked is False
    exc = error_of(lambda: check(verifier, client.proof(nonce="forged")))
    assert exc.error == "use_dpop_nonce"


def test_nonce_is_checked_only_after_the_signature(
    nonce_verifier: DPoPVerifier, client: Client
) -> None:
    proof = client.proof(signing_key=ec.generate_private_key(ec.SECP256R1()))

    assert error_of(lambda: check(nonce_verifier, proof)).error == "invalid_dpop_proof"


# -- configuration ----------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"algorithms": ("HS256",)},
        {"algorithms": ()},
        {"nonce_secret": b"short"},
        {"require_nonce": True},
        {"max_age": 0},
    ],
)
def test_refuses_unsafe_configuration(options: dict[str, Any]) -> None:
    args: dict[str, Any] = {"nonce_secret": None, "require_nonce": False}
    args.update(options)
    store: ReplayStore = MemoryReplayStore()

    with pytest.raises(ValueError):
        DPoPVerifier(store, **args)


def test_new_nonce_needs_a_secret(verifier: DPoPVerifier) -> None:
    assert verifier.uses_nonces is False
    with pytest.raises(ValueError):
        verifier.new_nonce(time.time())
