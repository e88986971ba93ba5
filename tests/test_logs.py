"""The structured log line: time, level, logger, message and JSON fields."""

from __future__ import annotations

import json
import logging
import re
import sys

from issuer.logs import FieldsFormatter, configure_logging


def _record(fields: object = None, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            exc_info = sys.exc_info()
    record = logging.LogRecord(
        "issuer.service", logging.INFO, __file__, 1, "token %s", ("issued",), exc_info
    )
    record.created = 1796400000.25
    record.msecs = 250.0
    if fields is not None:
        record.fields = fields
    return record


def test_line_has_utc_time_level_logger_message_and_sorted_fields() -> None:
    line = FieldsFormatter().format(_record({"mial": 2, "client_id": "c", "jti": "j"}))
    head, _, fields = line.partition(" {")
    assert head == "2026-12-04T16:00:00.250Z INFO issuer.service token issued"
    assert "{" + fields == '{"client_id":"c","jti":"j","mial":2}'


def test_values_json_cannot_encode_become_strings() -> None:
    line = FieldsFormatter().format(_record({"error": ValueError("x"), 3: {1, 2}}))
    fields = json.loads(line[line.index("{") :])
    assert fields == {"3": str({1, 2}), "error": "x"}


def test_no_fields_no_json_and_exceptions_follow_the_line() -> None:
    plain = FieldsFormatter().format(_record())
    assert plain.endswith("token issued")
    with_exc = FieldsFormatter().format(_record(exc=True))
    assert with_exc.splitlines()[0].endswith("token issued")
    assert "ValueError: boom" in with_exc


def test_the_timestamp_follows_the_clock_across_seconds() -> None:
    fmt = FieldsFormatter()
    first = _record()
    second = _record()
    second.created += 61
    stamps = [fmt.format(r).split(" ")[0] for r in (first, second, first)]
    assert stamps == [
        "2026-12-04T16:00:00.250Z",
        "2026-12-04T16:01:01.250Z",
        "2026-12-04T16:00:00.250Z",
    ]
    assert all(
        re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", s) for s in stamps
    )


def test_configure_logging_writes_to_stderr_synchronously(capsys: object) -> None:
    logger = logging.getLogger("issuer")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    switches = ("_srcfile", "logThreads", "logProcesses", "logMultiprocessing")
    saved_switches = {name: getattr(logging, name) for name in switches}
    try:
        configure_logging("INFO")
        logging.getLogger("issuer.test").info("hello", extra={"fields": {"a": 1}})
        logging.getLogger("issuer.test").debug("hidden")
        err = capsys.readouterr().err  # type: ignore[attr-defined]
        assert err.endswith('INFO issuer.test hello {"a":1}\n')
        assert "hidden" not in err
        # Records no longer collect what the line does not print.
        assert logging._srcfile is None and not logging.logThreads
    finally:
        logger.handlers[:] = saved[0]
        logger.setLevel(saved[1])
        logger.propagate = saved[2]
        for name, value in saved_switches.items():
            setattr(logging, name, value)
