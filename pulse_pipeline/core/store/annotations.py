"""Annotations and quarantined lines in the store: what the pipeline reads of them.

`Annotations` answers the questions the assets, sensors and reports ask: counts since a
watermark, one family's day streamed, a family's records as an Arrow table for column-wise
processing, the audit of a day, the latest quarantined lines. An invalidated annotation stays
in its table (for the audit and the snapshots built before the fix) but every query that trains
or counts skips it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from pulse_pipeline.core.store.database import Database
from pulse_pipeline.core.store.schema import annotations, ingestion_tallies, quarantine

if TYPE_CHECKING:
    import pyarrow as pa

_VALID = annotations.c.invalidated_at.is_(None)
_CHUNK = 500  # values per IN (...) list


def day_bounds(day: dt.date) -> tuple[dt.datetime, dt.datetime]:
    """[start, end) of a UTC day."""
    start = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
    return start, start + dt.timedelta(days=1)


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


class Annotations:
    """Reads of the `annotations`, `quarantine` and `ingestion_tallies` tables."""

    def __init__(self, db: Database):
        self.db = db

    def count_since(self, family: str, watermark: int = 0) -> int:
        """Valid annotations of `family` that arrived after store sequence number `watermark`."""
        q = sa.select(sa.func.count()).where(
            annotations.c.family == family, annotations.c.seq > watermark, _VALID
        )
        with self.db.connect() as conn:
            return conn.execute(q).scalar_one()

    def latest_seq(self, family: str | None = None) -> int:
        """The newest store sequence number, invalidated rows included (it never goes back)."""
        q = sa.select(sa.func.max(annotations.c.seq))
        if family is not None:
            q = q.where(annotations.c.family == family)
        with self.db.connect() as conn:
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
        with self.db.connect() as conn:
            yield from conn.execute(q)

    def iter_family(self, family: str, *, after: int = 0, batch: int = 5000) -> Iterator[sa.Row]:
        """A family's valid annotations newer than store sequence number `after`, oldest first, streamed."""
        q = (
            sa.select(annotations)
            .where(annotations.c.family == family, annotations.c.seq > after, _VALID)
            .order_by(annotations.c.seq)
            .execution_options(yield_per=batch)
        )
        with self.db.connect() as conn:
            yield from conn.execute(q)

    def read_columns(
        self,
        family: str,
        fields: dict[str, tuple[tuple[str, ...], str]],
        *,
        parts: int = 2,
        created: tuple[dt.datetime, dt.datetime] | None = None,
    ) -> pa.Table:
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
            return str(query.compile(dialect=self.db.engine.dialect, compile_kwargs={"literal_binds": True}))

        with self.db.connect() as conn:
            lo, hi = conn.execute(
                sa.select(sa.func.min(a.seq), sa.func.max(a.seq)).where(a.family == family)
            ).one()
        empty = pa.table({n: pa.array([], t) for n, t in types.items()})
        if lo is None:
            return empty
        lo -= 1
        if self.db.dialect != "postgresql":
            with self.db.connect() as conn:
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

        def part(bounds: tuple[int, int]) -> pa.Table:
            with self.db.connect() as conn:
                return _copy_out(conn, select(*bounds), types)

        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=len(ranges)) as pool:
            return pa.concat_tables(pool.map(part, ranges))

    def days_with_annotations(self, family: str | None = None) -> list[dt.date]:
        """Distinct UTC days that hold annotations (or quarantined lines) for `family`."""
        days: set[dt.date] = set()
        with self.db.connect() as conn:
            q = sa.select(ingestion_tallies.c.day).distinct()
            if family is not None:
                q = q.where(ingestion_tallies.c.family == family)
            days.update(r[0] for r in conn.execute(q))
        return sorted(days)

    def audit_day(self, family: str, day: dt.date) -> DayAudit:
        """Lines received for (family, day), by outcome, against the rows actually stored."""
        start, end = day_bounds(day)
        t = ingestion_tallies.c
        with self.db.connect() as conn:
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
        with self.db.connect() as conn:
            return list(conn.execute(q))

    def stored_content(self, ids: Iterable[str]) -> dict[str, tuple[str, str]]:
        """id -> (family, content_hash) of the stored records among `ids`."""
        wanted = list(dict.fromkeys(ids))
        out: dict[str, tuple[str, str]] = {}
        a = annotations.c
        with self.db.connect() as conn:
            for i in range(0, len(wanted), _CHUNK):
                q = sa.select(a.id, a.family, a.content_hash).where(a.id.in_(wanted[i : i + _CHUNK]))
                out.update((r.id, (r.family, r.content_hash)) for r in conn.execute(q))
        return out

    def payloads(self, ids: Iterable[str], *, kind: str) -> dict[str, tuple[str, dict[str, Any]]]:
        """id -> (family, payload) of the valid stored records of `kind` among `ids`."""
        wanted = list(dict.fromkeys(ids))
        out: dict[str, tuple[str, dict[str, Any]]] = {}
        a = annotations.c
        with self.db.connect() as conn:
            for i in range(0, len(wanted), _CHUNK):
                q = sa.select(a.id, a.family, a.payload).where(
                    a.id.in_(wanted[i : i + _CHUNK]), a.kind == kind, _VALID
                )
                out.update((r.id, (r.family, r.payload)) for r in conn.execute(q))
        return out

    def invalidated_ids(self, family: str) -> set[str]:
        """Ids of a family's invalidated records (a snapshot built before a fix may hold them)."""
        a = annotations.c
        with self.db.connect() as conn:
            q = sa.select(a.id).where(a.family == family, a.invalidated_at.is_not(None))
            return set(conn.execute(q).scalars())


def _copy_out(conn: Connection, sql: str, types: dict[str, pa.DataType]) -> pa.Table:
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
