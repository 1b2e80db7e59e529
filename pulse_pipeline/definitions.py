"""The code location: one lineage per family in `pulse.yaml`.

Loads fast on purpose: no torch, transformers, peft, datasets or mlflow at import.
"""

import dagster as dg

from pulse_pipeline.core.families import FamilyConfig, PulseConfig, load_config
from pulse_pipeline.defs.annotations.assets import annotations_asset
from pulse_pipeline.defs.automation.sensors import new_annotations_sensor
from pulse_pipeline.defs.datasets.assets import (
    dataset_snapshot_asset,
    examples_asset,
    has_review_queue,
    review_queue_asset,
)
from pulse_pipeline.defs.evaluation.assets import eval_report_asset
from pulse_pipeline.defs.registry.assets import cleanup_adapters, deployment_asset, promote_adapter
from pulse_pipeline.defs.resources import default_resources
from pulse_pipeline.defs.training.assets import adapter_asset
from pulse_pipeline.settings import get_settings

ANNOTATIONS_JOB = "annotations_daily"
SNAPSHOT_JOB = "dataset_snapshots"
RETRAIN_JOB = "retrain"  # every family's retrain chain; schedules run it one family per run


def annotation_partitions(config: PulseConfig) -> dg.DailyPartitionsDefinition:
    """One partition per UTC day of judgments, today included."""
    return dg.DailyPartitionsDefinition(
        start_date=config.annotations_start_date.isoformat(), timezone="UTC", end_offset=1
    )


def retrain_job_name(family: FamilyConfig) -> str:
    return f"retrain_{family.snake}"


def build_definitions(config: PulseConfig) -> dg.Definitions:
    partitions = annotation_partitions(config)
    assets = [annotations_asset(family, partitions) for family in config.families.values()]
    dataset_assets = []
    training_assets = []
    retrain_jobs = []
    retrain_selections: dict[str, dg.AssetSelection] = {}
    sensors = []
    for family in config.families.values():
        these = [review_queue_asset(family)] if has_review_queue(family) else []
        these += [examples_asset(family), dataset_snapshot_asset(family)]
        dataset_assets += these
        adapter = adapter_asset(family)
        report = eval_report_asset(family, config)
        deployment = deployment_asset(family)
        training_assets += [adapter, report, deployment]
        retrain_selections[family.name] = dg.AssetSelection.assets(*these, adapter, report, deployment)
        retrain_jobs.append(
            dg.define_asset_job(
                retrain_job_name(family),
                selection=retrain_selections[family.name],
                description=f"{family.name}: examples and snapshot from the annotations, train an adapter, "
                "judge it against production, promote it when the gate says DEPLOY.",
                tags={"pulse/family": family.name},
            )
        )
        sensors.append(new_annotations_sensor(family, retrain_job_name(family)))
    annotations_daily = dg.define_asset_job(
        ANNOTATIONS_JOB,
        selection=dg.AssetSelection.assets(*assets),
        description="Count and audit one day of annotations for every family.",
    )
    snapshots = dg.define_asset_job(
        SNAPSHOT_JOB,
        selection=dg.AssetSelection.assets(*dataset_assets),
        description="Review queue, examples and dataset snapshot for every family.",
    )
    retrain_any = dg.define_asset_job(
        RETRAIN_JOB,
        selection=dg.AssetSelection.assets(*dataset_assets, *training_assets),
        description="The retrain chain of any family; the schedules start it with one family's assets "
        "selected per run (tag pulse/family).",
    )
    return dg.Definitions(
        assets=[*assets, *dataset_assets, *training_assets],
        jobs=[annotations_daily, snapshots, *retrain_jobs, retrain_any, promote_adapter, cleanup_adapters],
        sensors=sensors,
        resources=default_resources(),
    )


defs = build_definitions(load_config(get_settings().pulse_config))
