"""``python -m issuer`` runs the ``wimse-issuer`` command."""

from .cli import main

main()
