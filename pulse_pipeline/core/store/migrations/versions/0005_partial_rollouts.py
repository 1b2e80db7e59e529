"""Partial rollouts: the deployments audit trail also records `partial`, a promotion or rollback
that a vLLM replica refused, so nothing moved (core/registry/rollout.py). Only the column's
comment changes; the column holds any short string.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

ACTION = "promote, canary, rollback, cleanup, force_promote, reconcile or partial (nothing moved)."
OLD_ACTION = "promote, canary, rollback, cleanup, force_promote or reconcile."


def _comment(comment: str, previous: str) -> None:
    with op.batch_alter_table("deployments") as batch:
        batch.alter_column(
            "action", existing_type=sa.String(16), existing_nullable=False, comment=comment,
            existing_comment=previous,
        )  # fmt: skip


def upgrade() -> None:
    _comment(ACTION, OLD_ACTION)


def downgrade() -> None:
    _comment(OLD_ACTION, ACTION)
