"""``python -m issuer`` runs the ``wimse-issuer`` command."""

from .launcher import main

main()
