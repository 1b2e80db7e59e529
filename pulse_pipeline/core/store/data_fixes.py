"""Fixing bad data in the store: invalidating annotations and replacing a day.

An invalidated annotation keeps its row (the audit, and the snapshots built before the fix,
refer to it) with `invalidated_at` and the `invalidations` row that says who excluded it, when
and why; the store's training and counting queries skip it. Every invalidation or restoration
appends one `invalidations` row, so the newest id of a family tells a build that its valid set
changed even when no annotation arrived.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from pulse_pipeline.core.store import schema
from pulse_pipeline.core.store.annotations import day_bounds
from pulse_pipeline.core.store.database import WHO_LENGTH, Database

_A = schema.annotations.c
_CHUNK = 500  # values per IN (...) list


class InvalidationError(ValueError):
    """An invalidation names a record it cannot touch; the message names it."""


@dataclass(frozen=True)
class Invalidation:
    """What one invalidation (or one replaced day) changed."""

    invalidated: int  # records that were valid and now are not
    already_invalidated: int = 0  # records asked for that were invalidated before
    restored: int = 0  # invalidated records made valid again (a replaced day)
    log_ids: tuple[int, ...] = ()  # the `invalidations` rows written


def _chunks(values: Sequence[int] | Sequence[str]) -> Iterable[Sequence[int] | Sequence[str]]:
    for i in range(0, len(values), _CHUNK):
        yield values[i : i + _CHUNK]


class DataFixes:
    """Invalidations and restorations of annotations, and their log."""

    def __init__(self, db: Database):
        self.db = db

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
        with self.db.begin() as conn:
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
        with self.db.begin() as conn:
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

    def latest_invalidation(self, family: str) -> int:
        """The newest invalidations id of a family (0: never fixed); moves with every fix."""
        inv = schema.invalidations.c
        with self.db.connect() as conn:
            return conn.execute(sa.select(sa.func.max(inv.id)).where(inv.family == family)).scalar() or 0

    def invalidation_log(self, family: str) -> list[sa.Row]:
        """The invalidations and restorations of a family, oldest first."""
        inv = schema.invalidations
        with self.db.connect() as conn:
            return list(conn.execute(sa.select(inv).where(inv.c.family == family).order_by(inv.c.id)))


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
        .values(family=family, day=day, action=action, at=at, by=by[:WHO_LENGTH], reason=reason,
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
