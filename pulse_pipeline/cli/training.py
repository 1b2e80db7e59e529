"""From annotations to a judged adapter: snapshot, export, status, train and evaluate.

`pulse train` takes the family's training lock for its run before it launches it (two started at
once: one trains, the other exits 3 naming the holder), frees a dead training's lock and pool
slot first, and runs the family's retrain job in this process: snapshot, train, evaluate, and
promote when the gate says DEPLOY.
"""

from __future__ import annotations

import itertools
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from pulse_pipeline.cli import runs
from pulse_pipeline.cli.app import FamilyOpt, JsonFlag, app, command, load_families, user
from pulse_pipeline.cli.output import NotEnoughAnnotations, TrainingInProgress, UserError, emit, say
from pulse_pipeline.core.families import PulseConfig
from pulse_pipeline.core.snapshots import latest_manifest
from pulse_pipeline.core.store import Store
from pulse_pipeline.settings import get_settings


def dataset_keys(config: PulseConfig, families: list[str]) -> list[Any]:
    """The assets that make a family's snapshot: (review_queue), examples, dataset_snapshot."""
    import dagster as dg

    from pulse_pipeline.core.triage import has_review_queue

    keys = []
    for name in families:
        family = config.family(name)
        names = (["review_queue"] if has_review_queue(family) else []) + ["examples", "dataset_snapshot"]
        keys += [dg.AssetKey([name, n]) for n in names]
    return keys


@command(app)
def snapshot(family: FamilyOpt, as_json: JsonFlag = False) -> None:
    """Build (or reuse) the family's dataset snapshot; print dataset_version and split sizes."""
    config = load_families()
    config.family(family)
    runs.run_assets(config, dataset_keys(config, [family]), what="snapshot run")
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
        emit(report)
        return
    say(f"dataset_version {report['dataset_version']}")
    for split, n in report["splits"].items():
        say(f"{split:<6} {n}")


@command(app)
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
    import orjson

    from pulse_pipeline.core.examples import build_examples, records
    from pulse_pipeline.core.snapshots import SPLITS, read_split

    if fmt not in ("jsonl", "json"):
        raise UserError(f"--format must be jsonl or json, not {fmt!r}")
    if offset < 0 or (limit is not None and limit < 0):
        raise UserError("--offset and --limit must not be negative")
    settings = get_settings()
    fam = load_families().family(family)
    artifacts = settings.artifact_store()
    manifest = latest_manifest(artifacts, family)
    with Store(settings.database_url) as store:
        if manifest is not None:
            invalidated = store.annotations.invalidated_ids(family)  # fixed since the snapshot was built
            rows: Any = (
                row
                for split in SPLITS
                for row in read_split(artifacts, fam, manifest["dataset_version"], split)
                if row["id"] not in invalidated
            )
        else:
            rows = iter(records(fam, build_examples(store, fam)[0]))
        page = list(itertools.islice(rows, offset, None if limit is None else offset + limit))
    out = sys.stdout.buffer
    if fmt == "json":
        out.write(orjson.dumps(page) + b"\n")
    else:
        for record in page:
            out.write(orjson.dumps(record) + b"\n")
    out.flush()


@command(app)
def status(
    family: Annotated[str | None, typer.Option("--family", "-f", help="One family (default: all).")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Training status: who trains, the registry, and new annotations against the family's minimum."""
    from pulse_pipeline.core.registry import Registry
    from pulse_pipeline.core.retraining import new_annotations

    settings = get_settings()
    config = load_families()
    names = [config.family(family).name] if family else list(config.families)
    artifacts = settings.artifact_store()
    out: dict[str, Any] = {}
    with Store(settings.database_url) as store, runs.instance() as instance:
        lock = _training_lock(store, instance)
        registry = Registry(store, artifacts)
        for name in names:
            fam = config.family(name)
            manifest = latest_manifest(artifacts, name)
            state = lock.state(name)
            current = registry.current(name)
            out[name] = {
                "is_training": state.held,
                "lock_acquired_at": state.row.acquired_at.isoformat() if state.held and state.row else None,
                "lock_holder": state.row.holder.describe() if state.held and state.row else None,
                "lock_run_id": state.row.holder.run_id if state.held and state.row else None,
                "stale_lock": _stale_lock(state),
                "current_version": current,
                "production_version": current["version"] if current else None,
                "available_versions": registry.available(name),
                "unrecorded_versions": registry.unrecorded(name),
                "dataset_version": manifest["dataset_version"] if manifest else None,
                "new_annotations_count": new_annotations(store, artifacts, fam).count,
                "min_annotations_required": fam.min_new_annotations,
            }
    if as_json:
        emit(out[names[0]] if family else {"families": out})
        return
    for name, st in out.items():
        _say_status(name, st)


def _stale_lock(state: Any) -> dict[str, Any] | None:
    """A dead training's lock row (the next training takes it over), or None."""
    if state.row is None or state.stale_because is None:
        return None
    holder = state.row.holder
    return {
        "holder": holder.describe(),
        "run_id": holder.run_id,
        "acquired_at": state.row.acquired_at.isoformat(),
        "reason": state.stale_because,
    }


def _say_status(name: str, st: dict[str, Any]) -> None:
    """One family's status as a few aligned lines: training, production, annotations, data."""
    from pulse_pipeline.core.registry.pointer import challenger, shares

    if st["is_training"]:
        training = f"training since {st['lock_acquired_at']} by {st['lock_holder']}"
        training += f", run {st['lock_run_id']}" if st["lock_run_id"] else ""
    elif st["stale_lock"]:
        stale = st["stale_lock"]
        training = (
            f"idle; stale lock of a dead training ({stale['holder']}, since {stale['acquired_at']}): "
            f"{stale['reason']}; the next training takes it over"
        )
    else:
        training = "idle"
    current = st["current_version"]
    if current is None:
        production = "none (nothing promoted yet)"
    else:
        production = f"{current['version']} (promoted {current.get('promoted_at') or 'at an unknown time'}"
        production += f"; previous {current['previous_version']})" if current.get("previous_version") else ")"
        canary = challenger(current)
        if canary:
            production += f"; canary {canary} at {shares(current).get(canary, 0.0):.0%} of traffic"
    ready = "ready to train" if st["new_annotations_count"] >= st["min_annotations_required"] else "waiting"
    say(name)
    say(f"  training     {training}")
    say(f"  production   {production}")
    say(f"  annotations  {st['new_annotations_count']} new of {st['min_annotations_required']} required ({ready})")
    say(f"  snapshot     {st['dataset_version'] or 'none'}; {len(st['available_versions'])} adapter versions")
    if st["unrecorded_versions"]:
        say(
            f"  unrecorded   folders without a record (never promoted): {', '.join(st['unrecorded_versions'])}; "
            f"`pulse registry reconcile --family {name}` adopts or removes them"
        )


@dataclass
class GateOutcome:
    """What a training run and its evaluation decided, for `pulse train`, `pulse evaluate` and the demo."""

    version: str
    reused: bool
    decision: str | None
    reasons: list[str]
    report: str | None
    results: dict[str, Any]


def gate_outcome(artifacts: Any, family: str, version: str, reused: bool = False) -> GateOutcome:
    """What the eval_report asset wrote for this version."""
    import json

    from pulse_pipeline.core.registry import files

    key = f"{files.key(family, version)}/{files.EVAL_RESULTS}"
    try:
        results = json.loads(artifacts.read_bytes(key))
    except KeyError:
        return GateOutcome(version, reused, None, [], None, {})
    gate = results["gate"]
    report = artifacts.uri(key.replace("results.json", "report.html"))
    return GateOutcome(version, reused, gate["decision"], gate["reasons"], report, results)


def train_through_dagster(
    config: PulseConfig, family: str, *, epochs: int | None, max_samples: int | None, force: bool,
    progress_bar: bool, check_new: bool = False,
) -> tuple[GateOutcome, int]:  # fmt: skip
    """The family's retrain job in this process under its training lock, taken before the run
    starts: the version trained (or reused), what the gate decided, and the new annotations it
    started with. TrainingInProgress when another training holds the lock; NotEnoughAnnotations
    (with `check_new`) below the family's minimum."""
    import dagster as dg

    from pulse_pipeline.core.retraining import new_annotations
    from pulse_pipeline.core.training.lock import TrainingLocked, this_process
    from pulse_pipeline.definitions import retrain_job_name
    from pulse_pipeline.defs.training.locking import free_dead_run, free_dead_trainings

    settings = get_settings()
    fam = config.family(family)
    artifacts = settings.artifact_store()
    with Store(settings.database_url) as store, runs.instance() as instance:
        lock = _training_lock(store, instance)
        # A killed training's lock and pool slot, of any family, would block this run: free them.
        free_dead_trainings(store, instance, list(config.families), lock, lambda line: say(line, err=True))
        state = lock.state(family)
        if state.held:
            raise TrainingInProgress(f"{family}: {state.describe()}")
        new = new_annotations(store, artifacts, fam).count
        if check_new and new < fam.min_new_annotations and not force:
            raise NotEnoughAnnotations(
                f"{family}: {new} new annotations of the {fam.min_new_annotations} required to train; "
                "--force trains anyway"
            )
        run_id = runs.new_run_id()
        took_over = lambda dead: free_dead_run(instance, dead, lambda line: say(line, err=True))  # noqa: E731
        job = runs.definitions(config).resolve_job_def(retrain_job_name(fam))
        op = dg.AssetKey([family, "adapter"]).to_python_identifier()
        overrides = {"epochs": epochs, "max_samples": max_samples, "force": force, "progress_bar": progress_bar}
        try:
            with lock.hold(family, this_process(user(), run_id), on_taken_over=took_over):
                result = runs.run_job(
                    instance, job, run_config={"ops": {op: {"config": overrides}}},
                    tags={"pulse/created_by": "cli"}, run_id=run_id,
                )  # fmt: skip
        except TrainingLocked as exc:  # another start won the race between our look and our take
            raise TrainingInProgress(f"{family}: {exc}") from None
    if not result.success and not _only_gate_failed(result):
        raise UserError(runs.failure(result, "retrain run"))
    trained = _this_runs_adapter(result, family)
    if trained is None:
        raise UserError(f"retrain run {result.run_id[:8]} recorded no adapter")
    version, reused = trained
    return gate_outcome(artifacts, family, version, reused), new


@command(app)
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
    from pulse_pipeline.core.registry import files

    settings = get_settings()
    config = load_families()
    config.family(family)
    outcome, new = train_through_dagster(
        config, family, epochs=epochs, max_samples=max_samples, force=force, progress_bar=not as_json,
        check_new=True,
    )  # fmt: skip
    artifacts = settings.artifact_store()
    version = outcome.version
    m = files.read_metadata(artifacts, family, version)
    trained = f"{version} was already trained on this snapshot (--force retrains)" if outcome.reused else f"trained {version}"
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
        "resumed_from_step": m.get("resumed_from_step"),
        "new_annotations_count": new,
        "decision": outcome.decision,
        "reasons": outcome.reasons,
        "report": outcome.report,
        "path": artifacts.uri(files.key(family, version)),
        "mlflow_run_id": (m.get("mlflow") or {}).get("run_id"),
    }
    if as_json:
        emit(report)
        return
    say(report["message"])
    for key, value in report.items():
        if key not in ("status", "message", "reasons"):
            say(f"{key:<22} {value if value is not None else '-'}")
    for reason in outcome.reasons:
        say(f"  {reason}")


@command(app)
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
    from pulse_pipeline.core.registry import Registry

    settings = get_settings()
    config = load_families()
    fam = config.family(family)
    with Store(settings.database_url) as store:
        registry = Registry(store, settings.artifact_store())
        if version is None:
            current = registry.current(family)
            version = current["version"] if current else registry.newest(family)
            if version is None:
                raise UserError(f"{family} has no trained version yet: run `pulse train --family {family}`")
        registry.require(family, version)  # a well-formed, recorded version with its files
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
        emit(summary)
        return
    say(f"{family} {version} against {summary['baseline']}: {outcome.decision}")
    for reason in outcome.reasons:
        say(f"  {reason}")
    for set_name, values in summary["metrics"].items():
        base = summary["baseline_metrics"][set_name]
        say(f"{set_name}:")
        for metric, value in values.items():
            other = base.get(metric)
            say(f"  {metric:<28} {value:>10.4f}" + (f"   baseline {other:.4f}" if other is not None else ""))
    say(f"report {outcome.report}")


def _run_evaluation(config: PulseConfig, family: str, version: str, eval_files: list[str]) -> GateOutcome:
    import dagster as dg

    key = dg.AssetKey([family, "eval_report"])
    run_config = {"ops": {key.to_python_identifier(): {"config": {"version": version, "eval_files": eval_files}}}}
    with runs.instance() as instance:
        job = runs.definitions(config).resolve_implicit_global_asset_job_def()
        result = runs.run_job(
            instance, job, asset_selection=[key], run_config=run_config, tags={"pulse/created_by": "cli"}
        )
    outcome = gate_outcome(get_settings().artifact_store(), family, version)
    if not result.success and not _only_gate_failed(result):
        raise UserError(runs.failure(result, "evaluation run"))
    if outcome.decision is None:
        raise UserError(f"evaluation run {result.run_id[:8]} recorded no decision for {family} {version}")
    return outcome


def _only_gate_failed(result: Any) -> bool:
    """The run failed because the promotion gate said FAIL (a decision, not an error)."""
    from pulse_pipeline.defs.evaluation.assets import GATE_CHECK

    return any(
        e.check_name == GATE_CHECK and not e.passed for e in result.get_asset_check_evaluations()
    ) and not any(
        event.is_step_failure and "eval_report" not in (event.step_key or "") for event in result.all_events
    )


def _this_runs_adapter(result: Any, family: str) -> tuple[str, bool] | None:
    """(version, reused) of the adapter this run materialized."""
    import dagster as dg

    for event in result.get_asset_materialization_events():
        materialization = event.step_materialization_data.materialization
        if materialization and materialization.asset_key == dg.AssetKey([family, "adapter"]):
            meta = materialization.metadata
            return str(meta["version"].value), bool(meta["reused"].value)
    return None


def _training_lock(store: Store, instance: Any) -> Any:
    from pulse_pipeline.defs.training.locking import training_lock

    settings = get_settings()
    return training_lock(
        store,
        instance,
        stale_seconds=settings.pulse_training_lock_stale_seconds,
        heartbeat_seconds=settings.pulse_training_heartbeat_seconds,
    )
