"""One family's training from its newest dataset snapshot to a published adapter version.

`train_family` reads the snapshot's train and val splits from the artifact store, resolves
the training config (task defaults -> preset -> the family's `training:` block -> this run's
overrides) and the base model, runs the recipe inside an MLflow run, and publishes the
adapter folder as `adapters/<family>/<family>-YYYYMMDD-HHMM/`. It is what the Dagster
`<family>/adapter` asset and `python -m pulse_pipeline.core.training` call.
"""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pulse_pipeline.core import adapters, snapshots
from pulse_pipeline.core.artifacts import ArtifactStore
from pulse_pipeline.core.families import FamilyConfig
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


def train_family(
    family: FamilyConfig,
    artifacts: ArtifactStore,
    *,
    home: Path,
    tracking_uri: str | None,
    overrides: dict[str, Any] | None = None,
    dataset_version: str | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    force: bool = False,
    created_by: str = "cli",
    store: Any | None = None,
    stale_after: dt.timedelta = dt.timedelta(hours=4),
    warn: Callable[[str], None] = lambda _: None,
    lock_holder: str | None = None,
) -> TrainedAdapter:
    """Train `family` on a snapshot (default: its newest) and publish the adapter.

    `home` holds the base-model cache (`models/`) and the work folders with checkpoints
    (`work/`); `tracking_uri` is MLflow's (None: no tracking). Without `force`, a version
    already trained on this snapshot with the same resolved settings is returned as it is.
    With `store`, the family's training lock is held while it trains (`TrainingLocked` when
    another training holds it; a lock older than `stale_after` is taken over, with `warn`).
    `lock_holder` names the holder (default: who asked, with the process); a Dagster run passes its
    run id, so a step retried after a dropped connection (a new process) takes its own lock again.
    """
    from pulse_pipeline.core.training.config import resolve_training_config

    if dataset_version is None:
        manifest = snapshots.latest_manifest(artifacts, family.name)
        if manifest is None:
            raise TrainingError(
                f"{family.name} has no dataset snapshot yet: run `pulse snapshot --family {family.name}` first"
            )
        dataset_version = manifest["dataset_version"]
    train_split = snapshots.read_split(artifacts, family, dataset_version, "train")
    val_split = snapshots.read_split(artifacts, family, dataset_version, "val")
    config = resolve_training_config(family.task.value, family.training, overrides)
    done = adapters.find_trained(artifacts, family.name, dataset_version, config.model_dump(mode="json"))
    if done is not None and not force:
        run_id = (done.get("mlflow") or {}).get("run_id")
        uri = artifacts.uri(adapters.prefix(family.name, done["version"]))
        return TrainedAdapter(family.name, done["version"], uri, done, run_id, None, reused=True)
    if store is None:
        return _train(family, config, dataset_version, train_split, val_split, artifacts,
                      home=home, tracking_uri=tracking_uri, on_progress=on_progress, created_by=created_by)  # fmt: skip
    from pulse_pipeline.core.training.lock import holder_name, training_lock

    holder = lock_holder or holder_name(created_by)
    with training_lock(store, family.name, holder, stale_after=stale_after, warn=warn) as beat:

        def progress(p: Progress) -> None:
            beat()
            if on_progress is not None:
                on_progress(p)

        return _train(family, config, dataset_version, train_split, val_split, artifacts,
                      home=home, tracking_uri=tracking_uri, on_progress=progress, created_by=created_by)  # fmt: skip


def _train(
    family: FamilyConfig, config: Any, dataset_version: str, train_split: list[dict[str, Any]],
    val_split: list[dict[str, Any]], artifacts: ArtifactStore, *, home: Path, tracking_uri: str | None,
    on_progress: Callable[[Progress], None] | None, created_by: str,
) -> TrainedAdapter:  # fmt: skip
    """The recipe inside an MLflow run, then the published version."""
    from pulse_pipeline.core.training.base_models import resolve_base_model

    base = resolve_base_model(family.base_model, home / "models")
    job = TrainingJob(family, config, dataset_version, train_split, val_split, base, home / "work")

    run = None
    if tracking_uri:
        from pulse_pipeline.core.training.tracking import MlflowRun

        run = MlflowRun(
            tracking_uri,
            family.name,
            run_name=f"{family.name} {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M}",
            artifact_root=home / "mlartifacts",
            tags={
                "pulse.family": family.name,
                "pulse.dataset_version": dataset_version,
                "pulse.created_by": created_by,
            },
        )
        run.log_params(
            {
                "dataset_version": dataset_version,
                "base_model": family.base_model,
                "task": family.task.value,
                "train_examples": len(train_split),
                "val_examples": len(val_split),
                **config.model_dump(mode="json"),
            }
        )
    try:
        result = train(job, on_progress=on_progress, on_metrics=run.log_metrics if run else None)
        metadata = dict(result.metadata, created_by=created_by)
        if run:
            metadata["mlflow"] = {
                "run_id": run.run_id,
                "experiment_id": run.experiment_id,
                "tracking_uri": run.tracking_uri,
            }
        version = adapters.publish(artifacts, family.name, result.folder, metadata)
        metadata["version"] = version
    except BaseException:
        if run:
            run.finish(ok=False)
        raise
    if run:
        run.log_artifact(result.folder / adapters.METADATA)
        run.log_artifact(result.folder / "loss_curve.png")
        run.set_tags({"pulse.version": version})
        run.finish(ok=True)
    shutil.rmtree(job.work, ignore_errors=True)  # the checkpoints did their job
    return TrainedAdapter(
        family.name,
        version,
        artifacts.uri(adapters.prefix(family.name, version)),
        metadata,
        run.run_id if run else None,
        run.url if run else None,
    )


def new_annotations_since_training(store: Any, artifacts: ArtifactStore, family: FamilyConfig) -> int:
    """Trainable annotations newer than the snapshot the family's newest adapter was trained on
    (all of them before the first training): what `min_new_annotations` is compared with."""
    import orjson

    from pulse_pipeline.core.triage import TRAINABLE, triage

    watermark = 0
    for version in reversed(adapters.versions(artifacts, family.name)):  # newest with its snapshot kept
        dataset = adapters.read_metadata(artifacts, family.name, version).get("dataset_version")
        try:
            manifest = orjson.loads(
                artifacts.read_bytes(f"{snapshots.prefix(family.name, dataset)}/manifest.json")
            )
        except KeyError:
            continue
        watermark = manifest["watermark"]["seq"]
        break
    return sum(
        1
        for row in store.iter_family(family.name, after=watermark)
        if triage(row.kind, row.payload, family.triage) in TRAINABLE
    )
