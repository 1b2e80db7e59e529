"""The `pulse` command. Work that has a Dagster asset or job runs through it, so runs show in the UI."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from pathlib import Path
from typing import Annotated, Any

import typer

from pulse_pipeline.core.adapters import AdapterError
from pulse_pipeline.core.artifacts import ArtifactError
from pulse_pipeline.core.families import ConfigError, PulseConfig, load_config
from pulse_pipeline.core.ingestion import IngestError, IngestResult, ingest_file, replace_day
from pulse_pipeline.core.registry import RegistryError
from pulse_pipeline.core.snapshots import latest_manifest
from pulse_pipeline.core.store import Store, StoreError
from pulse_pipeline.core.training.runner import new_annotations_since_training
from pulse_pipeline.settings import get_settings

app = typer.Typer(
    help="pulse_pipeline: continuous fine-tuning from human feedback.",
    no_args_is_help=True,
    add_completion=False,
)
db_app = typer.Typer(help="The annotation store's schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")

JsonFlag = Annotated[
    bool, typer.Option("--json", help="Print one JSON object on stdout and nothing else there.")
]


class UserError(Exception):
    """Exit 1 with this one line on stderr."""


def _fail_cleanly(fn: Callable[..., Any]) -> Callable[..., Any]:
    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (
            UserError,
            ConfigError,
            StoreError,
            IngestError,
            ArtifactError,
            AdapterError,
            RegistryError,
        ) as exc:
            typer.echo(f"pulse: {exc}".replace("\n", "; "), err=True)
            raise typer.Exit(getattr(exc, "exit_code", 1)) from None

    return wrapper


def _config() -> PulseConfig:
    return load_config(get_settings().pulse_config)


def _emit(obj: dict[str, Any]) -> None:
    typer.echo(json.dumps(obj, default=str, sort_keys=False))


@app.command()
@_fail_cleanly
def ingest(
    file: Annotated[Path, typer.Argument(help="A JSON Lines file of annotation records.")],
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
    as_json: JsonFlag = False,
) -> None:
    """Load annotation records; print accepted, duplicates, quarantined and lines
    (with --replace-day also restored and invalidated)."""
    config = _config()
    day = _day(replace, "--replace-day") if replace is not None else None
    with Store(get_settings().database_url) as store:
        if day is None:
            result = ingest_file(store, file, config)
        else:
            result = replace_day(store, file, config, day, by=_user())
    if as_json:
        _emit(_ingest_report(result) | ({"replaced_day": day.isoformat()} if day else {}))
        return
    keys = ["accepted", "duplicates", "quarantined", "lines"]
    if day is not None:
        keys[1:1] = ["restored", "invalidated"]
    for key in keys:
        typer.echo(f"{key:<12} {getattr(result, key)}")
    if day is not None:
        typer.echo(f"next: backfill {day}: {_backfill_hint(config, result.replaced_families, day)}", err=True)
    if result.quarantined:
        typer.echo("", err=True)
        for reason in result.reasons[:10]:
            typer.echo(f"quarantined: {reason}", err=True)
        more = result.quarantined - min(10, len(result.reasons))
        typer.echo(
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


@app.command()
@_fail_cleanly
def quarantine(
    limit: Annotated[int, typer.Option(help="How many of the latest quarantined lines.")] = 20,
    as_json: JsonFlag = False,
) -> None:
    """Show the latest quarantined lines with their reasons."""
    with Store(get_settings().database_url) as store:
        rows = store.quarantined(limit=limit)
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
        _emit({"quarantined": items})
        return
    for item in items:
        typer.echo(f"{item['source']}:{item['line']}  {item['reason']}")


def _day(value: str, option: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise UserError(f"{option} {value!r} is not a day (YYYY-MM-DD)") from None


def _backfill_hint(config: PulseConfig, families: list[str], day: dt.date) -> str:
    names = families or list(config.families)
    select = ",".join(f"{name}/annotations" for name in names)
    snapshots = ", ".join(f"`pulse snapshot --family {name}`" for name in names)
    return (
        f"`dagster asset materialize -m pulse_pipeline.definitions --select '{select}' --partition {day}` "
        f"(or that partition in the UI), then {snapshots}"
    )


annotations_app = typer.Typer(
    help="Fix stored annotations: invalidate a bad day or bad records.", no_args_is_help=True
)
app.add_typer(annotations_app, name="annotations")


@annotations_app.command("invalidate")
@_fail_cleanly
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

    config = _config()
    config.family(family)
    when = _day(day, "--day")
    wanted = [i for value in [*(ids or []), *(more_ids or [])] for i in value.split(",") if i.strip()]
    if more_ids and not ids:
        raise UserError(f"unexpected argument {more_ids[0]!r}; record ids go after --ids")
    by = _user()
    with Store(get_settings().database_url) as store:
        try:
            fix = store.invalidate(
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
        _emit(report)
        return
    typer.echo(
        f"invalidated {fix.invalidated} {family} annotations of {when}"
        + (f" ({fix.already_invalidated} were invalidated already)" if fix.already_invalidated else "")
    )
    typer.echo(f"next: backfill {when}: {_backfill_hint(config, [family], when)}", err=True)


sessions_app = typer.Typer(help="Review (dojo) sessions.", no_args_is_help=True)
app.add_typer(sessions_app, name="sessions")


@sessions_app.command("close")
@_fail_cleanly
def sessions_close(
    session_id: Annotated[str, typer.Argument(help="The session_id its segment reviews carry.")],
    by: Annotated[str | None, typer.Option(help="Who closes it (default: cli:<login>).")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Record that a review session closed; its family's sensor then retrains on its new reviews."""
    from pulse_pipeline.core.review_sessions import SessionError, close_session

    config = _config()
    with Store(get_settings().database_url) as store:
        try:
            closed = close_session(store, config, session_id, by=by or _user())
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
        _emit(report)
        return
    typer.echo(
        f"closed session {closed.session_id} of {closed.family}: {closed.segment_reviews} segment reviews"
    )


@db_app.command("upgrade")
@_fail_cleanly
def db_upgrade(as_json: JsonFlag = False) -> None:
    """Apply the store's migrations (also done on first use)."""
    url = get_settings().database_url
    with Store(url, upgrade=False) as store:
        before = store.revision()
        after = store.upgrade()
    if as_json:
        _emit({"from_revision": before, "revision": after})
    else:
        typer.echo(
            f"annotation store at revision {after}"
            + ("" if before == after else f" (was {before or 'empty'})")
        )


@app.command()
@_fail_cleanly
def demo(
    seed: Annotated[int, typer.Option(help="Seed of the demo data generator.")] = 7,
    scale: Annotated[float, typer.Option(help="Multiply the demo's record counts.")] = 1.0,
) -> None:
    """Set up the embedded default, load demo annotations, build snapshots and train every family in Dagster."""
    from pulse_pipeline.core.demo_data import FALLBACK_INTENTS, DemoScale, write_demo_file

    settings = get_settings()
    config = _config()
    home = settings.pulse_home
    home.mkdir(parents=True, exist_ok=True)
    _prepare_dagster_home(settings.dagster_home, settings.pulse_config.parent)
    clinc = _find_clinc150(settings.pulse_config.parent)
    intent = config.families.get("intent-router")
    demo_file = write_demo_file(
        home / "demo" / "annotations.jsonl",
        seed=seed,
        anchor=dt.datetime.now(dt.UTC).date(),
        scale=DemoScale().scaled(scale),
        clinc150_dir=clinc,
        intent_labels=intent.labels if intent and intent.labels else FALLBACK_INTENTS,
    )
    typer.echo(f"demo data: {sum(demo_file.counts.values())} records -> {demo_file.path}")
    typer.echo(f"  intent labels from {demo_file.intent_source}")
    with Store(settings.database_url) as store:
        result = ingest_file(store, demo_file.path, config)
        days = store.days_with_annotations()
    typer.echo(
        f"ingested: {result.accepted} accepted, {result.duplicates} duplicates, {result.quarantined} quarantined "
        f"of {result.lines} lines ({demo_file.flawed_lines} lines are flawed on purpose)"
    )
    for reason in result.reasons[:5]:
        typer.echo(f"  quarantined: {reason}")
    runs = _materialize_days(config, days)
    typer.echo(
        f"dagster: materialized {len(config.families)} annotation assets for {len(days)} days in {runs} runs"
    )
    _run_assets(config, _dataset_keys(config, list(config.families)))
    artifacts = settings.artifact_store()
    for name in config.families:
        m = latest_manifest(artifacts, name)
        assert m is not None
        c = m["counts"]
        typer.echo(
            f"snapshot {name:<15} {m['dataset_version']}  train {c['train']:>5}  val {c['val']:>4}  test {c['test']:>4}"
        )
    from pulse_pipeline.core.adapters import read_metadata
    from pulse_pipeline.core.registry import read_current

    for name in config.families:
        outcome = _run_retrain(config, name, epochs=None, max_samples=None, force=False, progress_bar=True)
        m = read_metadata(artifacts, name, outcome.version)
        typer.echo(
            f"adapter  {name:<15} {outcome.version}  {'(reused) ' if outcome.reused else ''}{m['base_model']}  "
            f"train loss {m['training_loss']:.4f}  val loss {m['best_validation_loss'] or float('nan'):.4f}  "
            f"{m['samples_used']} examples  {m['training_time_seconds']:.0f} s"
        )
        typer.echo(f"gate     {name:<15} {outcome.decision}  {outcome.report}")
        for reason in outcome.reasons:
            typer.echo(f"         {'':<15} {reason}")
        current = read_current(artifacts, name)
        typer.echo(f"current  {name:<15} {current['version'] if current else 'none (nothing promoted yet)'}")
    _demo_watch(config, artifacts)
    typer.echo("")
    typer.echo(f"PULSE_HOME    {home}")
    typer.echo(f"store         {settings.database_url}")
    typer.echo(f"DAGSTER_HOME  {settings.dagster_home}")
    typer.echo(
        f"artifacts     {settings.pulse_artifacts}  (datasets/<family>/<dataset_version>/, adapters/<family>/<version>/)"
    )
    typer.echo(
        f"mlflow        {settings.mlflow_tracking_uri}  (`mlflow ui --backend-store-uri {settings.mlflow_tracking_uri}`)"
    )
    typer.echo("next: `make ui` and open http://127.0.0.1:3000 to see the lineage and the runs;")
    typer.echo("      `pulse ingest FILE` to load your own annotation records;")
    typer.echo("      `pulse export --family intent-router --limit 3` to see training examples.")


def _demo_watch(config: PulseConfig, artifacts: Any) -> None:
    """What `daily_watch` does each night: every family's drift report and live accuracy."""
    from pulse_pipeline.core.drift.report import report_key
    from pulse_pipeline.defs.automation.schedules import watch_keys

    _run_assets(config, [key for family in config.families.values() for key in watch_keys(family)])
    for name, family in config.families.items():
        if family.automation.drift.enabled:
            drift = json.loads(artifacts.read_bytes(report_key(name)))
            typer.echo(f"drift    {name:<15} {drift['message']}")


def _prepare_dagster_home(dagster_home: Path, project_dir: Path) -> None:
    dagster_home.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    target = dagster_home / "dagster.yaml"
    template = project_dir / "dagster.yaml"
    if not target.exists() and template.is_file():
        shutil.copyfile(template, target)


def _find_clinc150(project_dir: Path) -> Path | None:
    """CLINC150 for the intent demo: PULSE_CLINC150 or ../shared/data/clinc150 beside the project."""
    candidates = [os.environ.get("PULSE_CLINC150"), project_dir.parent / "shared" / "data" / "clinc150"]
    for c in candidates:
        if c and (Path(c) / "data_full.json").is_file():
            return Path(c)
    return None


# In-process runs log to the console at DEBUG by default; the CLI prints one line per failure
# instead, and the UI keeps the full event log (tracebacks included).
QUIET_RUN = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


def _materialize_days(config: PulseConfig, days: list[dt.date]) -> int:
    """Run the daily annotations job for each day, recorded in the instance at DAGSTER_HOME."""
    import dagster as dg

    from pulse_pipeline.definitions import ANNOTATIONS_JOB, build_definitions

    defs = build_definitions(config)
    job = defs.resolve_job_def(ANNOTATIONS_JOB)
    start = config.annotations_start_date
    runs = 0
    with dg.DagsterInstance.get() as instance:
        for day in days:
            if day < start:
                continue
            result = job.execute_in_process(
                partition_key=day.isoformat(), instance=instance, raise_on_error=False, run_config=QUIET_RUN
            )
            if not result.success:
                raise UserError(f"the annotations run for {day} failed; open the Dagster UI for its logs")
            runs += 1
    return runs


def _dataset_keys(config: PulseConfig, families: list[str]) -> list[Any]:
    import dagster as dg

    from pulse_pipeline.core.triage import has_review_queue

    keys = []
    for name in families:
        family = config.family(name)
        names = (["review_queue"] if has_review_queue(family) else []) + ["examples", "dataset_snapshot"]
        keys += [dg.AssetKey([name, n]) for n in names]
    return keys


def _run_assets(config: PulseConfig, keys: list[Any]) -> None:
    """Materialize these (unpartitioned) assets in one run recorded at DAGSTER_HOME."""
    import dagster as dg

    from pulse_pipeline.definitions import build_definitions

    settings = get_settings()
    _prepare_dagster_home(settings.dagster_home, settings.pulse_config.parent)
    job = build_definitions(config).resolve_implicit_global_asset_job_def()
    with dg.DagsterInstance.get() as instance:
        result = job.execute_in_process(
            instance=instance, asset_selection=keys, raise_on_error=False, run_config=QUIET_RUN
        )
        if not result.success:
            failed = [
                f"{e.asset_key.to_user_string()} {e.check_name}"
                for e in result.get_asset_check_evaluations()
                if not e.passed and e.severity == dg.AssetCheckSeverity.ERROR
            ]
            detail = (
                f"blocking checks failed: {', '.join(failed)}"
                if failed
                else "open the Dagster UI for its logs"
            )
            raise UserError(f"run {result.run_id[:8]} failed; {detail}")


FamilyOpt = Annotated[str, typer.Option("--family", "-f", help="A family declared in pulse.yaml.")]


@app.command()
@_fail_cleanly
def snapshot(family: FamilyOpt, as_json: JsonFlag = False) -> None:
    """Build (or reuse) the family's dataset snapshot; print dataset_version and split sizes."""
    config = _config()
    config.family(family)
    _run_assets(config, _dataset_keys(config, [family]))
    m = latest_manifest(get_settings().artifact_store(), family)
    assert m is not None
    report = {
        "family": family,
        "dataset_version": m["dataset_version"],
        "parent_version": m["parent_version"],
        "splits": {s: m["counts"][s] for s in ("train", "val", "test")},
        "total": m["counts"]["total"],
        "created_at": m["created_at"],
    }
    if as_json:
        _emit(report)
        return
    typer.echo(f"dataset_version {report['dataset_version']}")
    for split, n in report["splits"].items():
        typer.echo(f"{split:<6} {n}")


@app.command()
@_fail_cleanly
def export(
    family: FamilyOpt,
    limit: Annotated[int | None, typer.Option(help="At most this many examples.")] = None,
    offset: Annotated[int, typer.Option(help="Skip this many examples first.")] = 0,
    fmt: Annotated[
        str, typer.Option("--format", help="jsonl (one example a line) or json (one list).")
    ] = "jsonl",
) -> None:
    """Write training examples to stdout: from the newest snapshot, or built from the store.
    Records invalidated since the snapshot was built are left out."""
    import itertools

    import orjson

    from pulse_pipeline.core.examples import build_examples, records
    from pulse_pipeline.core.snapshots import SPLITS, read_split

    if fmt not in ("jsonl", "json"):
        raise UserError(f"--format must be jsonl or json, not {fmt!r}")
    if offset < 0 or (limit is not None and limit < 0):
        raise UserError("--offset and --limit must not be negative")
    settings = get_settings()
    config = _config()
    fam = config.family(family)
    manifest = latest_manifest(settings.artifact_store(), family)
    if manifest is not None:
        artifacts = settings.artifact_store()
        with Store(settings.database_url) as store:
            invalidated = store.invalidated_ids(family)  # fixed since the snapshot was built
        rows = (
            row
            for split in SPLITS
            for row in read_split(artifacts, fam, manifest["dataset_version"], split)
            if row["id"] not in invalidated
        )
    else:
        with Store(settings.database_url) as store:
            rows = iter(records(fam, build_examples(store, fam)[0]))
    page = itertools.islice(rows, offset, None if limit is None else offset + limit)
    out = sys.stdout.buffer
    if fmt == "json":
        out.write(orjson.dumps(list(page)) + b"\n")
    else:
        for record in page:
            out.write(orjson.dumps(record) + b"\n")
    out.flush()


@app.command()
@_fail_cleanly
def status(
    family: Annotated[str | None, typer.Option("--family", "-f", help="One family (default: all).")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Training status: new annotations since the last training, against the family's minimum."""
    from pulse_pipeline.core.adapters import versions as adapter_versions

    settings = get_settings()
    config = _config()
    names = [config.family(family).name] if family else list(config.families)
    artifacts = settings.artifact_store()
    out: dict[str, Any] = {}
    from pulse_pipeline.core.registry import read_current

    with Store(settings.database_url) as store:
        for name in names:
            fam = config.family(name)
            manifest = latest_manifest(artifacts, name)
            lock = _live_lock(store, name, settings.pulse_training_lock_stale_hours)
            out[name] = {
                "is_training": lock is not None,
                "lock_acquired_at": lock["acquired_at"].isoformat() if lock else None,
                "current_version": read_current(artifacts, name),
                "available_versions": adapter_versions(artifacts, name),
                "dataset_version": manifest["dataset_version"] if manifest else None,
                "new_annotations_count": new_annotations_since_training(store, artifacts, fam),
                "min_annotations_required": fam.min_new_annotations,
            }
    if as_json:
        _emit(out[names[0]] if family else {"families": out})
        return
    for name, st in out.items():
        ready = (
            "ready to train" if st["new_annotations_count"] >= st["min_annotations_required"] else "waiting"
        )
        typer.echo(
            f"{name:<15} {st['new_annotations_count']:>6} new of {st['min_annotations_required']:>4} required  "
            f"({ready}; snapshot {st['dataset_version'] or 'none'}; {len(st['available_versions'])} adapter versions)"
        )


def _live_lock(store: Store, family: str, stale_hours: float) -> dict[str, Any] | None:
    """The family's training lock, unless it is stale (its holder crashed)."""
    lock = store.training_lock(family)
    if lock is None or dt.datetime.now(dt.UTC) - lock["heartbeat_at"] > dt.timedelta(hours=stale_hours):
        return None
    return lock


class NotEnoughAnnotations(UserError):
    """Exit 4: too few new annotations to train without --force."""

    exit_code = 4


class TrainingInProgress(UserError):
    """Exit 3: another training of the family holds the lock."""

    exit_code = 3


@app.command()
@_fail_cleanly
def train(
    family: FamilyOpt,
    force: Annotated[
        bool, typer.Option(help="Train even with too few new annotations, or on a snapshot already trained.")
    ] = False,
    epochs: Annotated[int | None, typer.Option(help="Override the family's training.epochs.")] = None,
    max_samples: Annotated[int | None, typer.Option(help="Train on at most this many examples.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Snapshot and train the family through its Dagster retrain job; print the new version."""
    settings = get_settings()
    config = _config()
    fam = config.family(family)
    artifacts = settings.artifact_store()
    with Store(settings.database_url) as store:
        lock = _live_lock(store, family, settings.pulse_training_lock_stale_hours)
        new = new_annotations_since_training(store, artifacts, fam)
    if lock is not None:
        raise TrainingInProgress(
            f"{family}: training already in progress since {lock['acquired_at']:%Y-%m-%d %H:%M:%S} UTC ({lock['holder']})"
        )
    if new < fam.min_new_annotations and not force:
        raise NotEnoughAnnotations(
            f"{family}: {new} new annotations of the {fam.min_new_annotations} required to train; --force trains anyway"
        )
    outcome = _run_retrain(
        config, family, epochs=epochs, max_samples=max_samples, force=force, progress_bar=not as_json
    )
    from pulse_pipeline.core.adapters import read_metadata

    version = outcome.version
    m = read_metadata(artifacts, family, version)
    trained = (
        f"{version} was already trained on this snapshot (--force retrains)"
        if outcome.reused
        else f"trained {version}"
    )
    report = {
        "status": "completed",
        "message": f"{trained}; promotion gate: {outcome.decision}",
        "family": family,
        "version": version,
        "dataset_version": m["dataset_version"],
        "samples_used": m["samples_used"],
        "epochs": m["epochs"],
        "training_loss": m["training_loss"],
        "validation_loss": m["best_validation_loss"],
        "training_time_seconds": m["training_time_seconds"],
        "new_annotations_count": new,
        "decision": outcome.decision,
        "reasons": outcome.reasons,
        "report": outcome.report,
        "path": artifacts.uri(f"adapters/{family}/{version}"),
        "mlflow_run_id": (m.get("mlflow") or {}).get("run_id"),
    }
    if as_json:
        _emit(report)
        return
    typer.echo(report["message"])
    for key, value in report.items():
        if key not in ("status", "message", "reasons"):
            typer.echo(f"{key:<22} {value if value is not None else '-'}")
    for reason in outcome.reasons:
        typer.echo(f"  {reason}")


@app.command()
@_fail_cleanly
def evaluate(
    family: FamilyOpt,
    version: Annotated[
        str | None, typer.Option(help="The version to judge (default: current, else the newest).")
    ] = None,
    eval_file: Annotated[
        list[Path] | None, typer.Option(help="Also evaluate on this file of annotation records (repeatable).")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Judge a version against production (or the base model) through the family's eval_report asset."""
    from pulse_pipeline.core import adapters, registry

    settings = get_settings()
    config = _config()
    fam = config.family(family)
    artifacts = settings.artifact_store()
    if version is None:
        current = registry.read_current(artifacts, family)
        found = adapters.versions(artifacts, family)
        version = current["version"] if current else (found[-1] if found else None)
        if version is None:
            raise UserError(f"{family} has no trained version yet: run `pulse train --family {family}`")
    if not adapters.is_version_of(family, version):
        raise UserError(f"--version {version!r} is not a version name of {family} ({family}-YYYYMMDD-HHMM)")
    if version not in adapters.versions(artifacts, family):
        raise UserError(f"{family} has no complete version {version}")
    for path in eval_file or []:
        if not path.is_file():
            raise UserError(f"--eval-file {path}: file not found")
    outcome = _run_evaluation(config, fam.name, version, [str(p.resolve()) for p in eval_file or []])
    results = outcome.results
    summary = {
        "family": family,
        "version": version,
        "baseline": results["baseline"]["version"] or results["baseline"]["kind"],
        "decision": outcome.decision,
        "reasons": outcome.reasons,
        "metrics": {name: v["candidate"] for name, v in results["metrics"].items()},
        "baseline_metrics": {name: v["baseline"] for name, v in results["metrics"].items()},
        "report": outcome.report,
    }
    if as_json:
        _emit(summary)
        return
    typer.echo(f"{family} {version} against {summary['baseline']}: {outcome.decision}")
    for reason in outcome.reasons:
        typer.echo(f"  {reason}")
    for set_name, values in summary["metrics"].items():
        base = summary["baseline_metrics"][set_name]
        typer.echo(f"{set_name}:")
        for metric, value in values.items():
            other = base.get(metric)
            typer.echo(
                f"  {metric:<28} {value:>10.4f}" + (f"   baseline {other:.4f}" if other is not None else "")
            )
    typer.echo(f"report {outcome.report}")


@dataclass
class _GateOutcome:
    version: str
    reused: bool
    decision: str | None
    reasons: list[str]
    report: str | None
    results: dict[str, Any]


def _gate_outcome(artifacts: Any, family: str, version: str, reused: bool = False) -> _GateOutcome:
    """What the eval_report asset wrote for this version."""
    from pulse_pipeline.core import adapters

    key = f"{adapters.prefix(family, version)}/eval/results.json"
    try:
        results = json.loads(artifacts.read_bytes(key))
    except KeyError:
        return _GateOutcome(version, reused, None, [], None, {})
    gate = results["gate"]
    report = artifacts.uri(key.replace("results.json", "report.html"))
    return _GateOutcome(version, reused, gate["decision"], gate["reasons"], report, results)


def _run_evaluation(config: PulseConfig, family: str, version: str, eval_files: list[str]) -> _GateOutcome:
    import dagster as dg

    from pulse_pipeline.definitions import build_definitions

    settings = get_settings()
    _prepare_dagster_home(settings.dagster_home, settings.pulse_config.parent)
    key = dg.AssetKey([family, "eval_report"])
    job = build_definitions(config).resolve_implicit_global_asset_job_def()
    run_config = {
        **QUIET_RUN,
        "ops": {key.to_python_identifier(): {"config": {"version": version, "eval_files": eval_files}}},
    }
    with dg.DagsterInstance.get() as instance:
        result = job.execute_in_process(
            instance=instance, asset_selection=[key], raise_on_error=False, run_config=run_config,
            tags={"pulse/created_by": "cli"},
        )  # fmt: skip
    outcome = _gate_outcome(settings.artifact_store(), family, version)
    if outcome.decision is None or (not result.success and not _only_gate_failed(result)):
        raise UserError(f"evaluation run {result.run_id[:8]} failed: {_failure_reason(result)}")
    return outcome


def _only_gate_failed(result: Any) -> bool:
    """The run failed because the promotion gate said FAIL (a decision, not an error)."""
    from pulse_pipeline.defs.evaluation.assets import GATE_CHECK

    return any(
        e.check_name == GATE_CHECK and not e.passed for e in result.get_asset_check_evaluations()
    ) and not any(
        event.is_step_failure and "eval_report" not in (event.step_key or "") for event in result.all_events
    )


def _run_retrain(
    config: PulseConfig,
    family: str,
    *,
    epochs: int | None,
    max_samples: int | None,
    force: bool,
    progress_bar: bool,
) -> _GateOutcome:
    """Run the family's retrain job in this process, recorded at DAGSTER_HOME: the version
    trained (or reused) and what the promotion gate decided."""
    import dagster as dg

    from pulse_pipeline.definitions import build_definitions, retrain_job_name

    settings = get_settings()
    _prepare_dagster_home(settings.dagster_home, settings.pulse_config.parent)
    fam = config.family(family)
    job = build_definitions(config).resolve_job_def(retrain_job_name(fam))
    op = dg.AssetKey([family, "adapter"]).to_python_identifier()
    run_config = {
        **QUIET_RUN,
        "ops": {
            op: {
                "config": {
                    "epochs": epochs,
                    "max_samples": max_samples,
                    "force": force,
                    "progress_bar": progress_bar,
                }
            }
        },
    }
    with dg.DagsterInstance.get() as instance:
        result = job.execute_in_process(
            instance=instance, raise_on_error=False, run_config=run_config, tags={"pulse/created_by": "cli"}
        )
    if not result.success and not _only_gate_failed(result):
        reason = _failure_reason(result)
        if "training already in progress" in reason:  # another training took the lock first
            raise TrainingInProgress(f"{family}: {reason[reason.index('training already in progress') :]}")
        raise UserError(f"retrain run {result.run_id[:8]} failed: {reason}")
    for event in result.get_asset_materialization_events():
        materialization = event.step_materialization_data.materialization
        if materialization and materialization.asset_key == dg.AssetKey([family, "adapter"]):
            meta = materialization.metadata
            version, reused = str(meta["version"].value), bool(meta["reused"].value)
            return _gate_outcome(settings.artifact_store(), family, version, reused)
    raise UserError(f"retrain run {result.run_id[:8]} recorded no adapter")


def _failure_reason(result: Any) -> str:
    """The last line of the first failed step's error: the recipe's one-line message."""
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data and event.step_failure_data.error:
            error = event.step_failure_data.error
            while error.cause is not None and error.cls_name in ("DagsterExecutionStepExecutionError",):
                error = error.cause
            return error.message.strip().splitlines()[-1] if error.message.strip() else error.cls_name
    return "open the Dagster UI for its logs"


@app.command()
@_fail_cleanly
def promote(
    family: FamilyOpt,
    version: Annotated[str | None, typer.Option(help="The version to make production.")] = None,
    previous: Annotated[
        bool, typer.Option("--previous", help="Roll back to the previous production version.")
    ] = False,
    traffic_share: Annotated[
        float, typer.Option(help="Below 1.0: serve it as a canary beside production with this share.")
    ] = 1.0,
    force: Annotated[
        bool, typer.Option(help="Promote even a version the gate judged FAIL (recorded).")
    ] = False,
    reason: Annotated[str, typer.Option(help="Why, for the audit trail.")] = "",
    as_json: JsonFlag = False,
) -> None:
    """Make a version production (or a canary), or roll back, through the promote_adapter job."""
    config = _config()
    config.family(family)
    if (version is None) == (not previous):
        raise UserError("give --version V or --previous")
    out = _run_op_job(
        config,
        "promote_adapter",
        "promote_version",
        {
            "family": family, "version": version, "previous": previous, "traffic_share": traffic_share,
            "force": force, "reason": reason, "requested_by": _user(),
        },
    )  # fmt: skip
    report = {k: out[k] for k in ("family", "action", "version", "previous_version", "challenger", "traffic")}
    report.update(serving=out["serving"], mlflow_aliases=out["mlflow"], changed=out["changed"])
    if as_json:
        _emit(report)
        return
    if not out["changed"]:
        typer.echo(f"{family}: {out['version']} is already production; serving and aliases re-synced")
    for key, value in report.items():
        typer.echo(f"{key:<18} {value if value is not None else '-'}")


@app.command()
@_fail_cleanly
def cleanup(
    family: FamilyOpt,
    keep: Annotated[
        int | None,
        typer.Option(
            help="Versions to keep besides production, previous and a canary "
            "(default: the family's automation.keep_versions, 5)."
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Remove a family's old adapter versions through the cleanup_adapters job."""
    config = _config()
    if keep is None:
        keep = config.family(family).automation.keep_versions
    config.family(family)  # an unknown family: one clear line, before any run
    if keep < 1:
        raise UserError("--keep must be at least 1")
    out = _run_op_job(config, "cleanup_adapters", "cleanup_versions", {"family": family, "keep": keep})
    if as_json:
        _emit({"removed": out["removed"], "kept": out["kept"]})
        return
    typer.echo(f"removed {', '.join(out['removed']) or 'nothing'}")
    typer.echo(f"kept    {', '.join(out['kept'])}")


@app.command()
@_fail_cleanly
def merge(
    family: FamilyOpt,
    version: Annotated[str, typer.Option(help="The version to merge into its base model.")],
    out: Annotated[Path, typer.Option(help="An empty or new folder for the merged model.")],
    as_json: JsonFlag = False,
) -> None:
    """Write the base model with the adapter merged in, for engines without LoRA support."""
    from pulse_pipeline.core import adapters
    from pulse_pipeline.core.merging import MergeError, merge_adapter

    settings = get_settings()
    config = _config()
    config.family(family)
    artifacts = settings.artifact_store()
    if not adapters.is_version_of(family, version) or version not in adapters.versions(artifacts, family):
        raise UserError(f"{family} has no complete version {version!r}")
    folder = adapters.local_folder(artifacts, family, version, settings.pulse_home / "cache" / "adapters")
    try:
        merged = merge_adapter(folder, out)
    except MergeError as exc:
        raise UserError(str(exc)) from None
    if as_json:
        _emit({"family": family, "version": version, "out": str(merged)})
        return
    typer.echo(f"merged {version} into its base model: {merged}")


def _user() -> str:
    """Who runs the command, for the audit trail."""
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except OSError:
        return "cli"


def _run_op_job(
    config: PulseConfig, job_name: str, op_name: str, op_config: dict[str, Any]
) -> dict[str, Any]:
    """Run an op job in this process, recorded at DAGSTER_HOME; the op's output, or its one-line error."""
    import dagster as dg

    from pulse_pipeline.definitions import build_definitions

    settings = get_settings()
    _prepare_dagster_home(settings.dagster_home, settings.pulse_config.parent)
    job = build_definitions(config).resolve_job_def(job_name)
    run_config = {**QUIET_RUN, "ops": {op_name: {"config": op_config}}}
    with dg.DagsterInstance.get() as instance:
        result = job.execute_in_process(
            instance=instance, raise_on_error=False, run_config=run_config, tags={"pulse/created_by": "cli"}
        )
    if not result.success:
        raise UserError(_failure_reason(result))
    return result.output_for_node(op_name)


review_app = typer.Typer(help="The review queue, with Label Studio as the review UI.", no_args_is_help=True)
app.add_typer(review_app, name="review")


@review_app.command("export")
@_fail_cleanly
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
    fam = _config().family(family)
    with Store(settings.database_url) as store:
        tasks = to_label_studio(review_queue(store.iter_family(family), fam), fam)
    text = json.dumps(tasks, indent=2, ensure_ascii=False, default=str)
    if out is None:
        typer.echo(text)
    else:
        out.write_text(text + "\n", encoding="utf-8")
        typer.echo(f"{len(tasks)} tasks -> {out}", err=True)
    if label_config is not None:
        label_config.write_text(labeling_config(fam), encoding="utf-8")


@review_app.command("import")
@_fail_cleanly
def review_import(
    file: Annotated[Path, typer.Argument(help="A Label Studio JSON export of completed tasks.")],
    family: FamilyOpt,
    as_json: JsonFlag = False,
) -> None:
    """Completed Label Studio tasks back in as human-reviewed annotations."""
    import orjson

    from pulse_pipeline.core.ingestion import ingest_lines
    from pulse_pipeline.core.review import LabelStudioError, from_label_studio

    config = _config()
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
        _emit(report)
        return
    for key in ("accepted", "duplicates", "quarantined", "lines", "unanswered_tasks"):
        typer.echo(f"{key:<17} {report[key]}")


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
