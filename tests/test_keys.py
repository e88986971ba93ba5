"""Signing keys: generation, RFC 7638 key ids, JWKS, rotation schedule."""

from __future__ import annotations

import stat
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from joserfc.jwk import ECKey, OKPKey, RSAKey

from issuer.keys import KeyRing, jwk_thumbprint

# RFC 7638 section 3.1 example key and its thumbprint.
RFC7638_JWK = {
    "kty": "RSA",
    "n": (
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
    ),
    "e": "AQAB",
    "alg": "RS256",
    "kid": "2011-04-29",
}


def test_thumbprint_matches_rfc7638_example() -> None:
    assert jwk_thumbprint(RFC7638_JWK) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


@pytest.mark.parametrize(
    ("alg", "joserfc_key"),
    [("ES256", ECKey), ("EdDSA", OKPKey), ("RS256", RSAKey), ("PS256", RSAKey)],
)
def test_generated_keys_are_named_by_thumbprint_cross_checked(
    tmp_path: Path, alg: str, joserfc_key: type
) -> None:
    ring = KeyRing(tmp_path, alg=alg)
    key = ring.current()
    assert key.alg == alg
    independent = joserfc_key.import_key(key.jwk).thumbprint()
    assert key.kid == independent
    pem = tmp_path / "signing" / f"{key.kid}.pem"
    assert stat.S_IMODE(pem.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "signing" / "state.json").stat().st_mode) == 0o600


def test_signed_token_verifies_with_published_key(tmp_path: Path) -> None:
    ring = KeyRing(tmp_path)
    token = ring.sign({"sub": "x"})
    header = jwt.get_unverified_header(token)
    assert header["typ"] == "at+jwt"
    published = ring.public_key(header["kid"])
    assert published is not None
    assert "d" not in published.jwk
    public = jwt.PyJWK(published.jwk).key
    assert jwt.decode(token, public, algorithms=["ES256"])["sub"] == "x"


def test_existing_keys_are_reused_on_restart(tmp_path: Path) -> None:
    first = KeyRing(tmp_path).current().kid
    assert KeyRing(tmp_path).current().kid == first


def test_rotation_publishes_before_signing_and_retires_after_expiry(
    tmp_path: Path,
) -> None:
    ring = KeyRing(tmp_path, jwks_max_age=300, max_token_lifetime=600, clock_skew=60)
    old = ring.current().kid
    t0 = ring.keys()[0].not_before + 10
    new = ring.rotate(now=t0)
    # Published at once, but the old key still signs for one JWKS max-age
    # plus the reload delay and margin (2 s).
    start = t0 + 300 + 2
    assert {k["kid"] for k in ring.jwks(now=t0)["keys"]} == {old, new}
    assert ring.current(now=start - 1).kid == old
    assert ring.current(now=start).kid == new
    # The old key stays published until its last token (600 s + skew) expired.
    assert {k["kid"] for k in ring.jwks(now=start + 659)["keys"]} == {old, new}
    assert {k["kid"] for k in ring.jwks(now=start + 660)["keys"]} == {new}
    states = {s["kid"]: s["state"] for s in ring.status(now=t0 + 400)}
    assert states == {old: "retired", new: "signing"}


def test_a_second_process_sees_a_rotation(tmp_path: Path) -> None:
    one = KeyRing(tmp_path, jwks_max_age=0)
    two = KeyRing(tmp_path, jwks_max_age=0)
    new = one.rotate()
    two._checked = 0.0  # skip the once-a-second re-read throttle
    assert new in {k.kid for k in two.published()}
    assert two.current(now=time.time() + 2).kid == new


def test_secret_hashing_key_rotation_keeps_old_hashes_and_rehashes(
    service: Any,
) -> None:
    client, secret = service.clients.add("h", audiences=["https://api.test"])
    old_hash = service.clients.get(client.client_id).secret_hash
    hasher = service.clients._hasher
    new_id = hasher.rotate()
    assert hasher.key_ids()[0] == new_id
    record = service.clients.get(client.client_id)
    assert service.clients.check_secret(record, secret)
    new_hash = service.clients.get(client.client_id).secret_hash
    assert new_hash != old_hash and new_hash.split(":")[1] == new_id
    assert not service.clients.check_secret(record, secret + "x")
    assert stat.S_IMODE(hasher.path.stat().st_mode) == 0o600


def test_token_ids_are_unique_and_their_random_part_never_repeats() -> None:
    from issuer.access_token import new_jti

    # More ids than one read of the pool serves, so it is refilled.
    ids = [new_jti() for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert len({i[12:] for i in ids}) == 1000
    assert all(len(i) == 44 and int(i, 16) >= 0 for i in ids)


def test_the_random_pool_hands_out_each_byte_once_and_refuses_bad_counts() -> None:
    from issuer.access_token import RandomPool

    pool = RandomPool(size=64)
    chunks = [pool.take(16) for _ in range(4)]
    assert [len(c) for c in chunks] == [16] * 4
    assert len(set(chunks)) == 4
    # The pool is used up: a fresh read serves the next bytes.
    assert len(pool.take(64)) == 64
    for bad in (0, -1, 65):
        with pytest.raises(ValueError, match="count must be"):
            pool.take(bad)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_forked_child_does_not_reuse_the_parents_random_bytes() -> None:
    import os

    from issuer.access_token import RandomPool

    pool = RandomPool()
    pool.take(16)  # the pool now holds bytes the parent will hand out next
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next bytes and leave at once
        try:
            os.close(read)
            os.write(write, pool.take(16))
        finally:
            os._exit(0)
    os.close(write)
    child = os.read(read, 16)
    os.close(read)
    os.waitpid(pid, 0)
    assert len(child) == 16
    assert child != pool.take(16)


def test_a_secret_rehashed_by_another_process_under_a_new_key_verifies_at_once(
    tmp_path: Path,
) -> None:
    """Two workers share ``keys/``: one rotates the hashing key and re-hashes
    a client's secret under it; the other, which read the key file a moment
    before, must not refuse that client until its next periodic check."""
    from issuer.keys import SecretHasher

    first = SecretHasher(tmp_path)
    second = SecretHasher(tmp_path)
    assert second.verify("s3cret", first.hash("s3cret")) == (True, False)
    new_id = first.rotate()
    rehashed = first.hash("s3cret")
    assert rehashed.split(":")[1] == new_id
    assert second.verify("s3cret", rehashed) == (True, False)
    assert second.verify("wrong", rehashed) == (False, False)
    # A hash under a key that exists nowhere still fails.
    assert second.verify("s3cret", "hmac-sha256:nokey:" + "0" * 64) == (False, False)
