"""The code location: one lineage per family in `pulse.yaml`, and the automation that runs it.

Per family: annotations (daily partitions) -> review queue -> examples -> dataset snapshot ->
adapter -> eval report (blocking promotion gate) -> deployment, plus the watches beside the chain
(daily_report, drift_report, production_accuracy). Sensors and schedules start the retrains.

Loads fast on purpose: no torch, transformers, peft, datasets or mlflow at import.
"""

import dagster as dg

from pulse_pipeline.core.families import FamilyConfig, PulseConfig, load_config
from pulse_pipeline.core.review_sessions import takes_review_sessions
from pulse_pipeline.core.triage import generates_qa, has_review_queue
from pulse_pipeline.defs.annotations.assets import annotations_asset
from pulse_pipeline.defs.automation.daily_report import daily_report_asset
from pulse_pipeline.defs.automation.drift import drift_report_asset, drift_sensor
from pulse_pipeline.defs.automation.failures import run_failures_sensor
from pulse_pipeline.defs.automation.label_studio import label_studio_sensor
from pulse_pipeline.defs.automation.production import production_accuracy_asset, production_accuracy_sensor
from pulse_pipeline.defs.automation.requests import negative_feedback_sensor, retrain_requests_sensor
from pulse_pipeline.defs.automation.review_sessions import closed_sessions_sensor
from pulse_pipeline.defs.automation.schedules import build_schedules, run_limit_tags, watch_keys
from pulse_pipeline.defs.automation.sensors import new_annotations_sensor
from pulse_pipeline.defs.datasets.assets import dataset_snapshot_asset, examples_asset, review_queue_asset
from pulse_pipeline.defs.evaluation.assets import eval_report_asset
from pulse_pipeline.defs.oracle.assets import (
    generated_qa_asset,
    oracle_calibration_asset,
    oracle_labels_asset,
)
from pulse_pipeline.defs.registry.assets import (
    cleanup_adapters,
    deployment_asset,
    promote_adapter,
    reconcile_adapters,
)
from pulse_pipeline.defs.resources import default_resources
from pulse_pipeline.defs.training.assets import adapter_asset
from pulse_pipeline.settings import get_settings

ANNOTATIONS_JOB = "annotations_daily"
SNAPSHOT_JOB = "dataset_snapshots"
RETRAIN_JOB = "retrain"  # every family's retrain chain; the schedules run it one family per run
WATCH_JOB = "daily_watch"  # drift reports and production accuracy of every family


def annotation_partitions(config: PulseConfig) -> dg.DailyPartitionsDefinition:
    """One partition per UTC day of judgments, today included."""
    return dg.DailyPartitionsDefinition(
        start_date=config.annotations_start_date.isoformat(), timezone="UTC", end_offset=1
    )


def retrain_job_name(family: FamilyConfig) -> str:
    return f"retrain_{family.snake}"


def step_executor() -> dg.ExecutorDefinition | None:
    """PULSE_STEP_EXECUTOR: `k8s` runs every step in its own Kubernetes job; `default` leaves Dagster's."""
    if get_settings().pulse_step_executor != "k8s":
        return None
    from dagster_k8s import k8s_job_executor  # the `k8s` extra; only Kubernetes deployments need it

    return k8s_job_executor


def build_definitions(config: PulseConfig) -> dg.Definitions:
    partitions = annotation_partitions(config)
    families = list(config.families.values())
    assets = [annotations_asset(family, partitions) for family in families]
    chain_assets: list[dg.AssetsDefinition] = []  # review queue .. deployment, every family
    chain_keys: dict[str, list[dg.AssetKey]] = {}
    watch_assets: list[dg.AssetsDefinition] = []
    oracle_assets: list[dg.AssetsDefinition] = []  # labelling with an LLM, for families with `oracle:`
    retrain_jobs = []
    sensors: list[dg.SensorDefinition] = [run_failures_sensor()]
    for family in families:
        chain = [review_queue_asset(family)] if has_review_queue(family) else []
        if has_review_queue(family):
            sensors.append(label_studio_sensor(family, config))
        chain += [
            examples_asset(family),
            dataset_snapshot_asset(family),
            adapter_asset(family),
            eval_report_asset(family, config),
            deployment_asset(family),
        ]
        chain_assets += chain
        chain_keys[family.name] = [key for asset in chain for key in asset.keys]
        retrain_jobs.append(
            dg.define_asset_job(
                retrain_job_name(family),
                selection=dg.AssetSelection.assets(*chain),
                description=f"{family.name}: examples and snapshot from the annotations, train an adapter, "
                "judge it against production, promote it when the gate says DEPLOY.",
                tags={"pulse/family": family.name, **run_limit_tags(family)},
            )
        )
        watch_assets += [daily_report_asset(family, partitions), production_accuracy_asset(family)]
        if family.has_oracle:
            oracle_assets += [oracle_calibration_asset(family), oracle_labels_asset(family, config)]
        if generates_qa(family):
            oracle_assets.append(generated_qa_asset(family, config))
        sensors.append(new_annotations_sensor(family, retrain_job_name(family)))
        if takes_review_sessions(family):
            sensors.append(closed_sessions_sensor(family, retrain_job_name(family)))
        if family.automation.drift.enabled:
            watch_assets.append(drift_report_asset(family))
            sensors.append(drift_sensor(family, retrain_job_name(family)))
        sensors.append(production_accuracy_sensor(family, promote_adapter.name))
        sensors.append(retrain_requests_sensor(family, retrain_job_name(family)))
        if family.automation.negative_feedback.enabled:
            sensors.append(negative_feedback_sensor(family, retrain_job_name(family)))
    jobs = [
        dg.define_asset_job(
            ANNOTATIONS_JOB,
            selection=dg.AssetSelection.assets(*assets),
            description="Count and audit one day of annotations for every family.",
        ),
        dg.define_asset_job(
            SNAPSHOT_JOB,
            selection=dg.AssetSelection.assets(
                *[a for a in chain_assets if a.key.path[-1] in ("review_queue", "examples", "dataset_snapshot")]
            ),
            description="Review queue, examples and dataset snapshot for every family.",
        ),
        *retrain_jobs,
        dg.define_asset_job(
            RETRAIN_JOB,
            selection=dg.AssetSelection.assets(*chain_assets),
            description="The retrain chain of any family; the schedules start it with one family's assets "
            "selected per run (tag pulse/family).",
        ),
        dg.define_asset_job(
            WATCH_JOB,
            selection=dg.AssetSelection.assets(*[key for f in families for key in watch_keys(f)]),
            description="Drift report and live (production) accuracy of every family.",
        ),
        promote_adapter,
        cleanup_adapters,
        reconcile_adapters,
    ]
    return dg.Definitions(
        assets=[*assets, *chain_assets, *watch_assets, *oracle_assets],
        jobs=jobs,
        schedules=build_schedules(config, chain_keys, partitions, retrain_job=RETRAIN_JOB, watch_job=WATCH_JOB),
        sensors=sensors,
        resources=default_resources(),
        executor=step_executor(),
    )


defs = build_definitions(load_config(get_settings().pulse_config))
