"""Closed review (dojo) sessions: a family's sensor retrains on the segment reviews a closed
session holds. One row per closed session; `seq` orders closures for the sensor's cursor.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import sqlalchemy as sa

from pulse_pipeline.core.store import schema
from pulse_pipeline.core.store.database import WHO_LENGTH, Database, as_utc

_A = schema.annotations.c
_VALID = _A.invalidated_at.is_(None)


class SessionClosedError(ValueError):
    """The review session was closed before; the message says when and by whom."""


@dataclass(frozen=True)
class ClosedSession:
    seq: int  # closure order: the closed-sessions sensor's cursor
    session_id: str
    family: str
    closed_at: dt.datetime
    closed_by: str
    segment_reviews: int

    def already_closed(self) -> str:
        """The one line a second closing attempt answers with."""
        when = self.closed_at.isoformat(timespec="seconds")
        return f"session {self.session_id!r} was already closed at {when} by {self.closed_by}"


class ReviewSessions:
    """Closed sessions, and the segment reviews that carry a session id."""

    def __init__(self, db: Database):
        self.db = db

    def reviews_by_family(self, session_id: str) -> dict[str, int]:
        """family -> valid segment reviews that carry `session_id`."""
        q = (
            sa.select(_A.family, sa.func.count())
            .where(_A.kind == "segment_review", _A.payload["session_id"].as_string() == session_id, _VALID)
            .group_by(_A.family)
        )
        with self.db.connect() as conn:
            return {family: n for family, n in conn.execute(q)}

    def count_reviews(self, family: str, session_id: str, *, after: int = 0) -> int:
        """Valid segment reviews of `session_id` in `family` newer than store seq `after`."""
        q = sa.select(sa.func.count()).where(
            _A.family == family,
            _A.seq > after,
            _A.kind == "segment_review",
            _A.payload["session_id"].as_string() == session_id,
            _VALID,
        )
        with self.db.connect() as conn:
            return conn.execute(q).scalar_one()

    def get(self, session_id: str) -> ClosedSession | None:
        rs = schema.review_sessions
        with self.db.connect() as conn:
            row = conn.execute(sa.select(rs).where(rs.c.session_id == session_id)).first()
        return _closed(row) if row else None

    def record_closure(
        self, session_id: str, family: str, *, by: str, segment_reviews: int, now: dt.datetime | None = None
    ) -> ClosedSession:
        """Record that a session closed; SessionClosedError when it was closed before."""
        rs = schema.review_sessions
        values = {
            "session_id": session_id,
            "family": family,
            "closed_at": now or dt.datetime.now(dt.UTC),
            "closed_by": by[:WHO_LENGTH],
            "segment_reviews": segment_reviews,
        }
        try:
            with self.db.begin() as conn:
                seq = conn.execute(rs.insert().values(**values).returning(rs.c.seq)).scalar_one()
        except sa.exc.IntegrityError:
            earlier = self.get(session_id)
            if earlier is None:
                raise
            raise SessionClosedError(earlier.already_closed()) from None
        return ClosedSession(seq=seq, **{**values, "closed_at": as_utc(values["closed_at"])})

    def closed(
        self, *, family: str | None = None, after: int = 0, limit: int = 1000
    ) -> list[ClosedSession]:
        """Sessions closed after closure seq `after`, oldest first."""
        rs = schema.review_sessions
        q = sa.select(rs).where(rs.c.seq > after).order_by(rs.c.seq).limit(limit)
        if family is not None:
            q = q.where(rs.c.family == family)
        with self.db.connect() as conn:
            return [_closed(r) for r in conn.execute(q)]


def _closed(row: sa.Row) -> ClosedSession:
    return ClosedSession(
        seq=row.seq,
        session_id=row.session_id,
        family=row.family,
        closed_at=as_utc(row.closed_at),
        closed_by=row.closed_by,
        segment_reviews=row.segment_reviews,
    )
