"""Registry records in the store: adapter versions, the deployments audit trail, the training lock.

`RegistryRecords` is a mixin of `Store`: it needs only the store's `_connect()` and `dialect`.
Every time it returns is tz-aware UTC on both SQLite (which keeps naive UTC text) and PostgreSQL.
The training lock is one row per family; its primary key makes acquiring it race-free across
processes, and a stale lock is taken over with a conditional UPDATE so two processes cannot both
take it over.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from pulse_pipeline.core.store import schema

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

__all__ = [
    "ACTIONS",
    "DECISIONS",
    "DEFAULT_STALE_LOCK",
    "STATUSES",
    "LockAttempt",
    "RegistryRecords",
]

DEFAULT_STALE_LOCK = dt.timedelta(hours=4)
"""A training lock whose heartbeat is older than this is taken over (the holder is presumed dead)."""

STATUSES = ("candidate", "deployed", "archived", "failed", "rolled_back")
DECISIONS = ("DEPLOY", "REVIEW", "FAIL")
ACTIONS = ("promote", "canary", "rollback", "cleanup", "force_promote")

_VERSION_KEY = ("family", "version")
_VERSION_REQUIRED = (
    *_VERSION_KEY,
    "base_model",
    "dataset_version",
    "training_config",
    "created_by",
    "semantic_version",
)
_VERSION_COLUMNS = frozenset(c.name for c in schema.adapter_versions.c)
_WHO_LENGTH = 256  # created_by, by and holder columns
_SERVING_LENGTH = 32
_LOCK_ATTEMPTS = 5  # insert / read rounds before giving up on a lock that keeps changing hands


@dataclass(frozen=True)
class LockAttempt:
    """The answer to `acquire_training_lock`.

    acquired: whether the caller now holds the lock. holder / acquired_at: the caller and now when
    acquired, else whoever holds it and since when. stale_replaced: the holder whose stale lock the
    caller took over (the caller logs the warning), else None.
    """

    acquired: bool
    holder: str
    acquired_at: dt.datetime
    stale_replaced: str | None = None


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _as_utc(t: dt.datetime | None) -> dt.datetime | None:
    """Naive times are UTC (SQLite hands them back naive); aware ones are converted."""
    if t is None:
        return None
    return t.replace(tzinfo=dt.UTC) if t.tzinfo is None else t.astimezone(dt.UTC)


def _record(row: sa.Row) -> dict[str, Any]:
    """A result row as a dict, every datetime tz-aware UTC."""
    return {k: _as_utc(v) if isinstance(v, dt.datetime) else v for k, v in row._mapping.items()}


def _cut(text: str | None, length: int) -> str | None:
    return None if text is None else text[:length]


def _check_holder(holder: str) -> None:
    # Never truncated: release and heartbeat compare the holder exactly.
    if not holder or len(holder) > _WHO_LENGTH:
        raise ValueError(f"a lock holder is 1 to {_WHO_LENGTH} characters, not {len(holder)}")


def _check_version_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Validated column values, times in UTC and `created_by` cut to fit."""
    unknown = set(fields) - _VERSION_COLUMNS
    if unknown:
        raise ValueError(f"adapter_versions has no column(s) {', '.join(sorted(unknown))}")
    if "status" in fields and fields["status"] not in STATUSES:
        raise ValueError(f"status {fields['status']!r} is not one of {', '.join(STATUSES)}")
    if fields.get("decision") is not None and fields["decision"] not in DECISIONS:
        raise ValueError(f"decision {fields['decision']!r} is not one of {', '.join(DECISIONS)}")
    values = dict(fields)
    for name in ("created_at", "removed_at"):
        if name in values:
            values[name] = _as_utc(values[name])
    if "created_by" in values:
        values["created_by"] = _cut(values["created_by"], _WHO_LENGTH)
    return values


class RegistryRecords:
    """Store methods for version records, deployments and the training lock (mixed into `Store`)."""

    if TYPE_CHECKING:

        @property
        def dialect(self) -> str: ...

        def _connect(self) -> Connection: ...

    def _insert(self, table: sa.Table) -> Any:
        """An INSERT with ON CONFLICT support for this store's dialect."""
        if self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        elif self.dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert
        else:
            raise NotImplementedError(f"registry records need SQLite or PostgreSQL, not {self.dialect}")
        return insert(table)

    # -- adapter versions -----------------------------------------------------------------

    def record_version(self, row: Mapping[str, Any]) -> None:
        """Insert a version record, or update the columns given in `row` if (family, version) exists.

        Required: family, version, base_model, dataset_version, training_config, created_by,
        semantic_version. Defaults for a new row: status "candidate", traffic_share 0, created_at
        now, metrics / decision / removed_at NULL. An update changes only the keys in `row`.
        """
        missing = [k for k in _VERSION_REQUIRED if row.get(k) is None]
        if missing:
            raise ValueError(f"a version record needs {', '.join(missing)}")
        given = _check_version_fields(row)
        defaults = {"status": "candidate", "traffic_share": 0.0, "created_at": _now()}
        stmt = self._insert(schema.adapter_versions).values(defaults | given)
        changes = {k: stmt.excluded[k] for k in given if k not in _VERSION_KEY}
        stmt = (
            stmt.on_conflict_do_update(index_elements=list(_VERSION_KEY), set_=changes)
            if changes
            else stmt.on_conflict_do_nothing(index_elements=list(_VERSION_KEY))
        )
        with self._connect() as conn, conn.begin():
            conn.execute(stmt)

    def update_version(self, family: str, version: str, /, **fields: Any) -> bool:
        """Change some columns of one version record (e.g. status=, traffic_share=, removed_at=).
        False when there is no such record."""
        if not fields or set(fields) & set(_VERSION_KEY):
            raise ValueError("update_version takes one or more non-key columns")
        t = schema.adapter_versions
        stmt = (
            sa.update(t)
            .where(t.c.family == family, t.c.version == version)
            .values(_check_version_fields(fields))
        )
        with self._connect() as conn, conn.begin():
            return conn.execute(stmt).rowcount == 1

    def version_record(self, family: str, version: str) -> dict[str, Any] | None:
        """One version record as a dict of every column, or None."""
        t = schema.adapter_versions
        with self._connect() as conn:
            row = conn.execute(sa.select(t).where(t.c.family == family, t.c.version == version)).first()
        return None if row is None else _record(row)

    def version_records(self, family: str) -> list[dict[str, Any]]:
        """A family's version records, oldest first."""
        t = schema.adapter_versions
        q = sa.select(t).where(t.c.family == family).order_by(t.c.created_at, t.c.version)
        with self._connect() as conn:
            return [_record(r) for r in conn.execute(q)]

    # -- deployments (audit trail) --------------------------------------------------------

    def record_deployment(
        self,
        family: str,
        action: str,
        *,
        by: str,
        reason: str = "",
        from_version: str | None = None,
        to_version: str | None = None,
        traffic_share: float | None = None,
        forced: bool = False,
        serving: str | None = None,
        at: dt.datetime | None = None,
    ) -> int:
        """Append one entry to the audit trail; returns its id. `by` and `serving` are cut to fit."""
        if action not in ACTIONS:
            raise ValueError(f"action {action!r} is not one of {', '.join(ACTIONS)}")
        values = {
            "family": family,
            "at": _as_utc(at) or _now(),
            "by": _cut(by, _WHO_LENGTH),
            "action": action,
            "from_version": from_version,
            "to_version": to_version,
            "traffic_share": traffic_share,
            "reason": reason,
            "forced": forced,
            "serving": _cut(serving, _SERVING_LENGTH),
        }
        with self._connect() as conn, conn.begin():
            return int(conn.execute(sa.insert(schema.deployments).values(values)).inserted_primary_key[0])

    def deployments(self, family: str, limit: int = 50) -> list[dict[str, Any]]:
        """A family's audit trail, newest first: dicts of every column."""
        t = schema.deployments
        q = sa.select(t).where(t.c.family == family).order_by(t.c.at.desc(), t.c.id.desc()).limit(limit)
        with self._connect() as conn:
            return [_record(r) for r in conn.execute(q)]

    # -- training lock --------------------------------------------------------------------

    def acquire_training_lock(
        self,
        family: str,
        holder: str,
        *,
        stale_after: dt.timedelta = DEFAULT_STALE_LOCK,
        now: dt.datetime | None = None,
    ) -> LockAttempt:
        """Take the family's training lock, or say who holds it and since when.

        A lock whose heartbeat is older than `stale_after` is taken over (`stale_replaced` names the
        old holder). A holder asking again for a lock it holds keeps it (heartbeat refreshed).
        """
        _check_holder(holder)
        now = _as_utc(now) or _now()
        for _ in range(_LOCK_ATTEMPTS):
            if self._insert_lock(family, holder, now):
                return LockAttempt(True, holder, now)
            current = self.training_lock(family)
            if current is None:
                continue  # released between our insert and our read
            if current["holder"] == holder:
                if self.heartbeat_training_lock(family, holder, now):
                    return LockAttempt(True, holder, current["acquired_at"])
                continue
            if now - current["heartbeat_at"] <= stale_after:
                return LockAttempt(False, current["holder"], current["acquired_at"])
            if self._take_over_lock(family, current, holder, now):
                return LockAttempt(True, holder, now, stale_replaced=current["holder"])
            # Someone else changed the row first (took it over, released or refreshed it): look again.
        from pulse_pipeline.core.store import StoreError

        raise StoreError(f"the training lock of {family} kept changing hands; try again")

    def heartbeat_training_lock(self, family: str, holder: str, now: dt.datetime | None = None) -> bool:
        """Mark the lock alive; False when it is no longer `holder`'s (taken over or released)."""
        t = schema.training_locks
        stmt = (
            sa.update(t)
            .where(t.c.family == family, t.c.holder == holder)
            .values(heartbeat_at=_as_utc(now) or _now())
        )
        with self._connect() as conn, conn.begin():
            return conn.execute(stmt).rowcount == 1

    def release_training_lock(self, family: str, holder: str) -> bool:
        """Drop the lock if `holder` holds it; False (and nothing changed) otherwise."""
        t = schema.training_locks
        with self._connect() as conn, conn.begin():
            return conn.execute(sa.delete(t).where(t.c.family == family, t.c.holder == holder)).rowcount == 1

    def training_lock(self, family: str) -> dict[str, Any] | None:
        """The family's lock (family, holder, acquired_at, heartbeat_at), or None when not training."""
        t = schema.training_locks
        with self._connect() as conn:
            row = conn.execute(sa.select(t).where(t.c.family == family)).first()
        return None if row is None else _record(row)

    def _insert_lock(self, family: str, holder: str, now: dt.datetime) -> bool:
        """INSERT the lock row; the primary key lets exactly one concurrent insert succeed."""
        values = {"family": family, "holder": holder, "acquired_at": now, "heartbeat_at": now}
        stmt = self._insert(schema.training_locks).values(values).on_conflict_do_nothing()
        with self._connect() as conn, conn.begin():
            return conn.execute(stmt).rowcount == 1

    def _take_over_lock(self, family: str, stale: Mapping[str, Any], holder: str, now: dt.datetime) -> bool:
        """Replace the stale row only if it is still exactly the one we read: of two processes
        taking over the same stale lock, the second finds the row changed and updates nothing."""
        t = schema.training_locks
        stmt = (
            sa.update(t)
            .where(
                t.c.family == family,
                t.c.holder == stale["holder"],
                t.c.heartbeat_at == stale["heartbeat_at"],
            )
            .values(holder=holder, acquired_at=now, heartbeat_at=now)
        )
        with self._connect() as conn, conn.begin():
            return conn.execute(stmt).rowcount == 1
