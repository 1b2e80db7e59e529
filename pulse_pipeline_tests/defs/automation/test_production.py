"""`<family>/production_accuracy` materialized on a real store and registry, and
`production_accuracy_<family>` ticking on it: live reviews far below the test accuracy alert (a
webhook stub receives the message) and, with rollback on, request one `promote_adapter` rollback
that, run, makes the previous version production; reviews close to test, or too few, do not."""

import datetime as dt
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dagster as dg
import orjson
import pytest

from pulse_pipeline.core.artifacts import open_artifact_store
from pulse_pipeline.core.ingestion import ingest_file
from pulse_pipeline.core.registry import Registry, read_current
from pulse_pipeline.core.store import Store
from pulse_pipeline.defs.automation.production import production_accuracy_asset, production_accuracy_sensor
from pulse_pipeline.defs.registry.assets import promote_adapter
from pulse_pipeline.defs.resources import (
    AnnotationStore,
    ArtifactStorage,
    ServingEnvironment,
    TrainingEnvironment,
)
from pulse_pipeline.settings import get_settings
from pulse_pipeline_tests.core.registry.conftest import adapter_folder

FAMILY = "intent-router"
T0 = dt.datetime(2026, 11, 20, 9, 0, tzinfo=dt.UTC)


@pytest.fixture
def webhook(monkeypatch):
    """A local incoming-webhook stub; PULSE_ALERT_WEBHOOK points at it. Yields the bodies received."""
    received = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(orjson.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("PULSE_ALERT_WEBHOOK", f"http://127.0.0.1:{server.server_port}/hook")
    get_settings.cache_clear()
    yield received
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def lab(config, tmp_path):
    """A store and a registry where v2 (test accuracy 0.9) replaced v1 (0.85) in production."""
    url = f"sqlite:///{tmp_path / 'pulse.db'}"
    artifacts = open_artifact_store(str(tmp_path / "artifacts"))
    versions = []
    with Store(url) as store:
        registry = Registry(store, artifacts)
        for minute in (0, 1):
            record = registry.begin(
                FAMILY, dataset_version=f"d{minute}", base_model="minilm-l6", training_config={},
                created_by="test", when=T0 + dt.timedelta(minutes=minute),
            )  # fmt: skip
            meta = {"trained_at": T0.isoformat(), "samples_used": 100, "training_loss": 0.5,
                    "dataset_version": f"d{minute}", "base_model": "minilm-l6"}  # fmt: skip
            registry.publish(record, adapter_folder(tmp_path, minute), meta)
            accuracy = (0.85, 0.9)[minute]
            results = {
                "metrics": {"test": {"candidate": {"accuracy": accuracy}}},
                "gate": {"decision": "DEPLOY", "reasons": []},
                "baseline": {"version": versions[-1] if versions else None},
            }
            artifacts.write_bytes(f"adapters/{FAMILY}/{record.version}/eval/results.json", orjson.dumps(results))
            registry.record_evaluation(FAMILY, record.version, results)
            registry.promote(FAMILY, record.version, by="test")
            versions.append(record.version)
    resources = {
        "annotation_store": AnnotationStore(database_url=url),
        "artifact_storage": ArtifactStorage(location=str(tmp_path / "artifacts")),
    }
    return dict(config=config, tmp_path=tmp_path, url=url, artifacts=artifacts, versions=versions,
                resources=resources)  # fmt: skip


def _review(lab, version, right, n, name):
    """`n` reviewed router outputs of `version`, `right` of them correct."""
    records = [
        {"kind": "intent_label", "family": FAMILY, "text": f"{name}: wake me up at {i}", "label": "alarm",
         "predicted_label": "alarm" if i < right else "timer", "annotator": "reviewer",
         "model_version": version, "created_at": (T0 + dt.timedelta(hours=1, minutes=i)).isoformat()}
        for i in range(n)
    ]  # fmt: skip
    path = lab["tmp_path"] / f"{name}.jsonl"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    with Store(lab["url"]) as store:
        ingest_file(store, path, lab["config"])


def _watch(config, **changes):
    family = config.family(FAMILY)
    watch = family.automation.production_watch.model_copy(update=changes)
    return family.model_copy(
        update={"automation": family.automation.model_copy(update={"production_watch": watch})}
    )


def _materialize(lab, family, instance):
    result = dg.materialize(
        [production_accuracy_asset(family)], instance=instance, resources=lab["resources"]
    )
    (event,) = result.asset_materializations_for_node("intent_router__production_accuracy")
    return {k: v.value for k, v in event.metadata.items()}


def _tick(sensor, instance, lab, cursor):
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=lab["resources"]) as context:
        result = sensor(context)
    return result, result.cursor or cursor  # the daemon keeps the cursor a SensorResult carries


def test_a_drop_alerts_and_rolls_back_once(lab, webhook):
    v1, v2 = lab["versions"]
    family = _watch(lab["config"], rollback=True)
    sensor = production_accuracy_sensor(family)
    assert sensor.name == "production_accuracy_intent_router"
    assert sensor.default_status is dg.DefaultSensorStatus.STOPPED
    _review(lab, v2, right=18, n=30, name="live")
    _review(lab, v1, right=29, n=30, name="before")
    with dg.instance_for_test() as instance:
        meta = _materialize(lab, family, instance)
        assert (meta["production_version"], meta["alert"], meta["status"], meta["judged"]) == (
            v2,
            True,
            "alert",
            30,
        )
        assert (meta["live_accuracy"], meta["test_accuracy"]) == (0.6, 0.9)
        assert meta["drop"] == pytest.approx(0.3)
        assert [(v["version"], v["status"]) for v in meta["versions"]] == [(v2, "alert"), (v1, "ok")]
        assert f"| **{v2}** | 60.0% |" in meta["report"]

        result, cursor = _tick(sensor, instance, lab, None)
        (request,) = result.run_requests
        assert request.run_key == f"rollback:{FAMILY}:{v2}" and request.job_name is None  # the sensor's job
        assert request.tags == {"pulse/family": FAMILY, "pulse/rollback_from": v2}
        reason = f"{v2}: live accuracy below test: live 60.0% (95% 42.3%-75.4%, n=30) vs test 90.0%: 30.0% below, margin 5.0%"
        assert request.run_config == {"ops": {"promote_version": {"config": {
            "family": FAMILY, "previous": True, "reason": reason,
            "requested_by": "sensor:production_accuracy_intent_router"}}}}  # fmt: skip
        (message,) = webhook
        assert message["pulse"]["kind"] == "production_accuracy" and message["pulse"]["version"] == v2
        assert message["pulse"]["rollback_to"] == v1 and message["pulse"]["judged"] == 30
        assert message["text"].startswith(f"{FAMILY}: {v2} is below its test accuracy on live traffic: ")
        assert f"Rolling back to {v1}" in message["text"]

        again, cursor = _tick(sensor, instance, lab, cursor)  # nothing new materialized
        assert again.skip_reason.skip_message == f"no new materialization of {FAMILY}/production_accuracy"
        assert not again.run_requests and len(webhook) == 1

        # Run what the sensor asked for: v1 is production again, and the rollback is audited.
        run = promote_adapter.execute_in_process(
            run_config=request.run_config,
            instance=instance,
            resources={**lab["resources"], "training": TrainingEnvironment(home=str(lab["tmp_path"] / "home")),
                       "serving": ServingEnvironment()},
        )  # fmt: skip
        assert run.success
        current = read_current(lab["artifacts"], FAMILY)
        assert (current["version"], current["previous_version"], current["reason"]) == (v1, v2, reason)
        with Store(lab["url"]) as store:
            (audit,) = [d for d in Registry(store, lab["artifacts"]).audit.list(FAMILY) if d.action == "rollback"]
        assert (audit.from_version, audit.to_version, audit.by) == (
            v2, v1, "sensor:production_accuracy_intent_router"
        )  # fmt: skip

        # v1 is doing fine live: the next verdict neither alerts nor rolls forward into v2.
        meta = _materialize(lab, family, instance)
        assert (meta["production_version"], meta["alert"], meta["status"]) == (v1, False, "ok")
        result, cursor = _tick(sensor, instance, lab, cursor)
        assert not result.run_requests and result.skip_reason.skip_message == f"{v1}: ok"
        assert len(webhook) == 1


def test_without_rollback_it_alerts_once_and_requests_nothing(lab, webhook):
    _, v2 = lab["versions"]
    family = _watch(lab["config"], rollback=False)
    sensor = production_accuracy_sensor(family)
    _review(lab, v2, right=18, n=30, name="live")
    with dg.instance_for_test() as instance:
        assert _materialize(lab, family, instance)["alert"] is True
        result, cursor = _tick(sensor, instance, lab, None)
        assert not result.run_requests
        assert result.skip_reason.skip_message == (
            f"{v2}: alert; not rolled back: rollback is off (production_watch.rollback)"
        )
        (message,) = webhook
        assert f"To roll back: `pulse promote --family {FAMILY} --previous`" in message["text"]
        # Still below on the next materialization: no second message while the flag stays on.
        assert _materialize(lab, family, instance)["alert"] is True
        result, cursor = _tick(sensor, instance, lab, cursor)
        assert not result.run_requests and len(webhook) == 1


@pytest.mark.parametrize(
    ("right", "n", "status", "reason"),
    [
        (44, 50, "ok", "live 88.0% (95% 76.2%-94.4%, n=50) vs test 90.0%: within the 5.0% margin"),
        (0, 29, "too few reviews", "29 of 30 judged outputs"),
    ],
)
def test_close_to_test_or_too_few_reviews_do_not_alert(lab, webhook, right, n, status, reason):
    _, v2 = lab["versions"]
    family = _watch(lab["config"], rollback=True)
    sensor = production_accuracy_sensor(family)
    _review(lab, v2, right=right, n=n, name="live")
    with dg.instance_for_test() as instance:
        meta = _materialize(lab, family, instance)
        assert (meta["production_version"], meta["alert"], meta["status"], meta["reason"]) == (
            v2, False, status, reason
        )  # fmt: skip
        result, _ = _tick(sensor, instance, lab, None)
        assert not result.run_requests and result.skip_reason.skip_message == f"{v2}: {status}"
    assert webhook == []
