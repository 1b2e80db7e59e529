"""`<family>/adapter`: a LoRA adapter trained on the family's newest dataset snapshot.

A thin wrapper over `core.training.runner.train_family`. The asset runs in the `training`
concurrency pool (limit 1 in dagster.yaml), so two trainings never share the machine.
"""

import dagster as dg
from pydantic import Field

from pulse_pipeline.core.families import FamilyConfig
from pulse_pipeline.defs.resources import AnnotationStore, ArtifactStorage, TrainingEnvironment
from pulse_pipeline.defs.retries import retry_transient

TRAINING_POOL = "training"


class AdapterRunConfig(dg.Config):
    """Per-run settings, from the Launchpad or `pulse train`; the rest is in pulse.yaml."""

    epochs: int | None = Field(
        None, description="Train for this many epochs instead of the family's setting."
    )
    max_samples: int | None = Field(None, description="Train on at most this many examples (smoke runs).")
    force: bool = Field(
        False,
        description="Train even when a version was already trained on this snapshot with the same settings.",
    )
    progress_bar: bool = Field(
        False, description="Also draw a progress bar on stderr (`pulse train` sets it)."
    )


def adapter_asset(family: FamilyConfig) -> dg.AssetsDefinition:
    @dg.asset(
        key=dg.AssetKey([family.name, "adapter"]),
        deps=[dg.AssetKey([family.name, "dataset_snapshot"])],
        group_name=family.snake,
        pool=TRAINING_POOL,
        kinds={"pytorch"},
        tags={"pulse/family": family.name, "pulse/stage": "training"},
        description=f"{family.name}: a LoRA adapter on {family.base_model} ({family.task}), trained on the newest snapshot.",
    )
    @retry_transient
    def _adapter(
        context: dg.AssetExecutionContext,
        config: AdapterRunConfig,
        artifact_storage: ArtifactStorage,
        annotation_store: AnnotationStore,
        training: TrainingEnvironment,
    ) -> dg.MaterializeResult:
        import datetime as dt

        from pulse_pipeline.core.training.runner import train_family

        report = _ProgressReport(context, config.progress_bar)
        try:
            trained = train_family(
                family,
                artifact_storage.open(),
                home=training.home_path,
                tracking_uri=training.mlflow_tracking_uri or None,
                overrides={"epochs": config.epochs, "max_samples": config.max_samples},
                force=config.force,
                on_progress=report,
                created_by=created_by(context.run.tags, context.run.run_id),
                store=annotation_store.store,
                stale_after=dt.timedelta(hours=training.lock_stale_hours),
                warn=context.log.warning,
                lock_holder=f"{created_by(context.run.tags, context.run.run_id)} (run {context.run.run_id})",
            )
        finally:
            report.close()
        if not trained.reused or annotation_store.store.version_record(family.name, trained.version) is None:
            from pulse_pipeline.core.promotion import Targets, announce_candidate, record_trained

            artifacts = artifact_storage.open()
            record_trained(annotation_store.store, artifacts, family.name, trained.version)
            targets = Targets(annotation_store.store, training.mlflow_tracking_uri or None)
            context.log.info(f"MLflow registry: {announce_candidate(artifacts, family.name, targets)}")
        m = trained.metadata
        verb = "reused" if trained.reused else "trained"
        context.log.info(f"{family.name}: {verb} {trained.version} on dataset {m['dataset_version']}")
        epochs = [
            f"| {e['epoch']} | {e['train_loss']:.4f} | {e.get('val_loss', float('nan')):.4f} |"
            for e in m.get("epoch_history", [])
        ]
        return dg.MaterializeResult(
            metadata={
                "version": trained.version,
                "reused": trained.reused,
                "dataset_version": m["dataset_version"],
                "base_model": m["base_model"],
                "training_loss": dg.MetadataValue.float(float(m["training_loss"] or 0.0)),
                "validation_loss": dg.MetadataValue.float(float(m["best_validation_loss"] or 0.0)),
                "best_epoch": m["best_epoch"],
                "samples_used": m["samples_used"],
                "training_time_seconds": dg.MetadataValue.float(float(m["training_time_seconds"])),
                "tokens_per_second": dg.MetadataValue.float(float(m["tokens_per_second"] or 0.0)),
                "device": f"{m['hardware']['device']} {m['hardware']['precision']} quantization={m['hardware']['quantization']}",
                "epochs": dg.MetadataValue.md(
                    "\n".join(["| epoch | train loss | val loss |", "|---:|---:|---:|", *epochs])
                ),
                "mlflow_run": dg.MetadataValue.url(trained.mlflow_url)
                if trained.mlflow_url
                else (trained.mlflow_run_id or "not tracked"),
                "path": dg.MetadataValue.path(trained.uri),
            },
            data_version=dg.DataVersion(trained.version),
        )

    return _adapter


def created_by(tags: dict[str, str], run_id: str) -> str:
    """Who asked for this training: `cli`, `sensor:<name>`, `schedule:<name>`, or the run."""
    if "pulse/created_by" in tags:
        return tags["pulse/created_by"]
    if "dagster/sensor_name" in tags:
        return f"sensor:{tags['dagster/sensor_name']}"
    if "dagster/schedule_name" in tags:
        return f"schedule:{tags['dagster/schedule_name']}"
    return f"run:{run_id[:8]}"


class _ProgressReport:
    """Progress lines in the run's log, and a progress bar on stderr when asked for."""

    def __init__(self, context: dg.AssetExecutionContext, bar: bool):
        from pulse_pipeline.core.training.progress import ProgressBar

        self.context = context
        self.bar = ProgressBar(lines_when_not_a_terminal=False) if bar else None

    def __call__(self, p) -> None:  # p: recipe.Progress
        from pulse_pipeline.core.training.progress import progress_line

        self.context.log.info(progress_line(p))
        if self.bar is not None:
            self.bar(p)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
