"""Retrains asked for from outside the data: users' negative feedback, external events, people.

- `negative_feedback_<family>`: thin over `core.negative_feedback`. Each tick counts the negative
  feedback on the production version within the window; at the threshold it posts an alert and
  (with `action: retrain`) requests the family's retrain, then waits a whole window before acting
  again on that version. The cursor holds the version and time of the last action.
- `retrain_requests_<family>`: reads the `retrain_requests` rows (`pulse request-retrain`, the
  capture service's `POST /v1/events`) after its cursor and requests one retrain for them, with
  their reasons and requesters in the run's tags. While a training of the family is under way the
  cursor stays, so the requests start the next retrain once it is free.

Both go through `runs.retrain_request`, so neither starts a second training of a family.
"""

import datetime as dt

import dagster as dg
import orjson

from pulse_pipeline.core.families import FamilyConfig
from pulse_pipeline.defs.automation.runs import retrain_request
from pulse_pipeline.defs.resources import AnnotationStore, ArtifactStorage, TrainingEnvironment

TRIGGER_TAG = "pulse/trigger"
REASON_TAG = "pulse/reason"


def negative_feedback_sensor(family: FamilyConfig, job_name: str) -> dg.SensorDefinition:
    watch = family.automation.negative_feedback
    name = f"negative_feedback_{family.snake}"
    verb = "Retrain" if watch.action == "retrain" else "Alert about"

    @dg.sensor(
        name=name,
        job_name=job_name,
        minimum_interval_seconds=300,
        default_status=dg.DefaultSensorStatus.STOPPED,
        description=f"{verb} {family.name} when users give its production version {watch.threshold} "
        f"negative feedback (rating <= {watch.max_rating}, thumbs down, a correction) within "
        f"{watch.window_hours:g} h.",
    )
    def _sensor(
        context: dg.SensorEvaluationContext,
        annotation_store: AnnotationStore,
        artifact_storage: ArtifactStorage,
        training: TrainingEnvironment,
    ) -> dg.SensorResult | dg.SkipReason:
        from pulse_pipeline.core.alerts import send_alert
        from pulse_pipeline.core.negative_feedback import count_feedback, due, negative_feedback_alert
        from pulse_pipeline.core.registry import read_current

        current = read_current(artifact_storage.open(), family.name)
        if current is None:
            return dg.SkipReason(f"{family.name} has no production version yet")
        version = str(current["version"])
        now = dt.datetime.now(dt.UTC)
        store = annotation_store.store
        count = count_feedback(store, family, version, now)
        acted = _acted(context.cursor)
        if not due(count, acted, now):
            if count.reached and acted is not None:
                return dg.SkipReason(
                    f"{count.describe()}; acted on at {acted[1].isoformat(timespec='seconds')}"
                )
            return dg.SkipReason(count.describe())
        cursor = orjson.dumps({"version": version, "acted_at": now.isoformat()}).decode()
        if watch.action == "alert":
            context.log.warning(f"{family.name}: {count.describe()}")
            context.log.info(f"alert {send_alert(negative_feedback_alert(count, retraining=False))}")
            return dg.SensorResult(skip_reason=f"alerted: {count.describe()}", cursor=cursor)
        request = retrain_request(
            context.instance,
            family,
            f"negative-feedback:{version}:{now:%Y%m%dT%H%M%S}",
            {
                TRIGGER_TAG: "negative_feedback",
                REASON_TAG: count.describe()[:200],
                "pulse/judged_version": version,
            },
            job_name=job_name,
            store=store,
            training=training,
        )
        if isinstance(request, dg.SkipReason):
            return request  # the cursor stays: the next tick tries again
        context.log.warning(f"{family.name}: {count.describe()}: requesting a retrain")
        context.log.info(f"alert {send_alert(negative_feedback_alert(count, retraining=True))}")
        return dg.SensorResult(run_requests=[request], cursor=cursor)

    return _sensor


def _acted(raw: str | None) -> tuple[str, dt.datetime] | None:
    """The cursor's last action (version, time); None for no cursor or an unreadable one."""
    try:
        seen = orjson.loads(raw) if raw else None
        return (str(seen["version"]), dt.datetime.fromisoformat(seen["acted_at"])) if seen else None
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


def retrain_requests_sensor(family: FamilyConfig, job_name: str) -> dg.SensorDefinition:
    @dg.sensor(
        name=f"retrain_requests_{family.snake}",
        job_name=job_name,
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.STOPPED,
        description=f"Retrain {family.name} when someone asks (`pulse request-retrain`) or an external "
        "event does (the capture service's POST /v1/events), with the reason in the run's tags.",
    )
    def _sensor(
        context: dg.SensorEvaluationContext, annotation_store: AnnotationStore, training: TrainingEnvironment
    ) -> dg.SensorResult | dg.SkipReason:
        after = int(context.cursor) if context.cursor and context.cursor.isdigit() else 0
        store = annotation_store.store
        waiting = store.requests.since(family.name, after)
        if not waiting:
            return dg.SkipReason(f"no retrain of {family.name} requested since the last tick")
        newest = waiting[-1]
        reasons = "; ".join(dict.fromkeys(r.reason for r in waiting))
        request = retrain_request(
            context.instance,
            family,
            f"request:{newest.seq}",
            {
                TRIGGER_TAG: "request",
                REASON_TAG: reasons[:200],
                "pulse/requested_by": ",".join(dict.fromkeys(r.requested_by for r in waiting))[:200],
                "pulse/retrain_requests": ",".join(str(r.seq) for r in waiting)[:200],
            },
            job_name=job_name,
            store=store,
            training=training,
        )
        if isinstance(request, dg.SkipReason):
            return request  # the cursor stays: these requests start the next retrain
        return dg.SensorResult(run_requests=[request], cursor=str(newest.seq))

    return _sensor
