"""audit_assessments: each assessment's JSON stored once, by digest

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_assessments",
        sa.Column("digest", sa.String(80), primary_key=True),
        sa.Column("body", sa.Text(), nullable=False),
    )


def downgrade() -> None:
    # Records written since hold only the digest of their assessment, and
    # the chain covers that digest: dropping the table would lose the
    # assessments and inlining them would break the chain. Refuse instead.
    referenced = op.get_bind().execute(
        sa.text("SELECT 1 FROM audit_records WHERE ratings LIKE 'sha-256:%' LIMIT 1")
    )
    if referenced.first() is not None:
        raise RuntimeError(
            "audit records reference stored assessments: export them "
            "(wimse-issuer audit export) and prune them before downgrading"
        )
    op.drop_table("audit_assessments")
