"""The annotation store: SQLite by default, PostgreSQL through PULSE_DATABASE_URL.

`Store(url)` connects and applies the Alembic migrations on first use; the queries the
pipeline needs (counts since a watermark, one family's day, the audit of a day) live here.
An invalidated annotation stays in its table (for the audit and for old snapshots) but every
query that trains or counts skips it. Invalidating, replacing a day and closed review sessions
are Store methods written in `data_fixes.py`; adapter version records, the deployments audit
trail and the training lock in `registry_records.py`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from pulse_pipeline.core.store.data_fixes import (
    ClosedSession,
    DataFixes,
    Invalidation,
    InvalidationError,
    SessionClosedError,
    day_bounds,
)
from pulse_pipeline.core.store.registry_records import (
    ACTIONS,
    DECISIONS,
    DEFAULT_STALE_LOCK,
    STATUSES,
    LockAttempt,
    RegistryRecords,
)
from pulse_pipeline.core.store.schema import (
    adapter_versions,
    annotations,
    deployments,
    ingestion_tallies,
    ingestions,
    invalidations,
    metadata,
    quarantine,
    review_sessions,
    training_locks,
)

__all__ = [
    "Store",
    "StoreError",
    "InvalidationError",
    "Invalidation",
    "ClosedSession",
    "SessionClosedError",
    "DayAudit",
    "LockAttempt",
    "DEFAULT_STALE_LOCK",
    "STATUSES",
    "DECISIONS",
    "ACTIONS",
    "adapter_versions",
    "deployments",
    "training_locks",
    "annotations",
    "ingestions",
    "ingestion_tallies",
    "quarantine",
    "invalidations",
    "review_sessions",
    "metadata",
]

_MIGRATIONS = "pulse_pipeline.core.store:migrations"
_PG_MIGRATION_LOCK = 0x70756C7365  # "pulse": serializes concurrent first-use upgrades on PostgreSQL
_VALID = annotations.c.invalidated_at.is_(None)


class StoreError(RuntimeError):
    """The store cannot be reached or used; the message says which URL and why."""


@dataclass(frozen=True)
class DayAudit:
    """What the store holds for one (family, day) against what ingestion reported receiving."""

    lines: int
    accepted: int
    duplicates: int
    quarantined: int
    stored: int  # rows of the day, invalidated ones included: they were received and stored
    stored_quarantined: int
    restored: int = 0  # lines of a replacing file identical to a stored record of the day
    invalidated: int = 0  # stored rows of the day excluded from training and counts

    @property
    def accounted_for(self) -> bool:
        return (
            self.lines == self.accepted + self.duplicates + self.restored + self.quarantined
            and self.stored == self.accepted
            and self.stored_quarantined == self.quarantined
        )


class Store(RegistryRecords, DataFixes):
    def __init__(self, url: str, *, upgrade: bool = True, echo: bool = False):
        self.url = url
        self.engine: Engine = _make_engine(url, echo=echo)
        if upgrade:
            self.upgrade()

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def dispose(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.dispose()

    # -- schema ---------------------------------------------------------------------------

    def revision(self) -> str | None:
        """The applied Alembic revision, or None for an empty database."""
        from alembic.runtime.migration import MigrationContext

        with self._connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    def upgrade(self, target: str = "head") -> str | None:
        """Apply pending migrations; cheap when the database is current. Returns the revision."""
        from alembic import command
        from alembic.config import Config
        from alembic.script import ScriptDirectory

        cfg = Config()
        cfg.set_main_option("script_location", _MIGRATIONS)
        head = ScriptDirectory.from_config(cfg).get_current_head()
        if target == "head" and self.revision() == head:
            return head
        with self._connect() as conn, conn.begin():
            if self.dialect == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, target)
        return self.revision()

    def _connect(self) -> Connection:
        try:
            return self.engine.connect()
        except sa.exc.OperationalError as exc:
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
            raise StoreError(
                f"cannot connect to the annotation store at {_redact(self.url)}: {reason}"
            ) from None

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """A connection in a transaction: committed on exit, rolled back on an exception."""
        with self._connect() as conn, conn.begin():
            yield conn

    # -- queries --------------------------------------------------------------------------

    def count_since(self, family: str, watermark: int = 0) -> int:
        """Valid annotations of `family` that arrived after store sequence number `watermark`."""
        q = sa.select(sa.func.count()).where(
            annotations.c.family == family, annotations.c.seq > watermark, _VALID
        )
        with self._connect() as conn:
            return conn.execute(q).scalar_one()

    def latest_seq(self, family: str | None = None) -> int:
        """The newest store sequence number, invalidated rows included (it never goes back)."""
        q = sa.select(sa.func.max(annotations.c.seq))
        if family is not None:
            q = q.where(annotations.c.family == family)
        with self._connect() as conn:
            return conn.execute(q).scalar() or 0

    def iter_day(
        self, family: str, day: dt.date, *, batch: int = 1000, include_invalidated: bool = False
    ) -> Iterator[sa.Row]:
        """The valid annotations of one family created on `day` (UTC), in arrival order, streamed."""
        yield from self.iter_created(
            family, *day_bounds(day), batch=batch, include_invalidated=include_invalidated
        )

    def iter_created(
        self,
        family: str,
        start: dt.datetime,
        end: dt.datetime,
        *,
        batch: int = 1000,
        include_invalidated: bool = False,
    ) -> Iterator[sa.Row]:
        """The valid annotations of one family created in [start, end) (UTC), in arrival order, streamed."""
        q = (
            sa.select(annotations)
            .where(
                annotations.c.family == family,
                annotations.c.created_at >= start,
                annotations.c.created_at < end,
                *(() if include_invalidated else (_VALID,)),
            )
            .order_by(annotations.c.seq)
            .execution_options(yield_per=batch)
        )
        with self._connect() as conn:
            yield from conn.execute(q)

    def iter_family(self, family: str, *, after: int = 0, batch: int = 5000) -> Iterator[sa.Row]:
        """A family's valid annotations newer than store sequence number `after`, oldest first, streamed."""
        q = (
            sa.select(annotations)
            .where(annotations.c.family == family, annotations.c.seq > after, _VALID)
            .order_by(annotations.c.seq)
            .execution_options(yield_per=batch)
        )
        with self._connect() as conn:
            yield from conn.execute(q)

    def read_columns(
        self,
        family: str,
        fields: dict[str, tuple[tuple[str, ...], str]],
        *,
        parts: int = 2,
        created: tuple[dt.datetime, dt.datetime] | None = None,
    ) -> Any:
        """A family's valid annotations as an Arrow table, oldest first, for column-wise processing.

        Columns seq, id, kind, created_at and ingested_at (UTC), plus one per entry of `fields`:
        name -> (JSON path in the payload, "str" or "float"). `created` = (start, end): only those
        created in [start, end). On PostgreSQL the server extracts the fields and streams CSV with
        COPY, in `parts` ranges of seq read at once on their own connections; SQLite reads through
        its cursor.
        """
        import pyarrow as pa

        a = annotations.c
        cols: list[Any] = [a.seq, a.id, a.kind, a.created_at, a.ingested_at]
        for name, (path, kind) in fields.items():
            value = a.payload[path if len(path) > 1 else path[0]]
            cols.append((value.as_float() if kind == "float" else value.as_string()).label(name))
        utc = pa.timestamp("us", tz="UTC")
        types = {"seq": pa.int64(), "id": pa.string(), "kind": pa.string()}
        types |= {"created_at": utc, "ingested_at": utc}
        types |= {
            name: pa.float64() if kind == "float" else pa.string() for name, (_, kind) in fields.items()
        }

        window = (a.created_at >= created[0], a.created_at < created[1]) if created else ()

        def select(lo: int, hi: int) -> str:
            query = (
                sa.select(*cols)
                .where(a.family == family, a.seq > lo, a.seq <= hi, _VALID, *window)
                .order_by(a.seq)
            )
            return str(query.compile(dialect=self.engine.dialect, compile_kwargs={"literal_binds": True}))

        with self._connect() as conn:
            lo, hi = conn.execute(
                sa.select(sa.func.min(a.seq), sa.func.max(a.seq)).where(a.family == family)
            ).one()
        empty = pa.table({n: pa.array([], t) for n, t in types.items()})
        if lo is None:
            return empty
        lo -= 1
        if self.dialect != "postgresql":
            with self._connect() as conn:
                rows = conn.exec_driver_sql(select(lo, hi)).fetchall()
            if not rows:  # every row invalidated, or none in the window
                return empty
            columns = list(zip(*rows, strict=True))
            raw = {
                n: pa.array(c, pa.string() if t == utc else t)
                for (n, t), c in zip(types.items(), columns, strict=True)
            }
            for name in ("created_at", "ingested_at"):  # SQLite keeps naive UTC text
                raw[name] = raw[name].cast(pa.timestamp("us")).cast(utc)
            return pa.table(raw)
        step = -(-(hi - lo) // max(1, parts))
        ranges = [(start, min(start + step, hi)) for start in range(lo, hi, step)]

        def part(bounds: tuple[int, int]) -> Any:
            with self._connect() as conn:
                return _copy_out(conn, select(*bounds), types)

        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=len(ranges)) as pool:
            return pa.concat_tables(pool.map(part, ranges))

    def days_with_annotations(self, family: str | None = None) -> list[dt.date]:
        """Distinct UTC days that hold annotations (or quarantined lines) for `family`."""
        days: set[dt.date] = set()
        with self._connect() as conn:
            q = sa.select(ingestion_tallies.c.day).distinct()
            if family is not None:
                q = q.where(ingestion_tallies.c.family == family)
            days.update(r[0] for r in conn.execute(q))
        return sorted(days)

    def audit_day(self, family: str, day: dt.date) -> DayAudit:
        """Lines received for (family, day), by outcome, against the rows actually stored."""
        start, end = day_bounds(day)
        t = ingestion_tallies.c
        with self._connect() as conn:
            tally = conn.execute(
                sa.select(
                    sa.func.coalesce(sa.func.sum(t.lines), 0),
                    sa.func.coalesce(sa.func.sum(t.accepted), 0),
                    sa.func.coalesce(sa.func.sum(t.duplicates), 0),
                    sa.func.coalesce(sa.func.sum(t.quarantined), 0),
                    sa.func.coalesce(sa.func.sum(t.restored), 0),
                ).where(t.family == family, t.day == day)
            ).one()
            stored, invalid = conn.execute(
                sa.select(sa.func.count(), sa.func.count(annotations.c.invalidated_at)).where(
                    annotations.c.family == family,
                    annotations.c.created_at >= start,
                    annotations.c.created_at < end,
                )
            ).one()
            stored_q = conn.execute(
                sa.select(sa.func.count()).where(quarantine.c.family == family, quarantine.c.day == day)
            ).scalar_one()
        lines, accepted, duplicates, quarantined, restored = map(int, tally)
        return DayAudit(
            lines, accepted, duplicates, quarantined, stored=stored, stored_quarantined=stored_q,
            restored=restored, invalidated=invalid,
        )  # fmt: skip

    def quarantined(self, *, limit: int = 50, ingestion_id: int | None = None) -> list[sa.Row]:
        q = sa.select(quarantine).order_by(quarantine.c.id.desc()).limit(limit)
        if ingestion_id is not None:
            q = q.where(quarantine.c.ingestion_id == ingestion_id)
        with self._connect() as conn:
            return list(conn.execute(q))


def _copy_out(conn: Connection, sql: str, types: dict[str, Any]) -> Any:
    """Run `sql` with COPY ... TO STDOUT (CSV) and read the result with Arrow's CSV reader."""
    import io

    import pyarrow.csv as pacsv

    buf = io.BytesIO()
    cursor = conn.connection.dbapi_connection.cursor()
    try:
        cursor.execute("SET LOCAL TIME ZONE 'UTC'")  # timestamps leave the server as UTC text for Arrow
        cursor.copy_expert(f"COPY ({sql}) TO STDOUT WITH (FORMAT csv, HEADER)", buf)
    finally:
        cursor.close()
    buf.seek(0)
    return pacsv.read_csv(
        buf,
        read_options=pacsv.ReadOptions(block_size=1 << 24),
        convert_options=pacsv.ConvertOptions(
            column_types=types, strings_can_be_null=True, quoted_strings_can_be_null=False
        ),
    )


def _make_engine(url: str, *, echo: bool) -> Engine:
    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError:
        raise StoreError(
            f"PULSE_DATABASE_URL {url!r} is not a database URL (e.g. sqlite:///path/pulse.db)"
        ) from None
    kwargs: dict[str, Any] = {
        "echo": echo,
        "json_serializer": lambda obj: orjson.dumps(obj).decode(),
        "json_deserializer": orjson.loads,
    }
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"timeout": 30}
        engine = sa.create_engine(parsed, **kwargs)
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if parsed.get_backend_name() == "postgresql" and parsed.drivername == "postgresql":
        # SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3; the project ships psycopg2.
        parsed = parsed.set(drivername="postgresql+psycopg2")
    kwargs.update(pool_pre_ping=True, insertmanyvalues_page_size=1000)
    try:
        return sa.create_engine(parsed, **kwargs)
    except (ImportError, sa.exc.NoSuchModuleError) as exc:
        raise StoreError(f"no database driver for {_redact(url)}: {exc}") from None


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")  # readers (the UI, sensors) do not block an ingest
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _redact(url: str) -> str:
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return url
