"""The code location: one lineage per family in `pulse.yaml`.

Loads fast on purpose: no torch, transformers, peft, datasets or mlflow at import.
"""

import dagster as dg

from pulse_pipeline.core.families import PulseConfig, load_config
from pulse_pipeline.defs.annotations.assets import annotations_asset
from pulse_pipeline.defs.datasets.assets import (
    dataset_snapshot_asset,
    examples_asset,
    has_review_queue,
    review_queue_asset,
)
from pulse_pipeline.defs.resources import default_resources
from pulse_pipeline.settings import get_settings

ANNOTATIONS_JOB = "annotations_daily"
SNAPSHOT_JOB = "dataset_snapshots"


def annotation_partitions(config: PulseConfig) -> dg.DailyPartitionsDefinition:
    """One partition per UTC day of judgments, today included."""
    return dg.DailyPartitionsDefinition(
        start_date=config.annotations_start_date.isoformat(), timezone="UTC", end_offset=1
    )


def build_definitions(config: PulseConfig) -> dg.Definitions:
    partitions = annotation_partitions(config)
    assets = [annotations_asset(family, partitions) for family in config.families.values()]
    dataset_assets = []
    for family in config.families.values():
        if has_review_queue(family):
            dataset_assets.append(review_queue_asset(family))
        dataset_assets += [examples_asset(family), dataset_snapshot_asset(family)]
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
    return dg.Definitions(
        assets=[*assets, *dataset_assets], jobs=[annotations_daily, snapshots], resources=default_resources()
    )


defs = build_definitions(load_config(get_settings().pulse_config))
