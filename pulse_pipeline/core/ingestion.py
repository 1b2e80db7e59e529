"""Loading annotation records from JSON Lines into the store.

Streams the file (memory bounded by a few batches), inserts in batches, derives ids from
content so re-ingesting is a no-op, and quarantines every line it cannot accept with a
reason that names the line and the field. Every non-empty line ends up counted exactly once:
accepted + duplicates + quarantined == lines.

Parsing and writing overlap: writer threads store finished batches while the caller's
thread parses the next. On PostgreSQL two batches are written at once, each with one COPY
(or, when some of its records are stored already, COPY into a staging table and
`INSERT ... SELECT ... ON CONFLICT DO NOTHING`); on SQLite one at a time with a
multi-row `INSERT ... ON CONFLICT DO NOTHING`.

`replace_day` re-ingests a corrected file for one day: the day's records the file no longer
holds are invalidated, those it holds again are restored (counted `restored`, not duplicates),
and then the file is ingested as usual.
"""

from __future__ import annotations

import datetime as dt
import io
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson
import sqlalchemy as sa

from pulse_pipeline.core.annotations import Annotation, RecordError, parse_record
from pulse_pipeline.core.families import PulseConfig
from pulse_pipeline.core.store import Store, annotations, ingestion_tallies, ingestions, quarantine

BATCH_SIZE = 5000
MAX_LINE_BYTES = 8 * 1024 * 1024
QUARANTINE_RAW_BYTES = 64 * 1024  # a huge line keeps its first 64 KiB in quarantine

Clock = Callable[[], dt.datetime]


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class IngestError(RuntimeError):
    """The file as a whole cannot be read (missing, a folder, no permission)."""


@dataclass
class IngestResult:
    source: str
    ingestion_id: int
    lines: int = 0
    accepted: int = 0
    duplicates: int = 0
    quarantined: int = 0
    blank_lines: int = 0
    restored: int = 0  # lines identical to a stored record of the replaced day (--replace-day)
    invalidated: int = 0  # records of the replaced day the file no longer holds (--replace-day)
    replaced_families: list[str] = field(default_factory=list)  # the families whose day was replaced
    by_family: Counter[str] = field(default_factory=Counter)
    reasons: list[str] = field(default_factory=list)  # the first quarantine reasons, for the CLI


@dataclass(slots=True)
class _Line:
    number: int
    raw: bytes  # the line, or only its head when `size` is over the limit
    size: int = -1  # bytes in the whole line; -1: len(raw)


def ingest_file(
    store: Store,
    path: str | Path,
    config: PulseConfig,
    *,
    batch_size: int = BATCH_SIZE,
    max_line_bytes: int = MAX_LINE_BYTES,
    now: Clock = _utcnow,
    restore: frozenset[tuple[str, str]] = frozenset(),
    annotator: str | None = None,
    family: str | None = None,
    kind: str | None = None,
) -> IngestResult:
    """Ingest one JSON Lines file, or a CSV table of records (`.csv`). Raises IngestError only
    when the file cannot be opened (or a CSV file's family or kind cannot be told).

    `annotator`: every record without one is a judgment of this person or team (`pulse ingest
    --annotator`): a labelled dataset imported as human labels, not as captures to review.
    `family`, `kind`: CSV only, the columns a table leaves out (annotations.csv_records); the
    kind defaults to the family's one annotation kind."""
    path = Path(path)
    is_csv = path.suffix.lower() == ".csv"
    if not is_csv and (family or kind):
        raise IngestError(f"{path}: --family and --kind apply to CSV files; JSON records name their own")
    with _open(path) as handle:
        return ingest_lines(
            store,
            _csv_lines(handle, path, config, family, kind) if is_csv else _read_lines(handle, max_line_bytes),
            config,
            source=str(path),
            batch_size=batch_size,
            max_line_bytes=max_line_bytes,
            now=now,
            restore=restore,
            annotator=annotator,
        )


def replace_day(
    store: Store,
    path: str | Path,
    config: PulseConfig,
    day: dt.date,
    *,
    by: str,
    batch_size: int = BATCH_SIZE,
    max_line_bytes: int = MAX_LINE_BYTES,
    now: Clock = _utcnow,
    annotator: str | None = None,
) -> IngestResult:
    """Re-ingest a corrected file for `day` (UTC); `annotator` as for `ingest_file`.

    For every family the file names, the day's stored records that the file does not repeat are
    invalidated (reason "replaced by <file>"), those it repeats are made valid again, and the
    file is then ingested: a line repeating a stored record of the day counts as restored.
    Raises IngestError, before anything changes, when a line is not a valid record (it would be
    quarantined, and the day lose it), a record is not dated `day`, or one reuses the id of a
    stored record with other content.
    """
    path = Path(path)
    keep: dict[str, set[str]] = {}
    explicit_ids: dict[str, tuple[int, str, str]] = {}  # id -> (line, family, content hash)
    with _open(path) as handle:
        for line in _read_lines(handle, max_line_bytes):
            try:
                family, ann = _prescan(line, config, day, max_line_bytes, annotator)
            except IngestError as exc:
                raise IngestError(f"{path}: {exc}") from None
            if family is not None:
                keep.setdefault(family, set())
            if ann is not None:
                keep[ann.family].add(ann.content_hash)
                if "id" in ann.payload and ann.id not in explicit_ids:
                    explicit_ids[ann.id] = (line.number, ann.family, ann.content_hash)
    if not keep:
        raise IngestError(
            f"{path}: holds no record of a declared family, so nothing of {day} was replaced "
            "(`pulse annotations invalidate` empties a day)"
        )
    for id_, stored in store.annotations.stored_content(explicit_ids).items():
        number, family, digest = explicit_ids[id_]
        if stored != (family, digest):
            raise IngestError(
                f"{path}: line {number}: id {id_!r} is taken by a stored record with other content; "
                "give the corrected record a new id, or leave out `id` to derive one from the content; "
                "nothing was changed"
            )
    fix = store.fixes.replace_day(day, keep, reason=f"replaced by {path}", by=by, now=now())
    result = ingest_file(
        store,
        path,
        config,
        batch_size=batch_size,
        max_line_bytes=max_line_bytes,
        now=now,
        restore=frozenset((family, digest) for family, hashes in keep.items() for digest in hashes),
        annotator=annotator,
    )
    result.invalidated = fix.invalidated
    result.replaced_families = sorted(keep)
    return result


def _prescan(
    line: _Line, config: PulseConfig, day: dt.date, max_line_bytes: int, annotator: str | None
) -> tuple[str | None, Annotation | None]:
    """(family, annotation) of a line, or (None, None) for a blank one; IngestError for a line
    that is not a valid record or is dated other than `day`."""
    raw = line.raw.rstrip(b"\r\n")
    if line.number == 1 and raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    if not raw.strip():
        return None, None
    if max(line.size, len(raw)) > max_line_bytes:
        raise _invalid(line.number, f"longer than {max_line_bytes} bytes")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise _invalid(line.number, f"not valid JSON ({exc})") from None
    obj = _signed(obj, annotator)
    try:
        ann = parse_record(obj, config, may_hold_nul=b"\\u0000" in raw)
    except RecordError as exc:
        if exc.created_at is not None and exc.created_at.date() != day:
            raise _not_that_day(line.number, exc.created_at, day) from None
        raise _invalid(line.number, str(exc)) from None
    if ann.created_at is None:
        raise IngestError(
            f"line {line.number}: no created_at; every record of a --replace-day file must be dated "
            f"{day} (UTC); nothing was changed"
        )
    if ann.created_at.date() != day:
        raise _not_that_day(line.number, ann.created_at, day)
    return ann.family, ann


def _invalid(number: int, reason: str) -> IngestError:
    # A corrected day that would lose records to quarantine is refused whole: replacing the day
    # first and quarantining the correction after would leave the day emptied.
    return IngestError(
        f"line {number}: {reason}; every line of a --replace-day file must be a valid record "
        "(fix it, or ingest it without --replace-day to quarantine it); nothing was changed"
    )


def _not_that_day(number: int, created_at: dt.datetime, day: dt.date) -> IngestError:
    return IngestError(
        f"line {number}: created_at {created_at.isoformat()} is not on the replaced day {day} (UTC); "
        "nothing was changed"
    )


def _csv_lines(
    handle: IO[bytes], path: Path, config: PulseConfig, family: str | None, kind: str | None
) -> Iterator[_Line]:
    """A CSV table's rows as JSON record lines, numbered by the line they end on; checks the
    header first (an IngestError before anything is ingested)."""
    import csv

    from pulse_pipeline.core.annotations import csv_records

    text = io.TextIOWrapper(handle, encoding="utf-8-sig", newline="")
    header = next(csv.reader([text.readline()]), [])
    columns = {name.strip() for name in header}
    if "family" not in columns and family is None:
        raise IngestError(
            f"{path}: no family column: give the family (pulse ingest {path.name} --family NAME)"
        )
    if family is not None and family not in config.families:
        raise IngestError(f"{path}: --family {family!r} is not a family ({', '.join(config.families)})")
    if "kind" not in columns and kind is None and family is not None:
        kinds = config.families[family].annotation_kinds
        if len(kinds) != 1:
            known = ", ".join(k.value for k in kinds)
            raise IngestError(
                f"{path}: no kind column and {family} learns from several ({known}): give --kind"
            )
        kind = kinds[0].value
    text.seek(0)
    return (_Line(number, orjson.dumps(obj)) for number, obj in csv_records(text, family=family, kind=kind))


def _open(path: Path) -> IO[bytes]:
    try:
        return path.open("rb")
    except IsADirectoryError:
        raise IngestError(f"{path}: is a folder, not a JSON Lines file") from None
    except OSError as exc:
        raise IngestError(f"{path}: cannot be read: {exc.strerror or exc}") from None


def ingest_lines(
    store: Store,
    lines: Iterable[_Line | bytes],
    config: PulseConfig,
    *,
    source: str,
    batch_size: int = BATCH_SIZE,
    max_line_bytes: int = MAX_LINE_BYTES,
    now: Clock = _utcnow,
    restore: frozenset[tuple[str, str]] = frozenset(),
    annotator: str | None = None,
) -> IngestResult:
    """Ingest lines (bytes, or `_Line`s from `_read_lines`) as one recorded ingestion.

    `restore`: (family, content_hash) of stored records that a line repeating them restores
    (`replace_day`); the first such line counts as restored instead of as a duplicate.
    """
    started = now()
    result = start_ingestion(store, source, started)
    ingestion_id = result.ingestion_id
    writer = _Writer(store, result, restore)
    batch = _Batch(ingestion_id, 1, source, started.date(), annotator)
    # PostgreSQL takes two batches at once on two connections; SQLite has one writer anyway.
    in_flight = 2 if store.dialect == "postgresql" else 1
    with ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="pulse-ingest") as pool:
        pending: deque[Future[None]] = deque()
        for n, item in enumerate(lines, start=1):
            line = item if isinstance(item, _Line) else _Line(n, item)
            raw = line.raw.rstrip(b"\r\n")
            if line.number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            if not raw.strip():
                result.blank_lines += 1
                continue
            result.lines += 1
            batch.add(line.number, raw, max(line.size, len(raw)), config, max_line_bytes)
            if batch.size >= batch_size:
                batch.close(result, now(), store.dialect)
                if len(pending) >= in_flight:
                    pending.popleft().result()  # a bounded number of batches in flight: bounded memory
                pending.append(pool.submit(writer.write, batch))
                batch = _Batch(ingestion_id, batch.number + 1, source, started.date(), annotator)
        while pending:
            pending.popleft().result()
    batch.close(result, now(), store.dialect)
    writer.write(batch, final=True)
    return result


def start_ingestion(store: Store, source: str, started: dt.datetime) -> IngestResult:
    """Record that an ingestion from `source` started (its `ingestions` row, totals at zero)."""
    with store.begin() as conn:
        ingestion_id = conn.execute(
            ingestions.insert()
            .values(
                source=source,
                started_at=started,
                lines=0,
                blank_lines=0,
                accepted=0,
                duplicates=0,
                quarantined=0,
            )
            .returning(ingestions.c.id)
        ).scalar_one()
    return IngestResult(source=source, ingestion_id=ingestion_id)


def _signed(obj: Any, annotator: str | None) -> Any:
    """The record judged by `annotator` when it names none (`--annotator`); else as it is."""
    if annotator and isinstance(obj, dict) and not obj.get("annotator"):
        return {**obj, "annotator": annotator}
    return obj


def _read_lines(handle: IO[bytes], max_line_bytes: int) -> Iterator[_Line]:
    """Yield lines as bytes; a line over the limit yields its head and skips the rest unread."""
    number = 0
    while True:
        chunk = handle.readline(max_line_bytes + 1)
        if not chunk:
            return
        number += 1
        if len(chunk) > max_line_bytes and not chunk.endswith(b"\n"):
            size = len(chunk)
            while True:  # drain the rest of the over-long line, keeping nothing
                more = handle.readline(1 << 20)
                size += len(more)
                if not more or more.endswith(b"\n"):
                    break
            yield _Line(number, chunk[:QUARANTINE_RAW_BYTES], size)
        else:
            yield _Line(number, chunk)


@dataclass(slots=True)
class _Rejected:
    number: int
    raw: bytes
    size: int
    reason: str
    family: str | None
    day: dt.date


class _Batch:
    """Parsed lines waiting for one transaction."""

    def __init__(
        self, ingestion_id: int, number: int, source: str, ingest_day: dt.date, annotator: str | None = None
    ):
        self.ingestion_id = ingestion_id
        self.annotator = annotator
        self.number = number
        self.source = source
        self.ingest_day = ingest_day
        self.accepted: list[tuple[int, Annotation, str]] = []  # (line, annotation, its JSON text)
        self.inserted: set[str] = set()  # ids stored by this batch, once written
        self.rejected: list[_Rejected] = []
        self.size = 0
        self.lines_so_far = 0
        self.blank_so_far = 0

    def add(self, number: int, raw: bytes, size: int, config: PulseConfig, max_line_bytes: int) -> None:
        self.size += 1
        if size > max_line_bytes:
            reason = f"line is {size} bytes, over the {max_line_bytes}-byte limit (first {QUARANTINE_RAW_BYTES} kept)"
            self._reject(number, raw[:QUARANTINE_RAW_BYTES], reason, size=size)
            return
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            self._reject(
                number, raw, f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at position {exc.start})"
            )
            return
        try:
            obj = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            self._reject(number, raw, f"not valid JSON: {exc}")
            return
        signed = _signed(obj, self.annotator)
        if signed is not obj:
            obj, text = signed, orjson.dumps(signed).decode()
        try:
            ann = parse_record(obj, config, may_hold_nul=b"\\u0000" in raw)
        except RecordError as exc:
            self._reject(number, raw, str(exc), family=exc.family, created_at=exc.created_at)
            return
        self.accepted.append((number, ann, text))

    def _reject(
        self,
        number: int,
        raw: bytes,
        reason: str,
        *,
        size: int | None = None,
        family: str | None = None,
        created_at: dt.datetime | None = None,
    ) -> None:
        day = created_at.date() if created_at else self.ingest_day
        self.rejected.append(
            _Rejected(
                number, raw, len(raw) if size is None else size, f"line {number}: {reason}", family, day
            )
        )

    def close(self, result: IngestResult, at: dt.datetime, dialect: str) -> None:
        """Freeze the batch: running line counts, the rows to insert and, for PostgreSQL, their COPY text.

        Runs on the parsing thread, so the writing thread has little Python left to do.
        """
        self.lines_so_far = result.lines
        self.blank_so_far = result.blank_lines
        self.at = at
        self.rows, self.dupes = _unique_rows(self, at)
        if dialect == "postgresql" and self.rows:
            self.copy_text = _as_copy_text(self.rows)


class _Writer:
    """Writes one batch, its tallies and the ingestion's running totals in one transaction.

    Safe to call from several threads at once: the totals are added in SQL, the caller's
    result is updated under a lock.
    """

    def __init__(self, store: Store, result: IngestResult, restore: frozenset[tuple[str, str]] = frozenset()):
        self.store = store
        self.result = result
        self.lock = threading.Lock()
        self.to_restore = set(restore)  # consumed as lines restore them, under `lock`

    def write(self, batch: _Batch, *, final: bool = False) -> None:
        if self.store.dialect != "postgresql":
            self._commit(batch, final, lambda conn: _insert_annotations(conn, batch.rows))
            return
        from psycopg2.errors import DeadlockDetected, UniqueViolation

        try:  # new records, the common case: one COPY straight into the table
            self._commit(batch, final, lambda conn: _copy_annotations(conn, batch))
            return
        except Exception as exc:
            if not _caused_by(exc, UniqueViolation, DeadlockDetected):  # stored already, or arriving now
                raise
        for attempt in range(3):
            try:
                self._commit(batch, final, lambda conn: _copy_annotations(conn, batch, staged=True))
                return
            except Exception as exc:  # two batches inserting each other's duplicates: try again
                if attempt == 2 or not _caused_by(exc, DeadlockDetected):
                    raise

    def _commit(self, batch: _Batch, final: bool, insert: Callable[[sa.Connection], set[str]]) -> None:
        taken: list[tuple[str, str]] = []
        try:
            self._write(batch, final, insert, taken)
        except BaseException:
            with self.lock:
                self.to_restore.update(taken)
            raise

    def _write(
        self,
        batch: _Batch,
        final: bool,
        insert: Callable[[sa.Connection], set[str]],
        taken: list[tuple[str, str]],
    ) -> None:
        result = self.result
        at, rows = batch.at, batch.rows
        with self.store.begin() as conn:
            inserted = insert(conn) if rows else set()
            batch.inserted = inserted
            restored = self._restored(rows, inserted, taken) if self.to_restore else set()
            # (family, day, outcome) for every line of the batch; a C-speed count, not a Python loop
            outcomes = Counter(
                (
                    r[_FAMILY],
                    r[_CREATED].date(),
                    "accepted" if r[_ID] in inserted else "restored" if r[_ID] in restored else "duplicates",
                )
                for r in rows
            )
            outcomes.update((a.family, (a.created_at or at).date(), "duplicates") for a in batch.dupes)
            outcomes.update((r.family or "", r.day, "quarantined") for r in batch.rejected)
            if batch.rejected:
                conn.execute(
                    quarantine.insert(),
                    [
                        {
                            "ingestion_id": batch.ingestion_id,
                            "source_file": batch.source,
                            "line_number": r.number,
                            "raw": r.raw,
                            "raw_size": r.size,
                            "reason": r.reason,
                            "family": r.family,
                            "day": r.day,
                            "quarantined_at": at,
                        }
                        for r in batch.rejected
                    ],
                )
            _insert_tallies(conn, batch, outcomes)
            accepted, quarantined = len(inserted), len(batch.rejected)
            duplicates = batch.size - accepted - quarantined - len(restored)
            c = ingestions.c
            conn.execute(
                ingestions.update()
                .where(c.id == batch.ingestion_id)
                .values(
                    lines=sa.case((c.lines > batch.lines_so_far, c.lines), else_=batch.lines_so_far),
                    blank_lines=sa.case(
                        (c.blank_lines > batch.blank_so_far, c.blank_lines), else_=batch.blank_so_far
                    ),
                    accepted=c.accepted + accepted,
                    duplicates=c.duplicates + duplicates,
                    quarantined=c.quarantined + quarantined,
                    restored=c.restored + len(restored),
                    finished_at=at if final else None,
                )
            )
        with self.lock:  # committed: only now does the caller's result move
            result.accepted += accepted
            result.duplicates += duplicates
            result.quarantined += quarantined
            result.restored += len(restored)
            for (family, _, outcome), n in outcomes.items():
                if outcome == "accepted":
                    result.by_family[family] += n
            result.reasons.extend(r.reason for r in batch.rejected[: max(0, 20 - len(result.reasons))])

    def _restored(
        self, rows: list[tuple[Any, ...]], inserted: set[str], taken: list[tuple[str, str]]
    ) -> set[str]:
        """Ids of rows not inserted that restore a record; each record is restored by one line
        only. The keys taken go to `taken`, to be handed back if the transaction fails."""
        out = set()
        with self.lock:
            for r in rows:
                key = (r[_FAMILY], r[_HASH])
                if r[_ID] not in inserted and key in self.to_restore:
                    self.to_restore.discard(key)
                    taken.append(key)
                    out.add(r[_ID])
        return out


# Column order of a row to insert; a row also carries the record's JSON text at _TEXT.
_COLUMNS = (
    "id", "family", "kind", "payload", "content_hash", "created_at", "ingested_at",
    "annotator", "model_version", "source_file", "source_line", "ingestion_id",
)  # fmt: skip
_ID, _FAMILY, _HASH, _CREATED, _TEXT = 0, 1, 4, 5, 12


def _unique_rows(batch: _Batch, at: dt.datetime) -> tuple[list[tuple[Any, ...]], list[Annotation]]:
    """Rows to insert (in `_COLUMNS` order), and annotations repeating an earlier one in the batch."""
    rows: list[tuple[Any, ...]] = []
    dupes: list[Annotation] = []
    seen_ids: set[str] = set()
    seen_hashes: set[tuple[str, str]] = set()
    source, ingestion_id = batch.source, batch.ingestion_id
    for number, ann, text in batch.accepted:
        key = (ann.family, ann.content_hash)
        if ann.id in seen_ids or key in seen_hashes:
            dupes.append(ann)
            continue
        seen_ids.add(ann.id)
        seen_hashes.add(key)
        rows.append(
            (
                ann.id, ann.family, ann.kind, ann.payload, ann.content_hash, ann.created_at or at, at,
                ann.annotator, ann.model_version, source, number, ingestion_id, text,
            )
        )  # fmt: skip
    return rows, dupes


def _insert_annotations(conn: sa.Connection, rows: list[tuple[Any, ...]]) -> set[str]:
    """SQLite: insert rows, skipping any whose id or (family, content_hash) exists; return inserted ids."""
    if not rows:
        return set()
    from sqlalchemy.dialects.sqlite import insert

    stmt = insert(annotations).on_conflict_do_nothing().returning(annotations.c.id)
    return set(conn.execute(stmt, [dict(zip(_COLUMNS, r[:_TEXT], strict=True)) for r in rows]).scalars())


_COPY = f"COPY annotations ({', '.join(_COLUMNS)}) FROM STDIN"
_STAGING = f"""
CREATE TEMPORARY TABLE IF NOT EXISTS pulse_ingest_staging (LIKE annotations INCLUDING DEFAULTS)
ON COMMIT DELETE ROWS;
COPY pulse_ingest_staging ({", ".join(_COLUMNS)}) FROM STDIN
"""
_MOVE_STAGED = f"""
INSERT INTO annotations ({", ".join(_COLUMNS)})
SELECT {", ".join(_COLUMNS)} FROM pulse_ingest_staging
ON CONFLICT DO NOTHING
RETURNING id
"""


def _copy_annotations(conn: sa.Connection, batch: _Batch, *, staged: bool = False) -> set[str]:
    """PostgreSQL: COPY the batch into `annotations`; return the ids inserted.

    Straight into the table, a COPY fails on the first row already stored (psycopg2's
    UniqueViolation, for the caller to retry with `staged=True`). Staged, the rows go into a
    temporary table and then `INSERT ... ON CONFLICT DO NOTHING`.
    """
    data = batch.copy_text
    cursor = conn.connection.dbapi_connection.cursor()  # same transaction as `conn`
    try:
        if not staged:
            cursor.copy_expert(_COPY, io.StringIO(data), size=len(data) + 1)
            return {r[_ID] for r in batch.rows}
        cursor.copy_expert(_STAGING, io.StringIO(data), size=len(data) + 1)
        cursor.execute(_MOVE_STAGED)
        return {row[0] for row in cursor.fetchall()}
    finally:
        cursor.close()


def _as_copy_text(rows: list[tuple[Any, ...]]) -> str:
    """Rows in COPY's text format; the payload is the record's own JSON text."""
    ingested = rows[0][6].isoformat()  # one ingestion time per batch
    return "".join(
        "\t".join(
            (
                _copy_field(r[0]),
                r[1],
                r[2],
                _copy_field(r[_TEXT]),
                r[_HASH],
                r[_CREATED].isoformat(),
                ingested,
                _copy_field(r[7]),
                _copy_field(r[8]),
                _copy_field(r[9]),
                str(r[10]),
                str(r[11]),
            )
        )  # fmt: skip
        + "\n"
        for r in rows
    )


def _copy_field(value: str | None) -> str:
    if value is None:
        return "\\N"
    if "\\" in value or "\t" in value or "\n" in value or "\r" in value:
        return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    return value


def _insert_tallies(conn: sa.Connection, batch: _Batch, outcomes: Counter[tuple[str, dt.date, str]]) -> None:
    """Record this batch's counts per (family, day)."""
    tallies: dict[tuple[str, dt.date], Counter[str]] = {}
    for (family, day, outcome), n in outcomes.items():
        counter = tallies.setdefault((family, day), Counter())
        counter["lines"] += n
        counter[outcome] += n
    if tallies:
        conn.execute(
            ingestion_tallies.insert(),
            [
                {
                    "ingestion_id": batch.ingestion_id,
                    "batch": batch.number,
                    "family": family,
                    "day": day,
                    **{c: counter[c] for c in ("lines", "accepted", "duplicates", "quarantined", "restored")},
                }
                for (family, day), counter in tallies.items()
            ],
        )


def _caused_by(exc: BaseException, *kinds: type[BaseException]) -> bool:
    """True when `exc`, or the driver error SQLAlchemy wrapped in it, is one of `kinds`."""
    return isinstance(exc, kinds) or isinstance(getattr(exc, "orig", None), kinds)
