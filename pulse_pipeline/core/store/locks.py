"""The `training_locks` table: one row per family while a training of it runs.

Only the rows: who holds a family's lock (the Dagster run, the host and process), since when, and
its last heartbeat. When a lock is stale and may be taken over is the training lock's policy
(`core/training/lock.py`). The primary key makes two concurrent inserts give one winner, and a
take-over is a conditional UPDATE of exactly the row that was read, so two processes taking over
the same stale lock cannot both succeed.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import sqlalchemy as sa

from pulse_pipeline.core.store import schema
from pulse_pipeline.core.store.database import WHO_LENGTH, Database, as_utc, now

_T = schema.training_locks


@dataclass(frozen=True)
class LockHolder:
    """Who trains: `who` asked (cli:alice, sensor:<name>, schedule:<name>, run:<id>), in which
    Dagster run (None outside Dagster), on which host, in which process."""

    who: str
    run_id: str | None
    host: str
    pid: int

    def __post_init__(self) -> None:
        if not self.who or len(self.who) > WHO_LENGTH:
            raise ValueError(f"a lock holder's name is 1 to {WHO_LENGTH} characters, not {len(self.who)}")

    def describe(self) -> str:
        """One line for a person: who, the run, the process."""
        run = f"run {self.run_id[:8]}, " if self.run_id else ""
        return f"{self.who} ({run}pid {self.pid or '?'} on {self.host or 'an unknown host'})"

    def same_as(self, other: LockHolder) -> bool:
        """The same training: the same Dagster run, or (outside Dagster) the same process."""
        if self.run_id or other.run_id:
            return self.run_id == other.run_id
        return (self.host, self.pid) == (other.host, other.pid)


@dataclass(frozen=True)
class LockRow:
    family: str
    holder: LockHolder
    acquired_at: dt.datetime
    heartbeat_at: dt.datetime


class TrainingLocks:
    """Rows of `training_locks`; every time in and out is tz-aware UTC."""

    def __init__(self, db: Database):
        self.db = db

    def get(self, family: str) -> LockRow | None:
        with self.db.connect() as conn:
            row = conn.execute(sa.select(_T).where(_T.c.family == family)).first()
        return None if row is None else _row(row)

    def insert(self, family: str, holder: LockHolder, at: dt.datetime | None = None) -> bool:
        """Take a free lock; False when a row exists (someone holds it, live or not)."""
        at = as_utc(at) or now()
        values = {"family": family, **_holder_values(holder), "acquired_at": at, "heartbeat_at": at}
        stmt = self.db.insert(_T).values(values).on_conflict_do_nothing()
        with self.db.begin() as conn:
            return conn.execute(stmt).rowcount == 1

    def refresh(self, family: str, holder: LockHolder, at: dt.datetime | None = None) -> bool:
        """Heartbeat, by the holder only (its run, or its process outside Dagster); a step of the
        holding run in another process takes the row over for its own process. False when the
        lock is no longer `holder`'s (released, or taken over as stale)."""
        stmt = (
            sa.update(_T)
            .where(_T.c.family == family, _same_holder(holder))
            .values(heartbeat_at=as_utc(at) or now(), host=holder.host, pid=holder.pid)
        )
        with self.db.begin() as conn:
            return conn.execute(stmt).rowcount == 1

    def park(self, family: str, holder: LockHolder, at: dt.datetime | None = None) -> bool:
        """The holder's run keeps the lock between two of its steps, each its own process: no process
        holds it for a moment (pid 0), so a step that ended is not taken for a dead holder; its heartbeat
        still ages, and its run's end frees it. False when the lock is not the holder's."""
        stmt = (
            sa.update(_T)
            .where(_T.c.family == family, _same_holder(holder))
            .values(heartbeat_at=as_utc(at) or now(), pid=0)
        )
        with self.db.begin() as conn:
            return conn.execute(stmt).rowcount == 1

    def take_over(self, family: str, stale: LockRow, holder: LockHolder, at: dt.datetime | None = None) -> bool:
        """Replace `stale` only if the row is still exactly it: of two processes taking over the
        same stale lock, the second finds the row changed and updates nothing."""
        at = as_utc(at) or now()
        stmt = (
            sa.update(_T)
            .where(
                _T.c.family == family,
                _T.c.holder == stale.holder.who,
                _T.c.heartbeat_at == stale.heartbeat_at,
                _same_holder(stale.holder),
            )
            .values(**_holder_values(holder), acquired_at=at, heartbeat_at=at)
        )
        with self.db.begin() as conn:
            return conn.execute(stmt).rowcount == 1

    def release(self, family: str, holder: LockHolder) -> bool:
        """Drop the lock if `holder` holds it; False (and nothing changed) otherwise."""
        with self.db.begin() as conn:
            return conn.execute(sa.delete(_T).where(_T.c.family == family, _same_holder(holder))).rowcount == 1

    def remove_stale(self, stale: LockRow) -> bool:
        """Delete `stale` if it is still exactly that row (a dead holder's lock, freed)."""
        stmt = sa.delete(_T).where(
            _T.c.family == stale.family,
            _T.c.holder == stale.holder.who,
            _T.c.heartbeat_at == stale.heartbeat_at,
            _same_holder(stale.holder),
        )
        with self.db.begin() as conn:
            return conn.execute(stmt).rowcount == 1


def _same_holder(holder: LockHolder) -> sa.ColumnElement[bool]:
    if holder.run_id:
        return _T.c.run_id == holder.run_id
    return sa.and_(_T.c.run_id.is_(None), _T.c.host == holder.host, _T.c.pid == holder.pid)


def _holder_values(holder: LockHolder) -> dict[str, object]:
    return {"holder": holder.who, "run_id": holder.run_id, "host": holder.host[:255], "pid": holder.pid}


def _row(row: sa.Row) -> LockRow:
    holder = LockHolder(row.holder, row.run_id, row.host, row.pid)  # host '', pid 0: a row from before 0004
    return LockRow(row.family, holder, as_utc(row.acquired_at), as_utc(row.heartbeat_at))  # type: ignore[arg-type]
