"""Structured log lines for the service.

Call sites pass ``extra={"fields": {...}}``; the formatter appends the
fields as one JSON object. Fields identify tokens by ``jti`` and evidence by
digest: never put a token, secret, key or raw evidence in them.
"""

from __future__ import annotations

import atexit
import json
import logging
import logging.handlers
import queue
import sys

__all__ = ["FieldsFormatter", "configure_logging"]


class FieldsFormatter(logging.Formatter):
    """``time level logger message {fields}``."""

    def format(self, record: logging.LogRecord) -> str:
        base = " ".join(
            (
                self.formatTime(record),
                record.levelname,
                record.name,
                record.getMessage(),
            )
        )
        fields = getattr(record, "fields", None)
        if fields:
            base += " " + json.dumps(fields, sort_keys=True, default=str)
        return base


def configure_logging(level: str = "INFO") -> None:
    """Send the ``issuer`` loggers to standard error with structured fields.

    Request threads only put records on a queue; one listener thread formats
    and writes them, so a slow or contended stream never delays a token.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(FieldsFormatter())
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    listener = logging.handlers.QueueListener(records, handler)
    listener.start()
    atexit.register(listener.stop)
    root = logging.getLogger("issuer")
    root.handlers[:] = [logging.handlers.QueueHandler(records)]
    root.setLevel(level)
    root.propagate = False
