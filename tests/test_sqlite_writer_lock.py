"""The SQLite writer lock: one writer at a time across threads and processes."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from issuer.audit import AuditEntry, AuditLog
from issuer.storage import Database, StoreUnavailable

from .conftest import basic

# A child process that tries the writer lock without waiting and reports.
_TRY_LOCK = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
except BlockingIOError:
    print("busy")
else:
    print("free")
"""

# A child process that writes audit records through its own Database.
_WRITE_RECORDS = """
import sys
from issuer.audit import AuditEntry, AuditLog
from issuer.storage import Database
db = Database(sys.argv[1])
log = AuditLog(db)
for i in range(int(sys.argv[2])):
    log.write(AuditEntry("child", "client_credentials", "v"), decision="issued")
log.close()
db.dispose()
"""


def _db(tmp_path: Path) -> Database:
    db = Database(f"sqlite:///{tmp_path / 'issuer.db'}")
    db.migrate()
    return db


def _try_from_child(lock_path: Path) -> str:
    out = subprocess.run(
        [sys.executable, "-c", _TRY_LOCK, str(lock_path)],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def test_the_lock_excludes_other_processes_while_held(tmp_path: Path) -> None:
    db = _db(tmp_path)
    lock_path = tmp_path / "issuer.db.writer-lock"
    with db.writing():
        assert lock_path.exists()
        assert _try_from_child(lock_path) == "busy"
    assert _try_from_child(lock_path) == "free"
    assert oct(lock_path.stat().st_mode & 0o777) == "0o600"
    db.dispose()


def test_a_second_thread_waits_for_the_holder(tmp_path: Path) -> None:
    db = _db(tmp_path)
    order: list[str] = []
    holding, waiting = threading.Event(), threading.Event()

    def second() -> None:
        holding.wait()
        waiting.set()
        with db.writing():
            order.append("second")

    thread = threading.Thread(target=second)
    thread.start()
    with db.writing():
        holding.set()
        waiting.wait()
        # The second thread is now blocked on the lock: it cannot append
        # before this block ends, however long it runs.
        thread.join(timeout=0.2)
        assert thread.is_alive()
        order.append("first")
    thread.join()
    assert order == ["first", "second"]
    db.dispose()


def test_writers_in_two_processes_keep_every_record_chained(tmp_path: Path) -> None:
    db = _db(tmp_path)
    url = str(db.engine.url)
    children = [
        subprocess.Popen([sys.executable, "-c", _WRITE_RECORDS, url, "150"])
        for _ in range(2)
    ]
    log = AuditLog(db)
    for _ in range(150):
        log.write(AuditEntry("parent", "client_credentials", "v"), decision="issued")
    assert [child.wait(timeout=120) for child in children] == [0, 0]
    count, problems = log.verify()
    assert (count, problems) == (450, [])
    log.close()
    db.dispose()


def test_an_unusable_lock_file_makes_the_store_unavailable(tmp_path: Path) -> None:
    db = _db(tmp_path)
    (tmp_path / "issuer.db.writer-lock").mkdir()
    log = AuditLog(db)
    with pytest.raises(StoreUnavailable, match="writer lock"):
        log.write(AuditEntry("c", "client_credentials", "v"), decision="issued")
    with pytest.raises(StoreUnavailable, match="writer lock"):
        db.use_once("jti-1", 2e9)
    db.dispose()


def test_postgresql_and_memory_databases_take_no_file_lock() -> None:
    # PostgreSQL queues writers itself; an in-memory SQLite has no file.
    for url in ("sqlite://", "postgresql+psycopg://postgres@127.0.0.1:5432/test"):
        db = Database(url)
        assert isinstance(db.writing(), contextlib.nullcontext)
        db.dispose()


def test_token_endpoint_fails_closed_when_the_lock_cannot_be_taken(
    service: Any, client_app: Any
) -> None:
    client, secret = service.clients.add("a", audiences=["https://api.test"])
    lock = Path(service.db.engine.url.database + ".writer-lock")
    lock.mkdir()
    resp = client_app.post(
        "/token",
        data={"grant_type": "client_credentials"},
        headers={"Authorization": basic(client.client_id, secret)},
    )
    assert resp.status_code == 503
    assert resp.json["error"] == "temporarily_unavailable"
    assert resp.headers["Retry-After"]
    # Readiness says so too, so a load balancer stops sending tokens here.
    assert client_app.get("/readyz").status_code == 503
    lock.rmdir()
    assert client_app.get("/readyz").status_code == 200
    resp = client_app.post(
        "/token",
        data={"grant_type": "client_credentials"},
        headers={"Authorization": basic(client.client_id, secret)},
    )
    assert resp.status_code == 200
    count, problems = service.audit.verify()
    assert problems == [] and count >= 1
