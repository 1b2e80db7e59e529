"""The `pulse` command. Work that has a Dagster asset or job runs through it, so runs show in the UI."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any

import typer

from pulse_pipeline.core.families import ConfigError, PulseConfig, load_config
from pulse_pipeline.core.ingestion import IngestError, IngestResult, ingest_file
from pulse_pipeline.core.store import Store, StoreError
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
        except (UserError, ConfigError, StoreError, IngestError) as exc:
            typer.echo(f"pulse: {exc}".replace("\n", "; "), err=True)
            raise typer.Exit(1) from None

    return wrapper


def _config() -> PulseConfig:
    return load_config(get_settings().pulse_config)


def _emit(obj: dict[str, Any]) -> None:
    typer.echo(json.dumps(obj, default=str, sort_keys=False))


@app.command()
@_fail_cleanly
def ingest(
    file: Annotated[Path, typer.Argument(help="A JSON Lines file of annotation records.")],
    as_json: JsonFlag = False,
) -> None:
    """Load annotation records; print accepted, duplicates, quarantined and lines."""
    config = _config()
    with Store(get_settings().database_url) as store:
        result = ingest_file(store, file, config)
    if as_json:
        _emit(_ingest_report(result))
        return
    for key in ("accepted", "duplicates", "quarantined", "lines"):
        typer.echo(f"{key:<12} {getattr(result, key)}")
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
    """Set up the embedded default, load demo annotations and materialize them in Dagster."""
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
    typer.echo("")
    typer.echo(f"PULSE_HOME    {home}")
    typer.echo(f"store         {settings.database_url}")
    typer.echo(f"DAGSTER_HOME  {settings.dagster_home}")
    typer.echo("next: `make ui` and open http://127.0.0.1:3000 to see the lineage and the runs;")
    typer.echo("      `pulse ingest FILE` to load your own annotation records.")


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


# In-process runs log to the console at DEBUG by default; the UI keeps the full event log.
QUIET_RUN = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


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


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
