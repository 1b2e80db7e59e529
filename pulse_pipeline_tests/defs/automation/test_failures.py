"""`pulse_run_failures` on real failed runs in a test instance, posting to a local webhook: the
job, run, family, failed step and the user's error, with a link to the run; a run stopped for its
run time (no failed step) says so; without PULSE_ALERT_WEBHOOK nothing is posted."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dagster as dg
import pytest

from pulse_pipeline.defs.automation.failures import SENSOR_NAME, run_failures_sensor
from pulse_pipeline.settings import get_settings


class Webhook:
    """An incoming-webhook stand-in on 127.0.0.1 that keeps every JSON body it receives."""

    def __init__(self):
        self.bodies: list[dict] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                hook.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/T000"

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def webhook(monkeypatch):
    hook = Webhook()
    monkeypatch.setenv("PULSE_ALERT_WEBHOOK", hook.url)
    monkeypatch.setenv("PULSE_DAGSTER_URL", "http://dagster.example:3000/")
    get_settings.cache_clear()
    yield hook
    hook.stop()


def _failing_defs():
    @dg.asset(key=dg.AssetKey(["intent-router", "examples"]))
    def examples():
        raise ValueError("label 'freeze_acount' is not in the label set")

    @dg.asset(key=dg.AssetKey(["intent-router", "dataset_snapshot"]), deps=[examples])
    def snapshot():
        raise dg.Failure("no examples for intent-router yet: materialize intent-router/examples first")

    job = dg.define_asset_job("retrain_intent_router", [examples], tags={"pulse/family": "intent-router"})
    snap = dg.define_asset_job("snapshots", [snapshot])
    return dg.Definitions(assets=[examples, snapshot], jobs=[job, snap])


def _evaluate(sensor, instance, run):
    (failure,) = [
        r.event_log_entry.dagster_event
        for r in instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE).records
    ]
    context = dg.build_run_status_sensor_context(
        sensor_name=SENSOR_NAME, dagster_event=failure, dagster_instance=instance, dagster_run=run
    ).for_run_failure()
    sensor(context)


def test_a_failed_run_is_posted_with_its_step_error_and_a_link(webhook):
    sensor = run_failures_sensor()
    assert sensor.name == "pulse_run_failures" and sensor.default_status == dg.DefaultSensorStatus.RUNNING
    defs = _failing_defs()
    with dg.instance_for_test() as instance:
        result = defs.resolve_job_def("retrain_intent_router").execute_in_process(
            instance=instance, raise_on_error=False
        )
        assert not result.success
        _evaluate(sensor, instance, result.dagster_run)
        snap = defs.resolve_job_def("snapshots").execute_in_process(instance=instance, raise_on_error=False)
        _evaluate(sensor, instance, snap.dagster_run)

    first, second = webhook.bodies
    run_id = result.run_id
    assert first["pulse"] == {
        "kind": "run_failure",
        "family": "intent-router",
        "title": "retrain_intent_router failed (intent-router)",
        "job": "retrain_intent_router",
        "run_id": run_id,
        "failed_steps": ["intent_router__examples"],
        "errors": ["ValueError: label 'freeze_acount' is not in the label set"],
    }
    assert first["text"] == (
        "retrain_intent_router failed (intent-router): step intent_router__examples failed: "
        f"ValueError: label 'freeze_acount' is not in the label set (run {run_id})"
    )
    assert (
        f"<http://dagster.example:3000/runs/{run_id}|Open in Dagster>" in first["blocks"][0]["text"]["text"]
    )
    # a dg.Failure carries its own description; a run without the family tag has no family
    assert second["pulse"]["family"] is None and second["pulse"]["title"] == "snapshots failed"
    assert second["pulse"]["errors"] == [
        "no examples for intent-router yet: materialize intent-router/examples first"
    ]


def test_a_run_stopped_for_its_run_time_says_so(webhook):
    with dg.instance_for_test() as instance:
        run = instance.add_run(
            dg.DagsterRun(job_name="retrain_access_qa", run_id="feedfacefeedface",
                          status=dg.DagsterRunStatus.STARTED,
                          tags={"pulse/family": "access-qa", "dagster/max_runtime": "5400"})
        )  # fmt: skip
        # what the daemon's run monitoring does when the tag's time is up
        instance.report_run_failed(run, "Exceeded maximum runtime of 5400 seconds.")
        _evaluate(run_failures_sensor(), instance, instance.get_run_by_id(run.run_id))
    (body,) = webhook.bodies
    assert body["pulse"]["failed_steps"] == []
    assert body["pulse"]["errors"] == ["Exceeded maximum runtime of 5400 seconds."]
    assert body["text"] == (
        "retrain_access_qa failed (access-qa): Exceeded maximum runtime of 5400 seconds. (run feedfacefeedface)"
    )


def test_without_a_webhook_nothing_is_posted(webhook, monkeypatch):
    monkeypatch.delenv("PULSE_ALERT_WEBHOOK")
    get_settings.cache_clear()
    defs = _failing_defs()
    with dg.instance_for_test() as instance:
        result = defs.resolve_job_def("retrain_intent_router").execute_in_process(
            instance=instance, raise_on_error=False
        )
        _evaluate(run_failures_sensor(), instance, result.dagster_run)
    assert webhook.bodies == []
