"""The oracle's labelling journal: one row per corpus item an oracle answered for a prompt
version (`pulse label`), so an interrupted labelling resumes without paying twice.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

UtcTime = sa.DateTime(timezone=True)
OptionalPayload = sa.JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


def upgrade() -> None:
    op.create_table(
        "oracle_labels",
        sa.Column("family", sa.String(64), nullable=False),
        sa.Column("prompt_version", sa.String(32), nullable=False),
        sa.Column("item_id", sa.String(256), nullable=False),
        sa.Column(
            "status", sa.String(16), nullable=False, comment="labelled, generated (QA pairs), or quarantined (no parseable answer)."
        ),
        sa.Column("record", OptionalPayload, nullable=True, comment="The annotation record (labelled); a passage's QA records and rejected pairs (generated)."),
        sa.Column(
            "reply", sa.Text, nullable=False, comment="The oracle's last reply, cut to 500 characters."
        ),
        sa.Column(
            "error", sa.Text, nullable=True, comment="Why the answer could not be parsed (quarantined)."
        ),
        sa.Column("oracle", sa.String(256), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("prompt_tokens", sa.Integer, nullable=False),
        sa.Column("completion_tokens", sa.Integer, nullable=False),
        sa.Column("cost", sa.Float, nullable=False),
        sa.Column(
            "labelled_by",
            sa.String(256),
            nullable=False,
            comment="Who ran the labelling: cli:<login>, run:<id>.",
        ),
        sa.Column("labelled_at", UtcTime, nullable=False),
        sa.PrimaryKeyConstraint("family", "prompt_version", "item_id", name="pk_oracle_labels"),
    )


def downgrade() -> None:
    op.drop_table("oracle_labels")
