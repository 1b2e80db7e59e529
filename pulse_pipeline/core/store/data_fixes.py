"""Fixing bad data in the store: invalidating annotations, replacing a day, closed review sessions.

`DataFixes` is a mixin of `Store` (it needs `_connect()` and `begin()`). An invalidated
annotation keeps its row (the audit, and the snapshots built before the fix, refer to it) with
`invalidated_at` and the `invalidations` row that says who excluded it, when and why; the
store's training and counting queries skip it. Every invalidation or restoration appends one
`invalidations` row, so the newest id of a family tells a build that its valid set changed even
when no annotation arrived.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import sqlalchemy as sa

from pulse_pipeline.core.store import schema

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from sqlalchemy.engine import Connection

__all__ = [
    "ClosedSession",
    "DataFixes",
    "Invalidation",
    "InvalidationError",
    "SessionClosedError",
    "day_bounds",
]

_A = schema.annotations.c
_VALID = _A.invalidated_at.is_(None)
_CHUNK = 500  # values per IN (...) list
_WHO_LENGTH = 256


class InvalidationError(ValueError):
    """An invalidation names a record it cannot touch; the message names it."""


class SessionClosedError(ValueError):
    """The review session was closed before; the message says when and by whom."""


@dataclass(frozen=True)
class Invalidation:
    """What one invalidation (or one replaced day) changed."""

    invalidated: int  # records that were valid and now are not
    already_invalidated: int = 0  # records asked for that were invalidated before
    restored: int = 0  # invalidated records made valid again (a replaced day)
    log_ids: tuple[int, ...] = ()  # the `invalidations` rows written


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


def day_bounds(day: dt.date) -> tuple[dt.datetime, dt.datetime]:
    start = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
    return start, start + dt.timedelta(days=1)


def _as_utc(t: dt.datetime) -> dt.datetime:
    return t.replace(tzinfo=dt.UTC) if t.tzinfo is None else t.astimezone(dt.UTC)


def _chunks(values: Sequence[int] | Sequence[str]) -> Iterable[Sequence[int] | Sequence[str]]:
    for i in range(0, len(values), _CHUNK):
        yield values[i : i + _CHUNK]


class DataFixes:
    if TYPE_CHECKING:

        def _connect(self) -> Connection: ...
        def begin(self) -> AbstractContextManager[Connection]: ...

    # -- invalidation ---------------------------------------------------------------------------

    def invalidate(
        self,
        family: str,
        *,
        day: dt.date | None = None,
        ids: Sequence[str] | None = None,
        reason: str,
        by: str,
        now: dt.datetime | None = None,
    ) -> Invalidation:
        """Exclude a family's records of `day` (all of them, or only `ids`) from training and counts.

        Raises InvalidationError naming the first id that is not a record of that family (and day).
        Records invalidated before keep their first reason and are counted as already invalidated.
        """
        if day is None and not ids:
            raise InvalidationError("name a day, or the ids of the records to invalidate")
        where = [_A.family == family]
        if day is not None:
            start, end = day_bounds(day)
            where += [_A.created_at >= start, _A.created_at < end]
        with self.begin() as conn:
            if ids:
                wanted = list(dict.fromkeys(ids))
                found: dict[str, tuple[int, bool]] = {}
                for part in _chunks(wanted):
                    q = sa.select(_A.id, _A.seq, _A.invalidated_at).where(*where, _A.id.in_(part))
                    found.update((r.id, (r.seq, r.invalidated_at is None)) for r in conn.execute(q))
                missing = next((i for i in wanted if i not in found), None)
                if missing is not None:
                    scope = f"{family} annotation" + (f" of {day.isoformat()} (UTC)" if day else "")
                    raise InvalidationError(f"annotation {missing!r} is not a {scope}")
                valid = [seq for seq, ok in found.values() if ok]
                already = len(found) - len(valid)
            else:
                rows = conn.execute(sa.select(_A.seq, _A.invalidated_at).where(*where)).all()
                valid = [r.seq for r in rows if r.invalidated_at is None]
                already = len(rows) - len(valid)
            log_id = _mark(conn, family, day, valid, "invalidate", reason, by, now)
        return Invalidation(len(valid), already, 0, (log_id,) if log_id else ())

    def replace_day(
        self,
        day: dt.date,
        keep: Mapping[str, set[str]],
        *,
        reason: str,
        by: str,
        now: dt.datetime | None = None,
    ) -> Invalidation:
        """Before a corrected file of `day` is ingested: for each family in `keep` (family ->
        content hashes of the file's records), invalidate the day's records the file does not
        hold and make valid again the invalidated ones it does, in one transaction."""
        start, end = day_bounds(day)
        invalidated = restored = 0
        log_ids: list[int] = []
        with self.begin() as conn:
            for family, hashes in keep.items():
                rows = conn.execute(
                    sa.select(_A.seq, _A.content_hash, _A.invalidated_at).where(
                        _A.family == family, _A.created_at >= start, _A.created_at < end
                    )
                ).all()
                drop = [r.seq for r in rows if r.invalidated_at is None and r.content_hash not in hashes]
                back = [r.seq for r in rows if r.invalidated_at is not None and r.content_hash in hashes]
                for seqs, action in ((drop, "invalidate"), (back, "restore")):
                    log_id = _mark(conn, family, day, seqs, action, reason, by, now)
                    if log_id:
                        log_ids.append(log_id)
                invalidated += len(drop)
                restored += len(back)
        return Invalidation(invalidated, 0, restored, tuple(log_ids))

    def stored_content(self, ids: Iterable[str]) -> dict[str, tuple[str, str]]:
        """id -> (family, content_hash) of the stored records among `ids`."""
        wanted = list(dict.fromkeys(ids))
        out: dict[str, tuple[str, str]] = {}
        with self._connect() as conn:
            for part in _chunks(wanted):
                q = sa.select(_A.id, _A.family, _A.content_hash).where(_A.id.in_(part))
                out.update((r.id, (r.family, r.content_hash)) for r in conn.execute(q))
        return out

    def invalidated_ids(self, family: str) -> set[str]:
        """Ids of a family's invalidated records (a snapshot built before a fix may hold them)."""
        with self._connect() as conn:
            q = sa.select(_A.id).where(_A.family == family, _A.invalidated_at.is_not(None))
            return set(conn.execute(q).scalars())

    def latest_invalidation(self, family: str) -> int:
        """The newest invalidations id of a family (0: never fixed); moves with every fix."""
        inv = schema.invalidations.c
        with self._connect() as conn:
            return conn.execute(sa.select(sa.func.max(inv.id)).where(inv.family == family)).scalar() or 0

    def invalidation_log(self, family: str) -> list[sa.Row]:
        """The invalidations and restorations of a family, oldest first."""
        inv = schema.invalidations
        with self._connect() as conn:
            return list(conn.execute(sa.select(inv).where(inv.c.family == family).order_by(inv.c.id)))

    # -- review sessions ------------------------------------------------------------------------

    def session_reviews(self, session_id: str) -> dict[str, int]:
        """family -> valid segment reviews that carry `session_id`."""
        q = (
            sa.select(_A.family, sa.func.count())
            .where(_A.kind == "segment_review", _A.payload["session_id"].as_string() == session_id, _VALID)
            .group_by(_A.family)
        )
        with self._connect() as conn:
            return {family: n for family, n in conn.execute(q)}

    def count_session_reviews(self, family: str, session_id: str, *, after: int = 0) -> int:
        """Valid segment reviews of `session_id` in `family` newer than store seq `after`."""
        q = sa.select(sa.func.count()).where(
            _A.family == family,
            _A.seq > after,
            _A.kind == "segment_review",
            _A.payload["session_id"].as_string() == session_id,
            _VALID,
        )
        with self._connect() as conn:
            return conn.execute(q).scalar_one()

    def review_session(self, session_id: str) -> ClosedSession | None:
        rs = schema.review_sessions
        with self._connect() as conn:
            row = conn.execute(sa.select(rs).where(rs.c.session_id == session_id)).first()
        return _closed(row) if row else None

    def record_session_closure(
        self, session_id: str, family: str, *, by: str, segment_reviews: int, now: dt.datetime | None = None
    ) -> ClosedSession:
        """Record that a session closed; SessionClosedError when it was closed before."""
        rs = schema.review_sessions
        values = {
            "session_id": session_id,
            "family": family,
            "closed_at": now or dt.datetime.now(dt.UTC),
            "closed_by": by[:_WHO_LENGTH],
            "segment_reviews": segment_reviews,
        }
        try:
            with self.begin() as conn:
                seq = conn.execute(rs.insert().values(**values).returning(rs.c.seq)).scalar_one()
        except sa.exc.IntegrityError:
            earlier = self.review_session(session_id)
            if earlier is None:
                raise
            raise SessionClosedError(earlier.already_closed()) from None
        return ClosedSession(seq=seq, **{**values, "closed_at": _as_utc(values["closed_at"])})

    def closed_sessions(
        self, *, family: str | None = None, after: int = 0, limit: int = 1000
    ) -> list[ClosedSession]:
        """Sessions closed after closure seq `after`, oldest first."""
        rs = schema.review_sessions
        q = sa.select(rs).where(rs.c.seq > after).order_by(rs.c.seq).limit(limit)
        if family is not None:
            q = q.where(rs.c.family == family)
        with self._connect() as conn:
            return [_closed(r) for r in conn.execute(q)]


def _closed(row: sa.Row) -> ClosedSession:
    return ClosedSession(
        seq=row.seq,
        session_id=row.session_id,
        family=row.family,
        closed_at=_as_utc(row.closed_at),
        closed_by=row.closed_by,
        segment_reviews=row.segment_reviews,
    )


def _mark(
    conn: Connection,
    family: str,
    day: dt.date | None,
    seqs: Sequence[int],
    action: str,
    reason: str,
    by: str,
    now: dt.datetime | None,
) -> int | None:
    """Log one action over `seqs` and set their state: invalidated (with the log id) or valid."""
    if not seqs:
        return None
    at = now or dt.datetime.now(dt.UTC)
    inv = schema.invalidations
    log_id = conn.execute(
        inv.insert()
        .values(family=family, day=day, action=action, at=at, by=by[:_WHO_LENGTH], reason=reason,
                annotations=len(seqs))
        .returning(inv.c.id)
    ).scalar_one()  # fmt: skip
    state = (
        {"invalidated_at": at, "invalidation_id": log_id}
        if action == "invalidate"
        else {"invalidated_at": None, "invalidation_id": None}
    )
    for part in _chunks(list(seqs)):
        conn.execute(schema.annotations.update().where(_A.seq.in_(part)).values(**state))
    return log_id
