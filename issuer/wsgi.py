"""WSGI entry point: ``issuer.wsgi:app``, configured from the environment.

``wimse-issuer serve`` sets the ``WIMSE_ISSUER_*`` variables and points the
server here; any WSGI server can do the same.
"""

from __future__ import annotations

import multiprocessing.util

from .config import load_settings
from .logs import configure_logging
from .service import IssuerService
from .web import create_app

configure_logging()
service = IssuerService(load_settings())
# A worker that stops cleanly closes its connections, so the last SQLite
# connection folds the WAL into the database file and removes it.
# multiprocessing's exit finalizers run both in granian's workers (its
# children, which skip atexit hooks) and, through atexit, in any other
# process that exits normally. Registered first thing, so a worker stopped
# while still loading closes its connections too.
multiprocessing.util.Finalize(None, service.close, exitpriority=10)
# Serving: SQLite's WAL is checkpointed beside the commits, not inside them.
service.db.start_checkpoints()
app = create_app(service)
