"""The audit trail: records, hash chains, checkpoints, CLI."""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from issuer.cli import main

from .conftest import basic


@pytest.fixture
def issued(service: Any) -> list[str]:
    client, secret = service.clients.add("a", audiences=["https://api.test"])
    auth = basic(client.client_id, secret)
    jtis = []
    for _ in range(5):
        jtis.append(service.token({"grant_type": ["client_credentials"]}, auth).jti)
    with pytest.raises(Exception):  # noqa: B017 - any refusal is audited
        service.token({"grant_type": ["client_credentials"], "scope": ["x"]}, auth)
    return jtis


def test_every_decision_is_recorded_and_chained(
    service: Any, issued: list[str]
) -> None:
    count, problems = service.audit.verify(service.keyring)
    assert (count, problems) == (6, [])
    record = service.audit.by_jti(issued[2])
    assert record["seq"] == 3
    assert record["prev_digest"] == service.audit.by_jti(issued[1])["digest"]
    refused = service.audit.recent(limit=1)[0]
    assert (refused["decision"], refused["error"]) == ("refused", "invalid_scope")


def test_an_edited_record_is_detected(service: Any, issued: list[str]) -> None:
    with service.db.engine.begin() as conn:
        conn.execute(text("UPDATE audit_records SET mial = 4 WHERE seq = 2"))
    _, problems = service.audit.verify()
    assert [(p.seq, p.problem) for p in problems] == [(2, "record altered")]


def test_a_removed_record_is_detected(service: Any, issued: list[str]) -> None:
    with service.db.engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_records WHERE seq = 3"))
    _, problems = service.audit.verify()
    assert [(p.seq, p.problem) for p in problems] == [(3, "missing record")]


def test_a_relinked_record_is_detected(service: Any, issued: list[str]) -> None:
    with service.db.engine.begin() as conn:
        conn.execute(
            text("UPDATE audit_records SET prev_digest = :d WHERE seq = 4"),
            {"d": "sha-256:" + "1" * 64},
        )
    _, problems = service.audit.verify()
    assert {p.problem for p in problems} == {"broken link", "record altered"}


def test_pruning_keeps_the_chain_checkable_from_a_signed_checkpoint(
    service: Any, issued: list[str]
) -> None:
    with service.db.engine.begin() as conn:
        conn.execute(text("UPDATE audit_records SET time = 0 WHERE seq <= 3"))
    # Editing time broke those records' digests; re-seal them as if written
    # then, so only pruning is under test.
    _reseal(service)
    removed = service.audit.prune(time.time() - 86400, service.keyring)
    assert removed == 3
    count, problems = service.audit.verify(service.keyring)
    assert (count, problems) == (3, [])
    # A forged checkpoint (digest changed) fails its signature check.
    with service.db.engine.begin() as conn:
        conn.execute(text("UPDATE audit_checkpoints SET digest = 'sha-256:00'"))
    _, problems = service.audit.verify(service.keyring)
    assert "checkpoint signature" in {p.problem for p in problems}


def test_verify_that_overlaps_a_prune_takes_the_newer_checkpoint(
    service: Any, issued: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``verify`` read the checkpoints before a prune ran and the records
    after it: the pruned records are not reported missing."""
    before = service.audit.checkpoints()
    with service.db.engine.begin() as conn:
        conn.execute(text("UPDATE audit_records SET time = 0 WHERE seq <= 3"))
    _reseal(service)
    assert service.audit.prune(time.time() - 86400, service.keyring) == 3
    monkeypatch.setattr(service.audit, "checkpoints", lambda: before)
    assert service.audit.verify(service.keyring) == (3, [])
    # A forged newer checkpoint is still caught.
    with service.db.engine.begin() as conn:
        conn.execute(text("UPDATE audit_checkpoints SET digest = 'sha-256:00'"))
    _, problems = service.audit.verify(service.keyring)
    assert "checkpoint signature" in {p.problem for p in problems}


def _reseal(service: Any) -> None:
    from issuer.audit import GENESIS, record_digest

    rows = list(service.audit._stored())
    prev = GENESIS
    with service.db.engine.begin() as conn:
        for rec in rows:
            digest = record_digest(prev, rec)
            conn.execute(
                text("UPDATE audit_records SET prev_digest=:p, digest=:d WHERE id=:i"),
                {"p": prev, "d": digest, "i": rec["id"]},
            )
            prev = digest


def test_cli_verify_export_and_show(service: Any, issued: list[str], home: Any) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["--home", str(home), "audit", "verify"])
    assert result.exit_code == 0, result.output
    assert "6 records verified" in result.output
    result = runner.invoke(main, ["--home", str(home), "audit", "export"])
    lines = [json.loads(line) for line in result.output.splitlines()]
    assert [r["seq"] for r in lines] == [1, 2, 3, 4, 5, 6]
    out = home / "export.jsonl"
    result = runner.invoke(
        main, ["--home", str(home), "audit", "export", "--output", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert out.stat().st_mode & 0o777 == 0o600
    assert [json.loads(x)["seq"] for x in out.read_text().splitlines()] == [
        1, 2, 3, 4, 5, 6,
    ]  # fmt: skip
    result = runner.invoke(main, ["--home", str(home), "audit", "show", issued[0]])
    assert json.loads(result.output)["jti"] == issued[0]
    with service.db.engine.begin() as conn:
        conn.execute(text("UPDATE audit_records SET subject = 'x' WHERE seq = 5"))
    result = runner.invoke(main, ["--home", str(home), "audit", "verify"])
    assert result.exit_code == 1
    assert "seq 5: record altered" in result.output


@pytest.mark.parametrize(
    "command",
    [
        ["verify"],
        ["export"],
        ["list"],
        ["show", "0123"],
        ["prune", "--older-than", "30"],
    ],
)
def test_audit_commands_on_a_home_without_a_database_refuse_and_create_nothing(
    tmp_path: Any, command: list[str]
) -> None:
    """A mistyped --home must not verify as an empty, clean trail."""
    typo = tmp_path / "no-such-home"
    result = CliRunner().invoke(main, ["--home", str(typo), "audit", *command])
    assert result.exit_code == 1, result.output
    assert f"no database at {typo / 'wimse-issuer.db'}" in result.output
    assert "check --home" in result.output
    assert not typo.exists()


def test_audit_commands_refuse_an_empty_database_file(tmp_path: Any) -> None:
    (tmp_path / "wimse-issuer.db").touch()
    result = CliRunner().invoke(main, ["--home", str(tmp_path), "audit", "verify"])
    assert result.exit_code == 1, result.output
    assert "no database at" in result.output
    assert (tmp_path / "wimse-issuer.db").stat().st_size == 0
    assert not (tmp_path / "keys").exists()


@pytest.mark.parametrize("command", [["verify"], ["prune", "--older-than", "30"]])
def test_verify_and_prune_refuse_a_home_without_signing_keys(
    service: Any,
    issued: list[str],
    home: Any,
    tmp_path_factory: Any,
    command: list[str],
) -> None:
    """The database is found through database_url, the keys are not: they
    must not be made up in the other home."""
    other = tmp_path_factory.mktemp("other-home")
    config = other / "issuer.toml"
    config.write_text(f'database_url = "sqlite:///{home / "wimse-issuer.db"}"\n')
    result = CliRunner().invoke(
        main, ["--home", str(other), "--config", str(config), "audit", *command]
    )
    assert result.exit_code == 1, result.output
    assert f"no signing keys in {other / 'keys' / 'signing'}" in result.output
    assert not (other / "keys" / "signing").exists()
    assert service.audit.verify() == (6, [])


def test_a_file_uri_database_is_migrated_without_a_traceback(tmp_path: Any) -> None:
    from issuer.storage import Database

    url = f"sqlite:///file:{tmp_path / 'x.db'}?mode=rwc&uri=true"
    db = Database(url)
    db.migrate()
    assert db.revision() is not None
    db.dispose()


def test_no_audit_record_means_no_token(service: Any) -> None:
    from issuer.storage import StoreUnavailable

    client, secret = service.clients.add("b", audiences=["https://api.test"])
    auth = basic(client.client_id, secret)

    def broken(*args: Any, **kwargs: Any) -> None:
        raise StoreUnavailable("OperationalError")

    service.audit.write = broken
    with pytest.raises(StoreUnavailable):
        service.token({"grant_type": ["client_credentials"]}, auth)


def test_concurrent_writers_keep_one_chain(service: Any) -> None:
    import threading

    from issuer.audit import AuditEntry

    def burst() -> None:
        for _ in range(40):
            service.audit.write(
                AuditEntry("c", "client_credentials", "v"), decision="issued"
            )

    threads = [threading.Thread(target=burst) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    count, problems = service.audit.verify()
    assert (count, problems) == (240, [])


def test_a_failed_commit_fails_the_request_and_leaves_no_gap(
    service: Any,
) -> None:
    from issuer.audit import AuditEntry
    from issuer.storage import StoreUnavailable

    audit = service.audit
    audit.write(AuditEntry("c", "g", "v"), decision="issued")
    real = audit._insert

    def fail(record: Any) -> None:
        raise StoreUnavailable("OperationalError")

    audit._insert = fail
    with pytest.raises(StoreUnavailable):
        audit.write(AuditEntry("c", "g", "v"), decision="issued")
    audit._insert = real
    audit.write(AuditEntry("c", "g", "v"), decision="issued")
    count, problems = audit.verify()
    assert (count, problems) == (2, [])


def _writers(audit: Any, count: int) -> tuple[list[Any], list[Any]]:
    """Start ``count`` threads that each write one record; return the
    threads and the list their outcomes (``None`` or the error) go to."""
    import threading

    from issuer.audit import AuditEntry

    outcomes: list[Any] = []

    def one() -> None:
        try:
            audit.write(AuditEntry("c", "client_credentials", "v"), decision="issued")
            outcomes.append(None)
        except Exception as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=one) for _ in range(count)]
    for t in threads:
        t.start()
    return threads, outcomes


def _hold_first_commit(
    audit: Any, waiting: int, fail_first: Exception | None
) -> tuple[list[int], Any]:
    """Make the first commit wait until ``waiting`` more records are
    pending behind it (and fail it with ``fail_first``); return the batch
    sizes of every commit and an event set once the first commit began."""
    import threading

    real = audit._insert
    sizes: list[int] = []
    began = threading.Event()

    def insert(records: Any) -> None:
        if not began.is_set():
            began.set()
            deadline = time.monotonic() + 10
            while len(audit._pending) < waiting and time.monotonic() < deadline:
                time.sleep(0.005)
        sizes.append(len(records))
        if fail_first is not None and len(sizes) == 1:
            raise fail_first
        real(records)

    audit._insert = insert
    return sizes, began


def test_waiting_records_share_one_commit(service: Any) -> None:
    from issuer.audit import AuditEntry

    audit = service.audit
    sizes, began = _hold_first_commit(audit, waiting=5, fail_first=None)
    first, _ = _writers(audit, 1)
    assert began.wait(10)
    rest, outcomes = _writers(audit, 5)
    for t in first + rest:
        t.join()
    assert outcomes == [None] * 5
    # The first record went alone; the five queued behind it went together.
    assert sizes == [1, 5]
    audit.write(AuditEntry("c", "client_credentials", "v"), decision="issued")
    assert audit.verify() == (7, [])


@pytest.mark.parametrize("error", ["store", "bug"])
def test_a_failed_group_commit_fails_every_record_chained_on_it(
    service: Any, error: str
) -> None:
    from issuer.audit import AuditEntry
    from issuer.storage import StoreUnavailable

    audit = service.audit
    audit.write(AuditEntry("c", "client_credentials", "v"), decision="issued")
    failure: Exception = (
        StoreUnavailable("OperationalError") if error == "store" else TypeError("x")
    )
    _, began = _hold_first_commit(audit, waiting=4, fail_first=failure)
    first, first_outcome = _writers(audit, 1)
    assert began.wait(10)
    rest, outcomes = _writers(audit, 4)
    for t in first + rest:
        t.join()
    # The failed commit's own writer sees its error; the four records that
    # were chained behind it fail as the store being unavailable.
    assert type(first_outcome[0]) is type(failure)
    assert [type(o) for o in outcomes] == [StoreUnavailable] * 4
    audit.write(AuditEntry("c", "client_credentials", "v"), decision="issued")
    assert audit.verify() == (2, [])
    # The writer went on with a new chain after the failure.
    first, second = reversed(audit.recent())
    assert (first["seq"], second["seq"]) == (1, 1)
    assert first["chain"] != second["chain"]


def _traced(audit: Any) -> list[str]:
    """Write one record, so its assessment is stored and the writer's own
    SQLite connection is open; return the list every statement that
    connection runs from now on is appended to."""
    from issuer.audit import AuditEntry

    audit.write(AuditEntry("c", "client_credentials", "v"), decision="issued")
    statements: list[str] = []
    audit._raw.set_trace_callback(statements.append)
    return statements


def _kinds(statements: list[str]) -> list[str]:
    # Triggers show in the trace as comments ("-- TRIGGER name").
    return [" ".join(s.split()[:3]) for s in statements if not s.startswith("--")]


def test_a_lone_record_goes_in_as_one_statement(service: Any) -> None:
    from issuer.audit import AuditEntry

    statements = _traced(service.audit)
    service.audit.write(AuditEntry("c", "client_credentials", "v"), decision="x")
    # No BEGIN and no COMMIT: SQLite commits the one statement by itself.
    assert _kinds(statements) == ["INSERT INTO audit_records"]
    # Another connection sees it: it is committed.
    assert service.audit.verify() == (2, [])


def test_a_batch_longer_than_one_statement_is_committed_whole(service: Any) -> None:
    """SQLite takes a batch in INSERT statements of at most
    ``_ROWS_PER_STATEMENT`` rows; a longer batch spans several in one
    transaction."""
    from issuer.audit import _ROWS_PER_STATEMENT

    audit = service.audit
    statements = _traced(audit)
    many = 2 * _ROWS_PER_STATEMENT + 5
    sizes, began = _hold_first_commit(audit, waiting=many, fail_first=None)
    first, _ = _writers(audit, 1)
    assert began.wait(10)
    rest, outcomes = _writers(audit, many)
    for t in first + rest:
        t.join()
    assert outcomes == [None] * many
    assert sizes == [1, many]
    assert _kinds(statements) == [
        "INSERT INTO audit_records",  # the first record, alone
        "BEGIN IMMEDIATE",
        *["INSERT INTO audit_records"] * 3,
        "COMMIT",
    ]
    assert audit.verify() == (many + 2, [])


def _poison(service: Any) -> None:
    """Make SQLite refuse any record of the client ``poison``."""
    with service.db.engine.begin() as conn:
        conn.execute(
            text(
                "CREATE TRIGGER poison BEFORE INSERT ON audit_records "
                "WHEN NEW.client_id = 'poison' BEGIN SELECT RAISE(ABORT, 'no'); END"
            )
        )


@pytest.mark.parametrize("batch", ["one statement", "several statements"])
def test_a_batch_refused_part_way_stores_none_of_its_records(
    service: Any, batch: str
) -> None:
    import threading

    from issuer.audit import _ROWS_PER_STATEMENT, AuditEntry
    from issuer.storage import StoreUnavailable

    audit = service.audit
    _poison(service)
    statements = _traced(audit)
    many = 3 if batch == "one statement" else _ROWS_PER_STATEMENT + 3
    sizes, began = _hold_first_commit(audit, waiting=many, fail_first=None)
    first, first_outcome = _writers(audit, 1)
    assert began.wait(10)
    rest, outcomes = _writers(audit, many - 1)
    # The refused record comes last, so the rows before it were already
    # sent when SQLite refused it.
    deadline = time.monotonic() + 10
    while len(audit._pending) < many - 1 and time.monotonic() < deadline:
        time.sleep(0.005)
    poisoned: list[Any] = []

    def poison() -> None:
        try:
            audit.write(AuditEntry("poison", "client_credentials", "v"), decision="x")
        except StoreUnavailable as exc:
            poisoned.append(exc)

    last = threading.Thread(target=poison)
    last.start()
    for t in [*first, *rest, last]:
        t.join()
    assert first_outcome == [None]
    assert sizes == [1, many]
    assert [type(o) for o in outcomes] == [StoreUnavailable] * (many - 1)
    assert len(poisoned) == 1
    # The trace repeats an INSERT for each firing of the trigger; the
    # transaction control around them is what tells the two paths apart.
    control = [k for k in _kinds(statements) if not k.startswith("INSERT")]
    if batch == "one statement":
        # One statement is atomic by itself: no transaction around it.
        assert control == []
    else:
        assert control == ["BEGIN IMMEDIATE", "ROLLBACK"]
    # Nothing of the refused batch is stored: the two records before it.
    assert audit.verify() == (2, [])
    audit.write(AuditEntry("c", "client_credentials", "v"), decision="issued")
    assert audit.verify() == (3, [])


def test_a_lone_record_refused_by_the_database_is_not_stored(service: Any) -> None:
    from issuer.audit import AuditEntry
    from issuer.storage import StoreUnavailable

    _poison(service)
    with pytest.raises(StoreUnavailable):
        service.audit.write(AuditEntry("poison", "g", "v"), decision="issued")
    service.audit.write(AuditEntry("c", "g", "v"), decision="issued")
    assert service.audit.verify() == (1, [])


class _StuckRollback:
    """The writer's SQLite connection, except that its next records INSERT
    fails with a non-driver error and ROLLBACK fails too: the transaction
    stays open unless the writer drops the connection."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.armed = True

    def execute(self, sql: str, *args: Any) -> Any:
        import sqlite3

        if sql == "ROLLBACK":
            raise sqlite3.OperationalError("rollback refused")
        if self.armed and sql.startswith("INSERT INTO audit_records"):
            self.armed = False
            raise TypeError("a bug half way through a transaction")
        return self.real.execute(sql, *args)

    def executemany(self, sql: str, rows: Any) -> Any:
        return self.real.executemany(sql, rows)

    @property
    def in_transaction(self) -> bool:
        return bool(self.real.in_transaction)

    def close(self) -> None:
        self.real.close()


def test_a_write_stopped_inside_its_transaction_does_not_hold_later_records(
    service: Any,
) -> None:
    from issuer.audit import AuditEntry

    audit = service.audit
    _traced(audit)
    stuck = _StuckRollback(audit._raw)
    audit._raw = stuck
    # A new assessment, so the write takes the BEGIN ... COMMIT path.
    entry = AuditEntry("c", "client_credentials", "v", ratings={"new": 1})
    with pytest.raises(TypeError):
        audit.write(entry, decision="issued")
    assert audit._raw is None  # dropped: closing it rolled back
    audit.write(AuditEntry("c", "client_credentials", "v"), decision="issued")
    # The later record is committed, as another connection sees.
    assert audit.verify() == (2, [])


def test_a_commit_that_landed_but_reported_failure_does_not_wedge_the_log(
    service: Any,
) -> None:
    """A connection lost during COMMIT: the rows are stored, the driver
    says it failed. Later writes must not collide with them."""
    from issuer.audit import AuditEntry
    from issuer.storage import StoreUnavailable

    audit = service.audit
    real = audit._insert
    calls = {"n": 0}

    def insert(records: Any) -> None:
        real(records)
        calls["n"] += 1
        if calls["n"] == 2:
            raise StoreUnavailable("OperationalError")

    audit._insert = insert
    entry = AuditEntry("c", "client_credentials", "v")
    audit.write(entry, decision="issued")
    with pytest.raises(StoreUnavailable):
        audit.write(entry, decision="issued")
    for _ in range(3):
        audit.write(entry, decision="issued")
    assert audit.verify() == (5, [])


def test_records_share_one_stored_assessment(service: Any, issued: list[str]) -> None:
    with service.db.engine.begin() as conn:
        refs = [r for (r,) in conn.execute(text("SELECT ratings FROM audit_records"))]
        stored = conn.execute(text("SELECT digest, body FROM audit_assessments")).all()
    # Five issued tokens rate alike; the refusal came before any rating.
    assert len(set(refs[:5])) == 1
    assert {digest for digest, _ in stored} == set(refs)
    assert all(ref.startswith("sha-256:") and len(ref) == 72 for ref in refs)
    record = service.audit.by_jti(issued[0])
    assert record["ratings"]["credential"] == "client_secret"
    assert record["ratings"]["maal"]["provenance"] == 1
    assert service.audit.recent(limit=6)[-1]["ratings"] == record["ratings"]


def test_an_altered_or_missing_assessment_is_detected(
    service: Any, issued: list[str], home: Any
) -> None:
    shared = service.audit.by_jti(issued[0])
    with service.db.engine.begin() as conn:
        ref = conn.execute(
            text("SELECT ratings FROM audit_records WHERE seq = 1")
        ).scalar_one()
        conn.execute(
            text("UPDATE audit_assessments SET body = :b WHERE digest = :d"),
            {"b": json.dumps({**shared["ratings"], "credential": "hardware_key"}),
             "d": ref},
        )  # fmt: skip
    _, problems = service.audit.verify()
    assert [(p.seq, p.problem) for p in problems] == [
        (seq, "assessment altered") for seq in range(1, 6)
    ]
    with service.db.engine.begin() as conn:
        conn.execute(
            text("DELETE FROM audit_assessments WHERE digest = :d"), {"d": ref}
        )
    _, problems = service.audit.verify()
    assert {p.problem for p in problems} == {"assessment missing"}
    # The records still read, without the assessment they lost.
    assert service.audit.by_jti(issued[0])["ratings"] is None
    result = CliRunner().invoke(main, ["--home", str(home), "audit", "verify"])
    assert result.exit_code == 1
    assert "seq 1: assessment missing" in result.output


def test_records_written_before_the_assessment_table_still_verify(
    home: Any, make_service: Any
) -> None:
    from issuer.audit import GENESIS, AuditEntry, record_digest
    from issuer.storage import AuditRecord, Database

    # A database at the schema before audit_assessments, with one record
    # holding its ratings inline as it was written then.
    db = Database(f"sqlite:///{home / 'wimse-issuer.db'}")
    db.upgrade("0003")
    old = {
        "time": 1_700_000_000.0, "client_id": "c", "grant_type": "client_credentials",
        "subject": "client:c", "decision": "issued", "error": None, "reasons": "[]",
        "evidence": "[]", "ratings": json.dumps({"mial": {"supply_chain": 0}}),
        "mial": 1, "maal": 1, "policy_version": "none", "jti": "old-jti",
        "audience": "[]", "expires_at": 1_700_000_300.0, "chain": "old", "seq": 1,
    }  # fmt: skip
    old["prev_digest"] = GENESIS
    old["digest"] = record_digest(GENESIS, old)
    with db.engine.begin() as conn:
        conn.execute(AuditRecord.__table__.insert().values(**old))
    db.dispose()
    # Starting the issuer migrates; new records reference stored assessments.
    service = make_service()
    service.audit.write(AuditEntry("c", "client_credentials", "v"), decision="issued")
    count, problems = service.audit.verify()
    assert (count, problems) == (2, [])
    assert service.audit.by_jti("old-jti")["ratings"] == {"mial": {"supply_chain": 0}}


def test_an_assessment_stored_after_the_reader_started_is_found(service: Any) -> None:
    from issuer.audit import AuditEntry, _Assessments

    lookup = _Assessments(service.db, preload=True)
    entry = AuditEntry("c", "client_credentials", "v", ratings={"credential": "new"})
    service.audit.write(entry, decision="issued", jti="late")
    ref = (
        service.db.engine.connect()
        .execute(text("SELECT ratings FROM audit_records WHERE jti = 'late'"))
        .scalar_one()
    )
    assert json.loads(lookup(ref)) == {"credential": "new"}
    assert service.audit.verify() == (1, [])


@pytest.mark.parametrize(
    ("ratings", "shown"),
    [
        ("{oops", "{oops"),
        ("SHA-256:" + "a" * 64, "SHA-256:" + "a" * 64),
        ("sha-256:short", None),
        ("", ""),
    ],
)
def test_a_resealed_record_with_malformed_ratings_is_named_and_still_reads(
    service: Any, issued: list[str], home: Any, ratings: str, shown: Any
) -> None:
    # Whoever can write the database can append a record and seal it anew;
    # verify cannot tell it from a real one by the chain, but it refuses a
    # ratings value no writer stores, and the readers do not crash on it.
    with service.db.engine.begin() as conn:
        conn.execute(
            text("UPDATE audit_records SET ratings = :r WHERE seq = 2"), {"r": ratings}
        )
    _reseal(service)
    _, problems = service.audit.verify()
    assert [(p.seq, p.problem) for p in problems] == [(2, "record malformed")]
    assert service.audit.by_jti(issued[1])["ratings"] == shown
    _readers_work(home, issued[1])


def test_values_no_writer_stores_are_reported_not_crashed_on(
    service: Any, issued: list[str], home: Any
) -> None:
    with service.db.engine.begin() as conn:
        conn.execute(text("UPDATE audit_assessments SET body = x'00ff'"))
        conn.execute(text("UPDATE audit_records SET ratings = x'00ff' WHERE seq = 3"))
    _, problems = service.audit.verify()
    assert (3, "record altered") in [(p.seq, p.problem) for p in problems]
    assert (3, "record malformed") in [(p.seq, p.problem) for p in problems]
    assert (1, "assessment altered") in [(p.seq, p.problem) for p in problems]
    _readers_work(home, issued[2])
    result = CliRunner().invoke(main, ["--home", str(home), "audit", "verify"])
    assert result.exit_code == 1 and "Traceback" not in result.output


def test_show_with_an_id_no_token_can_have_finds_nothing(
    service: Any, home: Any
) -> None:
    assert service.audit.by_jti("\udcff\udcfe") is None
    result = CliRunner().invoke(main, ["--home", str(home), "audit", "show", "\udcff"])
    assert result.exit_code == 1
    assert "no audit record" in result.output


def test_downgrading_below_the_assessments_table_is_refused_while_used(
    service: Any, issued: list[str]
) -> None:
    with pytest.raises(RuntimeError, match="reference stored assessments"):
        _downgrade(service.db, "0003")
    count, problems = service.audit.verify()
    assert (count, problems) == (6, [])


def _downgrade(db: Any, revision: str) -> None:
    from pathlib import Path

    from alembic import command
    from alembic.config import Config

    import issuer.storage

    config = Config()
    folder = Path(issuer.storage.__file__).resolve().parent / "migrations"
    config.set_main_option("script_location", str(folder))
    with db.engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, revision)


def test_deeply_nested_or_mistyped_values_are_reported_not_crashed_on(
    service: Any, issued: list[str], home: Any, quiet_gc: None
) -> None:
    deep = "[" * 5000 + "]" * 5000
    with service.db.engine.begin() as conn:
        conn.execute(text("UPDATE audit_assessments SET body = :d"), {"d": deep})
        conn.execute(
            text("UPDATE audit_records SET reasons = :d, jti = x'fffe' WHERE seq = 2"),
            {"d": deep},
        )
        conn.execute(text("UPDATE audit_records SET seq = 'three' WHERE seq = 3"))
    _, problems = service.audit.verify()
    found = {(p.seq, p.problem) for p in problems}
    assert {(1, "assessment altered"), (2, "record altered")} <= found
    # The record with a text position sorts last: its place shows as missing
    # and the record itself as malformed where it stands.
    assert (3, "missing record") in found
    assert (7, "record malformed") in found
    _readers_work(home, issued[0])
    exported = CliRunner().invoke(main, ["--home", str(home), "audit", "export"]).output
    second = [json.loads(line) for line in exported.splitlines()][1]
    assert second["reasons"] == deep and second["jti"] == "\ufffd\ufffd"
    result = CliRunner().invoke(main, ["--home", str(home), "audit", "verify"])
    assert result.exit_code == 1 and "Traceback" not in result.output


def test_a_malformed_checkpoint_is_named_and_the_chain_checked_from_its_start(
    service: Any, issued: list[str]
) -> None:
    with service.db.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO audit_checkpoints (created_at, chain, seq, digest, "
                "signature) SELECT 0, chain, 'one', x'ff', x'ff' FROM audit_records "
                "LIMIT 1"
            )
        )
    count, problems = service.audit.verify(service.keyring)
    assert (count, [(p.seq, p.problem) for p in problems]) == (
        6,
        [(0, "checkpoint malformed")],
    )


def _readers_work(home: Any, jti: str) -> None:
    """``audit list``, ``export`` and ``show`` read the database without error."""
    runner = CliRunner()
    for command in (["audit", "list"], ["audit", "export"], ["audit", "show", jti]):
        result = runner.invoke(main, ["--home", str(home), *command])
        assert result.exit_code == 0, result.output


@pytest.fixture
def small_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    from issuer import audit

    monkeypatch.setattr(audit, "_READ_PAGE", 2)


@pytest.mark.usefixtures("small_pages")
def test_paged_reads_give_the_trail_as_it_stood_at_the_start(
    service: Any, issued: list[str]
) -> None:
    # Six records in pages of two, and more written between two pages.
    exported = service.audit.export()
    first = [next(exported) for _ in range(3)]
    client, secret = service.clients.add("late", audiences=["https://api.test"])
    service.token(
        {"grant_type": ["client_credentials"]}, basic(client.client_id, secret)
    )
    rest = list(exported)
    # The trail as it stood when the export began, whatever came after.
    seqs = [r["seq"] for r in first + rest]
    assert seqs == [1, 2, 3, 4, 5, 6]
    assert [r["jti"] for r in first[:3]] == issued[:3]
    assert service.audit.verify() == (7, [])


@pytest.mark.usefixtures("small_pages")
def test_paged_reads_still_catch_a_record_that_shares_a_position(
    service: Any, issued: list[str]
) -> None:
    """Someone who can drop the unique index may add a second record at a
    taken position; the page boundary must not hide it."""
    with service.db.engine.begin() as conn:
        conn.execute(text("DROP INDEX ix_audit_chain_seq"))
        conn.execute(
            text(
                "INSERT INTO audit_records (time, client_id, grant_type, subject,"
                " decision, error, reasons, evidence, ratings, mial, maal,"
                " policy_version, jti, audience, expires_at, chain, seq,"
                " prev_digest, digest) SELECT time, client_id, grant_type,"
                " subject, decision, error, reasons, evidence, ratings, mial,"
                " maal, policy_version, 'copy', audience, expires_at, chain,"
                " seq, prev_digest, digest FROM audit_records WHERE seq = 2"
            )
        )
    count, problems = service.audit.verify()
    assert count == 7
    found = [(p.seq, p.problem) for p in problems]
    assert (2, "record altered") in found
    assert (2, "duplicate record") in found
    assert (3, "missing record") not in found
    assert [r["seq"] for r in service.audit.export()] == [1, 2, 2, 3, 4, 5, 6]


@pytest.mark.usefixtures("small_pages")
def test_an_export_in_progress_does_not_hold_the_wal(
    service: Any, issued: list[str]
) -> None:
    """Between two pages no read transaction is open, so a RESTART
    checkpoint finishes; one long read would keep it busy."""
    import sqlite3

    path = service.db.engine.url.database
    exported = service.audit.export()
    next(exported)
    with contextlib.closing(sqlite3.connect(path, timeout=0.05)) as conn:
        busy = conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()[0]
    assert busy == 0
    assert len(list(exported)) == 5


def test_cli_on_a_damaged_database_says_so_without_a_traceback(
    service: Any, issued: list[str], home: Any
) -> None:
    service.close()
    db_file = home / "wimse-issuer.db"
    db_file.write_bytes(b"not a database" * 100)
    out = home / "export.jsonl"
    for args in (
        ["audit", "verify"],
        ["audit", "export", "--output", str(out)],
        ["client", "list"],
    ):
        result = CliRunner().invoke(main, ["--home", str(home), *args])
        assert result.exit_code == 1, result.output
        assert "database unavailable or unreadable" in result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)
    # A failed export leaves no file, partial or empty.
    assert not out.exists()
    assert not [p for p in home.iterdir() if p.name.startswith(".export.jsonl.")]


@pytest.mark.usefixtures("small_pages")
def test_a_record_removed_between_pages_fails_the_read(
    service: Any, issued: list[str]
) -> None:
    from issuer.audit import TrailChanged

    exported = service.audit.export()
    next(exported)
    with service.db.engine.begin() as conn:  # as a prune would, mid-read
        conn.execute(text("DELETE FROM audit_records WHERE seq = 5"))
    with pytest.raises(TrailChanged, match="read 5 of the 6"):
        list(exported)


def test_a_trail_that_changed_during_a_command_is_one_line(
    service: Any, issued: list[str], home: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from issuer.audit import AuditLog, TrailChanged

    def changed(self: Any, keyring: Any = None) -> Any:
        raise TrailChanged("read 5 of the 6 audit records")

    monkeypatch.setattr(AuditLog, "verify", changed)
    result = CliRunner().invoke(main, ["--home", str(home), "audit", "verify"])
    assert result.exit_code == 1
    assert "read 5 of the 6 audit records" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_a_forged_checkpoint_of_an_emptied_chain_is_caught_after_a_race(
    service: Any, issued: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A prune that emptied a chain after verification read the checkpoints:
    the checkpoint it wrote is checked at the end all the same."""
    before = service.audit.checkpoints()
    with service.db.engine.begin() as conn:
        conn.execute(text("UPDATE audit_records SET time = 0"))
    _reseal(service)
    assert service.audit.prune(time.time() - 86400, service.keyring) == 6
    with service.db.engine.begin() as conn:
        conn.execute(text("UPDATE audit_checkpoints SET digest = 'sha-256:00'"))
    real = type(service.audit).checkpoints
    calls: list[int] = []

    def first_stale(self: Any) -> Any:
        calls.append(1)
        return before if len(calls) == 1 else real(self)

    monkeypatch.setattr(type(service.audit), "checkpoints", first_stale)
    count, problems = service.audit.verify(service.keyring)
    assert count == 0
    assert [p.problem for p in problems] == ["checkpoint signature"]


def test_export_writes_through_a_symlink(
    service: Any, issued: list[str], home: Any
) -> None:
    real = home / "real.jsonl"
    real.write_text("")
    link = home / "link.jsonl"
    link.symlink_to(real)
    result = CliRunner().invoke(
        main, ["--home", str(home), "audit", "export", "--output", str(link)]
    )
    assert result.exit_code == 0, result.output
    assert link.is_symlink()
    assert len(real.read_text().splitlines()) == 6


def test_commands_on_an_unusable_home_or_schema_are_one_line(
    service: Any, issued: list[str], home: Any, tmp_path_factory: Any
) -> None:
    afile = tmp_path_factory.mktemp("x") / "afile"
    afile.write_text("")
    result = CliRunner().invoke(main, ["--home", str(afile), "client", "list"])
    assert result.exit_code == 1
    assert "database unavailable or unreadable" in result.output
    assert "cannot create the folder" in result.output
    with service.db.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'zzzz'"))
    service.close()
    result = CliRunner().invoke(main, ["--home", str(home), "audit", "verify"])
    assert result.exit_code == 1
    assert "database unavailable or unreadable (schema:" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_an_export_stopped_by_sigterm_leaves_no_file(
    service: Any, issued: list[str], home: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    import signal

    from issuer.audit import AuditLog

    real = AuditLog.export

    def interrupted(self: Any) -> Any:
        records = real(self)
        yield next(records)
        os.kill(os.getpid(), signal.SIGTERM)
        yield from records

    monkeypatch.setattr(AuditLog, "export", interrupted)
    before = signal.getsignal(signal.SIGTERM)
    out = home / "stopped.jsonl"
    result = CliRunner().invoke(
        main, ["--home", str(home), "audit", "export", "--output", str(out)]
    )
    assert result.exit_code == 128 + signal.SIGTERM
    assert not out.exists()
    assert not [p for p in home.iterdir() if p.name.startswith(".stopped.jsonl.")]
    assert signal.getsignal(signal.SIGTERM) == before
