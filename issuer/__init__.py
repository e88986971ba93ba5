"""The wimse-assurance token issuer (install with the ``[issuer]`` extra)."""

__version__ = "0.1.0"
