"""Version lifecycle and lock holders: a version's `state` (training -> published -> evaluated ->
canary -> production -> retired; failed; removed) replaces its `status`, with the run that
trained it, its evaluation's baseline and time, and its snapshot's watermark; the deployments
audit trail records the gate decision; a training lock records its run, host and process.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

UtcTime = sa.DateTime(timezone=True)

# Column comments, as schema.py has them.
STATE = (
    "training, published, evaluated, canary, production, retired, failed or removed "
    "(core/registry/lifecycle.py)."
)
VERSION_RUN = "The Dagster run that trained it (NULL outside Dagster)."
BASELINE = "The production version its latest evaluation compared it with (NULL: the base model)."
EVALUATED_AT = "When the latest evaluation decided."
WATERMARK = "The store seq its snapshot was built up to: what counts as new annotations after it."
DECISION = "The version's gate decision at the time (0004)."
LOCK_RUN = "The Dagster run that trains (NULL outside Dagster)."
HOST = "The holder process's host."
PID = "The holder process's id."
ACTION = "promote, canary, rollback, cleanup, force_promote or reconcile."
FORCED = "Promoted without a DEPLOY decision (--force, with the reason in `reason`)."
HOLDER = "Who asked: cli:<login>, sensor:<name>, run:<id>."

# The old statuses, as states (removed_at wins: the files are gone).
STATE_OF_STATUS = """
CASE
  WHEN removed_at IS NOT NULL THEN 'removed'
  WHEN status = 'deployed' AND traffic_share < 1.0 THEN 'canary'
  WHEN status = 'deployed' THEN 'production'
  WHEN status IN ('archived', 'rolled_back') THEN 'retired'
  WHEN decision IS NOT NULL THEN 'evaluated'
  ELSE 'published'
END
"""


def upgrade() -> None:
    op.add_column(
        "adapter_versions", sa.Column("state", sa.String(16), nullable=False, server_default="published")
    )
    op.execute(f"UPDATE adapter_versions SET state = {STATE_OF_STATUS}")
    with op.batch_alter_table("adapter_versions") as batch:
        batch.drop_column("status")
        batch.alter_column("state", server_default=None, comment=STATE)
        batch.add_column(sa.Column("run_id", sa.String(64), nullable=True, comment=VERSION_RUN))
        batch.add_column(sa.Column("baseline_version", sa.String(128), nullable=True, comment=BASELINE))
        batch.add_column(sa.Column("evaluated_at", UtcTime, nullable=True, comment=EVALUATED_AT))
        batch.add_column(sa.Column("watermark", sa.BigInteger, nullable=True, comment=WATERMARK))
    op.add_column("deployments", sa.Column("decision", sa.String(8), nullable=True, comment=DECISION))
    op.add_column("training_locks", sa.Column("run_id", sa.String(64), nullable=True, comment=LOCK_RUN))
    op.add_column(
        "training_locks", sa.Column("host", sa.String(255), nullable=False, server_default="", comment=HOST)
    )
    op.add_column(
        "training_locks", sa.Column("pid", sa.Integer, nullable=False, server_default="0", comment=PID)
    )
    if op.get_bind().dialect.name == "postgresql":  # SQLite keeps no comments
        for table, column, comment, kind in (
            ("deployments", "action", ACTION, sa.String(16)),
            ("deployments", "forced", FORCED, sa.Boolean()),
            ("training_locks", "holder", HOLDER, sa.String(256)),
        ):
            op.alter_column(table, column, comment=comment, existing_type=kind, existing_nullable=False)


def downgrade() -> None:
    for column in ("pid", "host", "run_id"):
        op.drop_column("training_locks", column)
    op.drop_column("deployments", "decision")
    with op.batch_alter_table("adapter_versions") as batch:
        for column in ("watermark", "evaluated_at", "baseline_version", "run_id"):
            batch.drop_column(column)
        batch.add_column(sa.Column("status", sa.String(16), nullable=False, server_default="candidate"))
    op.execute(
        "UPDATE adapter_versions SET status = CASE state WHEN 'production' THEN 'deployed' "
        "WHEN 'canary' THEN 'deployed' WHEN 'retired' THEN 'archived' ELSE 'candidate' END"
    )
    with op.batch_alter_table("adapter_versions") as batch:
        batch.drop_column("state")
