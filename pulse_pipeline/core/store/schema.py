"""Tables of the annotation store (SQLAlchemy Core). Alembic migrations in `migrations/` create them."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Date,
    DateTime,
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
    Index(None, "family", "day"),
)
