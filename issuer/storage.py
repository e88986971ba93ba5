"""Persistent state in SQLAlchemy: clients, audit records, revocations, used jtis.

SQLite (the embedded default) and PostgreSQL are both supported; tables are
created on start. Database failures surface as ``StoreUnavailable`` so the
web layer can fail closed with a 503 instead of issuing anything.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import (
    Boolean,
    Float,
    Index,
    Integer,
    String,
    Table,
    Text,
    create_engine,
    delete,
    event,
    insert,
    select,
    text,
)
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

__all__ = [
    "ASSESSMENT_DIGEST_PREFIX",
    "AuditAssessment",
    "AuditCheckpoint",
    "AuditRecord",
    "Base",
    "ChallengeNonce",
    "ClientRecord",
    "Database",
    "Revocation",
    "StoreUnavailable",
    "UsedJti",
    "sqlite_file",
]

log = logging.getLogger(__name__)


class StoreUnavailable(RuntimeError):
    """The database could not be reached or refused the operation."""


class Base(DeclarativeBase):
    pass


class ClientRecord(Base):
    """A registered client. JSON columns hold lists and objects as text."""

    __tablename__ = "clients"

    client_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    secret_hash: Mapped[str | None] = mapped_column(String(128), nullable=True)
    previous_secret_hash: Mapped[str | None] = mapped_column(String(128), nullable=True)
    previous_secret_expires_at: Mapped[float | None] = mapped_column(
        Float, nullable=True
    )
    jwks: Mapped[str | None] = mapped_column(Text, nullable=True)
    auth_methods: Mapped[str] = mapped_column(Text)
    grant_types: Mapped[str] = mapped_column(Text)
    scopes: Mapped[str] = mapped_column(Text)
    audiences: Mapped[str] = mapped_column(Text)
    subject: Mapped[str] = mapped_column(String(500))
    subject_patterns: Mapped[str] = mapped_column(Text, default="[]")
    declared: Mapped[str] = mapped_column(Text, default="{}")
    resource_server: Mapped[bool] = mapped_column(Boolean, default=False)
    dpop_bound: Mapped[bool] = mapped_column(Boolean, default=False)
    #: RFC 8705 section 2.1.2: the one subject value a ``tls_client_auth``
    #: client registered; the others stay null.
    tls_client_auth_subject_dn: Mapped[str | None] = mapped_column(
        String(500), nullable=True
    )
    tls_client_auth_san_dns: Mapped[str | None] = mapped_column(
        String(500), nullable=True
    )
    tls_client_auth_san_uri: Mapped[str | None] = mapped_column(
        String(500), nullable=True
    )
    tls_client_auth_san_ip: Mapped[str | None] = mapped_column(
        String(64), nullable=True
    )
    tls_client_auth_san_email: Mapped[str | None] = mapped_column(
        String(500), nullable=True
    )
    owner: Mapped[str] = mapped_column(String(200), default="")
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


#: How a digest of stored JSON starts (audit records and their assessments).
ASSESSMENT_DIGEST_PREFIX = "sha-256:"


def stored_json(value: Any) -> Any:
    """A JSON column's value: parsed, ``None`` for NULL, or the text itself
    when it is not JSON."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    try:
        return json.loads(value)
    except (ValueError, TypeError, RecursionError):
        # RecursionError: JSON nested deeper than the parser's stack.
        return str(value)


class AuditRecord(Base):
    """One decision about an authenticated client: issued or refused."""

    __tablename__ = "audit_records"
    __table_args__ = (
        Index("ix_audit_client_time", "client_id", "time"),
        Index("ix_audit_jti", "jti"),
        Index("ix_audit_chain_seq", "chain", "seq", unique=True),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    time: Mapped[float] = mapped_column(Float)
    client_id: Mapped[str] = mapped_column(String(64))
    grant_type: Mapped[str] = mapped_column(String(100))
    subject: Mapped[str | None] = mapped_column(String(500), nullable=True)
    decision: Mapped[str] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(String(64), nullable=True)
    reasons: Mapped[str] = mapped_column(Text)
    evidence: Mapped[str] = mapped_column(Text)
    #: The assessment's ratings, reasons and credential: the sha-256 digest
    #: of its ``audit_assessments`` row (records written before that table
    #: existed hold the JSON itself).
    ratings: Mapped[str] = mapped_column(Text)
    mial: Mapped[int | None] = mapped_column(Integer, nullable=True)
    maal: Mapped[int | None] = mapped_column(Integer, nullable=True)
    policy_version: Mapped[str] = mapped_column(String(100))
    jti: Mapped[str | None] = mapped_column(String(64), nullable=True)
    audience: Mapped[str] = mapped_column(Text, default="[]")
    expires_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    #: Hash chain (docs/operations.md, audit): each writer process keeps its
    #: own chain; ``digest`` covers ``prev_digest`` and every field above.
    chain: Mapped[str] = mapped_column(String(40))
    seq: Mapped[int] = mapped_column(Integer)
    prev_digest: Mapped[str] = mapped_column(String(80))
    digest: Mapped[str] = mapped_column(String(80))

    def as_dict(
        self, resolve: Callable[[str], str | None] | None = None
    ) -> dict[str, Any]:
        """The record as plain JSON-ready data; ``resolve`` gives the stored
        JSON of an assessment digest in ``ratings`` (``None`` if missing).

        A column that no longer holds JSON (an edited database) is shown as
        the text it holds, so the record can still be read; ``audit
        verify`` names it.
        """
        ratings: Any = self.ratings
        if isinstance(ratings, str) and ratings.startswith(ASSESSMENT_DIGEST_PREFIX):
            ratings = resolve(ratings) if resolve is not None else None
        return {
            "id": self.id,
            "time": self.time,
            "client_id": self.client_id,
            "grant_type": self.grant_type,
            "subject": self.subject,
            "decision": self.decision,
            "error": self.error,
            "reasons": stored_json(self.reasons),
            "evidence": stored_json(self.evidence),
            "ratings": stored_json(ratings),
            "mial": self.mial,
            "maal": self.maal,
            "policy_version": self.policy_version,
            "jti": self.jti,
            "audience": stored_json(self.audience),
            "expires_at": self.expires_at,
            "chain": self.chain,
            "seq": self.seq,
            "prev_digest": self.prev_digest,
            "digest": self.digest,
        }


class AuditAssessment(Base):
    """One assessment's ratings, reasons and credential as JSON, stored once
    under its sha-256 digest and referenced by every audit record it
    applies to. Most records repeat an earlier assessment (the same client
    and evidence rate the same), and the JSON was about two thirds of a
    record: stored once, it leaves each record a third of the size."""

    __tablename__ = "audit_assessments"

    digest: Mapped[str] = mapped_column(String(80), primary_key=True)
    body: Mapped[str] = mapped_column(Text)


class AuditCheckpoint(Base):
    """A signed statement of one audit chain's position, written before
    records up to it are pruned, so the rest of the chain stays checkable."""

    __tablename__ = "audit_checkpoints"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[float] = mapped_column(Float)
    chain: Mapped[str] = mapped_column(String(40), index=True)
    seq: Mapped[int] = mapped_column(Integer)
    digest: Mapped[str] = mapped_column(String(80))
    signature: Mapped[str] = mapped_column(Text)


class Revocation(Base):
    """A revoked access token, kept until it would have expired anyway."""

    __tablename__ = "revocations"

    jti: Mapped[str] = mapped_column(String(64), primary_key=True)
    client_id: Mapped[str] = mapped_column(String(64))
    revoked_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float)


class UsedJti(Base):
    """A single-use identifier (client assertion jti) seen before its expiry."""

    __tablename__ = "used_jtis"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    expires_at: Mapped[float] = mapped_column(Float, index=True)


class ChallengeNonce(Base):
    """A freshness nonce handed to a client by ``POST /challenge``."""

    __tablename__ = "challenge_nonces"
    __table_args__ = (Index("ix_nonce_client", "client_id", "expires_at"),)

    nonce: Mapped[str] = mapped_column(String(64), primary_key=True)
    client_id: Mapped[str] = mapped_column(String(64))
    issued_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float)


_NONCES: Table = ChallengeNonce.__table__  # type: ignore[assignment]


#: Pages in the SQLite WAL that make the next commit checkpoint it, in
#: processes that run no checkpoint thread (the command line, tests).
WAL_AUTOCHECKPOINT_PAGES = 250
#: The same in a serving process, whose checkpoint thread keeps the WAL far
#: below it. Only a backstop, for a thread that stopped: while a reader
#: holds old frames no checkpoint can copy them, and the first commit after
#: the reader ended would copy the whole backlog with every writer waiting
#: (1.9 s after a 20 s read, when this was 32,000 pages).
WAL_BACKSTOP_PAGES = 250_000
#: Pages in the WAL past which the checkpoint thread restarts it from the
#: beginning, briefly holding the writer lock (about 32 MB of WAL file).
WAL_RESTART_PAGES = 8_000
#: Size the WAL file is cut back to when it starts again, after a long read
#: made it grow (SQLite otherwise keeps the file at its largest size).
WAL_SIZE_LIMIT_BYTES = 64 * 1024 * 1024
#: Pause of the checkpoint thread between two checkpoints.
CHECKPOINT_INTERVAL_SECONDS = 0.02
#: Pause of the checkpoint thread after a failed checkpoint.
CHECKPOINT_RETRY_SECONDS = 1.0
#: How long a RESTART checkpoint waits for readers that began after the
#: last PASSIVE one, while writers wait for it: such reads take well under
#: a millisecond.
RESTART_READER_WAIT_SECONDS = 0.02
#: Pause before the next RESTART attempt after one that readers kept busy;
#: it doubles with each busy attempt in a row, up to the longest.
RESTART_BUSY_PAUSE_SECONDS = 0.05
RESTART_LONGEST_PAUSE_SECONDS = 1.0


def _sqlite_pragmas(dbapi_conn: Any, autocheckpoint: int) -> None:
    # WAL lets readers work while one worker writes; busy_timeout makes a
    # second writer wait instead of failing at once.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=5000")
    cur.execute("PRAGMA synchronous=NORMAL")
    # A checkpoint syncs the WAL and the database file inside the commit
    # that triggers it, and the audit records queued behind that commit
    # wait too. Serving processes therefore checkpoint on a thread of their
    # own (``_Checkpointer``) and commits only as a backstop; elsewhere
    # small, frequent checkpoints keep each wait short (with bench/run.py,
    # p99 12.7-13.9 ms at SQLite's default of 1,000 pages, 6.7-7.6 at 250).
    cur.execute(f"PRAGMA wal_autocheckpoint={int(autocheckpoint)}")
    cur.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT_BYTES}")
    cur.close()


#: Longest wait for the writer lock before a write fails as unavailable
#: (503), as long as SQLite's own busy timeout.
WRITER_LOCK_WAIT_SECONDS = 5.0
# Pauses between tries while another process holds the writer lock: short,
# because a writer holds it for about 0.1 ms.
_LOCK_FIRST_PAUSE = 0.0001
_LOCK_LONGEST_PAUSE = 0.0003
# How often a process checks that its open lock file is still the one on disk.
_FILE_CHECK_SECONDS = 1.0


class _WriterLock:
    """One writer at a time on an SQLite file, across threads and processes.

    SQLite lets one connection write at a time; the others wait in its busy
    handler, which sleeps and retries (1, 2, 5, 10 ms and longer), so with
    two workers a write that lost the race waited about 10 ms even though
    the lock was free again after about 0.1 ms (bench/README.md). Writers on
    the token path take this lock first instead: a thread lock inside the
    process, then ``flock`` on ``<database>.writer-lock`` between processes,
    tried again every 0.1 to 0.3 ms while another process holds it. Both
    waits are bounded (``WRITER_LOCK_WAIT_SECONDS``): a holder that hangs
    makes writes fail as unavailable rather than stall every thread. The
    kernel releases the lock of a process that dies.
    """

    def __init__(self, path: str) -> None:
        self._database = path
        self._path = path + ".writer-lock"
        self._threads = threading.Lock()
        self._fd: int | None = None
        self._checked_at = -_FILE_CHECK_SECONDS  # when the files were last checked
        # (device, inode) of the database file when first seen.
        self._database_id: tuple[int, int] | None = None

    @contextmanager
    def hold(self, wait: float | None = None) -> Iterator[None]:
        wait = WRITER_LOCK_WAIT_SECONDS if wait is None else wait
        deadline = time.monotonic() + wait
        if not self._threads.acquire(timeout=wait):
            raise StoreUnavailable(f"writer lock: not free within {wait:g} s")
        try:
            fd = self._lock_file(deadline, wait)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            self._threads.release()

    def _lock_file(self, deadline: float, wait: float) -> int:
        """Take ``flock`` on the lock file by ``deadline``; return its fd."""
        pause = _LOCK_FIRST_PAUSE
        while True:
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise StoreUnavailable(
                        f"writer lock: held by another process for over {wait:g} s"
                    ) from None
                time.sleep(pause)
                pause = min(pause * 2, _LOCK_LONGEST_PAUSE)
                continue
            except OSError as exc:
                raise StoreUnavailable(f"writer lock: {exc.strerror}") from exc
            # Checked now and then, not on every write: two stat calls cost
            # about 3 % of a token, and until the check notices a replaced
            # file SQLite's own locking still keeps writes correct.
            now = time.monotonic()
            if now - self._checked_at < _FILE_CHECK_SECONDS:
                return fd
            if self._still_the_file(fd):
                if not self._same_database():
                    fcntl.flock(fd, fcntl.LOCK_UN)
                    # Open connections would write on into a file no longer
                    # on disk: tokens whose records vanish. Fail closed.
                    raise StoreUnavailable(
                        "database file removed or replaced; stop the issuer,"
                        " remove the -wal and -shm files beside the database,"
                        " then start it (docs/operations.md)"
                    )
                self._checked_at = now
                return fd
            # The file was removed or replaced while this process kept it
            # open: other processes lock the new one, so lock that too.
            fcntl.flock(fd, fcntl.LOCK_UN)
            self._reopen()

    def _open(self) -> int:
        if self._fd is None:
            flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
            try:
                self._fd = os.open(self._path, flags, 0o600)
            except OSError as exc:
                raise StoreUnavailable(f"writer lock: {exc.strerror}") from exc
        return self._fd

    def _same_database(self) -> bool:
        """Whether the database file on disk is the one first seen."""
        try:
            st = os.stat(self._database)
        except OSError:
            return False
        seen = (st.st_dev, st.st_ino)
        if self._database_id is None:
            self._database_id = seen
        return seen == self._database_id

    def _still_the_file(self, fd: int) -> bool:
        try:
            on_disk = os.stat(self._path, follow_symlinks=False)
        except OSError:
            return False
        held = os.fstat(fd)
        return (on_disk.st_dev, on_disk.st_ino) == (held.st_dev, held.st_ino)

    def _reopen(self) -> None:
        self._checked_at = -_FILE_CHECK_SECONDS
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def close(self) -> None:
        with self._threads:
            self._reopen()


def _file_uri(path: str, mode: str) -> str:
    """An SQLite URI filename for ``path`` opened in ``mode`` (``rw``:
    never create it; ``rwc``: create it if missing)."""
    return f"file:{quote(path)}?mode={mode}"


def discard_connection(raw: Any) -> None:
    """Roll back a pooled DBAPI connection after a driver error and drop it
    from the pool, whatever state it is in."""
    with contextlib.suppress(Exception):
        raw.rollback()
    with contextlib.suppress(Exception):
        raw.invalidate()


def positional_mark(paramstyle: str) -> str:
    """The positional placeholder of a DBAPI driver (PEP 249 ``paramstyle``):
    sqlite3 takes ``?``, psycopg ``%s``. For the few fixed statements the
    hot path runs on a DBAPI connection directly."""
    mark = {"qmark": "?", "format": "%s", "pyformat": "%s"}.get(paramstyle)
    if mark is None:
        raise ValueError(f"unsupported database driver paramstyle {paramstyle}")
    return mark


class _Checkpointer:
    """Checkpoints an SQLite file's WAL on a thread of its own.

    A checkpoint copies the WAL's pages into the database file and syncs
    both files; inside a commit (SQLite's default) every audit record queued
    behind that commit waits for the syncs. This thread instead runs a
    PASSIVE checkpoint every ``CHECKPOINT_INTERVAL_SECONDS``, beside the
    writers. A PASSIVE checkpoint never makes the WAL start again from its
    beginning while writers keep appending, so once it holds more than
    ``WAL_RESTART_PAGES`` the thread takes the writer lock (no writer of
    ours is then between its insert and its commit) and runs a RESTART
    checkpoint, which copies what is left and lets the next writer reuse the
    file from the start. It tries only right after a PASSIVE checkpoint
    that copied everything, so no reader then needs old frames: a long read
    (an ``audit export``) holds the WAL's restart back, but never the
    writers, and the restart comes in the first gap between reads. Commits
    are as durable as before: a record is in the WAL when its commit
    returns; only the copying moves.
    """

    def __init__(self, path: str, writer: _WriterLock) -> None:
        self._path = path
        self._writer = writer
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="sqlite-checkpoint", daemon=True
        )
        # RESTART checkpoints done; those readers kept from finishing; and
        # times one was due but a reader held old frames, so none was tried.
        self.restarts = 0
        self.busy_restarts = 0
        self.held_back = 0
        self._restart_after = 0.0  # time.monotonic() of the next attempt
        self._pause = 0.0  # after the last busy attempt

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=WRITER_LOCK_WAIT_SECONDS + 1)

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        try:
            while not self._stop.wait(CHECKPOINT_INTERVAL_SECONDS):
                try:
                    if conn is None:
                        conn = sqlite3.connect(
                            _file_uri(self._path, "rw"),
                            uri=True,
                            timeout=RESTART_READER_WAIT_SECONDS,
                            isolation_level=None,
                        )
                    self._checkpoint(conn)
                except Exception as exc:  # the thread must go on, whatever failed
                    # Commits still checkpoint past WAL_BACKSTOP_PAGES, so a
                    # failing thread costs speed, never records.
                    log.warning(
                        "WAL checkpoint failed",
                        extra={"fields": {"error": f"{type(exc).__name__}: {exc}"}},
                    )
                    if conn is not None:
                        conn.close()
                        conn = None
                    self._stop.wait(CHECKPOINT_RETRY_SECONDS)
        finally:
            if conn is not None:
                conn.close()

    def _checkpoint(self, conn: sqlite3.Connection) -> None:
        # PASSIVE never waits: it copies what no reader still needs.
        row = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        if row is None or row[1] < WAL_RESTART_PAGES:
            return
        if row[2] < row[1]:
            # A reader still needs old frames (an export, say): RESTART
            # could only wait for it while holding the writers. Try again
            # at the next round, when it may be gone.
            self.held_back += 1
            return
        now = time.monotonic()
        if now < self._restart_after:
            return
        # Everything was copied a moment ago: RESTART copies what came
        # since and waits at most RESTART_READER_WAIT_SECONDS for readers
        # that began meanwhile; writers wait on the lock for that long.
        with self._writer.hold(wait=1.0):
            busy = conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()[0]
        if busy:
            # Readers that keep coming (a tool reading back to back) would
            # otherwise hold the writers for the wait every round.
            self.busy_restarts += 1
            self._pause = min(
                max(self._pause * 2, RESTART_BUSY_PAUSE_SECONDS),
                RESTART_LONGEST_PAUSE_SECONDS,
            )
            self._restart_after = now + self._pause
        else:
            self.restarts += 1
            self._pause = 0.0


def sqlite_file(url: str) -> Path | None:
    """The file of an SQLite database URL, or ``None`` (another database,
    an in-memory one, or a ``file:`` URI)."""
    if not url.startswith("sqlite"):
        return None
    path = make_url(url).database
    if not path or path == ":memory:" or path.startswith("file:"):
        return None
    return Path(path)


class Database:
    """Engine and session factory; ``session()`` maps driver errors to
    ``StoreUnavailable`` and commits on success."""

    def __init__(self, url: str) -> None:
        self.url = url
        # Only an SQLite file needs these: PostgreSQL queues writers itself.
        self._writer: _WriterLock | None = None
        self._file: str | None = None
        self._opened = False  # whether a connection to the file was made
        self._checkpointer: _Checkpointer | None = None
        self._autocheckpoint = WAL_AUTOCHECKPOINT_PAGES
        #: Goes up when connection settings change (``start_checkpoints``):
        #: a connection kept outside the pool, opened before, is reopened.
        self.generation = 0
        kwargs: dict[str, Any] = {"pool_pre_ping": True}
        if url.startswith("sqlite"):
            kwargs = {"connect_args": {"check_same_thread": False, "timeout": 5}}
            path = sqlite_file(url)
            if path is not None:
                # The embedded default lives in the home folder: a fresh
                # --home is created rather than reported as unreachable.
                try:
                    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                except OSError as exc:
                    raise StoreUnavailable(
                        f"cannot create the folder of {path}: {exc.strerror}"
                    ) from None
                self._file = str(path.resolve())
                self._writer = _WriterLock(self._file)
                kwargs = {"creator": self._open_file}
        self.engine: Engine = create_engine(url, **kwargs)
        if url.startswith("sqlite"):
            event.listen(
                self.engine,
                "connect",
                lambda conn, _rec: _sqlite_pragmas(conn, self._autocheckpoint),
            )
        self._factory = sessionmaker(self.engine, expire_on_commit=False)
        #: The driver's base error class (PEP 249), for code that works on
        #: DBAPI connections directly.
        self.dbapi_error: type[Exception] = self.engine.dialect.dbapi.Error  # type: ignore[union-attr]
        mark = positional_mark(self.engine.dialect.paramstyle)
        # Built from constants only. One statement takes a new key or one
        # whose time is up, atomically (SQLite 3.24+, PostgreSQL 9.5+): the
        # row count is 1 when it did, 0 when the key is still in use.
        self._use_once_sql = (
            f"INSERT INTO used_jtis (key, expires_at) VALUES ({mark}, {mark}) "  # noqa: S608
            "ON CONFLICT (key) DO UPDATE SET expires_at = excluded.expires_at "
            f"WHERE used_jtis.expires_at < {mark}"
        )
        self._sweep_sql = f"DELETE FROM used_jtis WHERE expires_at < {mark}"  # noqa: S608

    def _open_file(self) -> sqlite3.Connection:
        """A connection to the SQLite file. Only the first may create it: if
        the file is removed while the issuer runs, new connections fail
        (503) instead of starting an empty database beside the old one's
        WAL and shared memory, which crashed workers with SIGBUS."""
        assert self._file is not None
        mode = "rw" if self._opened else "rwc"
        conn = sqlite3.connect(
            _file_uri(self._file, mode), uri=True, check_same_thread=False, timeout=5
        )
        self._opened = True
        return conn

    def autocommit_connection(self) -> sqlite3.Connection | None:
        """A connection of its own to the SQLite file, outside the pool, in
        autocommit mode (each statement is its own transaction unless it
        runs between BEGIN and COMMIT); ``None`` for PostgreSQL and for an
        in-memory SQLite database, whose every connection is a database of
        its own. The caller closes it."""
        if self._file is None:
            return None
        conn = self._open_file()
        try:
            conn.isolation_level = None
            _sqlite_pragmas(conn, self._autocheckpoint)
        except BaseException:
            conn.close()
            raise
        return conn

    def start_checkpoints(self) -> None:
        """Checkpoint the WAL on a thread rather than inside commits (SQLite
        files only; see ``_Checkpointer``). For serving processes: ``dispose``
        stops the thread."""
        if self._file is None or self._writer is None or self._checkpointer:
            return
        self._autocheckpoint = WAL_BACKSTOP_PAGES
        # Pooled connections were set up with the small threshold.
        self.engine.dispose()
        self.generation += 1
        self._checkpointer = _Checkpointer(self._file, self._writer)
        self._checkpointer.start()

    def writing(
        self, wait: float | None = None
    ) -> contextlib.AbstractContextManager[None]:
        """Hold the writer lock around a write on the token path (SQLite
        files only; see ``_WriterLock``), waiting at most ``wait`` seconds
        (default ``WRITER_LOCK_WAIT_SECONDS``); raises ``StoreUnavailable``."""
        if self._writer is None:
            return contextlib.nullcontext()
        return self._writer.hold(wait)

    def dispose(self) -> None:
        """Stop the checkpoint thread; close pooled connections and the
        writer lock's file."""
        if self._checkpointer is not None:
            self._checkpointer.stop()
            self._checkpointer = None
        self.engine.dispose()
        if self._writer is not None:
            self._writer.close()

    def migrate(self) -> None:
        """Bring the schema to the newest migration; raises ``StoreUnavailable``.

        Runs the Alembic migrations in ``issuer/migrations`` under a lock
        (PostgreSQL advisory lock; SQLite's write lock), so instances that
        start together do not race.
        """
        from alembic.util import CommandError

        try:
            self.upgrade()
        except CommandError as exc:
            # A schema revision this issuer does not know: a newer issuer
            # wrote it, or the table was edited. Nothing to serve from.
            raise StoreUnavailable(f"schema: {exc}") from None
        except SQLAlchemyError as exc:
            # OperationalError (unreachable) or DatabaseError (not a database,
            # malformed): either way nothing can be served from it.
            raise StoreUnavailable(type(exc).__name__) from exc
        if self._file is not None:
            # The file holds client secret hashes: readable by the owner only.
            # (A ``file:`` URI names its file with options the URI holds;
            # its owner sets its mode.)
            os.chmod(self._file, 0o600)

    def upgrade(self, revision: str = "head") -> None:
        """Run Alembic migrations up to ``revision``."""
        from alembic import command
        from alembic.config import Config

        config = Config()
        config.set_main_option(
            "script_location", str(Path(__file__).resolve().parent / "migrations")
        )
        with self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                # Serialise concurrent starts; released at commit.
                conn.execute(text("SELECT pg_advisory_xact_lock(7405310)"))
            config.attributes["connection"] = conn
            command.upgrade(config, revision)

    def revision(self) -> str | None:
        """The schema's current migration revision, or ``None``."""
        from alembic.runtime.migration import MigrationContext

        with self.engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session committed when the block ends without error."""
        try:
            with self._factory() as session, session.begin():
                yield session
        except IntegrityError:
            raise
        except SQLAlchemyError as exc:
            raise StoreUnavailable(type(exc).__name__) from exc

    @contextmanager
    def connection(self) -> Iterator[Connection]:
        """A Core connection in a transaction committed when the block ends.

        The hot path (client lookup, audit insert) uses Core statements: the
        ORM's unit of work costs more than the query itself here.
        """
        try:
            with self.engine.begin() as conn:
                yield conn
        except IntegrityError:
            raise
        except SQLAlchemyError as exc:
            raise StoreUnavailable(type(exc).__name__) from exc

    def use_once(self, key: str, expires_at: float) -> bool:
        """Record ``key`` as used until ``expires_at``; False if already used.

        Atomic across processes and instances: one upsert on the primary key
        takes a new key, or one whose time is up, and leaves a live one
        alone. Runs on a DBAPI connection directly, since the ORM cost
        several times the statement here. Expired rows are swept now and
        then, so the table stays small.
        """
        now = time.time()
        with self.writing(), self._dbapi_transaction() as cursor:
            cursor.execute(self._use_once_sql, (key, expires_at, now))
            used = bool(cursor.rowcount == 1)
            if used and hash(key) % 64 == 0:
                cursor.execute(self._sweep_sql, (now,))
        return used

    @contextmanager
    def _dbapi_transaction(self) -> Iterator[Any]:
        """A DBAPI cursor on a pooled connection, committed when the block
        ends; driver errors become ``StoreUnavailable`` after a rollback,
        and a broken connection is dropped from the pool."""
        try:
            raw = self.engine.raw_connection()
        except (SQLAlchemyError, self.dbapi_error) as exc:
            # A failed connect surfaces as the driver's own error here.
            raise StoreUnavailable(type(exc).__name__) from exc
        try:
            cursor = raw.cursor()
            try:
                yield cursor
            finally:
                cursor.close()
            raw.commit()
        except self.dbapi_error as exc:
            discard_connection(raw)
            raise StoreUnavailable(type(exc).__name__) from exc
        finally:
            raw.close()

    def issue_nonce(
        self, client_id: str, nonce: str, now: float, lifetime: int, cap: int
    ) -> None:
        """Store a nonce for ``client_id``; drop expired ones and, beyond
        ``cap`` outstanding, the oldest."""
        table = _NONCES
        with self.writing(), self.connection() as conn:
            conn.execute(delete(table).where(table.c.expires_at <= now))
            rows = conn.execute(
                select(table.c.nonce)
                .where(table.c.client_id == client_id)
                .order_by(table.c.issued_at.desc(), table.c.nonce)
                .offset(max(cap - 1, 0))
            ).all()
            if rows:
                stale = [r.nonce for r in rows]
                conn.execute(delete(table).where(table.c.nonce.in_(stale)))
            conn.execute(
                insert(table).values(
                    nonce=nonce,
                    client_id=client_id,
                    issued_at=now,
                    expires_at=now + lifetime,
                )
            )

    def consume_nonce(self, client_id: str, nonce: str, now: float) -> bool:
        """Use a nonce once: True only if it was issued to ``client_id``, has
        not expired and was not used before. Atomic across processes."""
        table = _NONCES
        with self.writing(), self.connection() as conn:
            result = conn.execute(
                delete(table).where(
                    table.c.nonce == nonce,
                    table.c.client_id == client_id,
                    table.c.expires_at > now,
                )
            )
            return bool(result.rowcount == 1)

    def is_revoked(self, jti: str) -> bool:
        """Whether the token with ``jti`` was revoked."""
        with self.session() as s:
            return s.get(Revocation, jti) is not None
