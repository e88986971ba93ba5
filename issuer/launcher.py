"""Entry point of ``wimse-issuer`` that explains a missing ``[issuer]`` extra.

The console script is installed with the distribution even when only the
verifier's dependencies are; importing the CLI then fails on click or Flask.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile

__all__ = ["main"]


def main() -> None:
    """Run ``issuer.cli.main``, or say which extra to install."""
    if "serve" in sys.argv[1:] and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        # prometheus_client picks its storage when first imported, so the
        # folder every worker writes its samples to must be set before that.
        folder = tempfile.mkdtemp(prefix="wimse-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
        atexit.register(shutil.rmtree, folder, True)
    try:
        from .cli import main as cli_main
    except ModuleNotFoundError as exc:
        sys.stderr.write(
            f"wimse-issuer: missing dependency {exc.name!r}; install the issuer "
            "with: pip install 'wimse-assurance[issuer]' (from a checkout: "
            "pip install -e '.[issuer]')\n"
        )
        raise SystemExit(2) from None
    cli_main()
