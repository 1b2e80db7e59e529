"""Retrain requests: someone, or an external event, asks for a family's retrain, saying why.

One row per request (`pulse request-retrain`, the capture service's `POST /v1/events`): the
audit trail of who asked when and why. The family's `retrain_requests_<family>` sensor reads the
requests after its cursor (`seq`) and starts one retrain for them, with their reasons in its tags.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import sqlalchemy as sa

from pulse_pipeline.core.store import schema
from pulse_pipeline.core.store.database import WHO_LENGTH, Database, as_utc

REASON_LENGTH = 2000


@dataclass(frozen=True)
class RetrainRequest:
    seq: int
    family: str
    reason: str
    requested_by: str
    requested_at: dt.datetime


class RetrainRequests:
    def __init__(self, db: Database):
        self.db = db

    def add(self, family: str, reason: str, *, by: str, now: dt.datetime | None = None) -> RetrainRequest:
        """Record a request; the reason is kept (cut to REASON_LENGTH characters)."""
        rr = schema.retrain_requests
        values = {
            "family": family,
            "reason": reason.strip()[:REASON_LENGTH] or "no reason given",
            "requested_by": by[:WHO_LENGTH],
            "requested_at": now or dt.datetime.now(dt.UTC),
        }
        with self.db.begin() as conn:
            seq = conn.execute(rr.insert().values(**values).returning(rr.c.seq)).scalar_one()
        return RetrainRequest(seq=seq, **values)

    def since(self, family: str, after: int = 0, *, limit: int = 100) -> list[RetrainRequest]:
        """The family's requests after `seq` `after`, oldest first."""
        rr = schema.retrain_requests
        q = sa.select(rr).where(rr.c.family == family, rr.c.seq > after).order_by(rr.c.seq).limit(limit)
        with self.db.connect() as conn:
            return [
                RetrainRequest(r.seq, r.family, r.reason, r.requested_by, as_utc(r.requested_at))
                for r in conn.execute(q)
            ]
