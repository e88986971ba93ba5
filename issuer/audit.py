"""Audit trail of issuance decisions about authenticated clients.

A record names the client, subject, each piece of evidence by kind and
digest (never the evidence itself), the ratings with their reasons, the
levels, the policy version, the decision, the reasons for a refusal and the
token's ``jti``. The token endpoint commits the record before it answers,
so no token leaves without one.

Records are hash-chained. Each writer (one per process) keeps its own
chain, named by a random id: record ``seq`` n carries the digest of record
n-1 and its own digest over every field, so an edited, inserted or removed
record breaks the chain (``AuditLog.verify``). Per-writer chains let
workers and instances write without a global lock. Before old records are
pruned, a checkpoint signed with the issuer's key records where each chain
then stood, and verification resumes from it.

The ratings, reasons and credential of an assessment are stored once in
``audit_assessments`` under their SHA-256 digest, and a record's
``ratings`` holds that digest: the chain covers the digest, and
verification checks that the stored JSON still hashes to it. Pruning keeps
assessments, which are few and may be shared by the records that remain.
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import jwt
import orjson
from sqlalchemy import delete, func, select, tuple_

from .storage import (
    ASSESSMENT_DIGEST_PREFIX,
    AuditAssessment,
    AuditCheckpoint,
    AuditRecord,
    Database,
    StoreUnavailable,
    discard_connection,
    positional_mark,
    stored_json,
)

if TYPE_CHECKING:
    from .keys import KeyRing

__all__ = [
    "GENESIS",
    "AuditEntry",
    "AuditLog",
    "ChainProblem",
    "TrailChanged",
    "record_digest",
]

GENESIS = "sha-256:" + "0" * 64
_CHAINED = (
    "time", "client_id", "grant_type", "subject", "decision", "error", "reasons",
    "evidence", "ratings", "mial", "maal", "policy_version", "jti", "audience",
    "expires_at", "chain", "seq",
)  # fmt: skip
CHECKPOINT_TYP = "audit-checkpoint+jwt"
_COLUMNS = (*_CHAINED, "prev_digest", "digest")
# Digests of assessments a writer knows are stored; past this many it
# forgets them all and lets the database's conflict clause skip repeats.
_KNOWN_ASSESSMENTS = 10_000
# Rows per INSERT statement on SQLite: 19 columns each keeps a statement
# under 999 parameters, the limit of SQLite builds before 3.32.
_ROWS_PER_STATEMENT = 52
# Records per read transaction when SQLite exports or verifies the trail.
_READ_PAGE = 1_000


def _insert_sql(paramstyle: str, rows: int = 1) -> tuple[str, str]:
    """The insert of ``rows`` records and the assessment insert, for the
    driver's positional placeholders (sqlite3: qmark; psycopg:
    format/pyformat)."""
    mark = positional_mark(paramstyle)
    columns = ", ".join(_COLUMNS)
    values = ", ".join(["(" + ", ".join([mark] * len(_COLUMNS)) + ")"] * rows)
    # Built only from the constant names above, never from input. SQLite
    # (3.24 and later) and PostgreSQL both take ON CONFLICT DO NOTHING.
    return (
        f"INSERT INTO audit_records ({columns}) VALUES {values}",  # noqa: S608
        f"INSERT INTO audit_assessments (digest, body) VALUES ({mark}, {mark}) "  # noqa: S608
        "ON CONFLICT (digest) DO NOTHING",
    )


def assessment_digest(body: str) -> str:
    """The digest naming an assessment's JSON in ``audit_assessments``."""
    return ASSESSMENT_DIGEST_PREFIX + hashlib.sha256(body.encode()).hexdigest()


def _json(value: Any) -> str:
    # JSON columns are written once and hashed as written; orjson because
    # the audit insert is on every token's path.
    return orjson.dumps(value).decode()


def record_digest(prev_digest: str, fields: Mapping[str, Any]) -> str:
    """The chain digest of one record: SHA-256 over the previous digest and
    the canonical JSON of the chained fields."""
    values = {name: fields[name] for name in _CHAINED}
    # Times are stored as floating point; hash them as such so a value read
    # back from the database digests the same as the one written.
    for name in ("time", "expires_at"):
        if values[name] is not None:
            values[name] = float(values[name])
    canonical = orjson.dumps(values, option=orjson.OPT_SORT_KEYS)
    data = prev_digest.encode() + b"\n" + canonical
    return "sha-256:" + hashlib.sha256(data).hexdigest()


class TrailChanged(RuntimeError):
    """A paged read of the trail did not see every record it started with."""


@dataclass(frozen=True)
class ChainProblem:
    """One place where the audit trail does not verify."""

    chain: str
    seq: int
    problem: str


@dataclass
class _Pending:
    """A record waiting for its commit; ``outcome`` is ``True`` once
    committed, the error once its commit failed, ``None`` before."""

    record: dict[str, Any]
    #: (digest, JSON) of its assessment when the writer has not stored it yet.
    assessment: tuple[str, str] | None = None
    outcome: bool | StoreUnavailable | None = None


@dataclass
class AuditEntry:
    """What one decision records; filled in as the request proceeds."""

    client_id: str
    grant_type: str
    policy_version: str
    subject: str | None = None
    evidence: list[dict[str, str]] = field(default_factory=list)
    ratings: dict[str, Any] = field(default_factory=dict)
    mial: int | None = None
    maal: int | None = None
    audience: list[str] = field(default_factory=list)


class AuditLog:
    """Writes and reads audit records."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._chain = secrets.token_urlsafe(12)
        # Chain head as handed out; records wait in ``_pending`` for a commit.
        self._seq, self._prev = 0, GENESIS
        self._pending: list[_Pending] = []
        self._lock = threading.Lock()  # chain head and pending list
        self._commit_lock = threading.Lock()  # one committer at a time
        self._raw: Any = None
        #: Whether ``_raw`` is an SQLite connection of this writer's own
        #: (autocommit) rather than one from the pool.
        self._own = False
        self._generation = 0  # ``Database.generation`` when it was opened
        self._multi_sql: dict[int, str] = {}  # multi-row INSERT by row count
        self._sql, self._assessment_sql = _insert_sql(db.engine.dialect.paramstyle)
        self._known: set[str] = set()  # assessment digests committed

    def write(
        self,
        entry: AuditEntry,
        *,
        decision: str,
        error: str | None = None,
        reasons: list[str] | None = None,
        jti: str | None = None,
        expires_at: float | None = None,
    ) -> None:
        """Commit one record; raises ``StoreUnavailable`` when it cannot.

        The assessment's JSON goes to ``audit_assessments`` once; the record
        holds its digest, which the chain digest covers in turn.
        """
        assessment = _json(entry.ratings)
        ref = assessment_digest(assessment)
        record: dict[str, Any] = dict(
            time=time.time(),
            client_id=entry.client_id,
            grant_type=entry.grant_type[:100],
            subject=entry.subject,
            decision=decision,
            error=error,
            reasons=_json(reasons or []),
            evidence=_json(entry.evidence),
            ratings=ref,
            mial=entry.mial,
            maal=entry.maal,
            policy_version=entry.policy_version,
            jti=jti,
            audience=_json(entry.audience),
            expires_at=expires_at,
        )
        with self._lock:
            seq = self._seq + 1
            record["chain"] = self._chain
            record["seq"] = seq
            record["prev_digest"] = self._prev
            digest = record_digest(self._prev, record)
            record["digest"] = digest
            self._seq, self._prev = seq, digest
            mine = _Pending(record, None if ref in self._known else (ref, assessment))
            self._pending.append(mine)
        self._commit(mine)

    def _commit(self, mine: _Pending) -> None:
        """Return once ``mine`` is committed; raise ``StoreUnavailable`` if
        its commit failed.

        Group commit: whichever waiting thread gets the commit lock first
        inserts every pending record in one transaction, so concurrent
        requests share one commit; the others find their record done. No
        caller returns before its own record is committed. A failed commit
        fails its records and every record chained after them, and the
        writer continues on a new chain: the old one ends with its last
        stored record (the failed ones included, if they were stored after
        all), so no chain has a gap or a reused position.
        """
        with self._commit_lock:
            if mine.outcome is None:
                with self._lock:
                    batch, self._pending = self._pending, []
                try:
                    self._insert(batch)
                except BaseException as exc:
                    failure = (
                        exc
                        if isinstance(exc, StoreUnavailable)
                        else StoreUnavailable(type(exc).__name__)
                    )
                    with self._lock:
                        failed = batch + self._pending
                        self._pending = []
                        # Whether the failed commit reached the database is
                        # unknown (a connection lost during COMMIT): reusing
                        # its positions could collide with stored records,
                        # so the writer starts a new chain.
                        self._chain = secrets.token_urlsafe(12)
                        self._seq, self._prev = 0, GENESIS
                    for p in failed:
                        p.outcome = failure
                    if failure is not exc:
                        raise
                else:
                    if len(self._known) > _KNOWN_ASSESSMENTS:
                        self._known.clear()
                    for p in batch:
                        p.outcome = True
                        if p.assessment is not None:
                            self._known.add(p.assessment[0])
        if mine.outcome is not True:
            raise StoreUnavailable(str(mine.outcome))

    def _insert(self, batch: Sequence[_Pending]) -> None:
        """Insert and commit through one DBAPI connection kept by this writer:
        the batch's new assessments, then its records, in one transaction.

        The statements are fixed, so the hot path skips SQLAlchemy's
        per-call work; a failed connection is dropped and reopened on the
        next write.
        """
        assessments = sorted({p.assessment for p in batch if p.assessment})
        rows = [[p.record[c] for c in _COLUMNS] for p in batch]
        try:
            if self._raw is not None and self._generation != self._db.generation:
                # Opened before the connection settings changed
                # (``start_checkpoints``): open one with the new settings.
                self._drop_connection()
            if self._raw is None:
                self._generation = self._db.generation
                own = self._db.autocommit_connection()
                self._own = own is not None
                self._raw = own if own is not None else self._db.engine.raw_connection()
            with self._db.writing():
                if self._own:
                    self._insert_sqlite(self._raw, assessments, rows)
                else:
                    cursor = self._raw.cursor()
                    try:
                        if assessments:
                            cursor.executemany(self._assessment_sql, assessments)
                        cursor.executemany(self._sql, rows)
                    finally:
                        cursor.close()
                    self._raw.commit()
        except self._db.dbapi_error as exc:
            self._drop_connection()
            raise StoreUnavailable(type(exc).__name__) from exc
        except BaseException:
            # Anything else that stopped a write half way (a bug, an
            # interrupt): an autocommit connection left inside its
            # transaction would hold every later record uncommitted.
            if self._own and self._raw is not None and self._raw.in_transaction:
                self._drop_connection()
            raise

    def _drop_connection(self) -> None:
        raw, self._raw = self._raw, None
        if raw is None:
            return
        if self._own:
            # Closing rolls back whatever transaction is open.
            with contextlib.suppress(Exception):
                raw.close()
        else:
            discard_connection(raw)

    def _insert_sqlite(
        self, conn: Any, assessments: Sequence[tuple[str, str]], rows: list[list[Any]]
    ) -> None:
        """An SQLite file, on an autocommit connection: records alone go in
        as one multi-row INSERT, which SQLite commits by itself. That is
        one statement where BEGIN, INSERT and COMMIT were three, and the
        driver lets go of the GIL around each (a context switch and back
        under load). New assessments, or more rows than one statement
        takes, use an explicit transaction."""
        chunks = [
            rows[i : i + _ROWS_PER_STATEMENT]
            for i in range(0, len(rows), _ROWS_PER_STATEMENT)
        ]
        statements = [
            (self._rows_sql(len(chunk)), [v for row in chunk for v in row])
            for chunk in chunks
        ]
        if len(statements) == 1 and not assessments:
            conn.execute(*statements[0])
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            if assessments:
                conn.executemany(self._assessment_sql, assessments)
            for sql, params in statements:
                conn.execute(sql, params)
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(Exception):
                conn.execute("ROLLBACK")
            raise

    def _rows_sql(self, count: int) -> str:
        sql = self._multi_sql.get(count)
        if sql is None:
            sql = _insert_sql(self._db.engine.dialect.paramstyle, count)[0]
            self._multi_sql[count] = sql
        return sql

    def close(self) -> None:
        """Close this writer's database connection."""
        with self._commit_lock:
            raw, self._raw = self._raw, None
        if raw is not None:
            with contextlib.suppress(Exception):
                raw.close()

    def by_jti(self, jti: str) -> dict[str, Any] | None:
        """The record of the token ``jti``, or ``None``."""
        try:
            jti.encode("utf-8")
        except UnicodeEncodeError:
            return None  # no stored jti has a lone surrogate
        query = select(AuditRecord).where(AuditRecord.jti == jti)
        with self._db.session() as s:
            rec = s.scalars(query).first()
        return rec.as_dict(_Assessments(self._db)) if rec is not None else None

    def recent(
        self, client_id: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """The newest records, optionally for one client."""
        query = select(AuditRecord).order_by(AuditRecord.id.desc()).limit(limit)
        if client_id is not None:
            query = query.where(AuditRecord.client_id == client_id)
        with self._db.session() as s:
            records = s.scalars(query).all()
        lookup = _Assessments(self._db)
        return [r.as_dict(lookup) for r in records]

    def export(self) -> Iterator[dict[str, Any]]:
        """Every record, by chain and position, as JSON-ready dicts."""
        lookup = _Assessments(self._db, preload=True)
        for rec in self._in_order():
            yield rec.as_dict(lookup)

    def _stored(self) -> Iterator[dict[str, Any]]:
        """Every record as stored, JSON columns as their exact text, so the
        digest is recomputed over the bytes that were hashed when written."""
        for rec in self._in_order():
            yield {c: getattr(rec, c) for c in (*_COLUMNS, "id")}

    def _in_order(self) -> Iterator[AuditRecord]:
        """Every record by chain, position and id (so two records that claim
        one position both show).

        On SQLite each page of ``_READ_PAGE`` records is read in a short
        transaction of its own, the next one starting after the last key
        seen: a reader that stayed on one snapshot for a whole export would
        keep the WAL from starting again, and it grew by about 10 KB per
        token issued meanwhile. Only records with ids up to the highest at
        the start are read, so the result is the trail as it stood then, as
        one snapshot would have given. PostgreSQL, where a long read holds
        up no log, reads in one transaction.
        """
        order = (AuditRecord.chain, AuditRecord.seq, AuditRecord.id)
        query = select(AuditRecord).order_by(*order)
        if self._db.engine.dialect.name != "sqlite":
            with self._db.session() as s:
                yield from s.scalars(query).yield_per(500)
            return
        # The trail as it stood when the read began: records committed
        # later have higher ids (SQLite numbers rows past the highest), so
        # every chain ends at the same moment.
        with self._db.session() as s:
            top, total = s.execute(
                select(func.max(AuditRecord.id), func.count(AuditRecord.id))
            ).one()
        if top is None:
            return
        query = query.where(AuditRecord.id <= top)
        after: tuple[Any, Any, Any] | None = None
        read = 0
        while True:
            page_query = query.limit(_READ_PAGE)
            if after is not None:
                page_query = page_query.where(tuple_(*order) > tuple_(*after))
            with self._db.session() as s:
                page = s.scalars(page_query).all()
            read += len(page)
            yield from page
            if len(page) < _READ_PAGE:
                break
            last = page[-1]
            after = (last.chain, last.seq, last.id)
        if read != total:
            # Rows pruned between two pages, or rows no writer stores (a
            # NULL chain or position) that the page order cannot step past.
            raise TrailChanged(
                f"read {read} of the {total} audit records there were at the"
                " start: the trail changed during the read (an audit prune?)"
                " or holds rows that cannot be put in order; run it again"
                " after the prune, and check the database if it persists"
            )

    def checkpoints(self) -> dict[str, AuditCheckpoint]:
        """The newest checkpoint of each chain."""
        with self._db.session() as s:
            rows = s.scalars(select(AuditCheckpoint).order_by(AuditCheckpoint.id)).all()
        return {row.chain: row for row in rows}

    def verify(self, keyring: KeyRing | None = None) -> tuple[int, list[ChainProblem]]:
        """Check every chain; return the records checked and the problems.

        A chain starts at seq 1 after ``GENESIS``, or right after its newest
        checkpoint when older records were pruned. With ``keyring`` the
        checkpoints' signatures are checked too.
        """
        problems: list[ChainProblem] = []
        # Every checkpoint the check relied on or found, by id: their
        # signatures are checked once, at the end.
        relied_on: dict[int, AuditCheckpoint] = {}
        starts: dict[str, tuple[int, str]] = {}
        for chain, cp in self.checkpoints().items():
            relied_on[cp.id] = cp
            mark = _checkpoint_position(cp)
            if mark is None:
                # Not as any writer stores it: the chain is checked from its
                # start, so the pruned records show as missing too.
                problems.append(ChainProblem(chain, 0, "checkpoint malformed"))
                continue
            starts[chain] = mark
        lookup = _Assessments(self._db, preload=True)
        # Per assessment digest: what is wrong with its stored JSON, or None.
        assessment_problem: dict[str, str | None] = {}
        count = 0
        current = ""
        seq, prev = 0, GENESIS
        for rec in self._stored():
            count += 1
            if rec["chain"] != current:
                current = rec["chain"]
                seq, prev = starts.get(current, (0, GENESIS))
                if rec["seq"] != seq + 1:
                    # An ``audit prune`` since the checkpoints were read
                    # removed this chain's first records: its newer
                    # checkpoint says where the chain now starts.
                    newer = self._newest_checkpoint(current)
                    mark = _checkpoint_position(newer) if newer else None
                    if newer is not None and mark is not None and mark[0] > seq:
                        relied_on[newer.id] = newer
                        seq, prev = mark
            # A position that is not a number is reported where it stands.
            position = rec["seq"] if isinstance(rec["seq"], int) else seq + 1
            if position != rec["seq"]:
                problems.append(ChainProblem(current, position, "record malformed"))
            elif position == seq:
                # A second record at a taken position (the unique index was
                # dropped to insert it).
                problems.append(ChainProblem(current, position, "duplicate record"))
            elif position != seq + 1:
                problems.append(ChainProblem(current, seq + 1, "missing record"))
            elif rec["prev_digest"] != prev:
                problems.append(ChainProblem(current, position, "broken link"))
            if _digest_or_none(rec) != rec["digest"]:
                problems.append(ChainProblem(current, position, "record altered"))
            ref = rec["ratings"]
            if not _well_formed_ratings(ref):
                problems.append(ChainProblem(current, position, "record malformed"))
            elif ref.startswith(ASSESSMENT_DIGEST_PREFIX):
                if ref not in assessment_problem:
                    assessment_problem[ref] = _assessment_problem(ref, lookup(ref))
                problem = assessment_problem[ref]
                if problem is not None:
                    problems.append(ChainProblem(current, position, problem))
            seq, prev = position, rec["digest"]
        if keyring is not None:
            # With those a prune wrote meanwhile, also for chains it emptied.
            for cp in self.checkpoints().values():
                relied_on.setdefault(cp.id, cp)
            for cp in relied_on.values():
                mark = _checkpoint_position(cp)
                if mark is not None and not _checkpoint_valid(cp, keyring):
                    problems.append(
                        ChainProblem(cp.chain, mark[0], "checkpoint signature")
                    )
        return count, problems

    def _newest_checkpoint(self, chain: str) -> AuditCheckpoint | None:
        """The newest checkpoint of ``chain``, read now."""
        query = (
            select(AuditCheckpoint)
            .where(AuditCheckpoint.chain == chain)
            .order_by(AuditCheckpoint.id.desc())
            .limit(1)
        )
        with self._db.session() as s:
            return s.scalars(query).first()

    def prune(self, before: float, keyring: KeyRing) -> int:
        """Delete records older than ``before`` after writing, per chain, a
        signed checkpoint at the last record removed. Returns the count."""
        removed = 0
        with self._db.session() as s:
            heads = s.execute(
                select(AuditRecord.chain, func.max(AuditRecord.seq))
                .where(AuditRecord.time < before)
                .group_by(AuditRecord.chain)
            ).all()
            for chain, seq in heads:
                last = s.scalars(
                    select(AuditRecord).where(
                        AuditRecord.chain == chain, AuditRecord.seq == seq
                    )
                ).one()
                now = time.time()
                claims = {
                    "chain": chain,
                    "seq": seq,
                    "digest": last.digest,
                    "iat": int(now),
                }
                s.add(
                    AuditCheckpoint(
                        created_at=now,
                        chain=chain,
                        seq=seq,
                        digest=last.digest,
                        signature=keyring.sign(claims, typ=CHECKPOINT_TYP),
                    )
                )
                result = s.execute(
                    delete(AuditRecord).where(
                        AuditRecord.chain == chain, AuditRecord.seq <= seq
                    )
                )
                removed += int(result.rowcount or 0)  # type: ignore[attr-defined]
        return removed


class _Assessments:
    """Stored assessment JSON by digest, for reading records.

    A digest not found is looked up again rather than reported missing: a
    record read after an earlier lookup was committed together with its
    assessment, which is there by then unless someone removed it.
    """

    def __init__(self, db: Database, preload: bool = False) -> None:
        self._db = db
        self._known: dict[str, Any] = {}
        if preload:
            # Few (one per distinct outcome): one query for all of them.
            query = select(AuditAssessment.digest, AuditAssessment.body)
            with db.session() as s:
                self._known.update((d, b) for d, b in s.execute(query).all())

    def __call__(self, digest: str) -> Any:
        if digest not in self._known:
            with self._db.session() as s:
                row = s.get(AuditAssessment, digest)
                self._known[digest] = row.body if row is not None else None
        return self._known[digest]


_DIGEST_HEX = frozenset("0123456789abcdef")


def _well_formed_ratings(value: Any) -> bool:
    """A record's ratings: an assessment digest, or (records written before
    the assessments table) a JSON object."""
    if not isinstance(value, str):
        return False
    if value.startswith(ASSESSMENT_DIGEST_PREFIX):
        hexpart = value[len(ASSESSMENT_DIGEST_PREFIX) :]
        return len(hexpart) == 64 and set(hexpart) <= _DIGEST_HEX
    return isinstance(stored_json(value), dict)


def _assessment_problem(ref: str, body: Any) -> str | None:
    if body is None:
        return "assessment missing"
    if not isinstance(body, str) or assessment_digest(body) != ref:
        return "assessment altered"
    return None


def _digest_or_none(record: Mapping[str, Any]) -> str | None:
    """The record's chain digest, or ``None`` when a field holds a value no
    writer stores (an edited database), which then counts as altered."""
    try:
        return record_digest(record["prev_digest"], record)
    except (TypeError, ValueError, AttributeError):
        return None


def _checkpoint_position(cp: AuditCheckpoint) -> tuple[int, str] | None:
    """A checkpoint's (seq, digest), or ``None`` when it is not as any
    writer stores it (an edited database)."""
    if isinstance(cp.seq, int) and isinstance(cp.digest, str):
        return cp.seq, cp.digest
    return None


def _checkpoint_valid(cp: AuditCheckpoint, keyring: KeyRing) -> bool:
    try:
        header = jwt.get_unverified_header(cp.signature)
    except jwt.InvalidTokenError:
        return False
    every_key = keyring.keys()
    key = next((k for k in every_key if k.kid == header.get("kid")), None)
    if key is None or header.get("typ") != CHECKPOINT_TYP:
        return False
    try:
        claims = jwt.decode(
            cp.signature, key.private_key.public_key(), algorithms=[key.alg]
        )
    except jwt.InvalidTokenError:
        return False
    return bool(
        claims.get("chain") == cp.chain
        and claims.get("seq") == cp.seq
        and claims.get("digest") == cp.digest
    )
