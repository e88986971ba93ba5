"""Entry point of ``wimse-issuer`` that explains a missing ``[issuer]`` extra.

The console script is installed with the distribution even when only the
verifier's dependencies are; importing the CLI then fails on click or Flask.
"""

from __future__ import annotations

import sys

__all__ = ["main"]


def main() -> None:
    """Run ``issuer.cli.main``, or say which extra to install."""
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
