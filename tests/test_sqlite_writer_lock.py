"""The SQLite writer lock: one writer at a time across threads and processes."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from issuer import storage
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

# A child process that holds the writer lock until its stdin closes.
_HOLD_LOCK = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.read()
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


@contextlib.contextmanager
def _held_by_another_process(lock_path: Path) -> Iterator[None]:
    child = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(lock_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None and child.stdin is not None
    try:
        assert child.stdout.readline().strip() == "held"
        yield
    finally:
        child.stdin.close()
        child.wait(timeout=10)
        child.stdout.close()


def test_a_hung_holder_makes_writes_unavailable_not_stuck(
    service: Any, client_app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(storage, "WRITER_LOCK_WAIT_SECONDS", 0.3)
    client, secret = service.clients.add("a", audiences=["https://api.test"])
    auth = {"Authorization": basic(client.client_id, secret)}
    form = {"grant_type": "client_credentials"}
    lock = Path(service.db.engine.url.database + ".writer-lock")
    with _held_by_another_process(lock):
        resp = client_app.post("/token", data=form, headers=auth)
        assert resp.status_code == 503
        assert resp.json["error"] == "temporarily_unavailable"
        assert client_app.get("/readyz").status_code == 503
        with pytest.raises(StoreUnavailable, match="held by another process"):
            service.db.use_once("jti-2", 2e9)
    assert client_app.post("/token", data=form, headers=auth).status_code == 200
    assert client_app.get("/readyz").status_code == 200
    assert service.audit.verify() == (1, [])


def test_a_symlink_in_place_of_the_lock_file_is_not_followed(tmp_path: Path) -> None:
    db = _db(tmp_path)
    target = tmp_path / "elsewhere"
    (tmp_path / "issuer.db.writer-lock").symlink_to(target)
    with pytest.raises(StoreUnavailable, match="writer lock"), db.writing():
        pass
    assert not target.exists()
    db.dispose()


def test_a_replaced_lock_file_is_locked_anew(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A process checks its open file against the disk at most once a second;
    # here on every write, so the test need not wait.
    monkeypatch.setattr(storage, "_FILE_CHECK_SECONDS", 0.0)
    db = _db(tmp_path)
    lock = tmp_path / "issuer.db.writer-lock"
    with db.writing():
        pass  # this process now keeps the lock file open
    lock.unlink()
    # Another process creates and holds the new file: this one must see it
    # as held, not lock the removed file it still has open.
    with (
        _held_by_another_process(lock),
        pytest.raises(StoreUnavailable, match="held by another process"),
        db.writing(wait=0.2),
    ):
        pass
    with db.writing():
        assert _try_from_child(lock) == "busy"
    db.dispose()


def test_a_removed_database_fails_closed_and_is_not_recreated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Removing the SQLite file under a running issuer: writes fail as
    unavailable (no token whose record would vanish with the unlinked
    file), and no new connection creates an empty database in its place."""
    monkeypatch.setattr(storage, "_FILE_CHECK_SECONDS", 0.0)
    path = tmp_path / "issuer.db"
    db = Database(f"sqlite:///{path}")
    db.migrate()
    log = AuditLog(db)
    log.write(AuditEntry("c", "client_credentials", "v"), decision="issued")
    path.unlink()
    with pytest.raises(StoreUnavailable, match="removed or replaced"):
        log.write(AuditEntry("c", "client_credentials", "v"), decision="issued")
    with pytest.raises(StoreUnavailable, match="removed or replaced"):
        db.use_once("jti", 2e9)
    db.engine.dispose()  # every new connection must now open the file
    with pytest.raises(StoreUnavailable), db.session() as s:
        s.get(storage.Revocation, "-")
    assert not path.exists()
    log.close()
    db.dispose()


def test_a_replaced_database_fails_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(storage, "_FILE_CHECK_SECONDS", 0.0)
    path = tmp_path / "issuer.db"
    db = Database(f"sqlite:///{path}")
    db.migrate()
    db.use_once("a", 2e9)
    other = Database(f"sqlite:///{tmp_path / 'other.db'}")
    other.migrate()
    other.dispose()
    (tmp_path / "other.db").replace(path)
    with pytest.raises(StoreUnavailable, match="removed or replaced"):
        db.use_once("b", 2e9)
    db.dispose()
