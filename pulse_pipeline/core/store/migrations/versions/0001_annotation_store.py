"""Annotation store: ingestions, annotations, quarantine, ingestion tallies.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

Seq = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Payload = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
UtcTime = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "ingestions",
        sa.Column("id", Seq, primary_key=True, autoincrement=True),
        sa.Column("source", sa.Text, nullable=False, comment="Path of the file that was read."),
        sa.Column("started_at", UtcTime, nullable=False),
        sa.Column("finished_at", UtcTime, nullable=True, comment="NULL while running or after a crash."),
        sa.Column("lines", sa.Integer, nullable=False, comment="Non-empty lines read."),
        sa.Column("blank_lines", sa.Integer, nullable=False),
        sa.Column("accepted", sa.Integer, nullable=False),
        sa.Column("duplicates", sa.Integer, nullable=False),
        sa.Column("quarantined", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_ingestions"),
    )
    op.create_table(
        "annotations",
        sa.Column("seq", Seq, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(128), nullable=False, comment="Given, or derived from the content."),
        sa.Column("family", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("payload", Payload, nullable=False, comment="The record as received, every field."),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("created_at", UtcTime, nullable=False, comment="When the judgment was made (UTC)."),
        sa.Column("ingested_at", UtcTime, nullable=False),
        sa.Column("annotator", sa.String(256), nullable=True),
        sa.Column("model_version", sa.String(128), nullable=True),
        sa.Column("source_file", sa.Text, nullable=True),
        sa.Column("source_line", sa.Integer, nullable=True),
        sa.Column("ingestion_id", Seq, nullable=True),
        sa.PrimaryKeyConstraint("seq", name="pk_annotations"),
        sa.UniqueConstraint("id", name="uq_annotations_id"),
        sa.UniqueConstraint("family", "content_hash", name="uq_annotations_family_content_hash"),
        sa.ForeignKeyConstraint(
            ["ingestion_id"], ["ingestions.id"], name="fk_annotations_ingestion_id_ingestions"
        ),
    )
    op.create_index("ix_annotations_family_seq", "annotations", ["family", "seq"])
    op.create_index("ix_annotations_family_ingested_at", "annotations", ["family", "ingested_at"])
    op.create_index("ix_annotations_family_created_at", "annotations", ["family", "created_at"])
    op.create_table(
        "quarantine",
        sa.Column("id", Seq, primary_key=True, autoincrement=True),
        sa.Column("ingestion_id", Seq, nullable=True),
        sa.Column("source_file", sa.Text, nullable=True),
        sa.Column("line_number", sa.Integer, nullable=True),
        sa.Column(
            "raw",
            sa.LargeBinary,
            nullable=False,
            comment="The line's bytes exactly as read (maybe not UTF-8).",
        ),
        sa.Column(
            "raw_size", sa.Integer, nullable=False, comment="Bytes in the line; `raw` is cut for huge lines."
        ),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("family", sa.String(64), nullable=True, comment="When the line named a known family."),
        sa.Column(
            "day", sa.Date, nullable=True, comment="The partition day the line would have belonged to."
        ),
        sa.Column("quarantined_at", UtcTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_quarantine"),
        sa.ForeignKeyConstraint(
            ["ingestion_id"], ["ingestions.id"], name="fk_quarantine_ingestion_id_ingestions"
        ),
    )
    op.create_index("ix_quarantine_family_day", "quarantine", ["family", "day"])
    op.create_table(
        "ingestion_tallies",
        sa.Column("ingestion_id", Seq, nullable=False),
        sa.Column("batch", sa.Integer, nullable=False),
        sa.Column("family", sa.String(64), nullable=False, comment="'' when the line named no known family."),
        sa.Column("day", sa.Date, nullable=False),
        sa.Column("lines", sa.Integer, nullable=False),
        sa.Column("accepted", sa.Integer, nullable=False),
        sa.Column("duplicates", sa.Integer, nullable=False),
        sa.Column("quarantined", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("ingestion_id", "batch", "family", "day", name="pk_ingestion_tallies"),
        sa.ForeignKeyConstraint(
            ["ingestion_id"], ["ingestions.id"], name="fk_ingestion_tallies_ingestion_id_ingestions"
        ),
    )
    op.create_index("ix_ingestion_tallies_family_day", "ingestion_tallies", ["family", "day"])


def downgrade() -> None:
    op.drop_table("ingestion_tallies")
    op.drop_table("quarantine")
    op.drop_table("annotations")
    op.drop_table("ingestions")
