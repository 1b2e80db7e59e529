"""The oracle's labelling journal (`oracle_labels`): what an oracle answered, and what it cost,
per family, prompt version and corpus item. Rows are only inserted; a second insert of the same
item (two labelling runs that both asked) keeps the first, and says so."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from pulse_pipeline.core.store import schema
from pulse_pipeline.core.store.database import WHO_LENGTH, Database

_T = schema.oracle_labels


@dataclass(frozen=True)
class JournalRow:
    item_id: str
    status: str  # labelled | generated | quarantined
    record: dict[str, Any] | None
    reply: str
    error: str | None
    oracle: str
    attempts: int
    prompt_tokens: int
    completion_tokens: int
    cost: float


class OracleLabels:
    def __init__(self, db: Database):
        self.db = db

    def rows(self, family: str, prompt_version: str) -> dict[str, JournalRow]:
        """Every item answered for this prompt version, by item id."""
        q = sa.select(_T).where(_T.c.family == family, _T.c.prompt_version == prompt_version)
        with self.db.connect() as conn:
            return {
                r.item_id: JournalRow(
                    r.item_id,
                    r.status,
                    r.record,
                    r.reply,
                    r.error,
                    r.oracle,
                    r.attempts,
                    r.prompt_tokens,
                    r.completion_tokens,
                    r.cost,
                )  # fmt: skip
                for r in conn.execute(q)
            }

    def add(self, family: str, prompt_version: str, row: JournalRow, *, by: str, at: dt.datetime) -> bool:
        """Record one answer; False when the item was recorded already (the earlier row stays)."""
        values = {
            "family": family,
            "prompt_version": prompt_version,
            "item_id": row.item_id,
            "status": row.status,
            "record": row.record,
            "reply": row.reply,
            "error": row.error,
            "oracle": row.oracle[:256],
            "attempts": row.attempts,
            "prompt_tokens": row.prompt_tokens,
            "completion_tokens": row.completion_tokens,
            "cost": row.cost,
            "labelled_by": by[:WHO_LENGTH],
            "labelled_at": at,
        }
        try:
            with self.db.begin() as conn:
                conn.execute(_T.insert().values(**values))
        except sa.exc.IntegrityError:
            return False
        return True

    def stored_ids(self, family: str, prefix: str) -> set[str]:
        """Ids of the family's annotations that start with `prefix` (an oracle prompt version's)."""
        a = schema.annotations
        like = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        q = sa.select(a.c.id).where(a.c.family == family, a.c.id.like(like, escape="\\"))
        with self.db.connect() as conn:
            return set(conn.execute(q).scalars())
