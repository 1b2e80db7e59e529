"""Data fixes and review sessions: invalidated annotations, the invalidations log, restored
line counts in the ingestion tallies, closed review sessions.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

Seq = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
UtcTime = sa.DateTime(timezone=True)
RESTORED = "Lines of a --replace-day file that made an invalidated record of that day valid again."


def upgrade() -> None:
    # Plain ADD COLUMNs (nullable, or with a server default): no table rewrite on either backend.
    op.add_column(
        "annotations",
        sa.Column("invalidated_at", UtcTime, nullable=True, comment="NULL while the record is valid."),
    )
    op.add_column(
        "annotations",
        sa.Column(
            "invalidation_id",
            Seq,
            nullable=True,
            comment="The invalidations row (who, when, why) that excluded the record.",
        ),
    )
    op.add_column(
        "ingestions",
        sa.Column("restored", sa.Integer, nullable=False, server_default="0", comment=RESTORED),
    )
    op.add_column("ingestion_tallies", sa.Column("restored", sa.Integer, nullable=False, server_default="0"))
    op.create_table(
        "invalidations",
        sa.Column("id", Seq, primary_key=True, autoincrement=True),
        sa.Column("family", sa.String(64), nullable=False),
        sa.Column("day", sa.Date, nullable=True, comment="The UTC day fixed, when the action covered a day."),
        sa.Column("action", sa.String(16), nullable=False, comment="invalidate or restore."),
        sa.Column("at", UtcTime, nullable=False),
        sa.Column("by", sa.String(256), nullable=False, comment="Who: a user (cli:<login>) or run:<id>."),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column(
            "annotations", sa.Integer, nullable=False, comment="Records whose state this action changed."
        ),
        sa.PrimaryKeyConstraint("id", name="pk_invalidations"),
    )
    op.create_index("ix_invalidations_family_id", "invalidations", ["family", "id"])
    op.create_table(
        "review_sessions",
        sa.Column("seq", Seq, primary_key=True, autoincrement=True),
        sa.Column("session_id", sa.String(256), nullable=False),
        sa.Column(
            "family",
            sa.String(64),
            nullable=False,
            comment="The family whose segment reviews carry the id.",
        ),
        sa.Column("closed_at", UtcTime, nullable=False),
        sa.Column("closed_by", sa.String(256), nullable=False),
        sa.Column("segment_reviews", sa.Integer, nullable=False, comment="Valid segment reviews at closing."),
        sa.PrimaryKeyConstraint("seq", name="pk_review_sessions"),
        sa.UniqueConstraint("session_id", name="uq_review_sessions_session_id"),
    )


def downgrade() -> None:
    op.drop_table("review_sessions")
    op.drop_index("ix_invalidations_family_id", table_name="invalidations")
    op.drop_table("invalidations")
    with op.batch_alter_table("ingestion_tallies") as batch:
        batch.drop_column("restored")
    with op.batch_alter_table("ingestions") as batch:
        batch.drop_column("restored")
    with op.batch_alter_table("annotations") as batch:
        batch.drop_column("invalidation_id")
        batch.drop_column("invalidated_at")
