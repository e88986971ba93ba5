"""The SQLite checkpoint thread: the WAL is copied beside the commits, and
restarted from its beginning once it grows past WAL_RESTART_PAGES."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from issuer import storage
from issuer.audit import AuditEntry, AuditLog
from issuer.storage import Database


@pytest.fixture
def fast_checkpoints(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(storage, "WAL_RESTART_PAGES", 40)
    monkeypatch.setattr(storage, "CHECKPOINT_INTERVAL_SECONDS", 0.005)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Database, Path]]:
    path = tmp_path / "issuer.db"
    db = Database(f"sqlite:///{path}")
    db.migrate()
    db.start_checkpoints()
    try:
        yield db, path
    finally:
        db.dispose()


def _wal_frames(path: Path) -> int:
    """Frames in the WAL, read without checkpointing anything."""
    wal = path.with_name(path.name + "-wal")
    # 32-byte WAL header, then frames of a 24-byte header and one page.
    return max(0, (wal.stat().st_size - 32) // (24 + 4096)) if wal.exists() else 0


def _write(log: AuditLog, n: int, client: str = "c") -> None:
    for _ in range(n):
        log.write(AuditEntry(client, "client_credentials", "v"), decision="issued")


def _thread(db: Database) -> storage._Checkpointer:
    """The running checkpoint thread of ``db``."""
    checkpointer = db._checkpointer
    assert checkpointer is not None
    return checkpointer


def _wait_for(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.01)
    return check()


def _audit_connection_autocheckpoint(log: AuditLog) -> int:
    raw = log._raw  # the writer's own DBAPI connection
    cur = raw.cursor()
    try:
        cur.execute("PRAGMA wal_autocheckpoint")
        return int(cur.fetchone()[0])
    finally:
        cur.close()


def test_a_writer_opened_before_the_thread_started_takes_its_settings(
    tmp_path: Path,
) -> None:
    db = Database(f"sqlite:///{tmp_path / 'issuer.db'}")
    db.migrate()
    log = AuditLog(db)
    try:
        _write(log, 1)
        assert _audit_connection_autocheckpoint(log) == 250
        db.start_checkpoints()
        _write(log, 1)
        assert _audit_connection_autocheckpoint(log) == 250_000
        assert log.verify() == (2, [])
    finally:
        log.close()
        db.dispose()


@pytest.mark.usefixtures("fast_checkpoints")
def test_restart_keeps_the_wal_small_and_every_record(
    served: tuple[Database, Path],
) -> None:
    db, path = served
    log = AuditLog(db)
    _write(log, 1)
    # Commits no longer checkpoint on the way (only past the backstop).
    assert _audit_connection_autocheckpoint(log) == storage.WAL_BACKSTOP_PAGES
    _write(log, 400)
    checkpointer = _thread(db)
    assert _wait_for(lambda: checkpointer.restarts >= 1)
    # Restarted: the file is reused from its start, so it stays well below
    # the ~2,000 frames written (how far below depends on when the thread
    # ran: 400-770 frames seen on a busy machine).
    assert _wal_frames(path) < 1_200
    assert _records(path) == 401
    assert log.verify() == (401, [])
    log.close()


@pytest.mark.usefixtures("fast_checkpoints")
def test_concurrent_writers_lose_nothing_while_checkpointing(
    served: tuple[Database, Path],
) -> None:
    db, path = served
    logs = [AuditLog(db) for _ in range(4)]
    threads = [
        threading.Thread(target=_write, args=(log, 150, f"c{i}"))
        for i, log in enumerate(logs)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    checkpointer = _thread(db)
    assert _wait_for(lambda: checkpointer.restarts >= 1)
    with contextlib.closing(sqlite3.connect(path)) as conn:
        rows = conn.execute(
            "SELECT client_id, count(*) FROM audit_records GROUP BY client_id"
        ).fetchall()
    assert sorted(rows) == [("c0", 150), ("c1", 150), ("c2", 150), ("c3", 150)]
    assert logs[0].verify() == (600, [])
    for log in logs:
        log.close()


def test_without_the_thread_commits_checkpoint_themselves(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'issuer.db'}")
    db.migrate()
    log = AuditLog(db)
    _write(log, 1)
    assert _audit_connection_autocheckpoint(log) == storage.WAL_AUTOCHECKPOINT_PAGES
    assert db._checkpointer is None
    log.close()
    db.dispose()


def test_dispose_stops_the_thread(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'issuer.db'}")
    db.migrate()
    db.start_checkpoints()
    checkpointer = _thread(db)
    db.start_checkpoints()  # a second call starts no second thread
    assert db._checkpointer is checkpointer
    thread = checkpointer._thread
    assert thread.is_alive()
    db.dispose()
    assert not thread.is_alive()
    assert db._checkpointer is None


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_no_thread_without_a_file(url: str) -> None:
    db = Database(url)
    db.start_checkpoints()
    assert db._checkpointer is None
    db.dispose()


@pytest.mark.usefixtures("fast_checkpoints")
@pytest.mark.parametrize(
    "error",
    [sqlite3.OperationalError("disk I/O error"), RuntimeError("unexpected")],
)
def test_a_failing_checkpoint_is_logged_and_retried(
    served: tuple[Database, Path],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    error: Exception,
) -> None:
    db, _path = served
    checkpointer = _thread(db)
    real = checkpointer._checkpoint
    failures = []

    def flaky(conn: sqlite3.Connection) -> None:
        if not failures:
            failures.append(1)
            raise error
        real(conn)

    monkeypatch.setattr(checkpointer, "_checkpoint", flaky)
    # The thread waits a second after a failure, then goes on.
    monkeypatch.setattr(storage, "CHECKPOINT_RETRY_SECONDS", 0.01)
    with caplog.at_level(logging.WARNING, logger="issuer.storage"):
        assert _wait_for(lambda: bool(failures))
        log = AuditLog(db)
        _write(log, 300)
        assert _wait_for(lambda: checkpointer.restarts >= 1)
    assert any(r.getMessage() == "WAL checkpoint failed" for r in caplog.records)
    log.close()


@pytest.mark.usefixtures("fast_checkpoints")
def test_a_long_reader_neither_stalls_writers_nor_stops_restarts(
    served: tuple[Database, Path],
) -> None:
    """A read transaction on an old snapshot (a long export) holds the
    restart back without the thread taking the writer lock for it, and
    the WAL restarts once the reader is gone."""
    db, path = served
    log = AuditLog(db)
    _write(log, 50)
    reader = sqlite3.connect(path, isolation_level=None)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM audit_records").fetchone()
        checkpointer = _thread(db)
        restarts = checkpointer.restarts
        slowest = 0.0
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            started = time.monotonic()
            _write(log, 1)
            slowest = max(slowest, time.monotonic() - started)
        # Due every 5 ms, but tried at most now and then: a reader that
        # began on a fully copied WAL may let one attempt through, which
        # then backs off.
        assert checkpointer.held_back >= 10
        assert checkpointer.busy_restarts <= 3
        assert checkpointer.restarts == restarts
        assert slowest < 0.5
    finally:
        reader.execute("COMMIT")
        reader.close()
    _write(log, 100)
    assert _wait_for(lambda: checkpointer.restarts > restarts)
    assert log.verify() == (_records(path), [])
    log.close()


def test_short_overlapping_readers_leave_gaps_for_restarts(
    served: tuple[Database, Path],
) -> None:
    """Reads of 50-150 ms one after another, 0.1 s apart: the thread
    restarts the WAL in the gaps, so it does not grow for as long as such
    reads go on."""
    db, path = served
    log = AuditLog(db)
    stop = threading.Event()

    def reads() -> None:
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            while not stop.is_set():
                conn.execute("BEGIN")
                conn.execute("SELECT count(*) FROM audit_records").fetchone()
                time.sleep(0.05 + 0.1 * (time.monotonic() % 1))
                conn.execute("COMMIT")
                time.sleep(0.1)
        finally:
            conn.close()

    reader = threading.Thread(target=reads)
    reader.start()
    checkpointer = _thread(db)
    try:
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            _write(log, 5)
    finally:
        stop.set()
        reader.join()
    assert checkpointer.restarts >= 3
    log.close()


def _records(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return int(conn.execute("SELECT count(*) FROM audit_records").fetchone()[0])


@pytest.mark.usefixtures("fast_checkpoints")
def test_wal_grown_by_a_long_reader_is_cut_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long read lets the WAL grow; once it starts again, the next write
    cuts the file back to WAL_SIZE_LIMIT_BYTES instead of keeping it."""
    monkeypatch.setattr(storage, "WAL_SIZE_LIMIT_BYTES", 512 * 1024)
    path = tmp_path / "issuer.db"
    db = Database(f"sqlite:///{path}")
    db.migrate()
    db.start_checkpoints()
    log = AuditLog(db)
    _write(log, 5)
    reader = sqlite3.connect(path, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM audit_records").fetchone()
    _write(log, 300)
    wal = path.with_name(path.name + "-wal")
    grown = wal.stat().st_size
    assert grown > 1_000_000  # ~1,400 frames of 4 KB: more than the limit below
    reader.execute("COMMIT")
    reader.close()
    checkpointer = _thread(db)
    restarts = checkpointer.restarts
    assert _wait_for(lambda: checkpointer.restarts > restarts)
    _write(log, 1)
    assert wal.stat().st_size <= 512 * 1024
    log.close()
    db.dispose()
