"""Registry and locks: adapter version records, the deployments audit trail, training locks.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

Seq = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Payload = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
OptionalPayload = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")
UtcTime = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "adapter_versions",
        sa.Column("family", sa.String(64), nullable=False),
        sa.Column("version", sa.String(128), nullable=False),
        sa.Column(
            "base_model",
            sa.Text,
            nullable=False,
            comment="The base model id or path the adapter was trained on.",
        ),
        sa.Column("dataset_version", sa.String(64), nullable=False),
        sa.Column("training_config", Payload, nullable=False, comment="The resolved training config."),
        sa.Column("metrics", OptionalPayload, nullable=True, comment="Eval metrics per evaluation set."),
        sa.Column(
            "decision", sa.String(8), nullable=True, comment="The promotion gate: DEPLOY, REVIEW or FAIL."
        ),
        sa.Column(
            "status",
            sa.String(16),
            nullable=False,
            comment="candidate, deployed, archived, failed or rolled_back.",
        ),
        sa.Column("created_at", UtcTime, nullable=False),
        sa.Column(
            "created_by",
            sa.String(256),
            nullable=False,
            comment="A user, sensor:<name>, schedule:<name>, cli or run:<id>.",
        ),
        sa.Column(
            "traffic_share", sa.Float, nullable=False, comment="Share of traffic served; 0 when not served."
        ),
        sa.Column(
            "semantic_version",
            sa.String(32),
            nullable=False,
            comment="e.g. 1.2.0 (major: new base model).",
        ),
        sa.Column("removed_at", UtcTime, nullable=True, comment="When cleanup deleted the version's files."),
        sa.PrimaryKeyConstraint("family", "version", name="pk_adapter_versions"),
    )
    op.create_table(
        "deployments",
        sa.Column("id", Seq, primary_key=True, autoincrement=True),
        sa.Column("family", sa.String(64), nullable=False),
        sa.Column("at", UtcTime, nullable=False),
        sa.Column(
            "by",
            sa.String(256),
            nullable=False,
            comment="Who: a user, sensor:<name>, schedule:<name>, cli, run:<id>.",
        ),
        sa.Column(
            "action",
            sa.String(16),
            nullable=False,
            comment="promote, canary, rollback, cleanup or force_promote.",
        ),
        sa.Column("from_version", sa.String(128), nullable=True),
        sa.Column("to_version", sa.String(128), nullable=True),
        sa.Column(
            "traffic_share",
            sa.Float,
            nullable=True,
            comment="The new version's share, for promote and canary.",
        ),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("forced", sa.Boolean, nullable=False, comment="A gate FAIL was overridden."),
        sa.Column(
            "serving",
            sa.String(32),
            nullable=True,
            comment="updated, not configured, or not updated: <why> (cut to fit).",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_deployments"),
    )
    op.create_index("ix_deployments_family_at", "deployments", ["family", "at"])
    op.create_table(
        "training_locks",
        sa.Column("family", sa.String(64), nullable=False),
        sa.Column(
            "holder", sa.String(256), nullable=False, comment="e.g. cli pid 1234 on host x, or run:<id>."
        ),
        sa.Column("acquired_at", UtcTime, nullable=False),
        sa.Column(
            "heartbeat_at",
            UtcTime,
            nullable=False,
            comment="Refreshed while training; stale after a timeout.",
        ),
        sa.PrimaryKeyConstraint("family", name="pk_training_locks"),
    )


def downgrade() -> None:
    op.drop_table("training_locks")
    op.drop_index("ix_deployments_family_at", table_name="deployments")
    op.drop_table("deployments")
    op.drop_table("adapter_versions")
