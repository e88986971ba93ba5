"""WSGI entry point: ``issuer.wsgi:app``, configured from the environment.

``wimse-issuer serve`` sets the ``WIMSE_ISSUER_*`` variables and points the
server here; any WSGI server can do the same.
"""

from __future__ import annotations

from .config import load_settings
from .logs import configure_logging
from .service import IssuerService
from .web import create_app

configure_logging()
app = create_app(IssuerService(load_settings()))
