"""Loading annotation records from JSON Lines into the store.

Streams the file (memory bounded by one batch), inserts in batches, derives ids from
content so re-ingesting is a no-op, and quarantines every line it cannot accept with a
reason that names the line and the field. Every non-empty line ends up counted exactly once:
accepted + duplicates + quarantined == lines.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson
import sqlalchemy as sa

from pulse_pipeline.core.annotations import Annotation, RecordError, parse_record
from pulse_pipeline.core.families import PulseConfig
from pulse_pipeline.core.store import Store, annotations, ingestion_tallies, ingestions, quarantine

BATCH_SIZE = 2000
MAX_LINE_BYTES = 8 * 1024 * 1024
QUARANTINE_RAW_BYTES = 64 * 1024  # a huge line keeps its first 64 KiB in quarantine


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
    by_family: Counter[str] = field(default_factory=Counter)
    reasons: list[str] = field(default_factory=list)  # first few quarantine reasons, for the CLI

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["by_family"] = dict(self.by_family)
        return d


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
    now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
) -> IngestResult:
    """Ingest one JSON Lines file. Raises IngestError only when the file cannot be opened."""
    path = Path(path)
    try:
        handle = path.open("rb")
    except IsADirectoryError:
        raise IngestError(f"{path}: is a folder, not a JSON Lines file") from None
    except OSError as exc:
        raise IngestError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    with handle:
        return ingest_lines(
            store,
            _read_lines(handle, max_line_bytes),
            config,
            source=str(path),
            batch_size=batch_size,
            max_line_bytes=max_line_bytes,
            now=now,
        )


def ingest_lines(
    store: Store,
    lines: Iterable[_Line | bytes],
    config: PulseConfig,
    *,
    source: str,
    batch_size: int = BATCH_SIZE,
    max_line_bytes: int = MAX_LINE_BYTES,
    now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
) -> IngestResult:
    started = now()
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
    result = IngestResult(source=source, ingestion_id=ingestion_id)
    batch = _Batch(ingestion_id, source, started.date())
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
            _flush(store, batch, result, now())
            batch = _Batch(ingestion_id, source, started.date())
    _flush(store, batch, result, now(), final=True)
    return result


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


class _Batch:
    """Accepted and quarantined lines waiting for one transaction."""

    def __init__(self, ingestion_id: int, source: str, ingest_day: dt.date):
        self.ingestion_id = ingestion_id
        self.source = source
        self.ingest_day = ingest_day
        self.accepted: list[tuple[int, Annotation]] = []
        self.rejected: list[tuple[int, bytes, int, str, str | None, dt.date]] = []
        self.size = 0

    def add(self, number: int, raw: bytes, size: int, config: PulseConfig, max_line_bytes: int) -> None:
        self.size += 1
        if size > max_line_bytes:
            reason = f"line is {size} bytes, over the {max_line_bytes}-byte limit (first {QUARANTINE_RAW_BYTES} kept)"
            self._reject(number, raw[:QUARANTINE_RAW_BYTES], reason, None, None, size)
            return
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            self._reject(
                number,
                raw,
                f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at position {exc.start})",
                None,
                None,
            )
            return
        try:
            obj = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            self._reject(number, raw, f"not valid JSON: {exc}", None, None)
            return
        try:
            ann = parse_record(obj, config, may_hold_nul=b"\\u0000" in raw)
        except RecordError as exc:
            self._reject(number, raw, str(exc), exc.family, exc.created_at)
            return
        self.accepted.append((number, ann))

    def _reject(
        self,
        number: int,
        raw: bytes,
        reason: str,
        family: str | None,
        created_at: dt.datetime | None,
        size: int | None = None,
    ) -> None:
        day = created_at.date() if created_at else self.ingest_day
        self.rejected.append(
            (number, raw, size if size is not None else len(raw), f"line {number}: {reason}", family, day)
        )


def _flush(
    store: Store, batch: _Batch, result: IngestResult, at: dt.datetime, *, final: bool = False
) -> None:
    """Write one batch, its tallies and the ingestion's running totals in one transaction."""
    tallies: dict[tuple[str, dt.date], Counter[str]] = {}

    def tally(family: str | None, day: dt.date, outcome: str) -> None:
        c = tallies.setdefault((family or "", day), Counter())
        c["lines"] += 1
        c[outcome] += 1

    rows: list[dict[str, Any]] = []
    seen_ids: set[str] = set()
    seen_hashes: set[tuple[str, str]] = set()
    in_batch_dupes: list[Annotation] = []
    for number, ann in batch.accepted:
        key = (ann.family, ann.content_hash)
        if ann.id in seen_ids or key in seen_hashes:
            in_batch_dupes.append(ann)
            continue
        seen_ids.add(ann.id)
        seen_hashes.add(key)
        rows.append(
            {
                "id": ann.id,
                "family": ann.family,
                "kind": ann.kind,
                "payload": ann.payload,
                "content_hash": ann.content_hash,
                "created_at": ann.created_at or at,
                "ingested_at": at,
                "annotator": ann.annotator,
                "model_version": ann.model_version,
                "source_file": batch.source,
                "source_line": number,
                "ingestion_id": batch.ingestion_id,
            }
        )
    with store.begin() as conn:
        inserted: set[str] = set()
        if rows:
            stmt = _insert_ignoring_conflicts(store.dialect).returning(annotations.c.id)
            inserted = set(conn.execute(stmt, rows).scalars())
        for row in rows:
            tally(
                row["family"], row["created_at"].date(), "accepted" if row["id"] in inserted else "duplicates"
            )
        for ann in in_batch_dupes:
            tally(ann.family, (ann.created_at or at).date(), "duplicates")
        if batch.rejected:
            conn.execute(
                quarantine.insert(),
                [
                    {
                        "ingestion_id": batch.ingestion_id,
                        "source_file": batch.source,
                        "line_number": number,
                        "raw": raw,
                        "raw_size": size,
                        "reason": reason,
                        "family": family,
                        "day": day,
                        "quarantined_at": at,
                    }
                    for number, raw, size, reason, family, day in batch.rejected
                ],
            )
            for _, _, _, reason, family, day in batch.rejected:
                tally(family, day, "quarantined")
                if len(result.reasons) < 20:
                    result.reasons.append(reason)
        _upsert_tallies(conn, store.dialect, batch.ingestion_id, tallies)
        accepted = len(inserted)
        quarantined = len(batch.rejected)
        duplicates = batch.size - accepted - quarantined
        result.accepted += accepted
        result.duplicates += duplicates
        result.quarantined += quarantined
        for _, ann in batch.accepted:
            if ann.id in inserted:
                result.by_family[ann.family] += 1
        conn.execute(
            ingestions.update()
            .where(ingestions.c.id == batch.ingestion_id)
            .values(
                lines=result.lines,
                blank_lines=result.blank_lines,
                accepted=result.accepted,
                duplicates=result.duplicates,
                quarantined=result.quarantined,
                finished_at=at if final else None,
            )
        )


def _insert_ignoring_conflicts(dialect: str) -> Any:
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:  # pragma: no cover - the store supports these two
        raise NotImplementedError(f"ingestion does not support the {dialect} dialect")
    return insert(annotations).on_conflict_do_nothing()


def _upsert_tallies(
    conn: sa.Connection, dialect: str, ingestion_id: int, tallies: dict[tuple[str, dt.date], Counter[str]]
) -> None:
    if not tallies:
        return
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    stmt = insert(ingestion_tallies)
    counts = ("lines", "accepted", "duplicates", "quarantined")
    stmt = stmt.on_conflict_do_update(
        index_elements=["ingestion_id", "family", "day"],
        set_={c: getattr(ingestion_tallies.c, c) + getattr(stmt.excluded, c) for c in counts},
    )
    conn.execute(
        stmt,
        [
            {"ingestion_id": ingestion_id, "family": fam, "day": day, **{c: counter[c] for c in counts}}
            for (fam, day), counter in tallies.items()
        ],
    )
