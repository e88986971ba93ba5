"""Signing-key rotation during a load run: the verifier library checks every
issued token and sees no failure; the old key leaves the JWKS only after the
last token it signed has expired."""

from __future__ import annotations

import threading
import time
from typing import Any

import jwt
import requests

from verifier import TokenVerifier, VerifierError
from verifier.keys import RemoteKeySource

API = "https://api.rotation.test"


def test_rotation_under_load_rejects_no_valid_token(live_issuer: Any) -> None:
    live = live_issuer(
        {
            "jwks_max_age": 2,
            "token_lifetime": 5,
            "max_token_lifetime": 5,
            "clock_skew": 1,
        }
    )
    reg = live.add_client("load", "--audience", API)
    auth = (reg["client_id"], reg["client_secret"])
    keys = RemoteKeySource(
        issuer=live.url, allow_http=True, min_ttl=1, refetch_interval=1
    )
    verifier = TokenVerifier(issuer=live.url, audience=API, jwks=keys, allow_http=True)
    old_kid = requests.get(live.url + "/jwks.json", timeout=5).json()["keys"][0]["kid"]

    stop = threading.Event()
    issued: list[tuple[str, int]] = []
    failures: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        session = requests.Session()
        while not stop.is_set():
            resp = session.post(
                live.url + "/token",
                data={"grant_type": "client_credentials"},
                auth=auth,
                timeout=10,
            )
            if resp.status_code != 200:
                with lock:
                    failures.append(f"issue {resp.status_code}")
                continue
            token = resp.json()["access_token"]
            try:
                verified = verifier.verify(token)
            except VerifierError as exc:
                with lock:
                    failures.append(type(exc).__name__)
                continue
            kid = jwt.get_unverified_header(token)["kid"]
            with lock:
                issued.append((kid, verified.exp))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    live.cli("keys", "rotate")
    time.sleep(6.0)  # the new key signs 2 s + 2 s after the rotation
    stop.set()
    for t in threads:
        t.join(timeout=15)

    assert failures == []
    kids = {kid for kid, _ in issued}
    assert old_kid in kids and len(kids) == 2, "the new key never signed"
    new_kid = (kids - {old_kid}).pop()
    last_old_exp = max(exp for kid, exp in issued if kid == old_kid)

    # The old key stays published until its last token has expired.
    deadline = time.time() + 30
    while time.time() < deadline:
        published = {
            k["kid"]
            for k in requests.get(live.url + "/jwks.json", timeout=5).json()["keys"]
        }
        if old_kid not in published:
            break
        time.sleep(0.25)
    removed_at = time.time()
    assert old_kid not in published, "the retired key was never unpublished"
    assert new_kid in published
    assert removed_at >= last_old_exp
