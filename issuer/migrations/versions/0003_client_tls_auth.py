"""client tls_client_auth subject parameters (RFC 8705 section 2.1.2)

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

COLUMNS = (
    ("tls_client_auth_subject_dn", 500),
    ("tls_client_auth_san_dns", 500),
    ("tls_client_auth_san_uri", 500),
    ("tls_client_auth_san_ip", 64),
    ("tls_client_auth_san_email", 500),
)


def upgrade() -> None:
    with op.batch_alter_table("clients", schema=None) as batch_op:
        for name, length in COLUMNS:
            batch_op.add_column(sa.Column(name, sa.String(length), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("clients", schema=None) as batch_op:
        for name, _ in reversed(COLUMNS):
            batch_op.drop_column(name)
