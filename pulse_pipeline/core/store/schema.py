"""Tables of the annotation store (SQLAlchemy Core). Alembic migrations in `migrations/` create them."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a BIGINT identity.
Seq = BigInteger().with_variant(Integer(), "sqlite")
Payload = JSON().with_variant(JSONB(), "postgresql")
# The same, but Python None is SQL NULL rather than the JSON literal `null` (for optional payloads).
OptionalPayload = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")
UtcTime = DateTime(timezone=True)

ingestions = Table(
    "ingestions",
    metadata,
    Column("id", Seq, primary_key=True, autoincrement=True),
    Column("source", Text, nullable=False, comment="Path of the file that was read."),
    Column("started_at", UtcTime, nullable=False),
    Column("finished_at", UtcTime, nullable=True, comment="NULL while running or after a crash."),
    Column("lines", Integer, nullable=False, default=0, comment="Non-empty lines read."),
    Column("blank_lines", Integer, nullable=False, default=0),
    Column("accepted", Integer, nullable=False, default=0),
    Column("duplicates", Integer, nullable=False, default=0),
    Column("quarantined", Integer, nullable=False, default=0),
    Column(
        "restored",
        Integer,
        nullable=False,
        default=0,
        server_default="0",
        comment="Lines of a --replace-day file that made an invalidated record of that day valid again.",
    ),
)

annotations = Table(
    "annotations",
    metadata,
    # `seq` is the store's arrival order: the watermark that sensors compare against.
    Column("seq", Seq, primary_key=True, autoincrement=True),
    Column("id", String(128), nullable=False, unique=True, comment="Given, or derived from the content."),
    Column("family", String(64), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("payload", Payload, nullable=False, comment="The record as received, every field."),
    Column("content_hash", String(64), nullable=False),
    Column("created_at", UtcTime, nullable=False, comment="When the judgment was made (UTC)."),
    Column("ingested_at", UtcTime, nullable=False),
    Column("annotator", String(256), nullable=True),
    Column("model_version", String(128), nullable=True),
    Column("source_file", Text, nullable=True),
    Column("source_line", Integer, nullable=True),
    Column("ingestion_id", Seq, ForeignKey("ingestions.id"), nullable=True),
    # Invalidated records stay (audit, old snapshots) but nothing trains on or counts them (0003).
    Column("invalidated_at", UtcTime, nullable=True, comment="NULL while the record is valid."),
    Column(
        "invalidation_id",
        Seq,
        nullable=True,
        comment="The invalidations row (who, when, why) that excluded the record.",
    ),
    UniqueConstraint("family", "content_hash"),
    # "How many new annotations for family F since watermark W": a range scan on either index.
    Index(None, "family", "seq"),
    Index(None, "family", "ingested_at"),
    # A day partition of one family.
    Index(None, "family", "created_at"),
)

quarantine = Table(
    "quarantine",
    metadata,
    Column("id", Seq, primary_key=True, autoincrement=True),
    Column("ingestion_id", Seq, ForeignKey("ingestions.id"), nullable=True),
    Column("source_file", Text, nullable=True),
    Column("line_number", Integer, nullable=True),
    Column("raw", LargeBinary, nullable=False, comment="The line's bytes exactly as read (maybe not UTF-8)."),
    Column("raw_size", Integer, nullable=False, comment="Bytes in the line; `raw` is cut for huge lines."),
    Column("reason", Text, nullable=False),
    Column("family", String(64), nullable=True, comment="When the line named a known family."),
    Column("day", Date, nullable=True, comment="The partition day the line would have belonged to."),
    Column("quarantined_at", UtcTime, nullable=False),
    Index(None, "family", "day"),
)

# Per ingestion batch, what happened to the lines of each (family, day): what the partition check
# audits. One row per batch (never updated), so concurrent batch writers never contend.
ingestion_tallies = Table(
    "ingestion_tallies",
    metadata,
    Column("ingestion_id", Seq, ForeignKey("ingestions.id"), primary_key=True),
    Column("batch", Integer, primary_key=True),
    Column("family", String(64), primary_key=True, comment="'' when the line named no known family."),
    Column("day", Date, primary_key=True),
    Column("lines", Integer, nullable=False, default=0),
    Column("accepted", Integer, nullable=False, default=0),
    Column("duplicates", Integer, nullable=False, default=0),
    Column("quarantined", Integer, nullable=False, default=0),
    Column("restored", Integer, nullable=False, default=0, server_default="0"),
    Index(None, "family", "day"),
)

# -- data fixes and review sessions (migration 0003) -----------------------------------------------

# One row per invalidation or restoration of annotations; rows are never updated. `id` also
# orders these events, so a build can tell that a family's valid set changed without new rows.
invalidations = Table(
    "invalidations",
    metadata,
    Column("id", Seq, primary_key=True, autoincrement=True),
    Column("family", String(64), nullable=False),
    Column("day", Date, nullable=True, comment="The UTC day fixed, when the action covered a day."),
    Column("action", String(16), nullable=False, comment="invalidate or restore."),
    Column("at", UtcTime, nullable=False),
    Column("by", String(256), nullable=False, comment="Who: a user (cli:<login>) or run:<id>."),
    Column("reason", Text, nullable=False),
    Column("annotations", Integer, nullable=False, comment="Records whose state this action changed."),
    Index(None, "family", "id"),
)

# One row per closed review (dojo) session; `seq` orders closures for the sensor's cursor.
review_sessions = Table(
    "review_sessions",
    metadata,
    Column("seq", Seq, primary_key=True, autoincrement=True),
    Column("session_id", String(256), nullable=False, unique=True),
    Column("family", String(64), nullable=False, comment="The family whose segment reviews carry the id."),
    Column("closed_at", UtcTime, nullable=False),
    Column("closed_by", String(256), nullable=False),
    Column("segment_reviews", Integer, nullable=False, comment="Valid segment reviews at closing."),
)

# -- registry: adapter versions, the deployment audit trail, the training lock (migration 0002) ------

# One row per adapter version: what it was trained from and on, how it scored, where it stands.
adapter_versions = Table(
    "adapter_versions",
    metadata,
    Column("family", String(64), primary_key=True),
    Column("version", String(128), primary_key=True),
    Column(
        "base_model", Text, nullable=False, comment="The base model id or path the adapter was trained on."
    ),
    Column("dataset_version", String(64), nullable=False),
    Column("training_config", Payload, nullable=False, comment="The resolved training config."),
    Column("metrics", OptionalPayload, nullable=True, comment="Eval metrics per evaluation set."),
    Column("decision", String(8), nullable=True, comment="The promotion gate: DEPLOY, REVIEW or FAIL."),
    Column(
        "state",
        String(16),
        nullable=False,
        comment="training, published, evaluated, canary, production, retired, failed or removed "
        "(core/registry/lifecycle.py).",
    ),
    Column("created_at", UtcTime, nullable=False),
    Column(
        "created_by",
        String(256),
        nullable=False,
        comment="A user, sensor:<name>, schedule:<name>, cli or run:<id>.",
    ),
    Column("traffic_share", Float, nullable=False, comment="Share of traffic served; 0 when not served."),
    Column("semantic_version", String(32), nullable=False, comment="e.g. 1.2.0 (major: new base model)."),
    Column("removed_at", UtcTime, nullable=True, comment="When cleanup deleted the version's files."),
    # 0004: the run that trained it, what its evaluation compared against, the data it saw.
    Column("run_id", String(64), nullable=True, comment="The Dagster run that trained it (NULL outside Dagster)."),
    Column(
        "baseline_version",
        String(128),
        nullable=True,
        comment="The production version its latest evaluation compared it with (NULL: the base model).",
    ),
    Column("evaluated_at", UtcTime, nullable=True, comment="When the latest evaluation decided."),
    Column(
        "watermark",
        BigInteger,
        nullable=True,
        comment="The store seq its snapshot was built up to: what counts as new annotations after it.",
    ),
)

# The audit trail of promotions, canaries, rollbacks and cleanups; rows are never updated.
deployments = Table(
    "deployments",
    metadata,
    Column("id", Seq, primary_key=True, autoincrement=True),
    Column("family", String(64), nullable=False),
    Column("at", UtcTime, nullable=False),
    Column(
        "by",
        String(256),
        nullable=False,
        comment="Who: a user, sensor:<name>, schedule:<name>, cli, run:<id>.",
    ),
    Column(
        "action",
        String(16),
        nullable=False,
        comment="promote, canary, rollback, cleanup, force_promote, reconcile or partial (nothing moved).",
    ),
    Column("from_version", String(128), nullable=True),
    Column("to_version", String(128), nullable=True),
    Column("traffic_share", Float, nullable=True, comment="The new version's share, for promote and canary."),
    Column("reason", Text, nullable=False),
    Column(
        "forced",
        Boolean,
        nullable=False,
        comment="Promoted without a DEPLOY decision (--force, with the reason in `reason`).",
    ),
    Column("decision", String(8), nullable=True, comment="The version's gate decision at the time (0004)."),
    Column(
        "serving",
        String(32),
        nullable=True,
        comment="updated, not configured, or not updated: <why> (cut to fit).",
    ),
    Index(None, "family", "at"),
)

# One row per family currently training; the primary key makes acquiring it race-free.
training_locks = Table(
    "training_locks",
    metadata,
    Column("family", String(64), primary_key=True),
    Column("holder", String(256), nullable=False, comment="Who asked: cli:<login>, sensor:<name>, run:<id>."),
    Column("acquired_at", UtcTime, nullable=False),
    Column(
        "heartbeat_at", UtcTime, nullable=False, comment="Refreshed while training; stale after a timeout."
    ),
    # 0004: which run, host and process hold it, so a dead holder is recognized at once.
    Column("run_id", String(64), nullable=True, comment="The Dagster run that trains (NULL outside Dagster)."),
    Column("host", String(255), nullable=False, server_default="", comment="The holder process's host."),
    Column("pid", Integer, nullable=False, server_default="0", comment="The holder process's id."),
)

# -- retrain requests: external events and people asking for a retrain (migration 0006) -------------

# One row per request (`pulse request-retrain`, the capture service's POST /v1/events); the
# family's `retrain_requests_<family>` sensor starts a retrain for the requests it has not read.
retrain_requests = Table(
    "retrain_requests",
    metadata,
    Column("seq", Seq, primary_key=True, autoincrement=True),
    Column("family", String(64), nullable=False),
    Column("reason", Text, nullable=False, comment="Why, as the requester wrote it."),
    Column(
        "requested_by", String(256), nullable=False, comment="cli:<login>, or capture:<token name> (an event)."
    ),
    Column("requested_at", UtcTime, nullable=False),
    Index(None, "family", "seq"),
)

# -- the oracle's labelling journal (migration 0007) ------------------------------------------------

# One row per corpus item an oracle answered for a prompt version, written as soon as the answer
# is paid for and before its annotation is stored: an interrupted `pulse label` resumes without
# asking (and paying) twice, and stores what an earlier run paid for but did not store.
oracle_labels = Table(
    "oracle_labels",
    metadata,
    Column("family", String(64), primary_key=True),
    Column("prompt_version", String(32), primary_key=True),
    Column("item_id", String(256), primary_key=True),
    Column("status", String(16), nullable=False, comment="labelled, generated (QA pairs), or quarantined (no parseable answer)."),
    Column("record", OptionalPayload, nullable=True, comment="The annotation record (labelled); a passage's QA records and rejected pairs (generated)."),
    Column("reply", Text, nullable=False, comment="The oracle's last reply, cut to 500 characters."),
    Column("error", Text, nullable=True, comment="Why the answer could not be parsed (quarantined)."),
    Column("oracle", String(256), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("prompt_tokens", Integer, nullable=False),
    Column("completion_tokens", Integer, nullable=False),
    Column("cost", Float, nullable=False),
    Column("labelled_by", String(256), nullable=False, comment="Who ran the labelling: cli:<login>, run:<id>."),
    Column("labelled_at", UtcTime, nullable=False),
)
