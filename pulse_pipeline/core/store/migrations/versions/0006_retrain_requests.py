"""Retrain requests: external events (the capture service's POST /v1/events) and people
(`pulse request-retrain`) asking for a family's retrain, with who asked and why; the family's
`retrain_requests_<family>` sensor reads them in `seq` order.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

Seq = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
UtcTime = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "retrain_requests",
        sa.Column("seq", Seq, primary_key=True, autoincrement=True),
        sa.Column("family", sa.String(64), nullable=False),
        sa.Column("reason", sa.Text, nullable=False, comment="Why, as the requester wrote it."),
        sa.Column(
            "requested_by",
            sa.String(256),
            nullable=False,
            comment="cli:<login>, or capture:<token name> (an event).",
        ),
        sa.Column("requested_at", UtcTime, nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_retrain_requests"),
    )
    op.create_index("ix_retrain_requests_family_seq", "retrain_requests", ["family", "seq"])


def downgrade() -> None:
    op.drop_index("ix_retrain_requests_family_seq", table_name="retrain_requests")
    op.drop_table("retrain_requests")
