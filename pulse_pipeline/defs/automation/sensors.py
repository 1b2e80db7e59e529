"""`new_annotations_<family>`: request the family's retrain job when enough new judgment arrived.

A thin wrapper over `core.retraining`: the run key is the training watermark (the snapshot of the
family's newest trained version), so repeated ticks never start a second run for the same data
(a retrain that trains moves the watermark); below the family's minimum the tick skips with the
reason ("37 of 50 new annotations"), and while a training of the family holds its lock with who
holds it.
A retrain already queued or running, or one that failed for this data, is handled by
`runs.retrain_request`.
"""

import dagster as dg

from pulse_pipeline.core.families import FamilyConfig
from pulse_pipeline.defs.automation.runs import retrain_request
from pulse_pipeline.defs.resources import AnnotationStore, ArtifactStorage, TrainingEnvironment


def new_annotations_sensor(family: FamilyConfig, job_name: str) -> dg.SensorDefinition:
    @dg.sensor(
        name=f"new_annotations_{family.snake}",
        job_name=job_name,
        minimum_interval_seconds=300,
        default_status=dg.DefaultSensorStatus.STOPPED,
        description=f"Retrain {family.name} when {family.min_new_annotations} new trainable annotations "
        "have arrived since its newest trained version's snapshot.",
    )
    def _sensor(
        context: dg.SensorEvaluationContext,
        annotation_store: AnnotationStore,
        artifact_storage: ArtifactStorage,
        training: TrainingEnvironment,
    ) -> dg.SensorResult | dg.SkipReason:
        from pulse_pipeline.core.retraining import NewAnnotations, new_annotations

        store = annotation_store.store
        seen = new_annotations(store, artifact_storage.open(), family, NewAnnotations.from_cursor(context.cursor))
        context.update_cursor(seen.to_cursor())
        if seen.count < family.min_new_annotations:
            return dg.SkipReason(f"{seen.count} of {family.min_new_annotations} new annotations")
        request = retrain_request(  # one retrain per training watermark
            context.instance, family, f"{family.name}:{seen.watermark}",
            {"pulse/new_annotations": str(seen.count)}, job_name=job_name, store=store, training=training,
        )  # fmt: skip
        if isinstance(request, dg.SkipReason):
            return request
        return dg.SensorResult(run_requests=[request], cursor=seen.to_cursor())

    return _sensor
