"""Serve ``issuer.wsgi:app`` on cheroot over plain HTTP, as issuer/tlsserve.py
would with TLS: the bench's "cheroot plain HTTP" row.

Usage: ``python bench/peers/cheroot_plain.py HOME PORT``. Binds to
127.0.0.1 only; stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main() -> None:
    home, port = sys.argv[1], sys.argv[2]
    os.environ.update(
        {
            "WIMSE_ISSUER_HOME": home,
            "WIMSE_ISSUER_HOST": "127.0.0.1",
            "WIMSE_ISSUER_PORT": port,
            "WIMSE_ISSUER_ISSUER_URL": f"http://127.0.0.1:{port}",
        }
    )
    from issuer.config import load_settings
    from issuer.tlsserve import make_server, run
    from issuer.wsgi import app

    run(make_server(app, load_settings(), None))


if __name__ == "__main__":
    main()
