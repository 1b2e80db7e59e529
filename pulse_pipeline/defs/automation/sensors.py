"""`new_annotations_<family>`: request the family's retrain job when enough new judgment arrived.

A thin wrapper over `core.retraining`: the run key is the training watermark (the snapshot of the
family's newest trained version), so repeated ticks never start a second run for the same data
(a retrain that trains moves the watermark); below the family's minimum the tick skips with the
reason ("37 of 50 new annotations"), and while a training of the family holds its lock with who
holds it.
Each tick also records the family's `annotation_backlog` and `sensor_lag_seconds` (core/metrics.py;
one indexed query and one small write or push).
A retrain already queued or running, or one that failed for this data, is handled by
`runs.retrain_request`.
"""

from typing import TYPE_CHECKING

import dagster as dg

from pulse_pipeline.core.families import FamilyConfig
from pulse_pipeline.defs.automation.runs import retrain_request
from pulse_pipeline.defs.resources import AnnotationStore, ArtifactStorage, TrainingEnvironment

if TYPE_CHECKING:
    from pulse_pipeline.core.retraining import NewAnnotations
    from pulse_pipeline.core.store import Store


def new_annotations_sensor(family: FamilyConfig, job_name: str) -> dg.SensorDefinition:
    name = f"new_annotations_{family.snake}"

    @dg.sensor(
        name=name,
        job_name=job_name,
        minimum_interval_seconds=family.automation.new_annotations_interval_seconds,
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
        _record_backlog(context, store, family, name, seen)
        if seen.count < family.min_new_annotations:
            return dg.SkipReason(f"{seen.count} of {family.min_new_annotations} new annotations")
        request = retrain_request(  # one retrain per training watermark
            context.instance, family, f"{family.name}:{seen.watermark}",
            {"pulse/new_annotations": str(seen.count)}, job_name=job_name, store=store, training=training,
        )  # fmt: skip
        if isinstance(request, dg.SkipReason):
            return request
        return dg.SensorResult(run_requests=[request])  # the cursor is set above (update_cursor)

    return _sensor


def _record_backlog(
    context: dg.SensorEvaluationContext, store: "Store", family: FamilyConfig, sensor: str, seen: "NewAnnotations"
) -> None:
    """The tick's metrics: the backlog, and how long the oldest annotation not yet trained on has waited."""
    import contextlib
    import datetime as dt

    from pulse_pipeline.core.metrics import record_sensor_tick

    try:
        rows = store.annotations.iter_family(family.name, after=seen.watermark, batch=1)
        with contextlib.closing(rows):
            oldest = next(rows, None)
    except Exception as exc:  # noqa: BLE001 - a metric never fails the tick
        context.log.warning(f"{family.name}: sensor_lag_seconds not measured: {exc}")
        oldest = None
    age = None
    if oldest is not None:
        arrived = oldest.ingested_at
        if arrived.tzinfo is None:  # SQLite keeps no time zone: the store writes UTC
            arrived = arrived.replace(tzinfo=dt.UTC)
        age = (dt.datetime.now(dt.UTC) - arrived).total_seconds()
    record_sensor_tick(family.name, sensor, seen.count, age, warn=context.log.warning)
