"""`closed_review_sessions_<family>`: retrain when a review session with new segment reviews closes.

A thin wrapper over `core.review_sessions`: the cursor is the newest closure read, so a tick
reads only the sessions closed since the last one; a closed session whose segment reviews are
all older than the newest trained version's snapshot is skipped, with its id in the reason. Sessions closed
between two ticks start one retrain (the run key names the newest of them).
"""

import dagster as dg

from pulse_pipeline.core.families import FamilyConfig
from pulse_pipeline.defs.automation.runs import retrain_request
from pulse_pipeline.defs.resources import AnnotationStore, ArtifactStorage, TrainingEnvironment


def closed_sessions_sensor(family: FamilyConfig, job_name: str) -> dg.SensorDefinition:
    """For a family whose annotation kinds include segment_review (`takes_review_sessions`)."""

    @dg.sensor(
        name=f"closed_review_sessions_{family.snake}",
        job_name=job_name,
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.STOPPED,
        description=f"Retrain {family.name} when a review session (`pulse sessions close`) closes "
        "holding segment reviews newer than the family's newest trained version's snapshot.",
    )
    def _sensor(
        context: dg.SensorEvaluationContext,
        annotation_store: AnnotationStore,
        artifact_storage: ArtifactStorage,
        training: TrainingEnvironment,
    ) -> dg.SensorResult | dg.SkipReason:
        from pulse_pipeline.core.retraining import training_watermark
        from pulse_pipeline.core.review_sessions import check_closures

        store = annotation_store.store
        after = int(context.cursor) if context.cursor and context.cursor.isdigit() else 0
        watermark = training_watermark(store, artifact_storage.open(), family.name)
        seen = check_closures(store, family, watermark, after)
        context.update_cursor(str(seen.read_up_to))
        quiet = ", ".join(s.session_id for s in seen.nothing_new)
        if not seen.retrain:
            if not seen.closures:
                return dg.SkipReason(f"no review session of {family.name} closed since the last tick")
            return dg.SkipReason(f"no segment review newer than the last training in closed session(s) {quiet}")
        newest, _ = seen.retrain[-1]
        if quiet:
            context.log.info(f"closed without new segment reviews: {quiet}")
        request = retrain_request(
            context.instance,
            family,
            f"session:{newest.session_id}",
            {
                "pulse/review_sessions": ",".join(s.session_id for s, _ in seen.retrain)[:200],
                "pulse/new_segment_reviews": str(sum(n for _, n in seen.retrain)),
            },
            job_name=job_name,
            store=store,
            training=training,
        )
        if isinstance(request, dg.SkipReason):
            return request
        return dg.SensorResult(run_requests=[request])  # the cursor is set above (update_cursor)

    return _sensor
