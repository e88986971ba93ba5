"""Alembic migrations of the issuer's schema (``wimse-issuer db upgrade``)."""
