"""`pulse demo`: the embedded default set up and the whole loop run on generated annotations."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path
from typing import Annotated, Any

import typer

from pulse_pipeline.cli import runs
from pulse_pipeline.cli.app import app, command, load_families
from pulse_pipeline.cli.output import UserError, say
from pulse_pipeline.cli.training import dataset_keys, train_through_dagster
from pulse_pipeline.core.families import PulseConfig
from pulse_pipeline.core.ingestion import ingest_file
from pulse_pipeline.core.snapshots import latest_manifest
from pulse_pipeline.core.store import Store
from pulse_pipeline.demo.data import DemoScale
from pulse_pipeline.settings import get_settings


@command(app)
def demo(
    seed: Annotated[int, typer.Option(help="Seed of the demo data generator.")] = 7,
    scale: Annotated[float, typer.Option(help="Multiply the demo's record counts.")] = 1.0,
) -> None:
    """Set up the embedded default, load demo annotations, build snapshots and train every family in Dagster."""
    from pulse_pipeline.demo.data import FALLBACK_INTENTS, write_demo_file

    settings = get_settings()
    config = load_families()
    home = settings.pulse_home
    home.mkdir(parents=True, exist_ok=True)
    runs.prepare_dagster_home()
    clinc = _find_clinc150(settings.pulse_config.parent)
    intent = config.families.get("intent-router")
    today = dt.datetime.now(dt.UTC).date()
    demo_file = write_demo_file(
        home / "demo" / "annotations.jsonl",
        seed=seed,
        anchor=today,
        scale=_demo_days(DemoScale().scaled(scale), config, today),
        clinc150_dir=clinc,
        intent_labels=intent.labels if intent and intent.labels else FALLBACK_INTENTS,
    )
    say(f"demo data: {sum(demo_file.counts.values())} records -> {demo_file.path}")
    say(f"  created {today - dt.timedelta(days=demo_file_days(config, today) - 1)} to {today} (UTC)")
    say(f"  intent labels from {demo_file.intent_source}")
    with Store(settings.database_url) as store:
        result = ingest_file(store, demo_file.path, config)
        days = store.annotations.days_with_annotations()
    say(
        f"ingested: {result.accepted} accepted, {result.duplicates} duplicates, {result.quarantined} quarantined "
        f"of {result.lines} lines ({demo_file.flawed_lines} lines are flawed on purpose)"
    )
    for reason in result.reasons[:5]:
        say(f"  quarantined: {reason}")
    done = _materialize_days(config, days)
    say(f"dagster: materialized {len(config.families)} annotation assets for {len(days)} days in {done} runs")
    runs.run_assets(config, dataset_keys(config, list(config.families)), what="snapshot run")
    artifacts = settings.artifact_store()
    for name in config.families:
        m = latest_manifest(artifacts, name)
        assert m is not None
        c = m["counts"]
        say(
            f"snapshot {name:<15} {m['dataset_version']}  train {c['train']:>5}  val {c['val']:>4}  test {c['test']:>4}"
        )
    from pulse_pipeline.core.registry import files, read_current

    for name in config.families:
        outcome, _ = train_through_dagster(
            config, name, epochs=None, max_samples=None, force=False, progress_bar=True
        )
        m = files.read_metadata(artifacts, name, outcome.version)
        say(
            f"adapter  {name:<15} {outcome.version}  {'(reused) ' if outcome.reused else ''}{m['base_model']}  "
            f"train loss {m['training_loss']:.4f}  val loss {m['best_validation_loss'] or float('nan'):.4f}  "
            f"{m['samples_used']} examples  {m['training_time_seconds']:.0f} s"
        )
        say(f"gate     {name:<15} {outcome.decision}  {outcome.report}")
        for reason in outcome.reasons:
            say(f"         {'':<15} {reason}")
        current = read_current(artifacts, name)
        say(f"current  {name:<15} {current['version'] if current else 'none (nothing promoted yet)'}")
    _demo_watch(config, artifacts)
    say("")
    say(f"PULSE_HOME    {home}")
    say(f"store         {settings.database_url}")
    say(f"DAGSTER_HOME  {settings.dagster_home}")
    say(
        f"artifacts     {settings.pulse_artifacts}  (datasets/<family>/<dataset_version>/, adapters/<family>/<version>/)"
    )
    say(
        f"mlflow        {settings.mlflow_tracking_uri}  (`mlflow ui --backend-store-uri {settings.mlflow_tracking_uri}`)"
    )
    say("next: `make ui` and open http://127.0.0.1:3000 to see the lineage and the runs;")
    say("      `pulse ingest FILE` to load your own annotation records;")
    say("      `pulse export --family intent-router --limit 3` to see training examples.")


def _demo_watch(config: PulseConfig, artifacts: Any) -> None:
    """What `daily_watch` does each night: every family's drift report and live accuracy."""
    from pulse_pipeline.core.drift.report import report_key
    from pulse_pipeline.defs.automation.schedules import watch_keys

    runs.run_assets(config, [key for family in config.families.values() for key in watch_keys(family)])
    for name, family in config.families.items():
        if family.automation.drift.enabled:
            drift = json.loads(artifacts.read_bytes(report_key(name)))
            say(f"drift    {name:<15} {drift['message']}")


def _find_clinc150(project_dir: Path) -> Path | None:
    """CLINC150 for the intent demo: PULSE_CLINC150, or ../shared/data/clinc150 beside the project."""
    candidates = [get_settings().pulse_clinc150, project_dir.parent / "shared" / "data" / "clinc150"]
    for c in candidates:
        if c and (Path(c) / "data_full.json").is_file():
            return Path(c)
    return None


def demo_file_days(config: PulseConfig, today: dt.date) -> int:
    """How many days the demo's data covers: 14 up to today, none before annotations_start_date."""
    start = config.annotations_start_date
    if start > today:
        raise UserError(f"annotations_start_date {start} in pulse.yaml is after today ({today}): no day to demo")
    return min(DemoScale().days, (today - start).days + 1)


def _demo_days(scale: Any, config: PulseConfig, today: dt.date) -> Any:
    return dataclasses.replace(scale, days=demo_file_days(config, today))


def _materialize_days(config: PulseConfig, days: list[dt.date]) -> int:
    """Run the daily annotations job for each day, recorded in the instance at DAGSTER_HOME."""
    from pulse_pipeline.definitions import ANNOTATIONS_JOB

    start = config.annotations_start_date
    before = [day for day in days if day < start]
    if before:
        say(
            f"  {len(before)} days of stored annotations ({before[0]} to {before[-1]}) are before "
            f"annotations_start_date {start}: no partition holds them"
        )
    done = 0
    with runs.instance() as instance:
        job = runs.definitions(config).resolve_job_def(ANNOTATIONS_JOB)
        for day in days:
            if day < start:
                continue
            result = runs.run_job(instance, job, partition_key=day.isoformat())
            if not result.success:
                raise UserError(runs.failure(result, f"the annotations run for {day}"))
            done += 1
    return done
