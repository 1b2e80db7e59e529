"""`<family>/adapter`: a LoRA adapter trained on the family's newest dataset snapshot.

A thin wrapper over `core.training.runner.train_family`. The step takes the family's training
lock for its run (kept through the run's evaluation and deployment; `locking.py`), and runs in
the `training` concurrency pool (limit 1 in dagster.yaml), so two trainings never share the
machine. On Kubernetes its op tag `dagster-k8s/config` gives the step's pod a GPU (deploy/helm).

Where the training itself runs is the family's `resources.launcher`: in the step's process (the
embedded default), or through Dagster Pipes in a subprocess (torchrun for several processes) or
a pod of its own (pipes.py); the step holds the lock either way, and the materialization is the
same. A pod of its own leaves the step's pod without a GPU.
"""

from typing import Any

import dagster as dg
from pydantic import Field

from pulse_pipeline.core.families import FamilyConfig
from pulse_pipeline.defs.metadata import for_people
from pulse_pipeline.defs.resources import AnnotationStore, ArtifactStorage, TrainingEnvironment
from pulse_pipeline.defs.retries import retry_transient
from pulse_pipeline.defs.training.locking import run_holds_later_steps, step_lease
from pulse_pipeline.settings import get_settings

TRAINING_POOL = "training"
K8S_CONFIG_TAG = "dagster-k8s/config"
# The training step's pod under dagster-k8s's k8s_job_executor (other executors ignore the tag):
# one GPU, on a node of the NVIDIA GPU operator, tolerating its taint. PULSE_TRAINING_K8S_CONFIG
# replaces it.
DEFAULT_TRAINING_K8S_CONFIG: dict[str, Any] = {
    "container_config": {
        "resources": {"requests": {"nvidia.com/gpu": "1"}, "limits": {"nvidia.com/gpu": "1"}}
    },
    "pod_spec_config": {
        "node_selector": {"nvidia.com/gpu.present": "true"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    },
}
# The keys dagster-k8s reads from the tag.
K8S_CONFIG_KEYS = frozenset(
    {"container_config", "pod_spec_config", "pod_template_spec_metadata", "job_config", "job_metadata",
     "job_spec_config", "merge_behavior"}
)  # fmt: skip


def training_k8s_config() -> dict[str, Any]:
    """The training step's `dagster-k8s/config`: PULSE_TRAINING_K8S_CONFIG, else one GPU on a GPU node."""
    config = get_settings().pulse_training_k8s_config
    config = DEFAULT_TRAINING_K8S_CONFIG if config is None else config
    unknown = sorted(set(config) - K8S_CONFIG_KEYS)
    if unknown:
        raise ValueError(
            f"PULSE_TRAINING_K8S_CONFIG: unknown keys {unknown}; dagster-k8s reads {sorted(K8S_CONFIG_KEYS)}"
        )
    return config


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
        op_tags={} if family.resources.launcher == "kubernetes" else {K8S_CONFIG_TAG: training_k8s_config()},
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
        from pulse_pipeline.core.registry import Registry, Targets
        from pulse_pipeline.core.registry.promotion import sync_mlflow
        from pulse_pipeline.core.training.runner import train_family

        store = annotation_store.store
        tracking_uri = training.mlflow_tracking_uri or None
        registry = Registry(store, artifact_storage.open(), Targets(tracking_uri))
        who = created_by(context.run.tags, context.run.run_id)
        later = run_holds_later_steps(context, family.name, "eval_report", "deployment")
        report = _ProgressReport(context, config.progress_bar)
        try:
            with step_lease(
                context, family.name, training.lock(store, context.instance), who=who, acquire=True,
                release=not later,
            ) as lease:  # fmt: skip
                if family.resources.launcher == "in_process":
                    trained = train_family(
                        family,
                        registry,
                        home=training.home_path,
                        tracking_uri=tracking_uri,
                        overrides={"epochs": config.epochs, "max_samples": config.max_samples},
                        force=config.force,
                        on_progress=report,
                        created_by=who,
                        run_id=context.run.run_id,
                        lease=lease,
                    )
                else:
                    trained = _train_elsewhere(
                        context, family, config, lease, who, tracking_uri,
                        {"training": training, "annotation_store": annotation_store, "artifact_storage": artifact_storage},
                    )  # fmt: skip
                lease.check()
        finally:
            report.close()
        for line in trained.repaired:
            context.log.warning(f"{family.name}: reconciled before training: {line}")
        if not trained.reused:
            context.log.info(f"MLflow registry: {sync_mlflow(registry, family.name)}")
        m = trained.metadata
        verb = "reused" if trained.reused else "trained"
        resumed = f", resumed from step {m['resumed_from_step']}" if m.get("resumed_from_step") else ""
        context.log.info(
            f"{family.name}: {verb} {trained.version} on dataset {m['dataset_version']}{resumed}"
        )
        epochs = [
            f"| {e['epoch']} | {e['train_loss']:.4f} | {e.get('val_loss', float('nan')):.4f} |"
            for e in m.get("epoch_history", [])
        ]
        return dg.MaterializeResult(
            metadata=for_people(
                {
                    "version": trained.version,
                    "reused": trained.reused,
                    "dataset_version": m["dataset_version"],
                    "base_model": m["base_model"],
                    "training_loss": dg.MetadataValue.float(float(m["training_loss"] or 0.0)),
                    "validation_loss": dg.MetadataValue.float(float(m["best_validation_loss"] or 0.0)),
                    "best_epoch": m["best_epoch"],
                    "samples_used": m["samples_used"],
                    "resumed_from_step": m.get("resumed_from_step") or 0,
                    "training_time_seconds": dg.MetadataValue.float(float(m["training_time_seconds"])),
                    "tokens_per_second": dg.MetadataValue.float(float(m["tokens_per_second"] or 0.0)),
                    "device": f"{m['hardware']['device']} {m['hardware']['precision']} quantization={m['hardware']['quantization']}",
                    "epochs": dg.MetadataValue.md(
                        "\n".join(["| epoch | train loss | val loss |", "|---:|---:|---:|", *epochs])
                    ),
                    "objective": m.get("objective", "sft"),
                    "started_from": (m.get("init") or {}).get("from", "base"),
                    **_preference_metadata(m.get("preference")),
                    "mlflow_run": dg.MetadataValue.url(trained.mlflow_url)
                    if trained.mlflow_url
                    else (trained.mlflow_run_id or "not tracked"),
                    "path": dg.MetadataValue.path(trained.uri),
                }
            ),
            data_version=dg.DataVersion(trained.version),
        )

    return _adapter


def _preference_metadata(record: dict[str, Any] | None) -> dict[str, Any]:
    """The preference stage's figures (objective dpo, kto, sft_then_*), for the materialization."""
    if not record:
        return {}
    held_out = record.get("validation") or {}
    return {
        "preference": dg.MetadataValue.json(
            {
                k: record[k]
                for k in ("trainer", "reference", "train_examples", "steps", "first_loss", "final_loss")
            }
        ),
        **{
            f"preference_val_{k.replace('/', '_')}": dg.MetadataValue.float(float(v))
            for k, v in held_out.items()
            if k in ("loss", "rewards/margins", "rewards/accuracies")
        },
    }


def _train_elsewhere(
    context: dg.AssetExecutionContext, family: FamilyConfig, config: AdapterRunConfig, lease: Any, who: str,
    tracking_uri: str | None, resources: dict[str, Any],
) -> Any:  # fmt: skip
    """The training as a process of its own through Dagster Pipes (pipes.py), told the step's
    lock holder, who asked, this run and its overrides; the same store, home and MLflow."""
    import dataclasses

    from pulse_pipeline.core.training.launch import training_command
    from pulse_pipeline.defs.training.pipes import train_through_pipes

    command = training_command(
        family.name,
        processes=family.resources.processes_per_node,
        lock_holder=dataclasses.asdict(lease.holder),
        created_by=who,
        run_id=context.run.run_id,
        epochs=config.epochs,
        max_samples=config.max_samples,
        force=config.force,
        tracking=bool(tracking_uri),
        python="python" if family.resources.launcher == "kubernetes" else None,
    )
    storage = resources["artifact_storage"]
    env = {
        "PULSE_DATABASE_URL": resources["annotation_store"].database_url,
        "PULSE_HOME": resources["training"].home,
        "PULSE_ARTIFACTS": storage.location,
        **({"PULSE_S3_ENDPOINT": storage.s3_endpoint} if storage.s3_endpoint else {}),
        **({"PULSE_S3_ACCESS_KEY": storage.s3_access_key} if storage.s3_access_key else {}),
        **({"PULSE_S3_SECRET_KEY": storage.s3_secret_key} if storage.s3_secret_key else {}),
    }
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    if family.resources.launcher == "kubernetes":
        env = {}  # the pod reads the project's ConfigMap and Secret (pipes.training_pod_spec)
    return train_through_pipes(context, family, command, env)


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
