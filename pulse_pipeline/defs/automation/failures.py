"""`pulse_run_failures`: every failed run of this code location is logged and, when
`PULSE_ALERT_WEBHOOK` is set, posted as one Slack-compatible message (core/alerts.py).

The message names the job, the run, the family (tag `pulse/family`), each failed step with its
error, and links to the run in the Dagster UI when `PULSE_DAGSTER_URL` is set. A run stopped for
exceeding its maximum run time has no failed step; the run's own failure message says so.

It starts RUNNING, unlike the sensors that start work: it only reports, and a failure sensor
that a person must remember to turn on misses exactly the failures nobody was watching for.
"""

from dataclasses import dataclass

import dagster as dg

from pulse_pipeline.core.alerts import Alert

SENSOR_NAME = "pulse_run_failures"


@dataclass(frozen=True)
class FailedStep:
    step: str
    error: str  # one line: "ValueError: label 'foo' is not in the label set"


def failure_alert(
    job: str,
    run_id: str,
    family: str | None,
    steps: list[FailedStep],
    run_message: str,
    dagster_url: str | None,
) -> Alert:
    """The alert for one failed run."""
    where = f" ({family})" if family else ""
    text = "; ".join(f"step {s.step} failed: {s.error}" for s in steps) if steps else run_message
    link = f"{dagster_url.rstrip('/')}/runs/{run_id}" if dagster_url else None
    return Alert(
        title=f"{job} failed{where}",
        text=f"{text} (run {run_id})",
        kind="run_failure",
        family=family,
        link=link,
        fields={
            "job": job,
            "run_id": run_id,
            "failed_steps": [s.step for s in steps],
            "errors": [s.error for s in steps] or [run_message],
        },
    )


def error_line(error: object) -> str:
    """The user's error under Dagster's wrapper, on one line (a `SerializableErrorInfo`)."""
    while getattr(error, "cause", None) is not None and getattr(error, "cls_name", "").startswith("Dagster"):
        error = error.cause
    message = str(getattr(error, "message", "") or "").strip()
    if getattr(error, "cls_name", None) == "Failure":  # dg.Failure: its description is the message
        message = message.split(": ", 1)[-1]
    return message.splitlines()[0] if message else getattr(error, "cls_name", "error")


def run_failures_sensor() -> dg.SensorDefinition:
    @dg.run_failure_sensor(
        name=SENSOR_NAME,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Log every failed run of this code location and post it to PULSE_ALERT_WEBHOOK "
        "when set (job, run, family, failed steps and errors, a link when PULSE_DAGSTER_URL is set).",
    )
    def _sensor(context: dg.RunFailureSensorContext) -> None:
        from pulse_pipeline.core.alerts import send_alert
        from pulse_pipeline.settings import get_settings

        run = context.dagster_run
        steps = []
        for event in context.get_step_failure_events():
            data = event.event_specific_data
            user = getattr(data, "user_failure_data", None)
            detail = user.description if user is not None and user.description else error_line(data.error)
            steps.append(FailedStep(event.step_key or "?", detail))
        alert = failure_alert(
            run.job_name,
            run.run_id,
            run.tags.get("pulse/family"),
            steps,
            context.failure_event.message or "the run failed",
            get_settings().pulse_dagster_url,
        )
        context.log.error(f"{alert.title}: {alert.text}")
        context.log.info(f"alert {send_alert(alert)}")

    return _sensor
