"""`label_studio_<family>`: the family's review queue kept in sync with a running Label Studio.

Thin over `core.label_studio.sync`: each tick pushes the queue's new items to the family's project
(tasks with the model's suggestion as a prediction) and pulls the completed ones back as human
judgments into the store, where the family's other sensors see them as new annotations. It
requests no run; its tick says what it moved. Skips while PULSE_LABEL_STUDIO_URL is unset, and
when the server does not answer (the next tick tries again).
"""

import dagster as dg

from pulse_pipeline.core.families import FamilyConfig, PulseConfig
from pulse_pipeline.defs.resources import AnnotationStore


def label_studio_sensor(family: FamilyConfig, config: PulseConfig) -> dg.SensorDefinition:
    @dg.sensor(
        name=f"label_studio_{family.snake}",
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.STOPPED,
        description=f"Push {family.name}'s review queue to Label Studio (PULSE_LABEL_STUDIO_URL) and pull "
        "the reviewed tasks back as human judgments.",
    )
    def _sensor(context: dg.SensorEvaluationContext, annotation_store: AnnotationStore) -> dg.SkipReason:
        from pulse_pipeline.core.label_studio import LabelStudioUnavailable, sync
        from pulse_pipeline.settings import get_settings

        studio = get_settings().label_studio()
        if studio is None:
            return dg.SkipReason("PULSE_LABEL_STUDIO_URL is not set")
        with studio:
            try:
                result = sync(annotation_store.store, config, family, studio)
            except LabelStudioUnavailable as exc:
                context.log.warning(str(exc))
                return dg.SkipReason(f"Label Studio did not answer: {exc}")
        context.log.info(f"{family.name}: {result.describe()}")
        return dg.SkipReason(result.describe())

    return _sensor
