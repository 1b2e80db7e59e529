"""Annotations in and fixed: ingest, quarantine, invalidate a day, close a review session, and the
review queue through Label Studio files."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Annotated, Any

import typer

from pulse_pipeline.cli.app import (
    FamilyOpt,
    JsonFlag,
    annotations_app,
    app,
    command,
    load_families,
    parse_day,
    review_app,
    sessions_app,
    user,
)
from pulse_pipeline.cli.output import UserError, emit, say
from pulse_pipeline.core.families import PulseConfig
from pulse_pipeline.core.ingestion import IngestResult, ingest_file, replace_day
from pulse_pipeline.core.store import Store
from pulse_pipeline.settings import get_settings


@command(app)
def ingest(
    file: Annotated[
        Path, typer.Argument(help="A JSON Lines file of annotation records, or a CSV table of them (.csv).")
    ],
    replace: Annotated[
        str | None,
        typer.Option(
            "--replace-day",
            metavar="DAY",
            help="The file corrects this UTC day (YYYY-MM-DD): the day's records of the families in "
            "the file that it no longer holds are invalidated, the ones it repeats are restored. "
            "Every record must be dated DAY.",
        ),
    ] = None,
    annotator: Annotated[
        str | None,
        typer.Option(
            "--annotator",
            metavar="NAME",
            help="Records without an `annotator` are judgments of NAME (a person, team or dataset), "
            "trainable as human labels, instead of captured predictions waiting for review. For "
            "importing a labelled dataset.",
        ),
    ] = None,
    family: Annotated[
        str | None,
        typer.Option(
            "--family",
            metavar="NAME",
            help="CSV files: the family of rows without a family column.",
        ),
    ] = None,
    kind: Annotated[
        str | None,
        typer.Option(
            "--kind",
            metavar="KIND",
            help="CSV files: the kind of rows without a kind column (default: the family's one kind).",
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Load annotation records; print accepted, duplicates, quarantined and lines
    (with --replace-day also restored and invalidated)."""
    config = load_families()
    day = parse_day(replace, "--replace-day") if replace is not None else None
    if annotator is not None and not annotator.strip():
        raise UserError("--annotator: give a name (a person, team or dataset), not an empty string")
    if day is not None and file.suffix.lower() == ".csv":
        raise UserError("--replace-day reads JSON Lines files; write the corrected day as JSON records")
    with Store(get_settings().database_url) as store:
        if day is None:
            result = ingest_file(store, file, config, annotator=annotator, family=family, kind=kind)
        else:
            result = replace_day(store, file, config, day, by=user(), annotator=annotator)
    if as_json:
        emit(_ingest_report(result) | ({"replaced_day": day.isoformat()} if day else {}))
        return
    keys = ["accepted", "duplicates", "quarantined", "lines"]
    if day is not None:
        keys[1:1] = ["restored", "invalidated"]
    for key in keys:
        say(f"{key:<12} {getattr(result, key)}")
    if day is not None:
        say(f"next: backfill {day}: {_backfill_hint(config, result.replaced_families, day)}", err=True)
    if result.quarantined:
        say("", err=True)
        for reason in result.reasons[:10]:
            say(f"quarantined: {reason}", err=True)
        more = result.quarantined - min(10, len(result.reasons))
        say(
            f"{'... and ' + str(more) + ' more; ' if more > 0 else ''}see `pulse quarantine`", err=True
        )


def _ingest_report(result: IngestResult) -> dict[str, Any]:
    return {
        "accepted": result.accepted,
        "duplicates": result.duplicates,
        "quarantined": result.quarantined,
        "restored": result.restored,
        "invalidated": result.invalidated,
        "lines": result.lines,
        "blank_lines": result.blank_lines,
        "ingestion_id": result.ingestion_id,
        "source": result.source,
        "accepted_by_family": dict(result.by_family),
        "quarantine_reasons": result.reasons,
    }


@command(app)
def quarantine(
    limit: Annotated[int, typer.Option(help="How many of the latest quarantined lines.")] = 20,
    as_json: JsonFlag = False,
) -> None:
    """Show the latest quarantined lines with their reasons."""
    with Store(get_settings().database_url) as store:
        rows = store.annotations.quarantined(limit=limit)
    items = [
        {
            "source": r.source_file,
            "line": r.line_number,
            "reason": r.reason,
            "family": r.family,
            "raw": r.raw[:200].decode("utf-8", errors="backslashreplace"),
            "raw_size": r.raw_size,
            "quarantined_at": r.quarantined_at,
        }
        for r in rows
    ]
    if as_json:
        emit({"quarantined": items})
        return
    for item in items:
        where = item["source"] if item["line"] is None else f"{item['source']}:{item['line']}"
        say(f"{where}  {item['reason']}")


def _backfill_hint(config: PulseConfig, families: list[str], day: dt.date) -> str:
    """The commands, as typed, that re-audit the day and rebuild the families' snapshots."""
    names = families or list(config.families)
    selected = " ".join(f"--family {name}" for name in names)
    snapshots = ", ".join(f"`pulse snapshot --family {name}`" for name in names)
    return f"`pulse backfill {selected} --day {day}` (a Dagster backfill, shown in the UI), then {snapshots}"




@command(annotations_app, "invalidate")
def annotations_invalidate(
    family: Annotated[str, typer.Option("--family", "-f", help="A family declared in pulse.yaml.")],
    day: Annotated[str, typer.Option("--day", metavar="DAY", help="The UTC day of created_at (YYYY-MM-DD).")],
    ids: Annotated[
        list[str] | None,
        typer.Option("--ids", metavar="ID [ID ...]", help="Only these records (default: the whole day)."),
    ] = None,
    more_ids: Annotated[list[str] | None, typer.Argument(metavar="ID", hidden=True)] = None,
    reason: Annotated[str, typer.Option(help="Why, for the audit trail.")] = "no reason given",
    as_json: JsonFlag = False,
) -> None:
    """Exclude a day's records (or some of them) from training, counts and exports; they stay stored."""
    from pulse_pipeline.core.store import InvalidationError

    config = load_families()
    config.family(family)
    when = parse_day(day, "--day")
    wanted = [i for value in [*(ids or []), *(more_ids or [])] for i in value.split(",") if i.strip()]
    if more_ids and not ids:
        raise UserError(f"unexpected argument {more_ids[0]!r}; record ids go after --ids")
    by = user()
    with Store(get_settings().database_url) as store:
        try:
            fix = store.fixes.invalidate(
                family, day=when, ids=[i.strip() for i in wanted] or None, reason=reason, by=by
            )
        except InvalidationError as exc:
            raise UserError(str(exc)) from None
    report = {
        "family": family,
        "day": when.isoformat(),
        "invalidated": fix.invalidated,
        "already_invalidated": fix.already_invalidated,
        "reason": reason,
        "by": by,
    }
    if as_json:
        emit(report)
        return
    say(
        f"invalidated {fix.invalidated} {family} annotations of {when}"
        + (f" ({fix.already_invalidated} were invalidated already)" if fix.already_invalidated else "")
    )
    say(f"next: backfill {when}: {_backfill_hint(config, [family], when)}", err=True)




@command(sessions_app, "close")
def sessions_close(
    session_id: Annotated[str, typer.Argument(help="The session_id its segment reviews carry.")],
    by: Annotated[str | None, typer.Option(help="Who closes it (default: cli:<login>).")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Record that a review session closed; its family's sensor then retrains on its new reviews."""
    from pulse_pipeline.core.review_sessions import SessionError, close_session

    config = load_families()
    with Store(get_settings().database_url) as store:
        try:
            closed = close_session(store, config, session_id, by=by or user())
        except SessionError as exc:
            raise UserError(str(exc)) from None
    report = {
        "session_id": closed.session_id,
        "family": closed.family,
        "closed_at": closed.closed_at.isoformat(),
        "closed_by": closed.closed_by,
        "segment_reviews": closed.segment_reviews,
    }
    if as_json:
        emit(report)
        return
    say(
        f"closed session {closed.session_id} of {closed.family}: {closed.segment_reviews} segment reviews"
    )






@command(review_app, "export")
def review_export(
    family: FamilyOpt,
    out: Annotated[Path | None, typer.Option(help="Write the tasks here instead of stdout.")] = None,
    label_config: Annotated[
        Path | None, typer.Option(help="Also write a Label Studio labeling config here.")
    ] = None,
) -> None:
    """The queue as Label Studio tasks (text plus the router's suggestion as a prediction)."""
    from pulse_pipeline.core.review import labeling_config, review_queue, to_label_studio

    settings = get_settings()
    fam = load_families().family(family)
    with Store(settings.database_url) as store:
        tasks = to_label_studio(review_queue(store.annotations.iter_family(family), fam), fam)
    text = json.dumps(tasks, indent=2, ensure_ascii=False, default=str)
    if out is None:
        say(text)
    else:
        out.write_text(text + "\n", encoding="utf-8")
        say(f"{len(tasks)} tasks -> {out}", err=True)
    if label_config is not None:
        label_config.write_text(labeling_config(fam), encoding="utf-8")


@command(review_app, "import")
def review_import(
    file: Annotated[Path, typer.Argument(help="A Label Studio JSON export of completed tasks.")],
    family: FamilyOpt,
    as_json: JsonFlag = False,
) -> None:
    """Completed Label Studio tasks back in as human-reviewed annotations."""
    import orjson

    from pulse_pipeline.core.ingestion import ingest_lines
    from pulse_pipeline.core.review import LabelStudioError, from_label_studio

    config = load_families()
    try:
        tasks = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{file}: cannot be read as a Label Studio JSON export: {exc}") from None
    try:
        records, unanswered = from_label_studio(tasks, config.family(family))
    except LabelStudioError as exc:
        raise UserError(f"{file}: {exc}") from None
    with Store(get_settings().database_url) as store:
        result = ingest_lines(store, (orjson.dumps(r) for r in records), config, source=str(file))
    report = {**_ingest_report(result), "unanswered_tasks": unanswered}
    if as_json:
        emit(report)
        return
    for key in ("accepted", "duplicates", "quarantined", "lines", "unanswered_tasks"):
        say(f"{key:<17} {report[key]}")
