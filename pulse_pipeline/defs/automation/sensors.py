"""`new_annotations_<family>`: request the family's retrain job when enough new judgment arrived.

A thin wrapper over `core.retraining`: the run key is the snapshot watermark, so repeated ticks
never start a second run for the same data (the retrain builds a new snapshot, which moves the
watermark); below the family's minimum the tick skips with the reason ("37 of 50 new annotations").
A retrain already queued or running, or one that failed for this data, is handled by
`runs.retrain_request`.
"""

import dagster as dg

from pulse_pipeline.core.families import FamilyConfig
from pulse_pipeline.defs.automation.runs import retrain_request
from pulse_pipeline.defs.resources import AnnotationStore, ArtifactStorage


def new_annotations_sensor(family: FamilyConfig, job_name: str) -> dg.SensorDefinition:
    @dg.sensor(
        name=f"new_annotations_{family.snake}",
        job_name=job_name,
        minimum_interval_seconds=300,
        default_status=dg.DefaultSensorStatus.STOPPED,
        description=f"Retrain {family.name} when {family.min_new_annotations} new trainable annotations "
        "have arrived since its newest snapshot.",
    )
    def _sensor(
        context: dg.SensorEvaluationContext,
        annotation_store: AnnotationStore,
        artifact_storage: ArtifactStorage,
    ) -> dg.SensorResult | dg.SkipReason:
        from pulse_pipeline.core.retraining import NewAnnotations, count_new, snapshot_watermark

        watermark = snapshot_watermark(artifact_storage.open(), family.name)
        seen = count_new(
            annotation_store.store, family, watermark, NewAnnotations.from_cursor(context.cursor)
        )
        context.update_cursor(seen.to_cursor())
        if seen.count < family.min_new_annotations:
            return dg.SkipReason(f"{seen.count} of {family.min_new_annotations} new annotations")
        request = retrain_request(  # one retrain per snapshot watermark
            context.instance, family, f"{family.name}:{seen.watermark}",
            {"pulse/new_annotations": str(seen.count)}, job_name=job_name,
        )  # fmt: skip
        if isinstance(request, dg.SkipReason):
            return request
        return dg.SensorResult(run_requests=[request], cursor=seen.to_cursor())

    return _sensor
