"""`<family>/daily_report`: one UTC day of captures and judgments, in numbers the UI plots.

A thin wrapper over `core.capture_report`; the `daily_capture_report` schedule materializes the
previous day's partition of every family at 02:00 UTC, and a person can backfill any day.
"""

import datetime as dt

import dagster as dg

from pulse_pipeline.core.families import FamilyConfig
from pulse_pipeline.defs.metadata import for_people
from pulse_pipeline.defs.resources import AnnotationStore, ArtifactStorage
from pulse_pipeline.defs.retries import retry_transient


def daily_report_key(family: FamilyConfig) -> dg.AssetKey:
    return dg.AssetKey([family.name, "daily_report"])


def daily_report_asset(family: FamilyConfig, partitions: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    @dg.asset(
        key=daily_report_key(family),
        deps=[dg.AssetKey([family.name, "annotations"])],  # the same day's partition
        partitions_def=partitions,
        group_name=family.snake,
        kinds={"sql"},
        tags={"pulse/family": family.name, "pulse/stage": "report"},
    )
    @retry_transient
    def _daily_report(
        context: dg.AssetExecutionContext,
        annotation_store: AnnotationStore,
        artifact_storage: ArtifactStorage,
    ) -> dg.MaterializeResult:
        """The day's records by review status (auto-approved, awaiting review, priority, human-judged,
        quarantined), auto-approval rate and average confidence of captures, the review queue now,
        and the new trainable annotations against the retrain threshold."""
        from pulse_pipeline.core.capture_report import capture_report

        day = dt.date.fromisoformat(context.partition_key)
        report = capture_report(annotation_store.store, artifact_storage.open(), family, day)
        context.log.info(report.summary())
        # The day's counts are that day's; the queue and the retrain count are as of this run
        # (a backfilled partition shows the queue of when it was backfilled, said here).
        as_of = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        return dg.MaterializeResult(metadata=for_people({**report.metadata(), "queue_and_threshold_as_of": as_of}))

    return _daily_report
