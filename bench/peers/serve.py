"""Serve a peer WSGI app with granian, tuned as ``wimse-issuer serve`` is.

Usage: ``python bench/peers/serve.py MODULE:APP PORT [WORKERS [THREADS]]``.
Binds to 127.0.0.1 only. The server options mirror ``issuer/cli.py``'s
``serve`` (4 blocking threads, backpressure 64) so that every Python target
differs only in its application code.
"""

from __future__ import annotations

import sys
from pathlib import Path

from granian import Granian
from granian.constants import Interfaces


def main() -> None:
    target, port = sys.argv[1], int(sys.argv[2])
    workers = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    threads = int(sys.argv[4]) if len(sys.argv) > 4 else 4
    Granian(
        target,
        address="127.0.0.1",
        port=port,
        interface=Interfaces.WSGI,
        workers=workers,
        blocking_threads=threads,
        backpressure=64,
        log_access=False,
        working_dir=Path(__file__).resolve().parent,
    ).serve()


if __name__ == "__main__":
    main()
