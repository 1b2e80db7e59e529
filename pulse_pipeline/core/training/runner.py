"""One family's training from its newest dataset snapshot to a published adapter version.

`train_family` reads the snapshot's train and val splits from the artifact store, resolves the
training config (task defaults -> preset -> the family's `training:` block -> this run's
overrides) and the base model, and hands the version's life to the registry: `reconcile` (what a
dead training left), `begin` (the record, before any file), the recipe inside an MLflow run, then
`publish` — or `abandon` when the training fails. The caller holds the family's training lock
(`lease`); a lock taken over meanwhile stops the training at its next progress report. It is what
the Dagster `<family>/adapter` asset and `python -m pulse_pipeline.core.training` call, so both
report the training's loss and end as Prometheus metrics (`core/metrics.py`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pulse_pipeline.core import snapshots
from pulse_pipeline.core.families import FamilyConfig
from pulse_pipeline.core.registry import Registry, files
from pulse_pipeline.core.secrets import mask
from pulse_pipeline.core.training.distributed import World, from_main, world
from pulse_pipeline.core.training.lock import Lease
from pulse_pipeline.core.training.recipe import Progress, TrainingError, TrainingJob, train


@dataclass
class TrainedAdapter:
    family: str
    version: str
    uri: str  # where the version folder lives in the artifact store
    metadata: dict[str, Any]
    mlflow_run_id: str | None
    mlflow_url: str | None
    reused: bool = False  # an existing version already trained on this snapshot with these settings
    repaired: tuple[str, ...] = ()  # what the reconcile before training changed


def train_family(
    family: FamilyConfig,
    registry: Registry,
    *,
    home: Path,
    tracking_uri: str | None,
    overrides: dict[str, Any] | None = None,
    dataset_version: str | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    force: bool = False,
    created_by: str = "cli",
    run_id: str | None = None,
    lease: Lease | None = None,
) -> TrainedAdapter:
    """Train `family` on a snapshot (default: its newest) and publish the adapter.

    `home` holds the base-model cache (`models/`) and the work folders with checkpoints (`work/`,
    kept after a failure so that the next training of the same snapshot and settings resumes);
    `tracking_uri` is MLflow's (None: no tracking). Without `force`, a version already trained on
    this snapshot with the same resolved settings is returned as it is. With `lease` (the family's
    training lock, held by the caller), what a dead training left is reconciled first.

    Under torchrun or accelerate launch this is rank 0's part (distributed.py): it decides what
    is trained, tells the other processes (`follow_training`) and alone records, publishes and
    logs to MLflow.
    """
    from pulse_pipeline.core.training.config import TrainingConfigError, resolve_training_config

    here = world()
    if not here.is_main:
        raise TrainingError("train_family runs on rank 0; the other processes call follow_training")

    artifacts = registry.artifacts
    manifest = (
        snapshots.latest_manifest(artifacts, family.name)
        if dataset_version is None
        else snapshots.read_manifest(artifacts, family.name, dataset_version)
    )
    if manifest is None and dataset_version is not None:
        raise TrainingError(f"{family.name} has no readable dataset snapshot {dataset_version}")
    if manifest is None:
        raise TrainingError(
            f"{family.name} has no dataset snapshot yet: run `pulse snapshot --family {family.name}` first"
        )
    dataset_version = manifest["dataset_version"]
    train_split = snapshots.read_split(artifacts, family, dataset_version, "train")
    val_split = snapshots.read_split(artifacts, family, dataset_version, "val")
    config = resolve_training_config(family.task.value, family.training, overrides)
    repaired: tuple[str, ...] = ()
    if lease is not None:  # no other training of the family is alive: finish or clear what one left
        repaired = tuple(registry.reconcile(family.name, by=created_by).changes)
    from pulse_pipeline.core.training.base_models import resolve_base_model
    from pulse_pipeline.core.training.continual import resolve_init

    try:
        init = resolve_init(config, family, artifacts, home / "init")
    except TrainingConfigError as exc:
        from_main(here, None)
        raise TrainingError(f"{family.name}: {exc}") from None
    done = registry.find_trained(family.name, dataset_version, config.model_dump(mode="json"))
    meta = registry.metadata(family.name, done.version) if done is not None else {}
    started = init.describe() if init is not None else {"mode": "base"}
    if done is not None and not force and (meta.get("init") or {"mode": "base"}) == started:
        registry.saw_data_up_to(family.name, done.version, int(manifest["watermark"]["seq"]))
        run = (meta.get("mlflow") or {}).get("run_id")
        uri = artifacts.uri(files.key(family.name, done.version))
        from_main(here, None)  # nothing for the other processes to train
        return TrainedAdapter(family.name, done.version, uri, meta, run, None, reused=True, repaired=repaired)

    mix = None
    if config.replay is not None and init is not None:
        from pulse_pipeline.core.training.replay import continual_mix

        try:
            mix = continual_mix(
                artifacts, family, init, dataset_version, train_split, config.replay, config.seed
            )
        except TrainingConfigError as exc:
            from_main(here, None)
            raise TrainingError(f"{family.name}: {exc}") from None
        train_split = mix.examples
    preferences = None
    if config.objective != "sft":
        from pulse_pipeline.core.training.preference import preference_problem, read_preference_data

        preferences = read_preference_data(artifacts, family, manifest)
        problem = preference_problem(config, preferences, family.name, dataset_version)
        if here.size > 1:
            problem = (
                f"{family.name}: training.objective {config.objective} trains its preference stage in one "
                f"process; run it without torchrun/accelerate launch (or with --nproc_per_node 1)"
            )
        if problem:
            from_main(here, None)
            raise TrainingError(problem)
    base = resolve_base_model(family.base_model, home / "models")
    job = TrainingJob(
        family, config, dataset_version, train_split, val_split, base, home / "work", init, preferences
    )
    from_main(
        here,
        {
            "dataset_version": dataset_version,
            "config": config.model_dump(mode="json"),
            "init": {"mode": init.mode, "family": init.family, "version": init.version} if init else None,
        },
    )
    record = registry.begin(
        family.name,
        dataset_version=dataset_version,
        base_model=family.base_model,
        training_config=config.model_dump(mode="json"),
        created_by=created_by,
        run_id=run_id,
        watermark=int(manifest["watermark"]["seq"]),
    )
    from pulse_pipeline.core.metrics import TrainingMetrics

    watch = TrainingMetrics(family.name)  # training_jobs_total and friends (core/metrics.py)
    progress = watch.follow(on_progress)
    if lease is not None:
        watched = progress

        def progress(p: Progress) -> None:
            lease.check()  # taken over as dead: stop before two train at once
            watched(p)

    run = None
    try:
        run = _mlflow_run(
            tracking_uri, family, job, created_by, run_id, len(train_split), len(val_split), home
        )
        result = train(job, on_progress=progress, on_metrics=run.log_metrics if run else None)
        if lease is not None:
            lease.check()
        metadata = dict(result.metadata, created_by=created_by, version=record.version)
        if mix is not None:
            metadata["replay"] = mix.record
        metadata["semantic_version"] = record.semantic_version
        if run_id:
            metadata["dagster"] = {"run_id": run_id}
        if run:
            metadata["mlflow"] = {
                "run_id": run.run_id,
                "experiment_id": run.experiment_id,
                "tracking_uri": mask(run.tracking_uri),
            }
        registry.publish(record, result.folder, metadata)
    except BaseException:
        _abandon(registry, record)
        watch.failed()
        if run:
            with contextlib.suppress(Exception):  # MLflow may be what failed: its error is the one raised
                run.finish(ok=False)
        raise
    watch.succeeded(metadata.get("training_loss"))
    if run:
        run.log_artifact(result.folder / files.METADATA)
        run.log_artifact(result.folder / "loss_curve.png")
        run.set_tags({"pulse.version": record.version})
        run.finish(ok=True)
    shutil.rmtree(job.work, ignore_errors=True)  # the checkpoints did their job
    return TrainedAdapter(
        family.name,
        record.version,
        artifacts.uri(files.key(family.name, record.version)),
        metadata,
        run.run_id if run else None,
        run.url if run else None,
        repaired=repaired,
    )


def follow_training(family: FamilyConfig, registry: Registry, *, home: Path, here: World) -> None:
    """A process other than rank 0 under torchrun / accelerate launch: train what rank 0 decided
    (`train_family`) on the same snapshot and settings, its share of each step."""
    from pulse_pipeline.core.training.base_models import resolve_base_model
    from pulse_pipeline.core.training.config import TrainingConfig

    decided = from_main(here, None)
    if decided is None:  # rank 0 found it trained already, or stopped
        return
    version = decided["dataset_version"]
    config = TrainingConfig.model_validate(decided["config"])
    train_split = snapshots.read_split(registry.artifacts, family, version, "train")
    val_split = snapshots.read_split(registry.artifacts, family, version, "val")
    base = resolve_base_model(family.base_model, home / "models")  # rank 0 built it first
    init = None
    if decided.get("init"):  # the adapter rank 0 starts from, copied here too
        from pulse_pipeline.core.registry import files
        from pulse_pipeline.core.training.continual import InitAdapter

        source, source_version = decided["init"]["family"], decided["init"]["version"]
        folder = files.local_folder(registry.artifacts, source, source_version, home / "init")
        init = InitAdapter(decided["init"]["mode"], source, source_version, folder)
        if config.replay is not None:  # the same draw as rank 0's (seeded by the ids)
            from pulse_pipeline.core.training.replay import continual_mix

            mix = continual_mix(
                registry.artifacts, family, init, version, train_split, config.replay, config.seed
            )
            train_split = mix.examples
    train(TrainingJob(family, config, version, train_split, val_split, base, home / "work", init))


def _mlflow_run(
    tracking_uri: str | None, family: FamilyConfig, job: TrainingJob, created_by: str, run_id: str | None,
    train_examples: int, val_examples: int, home: Path,
) -> Any:  # fmt: skip
    """The training's MLflow run (None: not tracked), its parameters logged."""
    if not tracking_uri:
        return None
    from pulse_pipeline.core.training.tracking import MlflowRun

    run = MlflowRun(
        tracking_uri,
        family.name,
        run_name=f"{family.name} {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M}",
        artifact_root=home / "mlartifacts",
        tags={
            "pulse.family": family.name,
            "pulse.dataset_version": job.dataset_version,
            "pulse.created_by": created_by,
            **({"pulse.dagster_run_id": run_id} if run_id else {}),
        },
    )
    run.log_params(
        {
            "dataset_version": job.dataset_version,
            "base_model": family.base_model,
            "task": family.task.value,
            "train_examples": train_examples,
            "val_examples": val_examples,
            **job.config.model_dump(mode="json"),
        }
    )
    return run


def _abandon(registry: Registry, record: Any) -> None:
    """Best effort after a failed training: the record `failed`, the staged files gone. With the
    database away this cannot be written; the next training's reconcile does it."""
    with contextlib.suppress(Exception):  # the training's own error is the one to report
        registry.abandon(record)
