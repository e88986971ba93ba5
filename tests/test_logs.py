"""The structured log line: time, level, logger, message and JSON fields."""

from __future__ import annotations

import io
import json
import logging
import re
import sys
import threading
import time

from issuer.logs import BatchingStreamHandler, FieldsFormatter, configure_logging


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
        # Written by the flusher thread within its interval.
        deadline = time.monotonic() + 5
        err = ""
        while "hello" not in err and time.monotonic() < deadline:
            time.sleep(0.05)
            err += capsys.readouterr().err  # type: ignore[attr-defined]
        assert err.endswith('INFO issuer.test hello {"a":1}\n')
        assert "hidden" not in err
        # Records no longer collect what the line does not print.
        assert logging._srcfile is None and not logging.logThreads
    finally:
        for handler in logger.handlers:
            handler.close()
        logger.handlers[:] = saved[0]
        logger.setLevel(saved[1])
        logger.propagate = saved[2]
        for name, value in saved_switches.items():
            setattr(logging, name, value)


def _handler(**kwargs: float) -> tuple[BatchingStreamHandler, io.StringIO]:
    stream = io.StringIO()
    handler = BatchingStreamHandler(stream, **kwargs)  # type: ignore[arg-type]
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    return handler, stream


def _log(handler: logging.Handler, level: int, message: str) -> None:
    handler.handle(
        logging.LogRecord("issuer.t", level, __file__, 1, message, None, None)
    )


def test_batched_lines_wait_for_the_interval_warnings_do_not() -> None:
    handler, stream = _handler(interval=3600)
    try:
        _log(handler, logging.INFO, "one")
        _log(handler, logging.INFO, "two")
        assert stream.getvalue() == ""
        _log(handler, logging.WARNING, "three")
        assert stream.getvalue() == "INFO one\nINFO two\nWARNING three\n"
    finally:
        handler.close()


def test_the_flusher_writes_within_its_interval_and_close_writes_the_rest() -> None:
    handler, stream = _handler(interval=0.05)
    _log(handler, logging.INFO, "soon")
    deadline = time.monotonic() + 5
    while not stream.getvalue() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert stream.getvalue() == "INFO soon\n"
    slow, slow_stream = _handler(interval=3600)
    _log(slow, logging.INFO, "at close")
    slow.close()
    assert slow_stream.getvalue() == "INFO at close\n"
    handler.close()


def test_a_full_buffer_is_written_by_the_logging_thread() -> None:
    handler, stream = _handler(interval=3600, max_lines=3)
    try:
        for n in range(3):
            _log(handler, logging.INFO, str(n))
        assert stream.getvalue() == "INFO 0\nINFO 1\nINFO 2\n"
    finally:
        handler.close()


def test_concurrent_writers_keep_every_line_whole_and_in_per_thread_order() -> None:
    handler, stream = _handler(interval=0.001)

    def burst(name: str) -> None:
        for n in range(200):
            _log(handler, logging.INFO, f"{name}-{n}")

    threads = [threading.Thread(target=burst, args=(f"t{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    handler.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 800
    for i in range(4):
        mine = [line for line in lines if line.startswith(f"INFO t{i}-")]
        assert mine == [f"INFO t{i}-{n}" for n in range(200)]
