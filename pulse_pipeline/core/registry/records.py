"""The registry's rows in the store: one record per adapter version, and the deployments audit trail.

`VersionRecords` keeps each version's state (lifecycle.py) and what it was trained from and on;
a state changes only by `move`, a conditional UPDATE of a row still in the state the caller
read, after the lifecycle allowed the move. A version's name is reserved by inserting its record
(state `training`): the primary key (family, version) gives two trainings of the same minute
different names. `DeploymentLog` is append-only. Every time is tz-aware UTC on both SQLite and
PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

import sqlalchemy as sa

from pulse_pipeline.core.evaluation.config import Decision
from pulse_pipeline.core.registry.errors import RegistryError
from pulse_pipeline.core.registry.lifecycle import VISIBLE, State, check_move
from pulse_pipeline.core.registry.names import version_name
from pulse_pipeline.core.store import schema
from pulse_pipeline.core.store.database import Database, as_utc, cut, now

ACTIONS = ("promote", "canary", "rollback", "cleanup", "force_promote", "reconcile", "partial")  # partial: nothing moved
_V = schema.adapter_versions
_D = schema.deployments
_SERVING_LENGTH = 32
_NAMES_A_MINUTE = 999


@dataclass(frozen=True)
class VersionRecord:
    family: str
    version: str
    state: State
    decision: str | None  # the latest evaluation's DEPLOY, REVIEW or FAIL
    base_model: str
    dataset_version: str
    training_config: dict[str, Any]
    metrics: dict[str, Any] | None
    created_at: dt.datetime
    created_by: str
    run_id: str | None
    traffic_share: float
    semantic_version: str
    removed_at: dt.datetime | None
    baseline_version: str | None  # what the latest evaluation compared with (None: the base model)
    evaluated_at: dt.datetime | None
    watermark: int | None  # the store seq its snapshot was built up to


_RECORD_FIELDS = tuple(f.name for f in fields(VersionRecord))


@dataclass(frozen=True)
class Deployment:
    id: int
    family: str
    at: dt.datetime
    by: str
    action: str
    from_version: str | None
    to_version: str | None
    traffic_share: float | None
    reason: str
    forced: bool
    decision: str | None
    serving: str | None


class VersionRecords:
    """Rows of `adapter_versions`."""

    def __init__(self, db: Database):
        self.db = db

    def reserve(
        self,
        family: str,
        when: dt.datetime,
        fields: Mapping[str, Any],
        *,
        taken: Callable[[str], bool] = lambda _: False,
    ) -> VersionRecord:
        """Insert a record in state `training` under the first free name of `when`'s minute
        (`<family>-YYYYMMDD-HHMM`, then `-2`, `-3` ...); `taken(name)` also excludes names whose
        files exist without a record. `fields`: base_model, dataset_version, training_config,
        created_by, semantic_version, and optionally run_id and watermark."""
        values = {
            "family": family,
            "state": State.TRAINING.value,
            "traffic_share": 0.0,
            "created_at": now(),
            **_column_values(fields, insert=True),
        }
        for n in range(1, _NAMES_A_MINUTE + 1):
            name = version_name(family, when, n)
            if taken(name):
                continue
            stmt = self.db.insert(_V).values({**values, "version": name}).on_conflict_do_nothing()
            with self.db.begin() as conn:
                inserted = conn.execute(stmt).rowcount == 1
            if inserted:
                record = self.get(family, name)
                assert record is not None
                return record
        raise RegistryError(f"no free version name for {family} at {when:%Y-%m-%d %H:%M}")

    def adopt(self, family: str, version: str, fields: Mapping[str, Any]) -> bool:
        """Insert a record for files found without one (reconcile), in state `published`.
        False when a record appeared meanwhile."""
        values = {
            "family": family,
            "version": version,
            "state": State.PUBLISHED.value,
            "traffic_share": 0.0,
            "created_at": now(),
            **_column_values(fields, insert=True),
        }
        stmt = self.db.insert(_V).values(values).on_conflict_do_nothing()
        with self.db.begin() as conn:
            return conn.execute(stmt).rowcount == 1

    def move(self, record: VersionRecord, to: State, **changes: Any) -> VersionRecord:
        """Move `record` to state `to` (and set `changes`) if the lifecycle allows it and the row
        is still in the state `record` was read in; raises RegistryError when it changed meanwhile."""
        check_move(record.family, record.version, record.state, to)
        stmt = (
            sa.update(_V)
            .where(_V.c.family == record.family, _V.c.version == record.version, _V.c.state == record.state.value)
            .values(state=State(to).value, **_column_values(changes))
        )
        with self.db.begin() as conn:
            moved = conn.execute(stmt).rowcount == 1
        if not moved:
            latest = self.get(record.family, record.version)
            now_in = latest.state if latest else "gone"
            raise RegistryError(
                f"{record.family} {record.version} changed meanwhile (now {now_in}, not {record.state})"
            )
        after = self.get(record.family, record.version)
        assert after is not None
        return after

    def update(self, family: str, version: str, /, **changes: Any) -> bool:
        """Change columns other than the key and the state (decision, metrics, traffic_share, ...).
        False when there is no such record."""
        if not changes or {"family", "version", "state"} & set(changes):
            raise ValueError("update takes one or more columns other than family, version and state")
        stmt = (
            sa.update(_V)
            .where(_V.c.family == family, _V.c.version == version)
            .values(_column_values(changes))
        )
        with self.db.begin() as conn:
            return conn.execute(stmt).rowcount == 1

    def get(self, family: str, version: str) -> VersionRecord | None:
        with self.db.connect() as conn:
            row = conn.execute(sa.select(_V).where(_V.c.family == family, _V.c.version == version)).first()
        return None if row is None else _record(row)

    def list(self, family: str, *, states: frozenset[State] | None = None) -> list[VersionRecord]:
        """A family's records, oldest first (optionally only those in `states`)."""
        q = sa.select(_V).where(_V.c.family == family).order_by(_V.c.created_at, _V.c.version)
        if states is not None:
            q = q.where(_V.c.state.in_([s.value for s in states]))
        with self.db.connect() as conn:
            return [_record(r) for r in conn.execute(q)]

    def trained_watermark(self, family: str) -> int | None:
        """The highest snapshot watermark among versions whose training finished (None: none
        recorded one)."""
        done = [s.value for s in (*VISIBLE, State.REMOVED)]
        q = sa.select(sa.func.max(_V.c.watermark)).where(_V.c.family == family, _V.c.state.in_(done))
        with self.db.connect() as conn:
            value = conn.execute(q).scalar()
        return None if value is None else int(value)

    def newest_trained(self, family: str) -> VersionRecord | None:
        """The newest version whose training finished (published, or later; removed ones too:
        their data was used)."""
        done = [s.value for s in (*VISIBLE, State.REMOVED)]
        q = (
            sa.select(_V)
            .where(_V.c.family == family, _V.c.state.in_(done))
            .order_by(_V.c.created_at.desc(), _V.c.version.desc())
            .limit(1)
        )
        with self.db.connect() as conn:
            row = conn.execute(q).first()
        return None if row is None else _record(row)


class DeploymentLog:
    """The append-only audit trail of promotions, canaries, rollbacks, cleanups and reconciles."""

    def __init__(self, db: Database):
        self.db = db

    def append(
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
        decision: str | None = None,
        serving: str | None = None,
        at: dt.datetime | None = None,
    ) -> int:
        """Append one entry; returns its id. `by` and `serving` are cut to fit their columns."""
        if action not in ACTIONS:
            raise ValueError(f"action {action!r} is not one of {', '.join(ACTIONS)}")
        values = {
            "family": family,
            "at": as_utc(at) or now(),
            "by": cut(by),
            "action": action,
            "from_version": from_version,
            "to_version": to_version,
            "traffic_share": traffic_share,
            "reason": reason,
            "forced": forced,
            "decision": decision,
            "serving": cut(serving, _SERVING_LENGTH),
        }
        with self.db.begin() as conn:
            return int(conn.execute(sa.insert(_D).values(values)).inserted_primary_key[0])

    def list(self, family: str, limit: int = 50) -> list[Deployment]:
        """A family's audit trail, newest first."""
        q = sa.select(_D).where(_D.c.family == family).order_by(_D.c.at.desc(), _D.c.id.desc()).limit(limit)
        with self.db.connect() as conn:
            return [Deployment(**_utc(r._mapping)) for r in conn.execute(q)]


def _column_values(values: Mapping[str, Any], *, insert: bool = False) -> dict[str, Any]:
    unknown = set(values) - set(_RECORD_FIELDS)
    if unknown:
        raise ValueError(f"adapter_versions has no column(s) {', '.join(sorted(unknown))}")
    if insert and {"family", "version", "state"} & set(values):
        raise ValueError("a new record's family, version and state are the registry's to set, not its fields'")
    decision = values.get("decision")
    if decision is not None and decision not in {d.value for d in Decision}:
        raise ValueError(f"decision {decision!r} is not one of {', '.join(d.value for d in Decision)}")
    out = {k: (as_utc(v) if isinstance(v, dt.datetime) else v) for k, v in values.items()}
    if "state" in out:
        out["state"] = State(out["state"]).value
    if "created_by" in out:
        out["created_by"] = cut(out["created_by"])
    return out


def _utc(mapping: Mapping[str, Any]) -> dict[str, Any]:
    return {k: as_utc(v) if isinstance(v, dt.datetime) else v for k, v in mapping.items()}


def _record(row: sa.Row) -> VersionRecord:
    values = _utc(row._mapping)
    values["state"] = State(values["state"])
    return VersionRecord(**{name: values.get(name) for name in _RECORD_FIELDS})
