"""`negative_feedback_<family>` and `retrain_requests_<family>` ticking against a real store, a real
registry and a real test instance: enough negative feedback on the production version requests
one retrain (and posts an alert), then waits a window; feedback on another version, positive
feedback or too little does not; `pulse request-retrain` and POST /v1/events start one retrain
with the reason in the run's tags, and a request that meets a training under way waits for it."""

import datetime as dt
import os
import socket
import uuid

import dagster as dg
import orjson
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from pulse_pipeline.capture_service import create_app
from pulse_pipeline.cli import app
from pulse_pipeline.core.artifacts import open_artifact_store
from pulse_pipeline.core.capture import hash_token, parse_grants
from pulse_pipeline.core.ingestion import ingest_lines
from pulse_pipeline.core.negative_feedback import count_feedback, due
from pulse_pipeline.core.registry import Registry
from pulse_pipeline.core.store import LockHolder, Store
from pulse_pipeline.defs.automation.requests import negative_feedback_sensor, retrain_requests_sensor
from pulse_pipeline.defs.resources import AnnotationStore, ArtifactStorage, TrainingEnvironment
from pulse_pipeline.settings import get_settings
from pulse_pipeline_tests.core.registry.conftest import adapter_folder
from pulse_pipeline_tests.defs.automation.test_production import webhook  # noqa: F401 - a fixture

FAMILY = "access-qa"
JOB = "retrain_access_qa"


@pytest.fixture
def lab(config, tmp_path):
    """A store and a registry where one version of access-qa is production."""
    url = f"sqlite:///{tmp_path / 'pulse.db'}"
    artifacts = open_artifact_store(str(tmp_path / "artifacts"))
    with Store(url) as store:
        registry = Registry(store, artifacts)
        record = registry.begin(FAMILY, dataset_version="d1", base_model="tiny", training_config={},
                                created_by="test")  # fmt: skip
        registry.publish(record, adapter_folder(tmp_path, 0), {"dataset_version": "d1", "base_model": "tiny"})
        registry.promote(FAMILY, record.version, by="test", force=True, reason="test")
    resources = {
        "annotation_store": AnnotationStore(database_url=url),
        "artifact_storage": ArtifactStorage(location=str(tmp_path / "artifacts")),
        "training": TrainingEnvironment(home=str(tmp_path / "home")),
    }
    return {"url": url, "version": record.version, "resources": resources, "config": config}


def feedback(lab, n, *, version=None, **verdict):
    now = dt.datetime.now(dt.UTC)
    records = [
        {"kind": "feedback", "family": FAMILY, "query": f"q {uuid.uuid4().hex}", "response": "r",
         "model_version": version or lab["version"], "created_at": (now - dt.timedelta(minutes=i)).isoformat(),
         **verdict}
        for i in range(n)
    ]  # fmt: skip
    with Store(lab["url"]) as store:
        ingest_lines(store, [orjson.dumps(r) for r in records], lab["config"], source="t")


def ticker(lab, sensor, instance):
    def tick(cursor):
        with dg.build_sensor_context(instance=instance, cursor=cursor, resources=lab["resources"]) as context:
            result = sensor(context)
            # a SensorResult carries its cursor; the daemon stores either
            return result, getattr(result, "cursor", None) or context.cursor

    return tick


def test_enough_negative_feedback_on_production_requests_one_retrain(lab, webhook):  # noqa: F811
    family = lab["config"].family(FAMILY)
    sensor = negative_feedback_sensor(family, JOB)
    assert (
        sensor.name == "negative_feedback_access_qa"
        and sensor.default_status == dg.DefaultSensorStatus.STOPPED
    )
    with dg.instance_for_test() as instance:
        tick = ticker(lab, sensor, instance)
        feedback(lab, 6, thumbs="down")
        feedback(lab, 20, rating=5)  # satisfied users count in the total, not as negative
        feedback(lab, 20, thumbs="down", version="access-qa-20200101-0000")  # another version's
        result, cursor = tick(None)
        assert result.skip_message == (
            f"6 of 26 feedback on {lab['version']} in the last 24 h negative (threshold 10)"
        )
        assert cursor is None and webhook == []

        feedback(lab, 2, rating=2)
        feedback(lab, 2, corrected_response="the right answer")  # a correction says it was wrong
        result, cursor = tick(cursor)
        (request,) = result.run_requests
        assert request.tags["pulse/trigger"] == "negative_feedback"
        assert request.tags["pulse/reason"].startswith(f"10 of 30 feedback on {lab['version']}")
        assert request.tags["pulse/family"] == FAMILY and request.run_key.startswith("negative-feedback:")
        (alert,) = webhook
        assert "users judge" in orjson.dumps(alert).decode() and "A retrain of access-qa was requested" in (
            orjson.dumps(alert).decode()
        )

        again, cursor = tick(cursor)  # the same version, within the window: not again
        assert isinstance(again, dg.SkipReason) and "acted on at" in again.skip_message
        assert len(webhook) == 1


def test_the_window_and_the_version_decide_when_to_act_again(lab):
    family = lab["config"].family(FAMILY)
    now = dt.datetime.now(dt.UTC)
    feedback(lab, 10, thumbs="down")
    with Store(lab["url"]) as store:
        count = count_feedback(store, family, lab["version"], now)
        assert count.reached and not count_feedback(store, family, "other", now).reached
        later = count_feedback(store, family, lab["version"], now + dt.timedelta(hours=25))
    assert not later.reached  # the feedback left the window
    assert due(count, None, now) and due(count, ("older-version", now), now)
    assert not due(count, (lab["version"], now - dt.timedelta(hours=23)), now)
    assert due(count, (lab["version"], now - dt.timedelta(hours=24)), now)


def test_alert_only_posts_and_requests_nothing(lab, webhook):  # noqa: F811
    family = lab["config"].family(FAMILY)
    nf = family.automation.negative_feedback.model_copy(update={"action": "alert", "threshold": 3})
    family = family.model_copy(
        update={"automation": family.automation.model_copy(update={"negative_feedback": nf})}
    )
    feedback(lab, 3, rating=1)
    with dg.instance_for_test() as instance:
        result, cursor = ticker(lab, negative_feedback_sensor(family, JOB), instance)(None)
    assert not result.run_requests and result.skip_reason.skip_message.startswith("alerted: 3 of 3 feedback")
    assert (
        "Alert only" in orjson.dumps(webhook[0]).decode()
        and orjson.loads(cursor)["version"] == lab["version"]
    )


def test_requests_from_a_person_and_an_event_start_one_retrain_with_their_reasons(lab, monkeypatch):
    family = lab["config"].family(FAMILY)
    monkeypatch.setenv("PULSE_DATABASE_URL", lab["url"])
    get_settings.cache_clear()
    sensor = retrain_requests_sensor(family, JOB)
    with dg.instance_for_test() as instance:
        tick = ticker(lab, sensor, instance)
        result, cursor = tick(None)
        assert result.skip_message == "no retrain of access-qa requested since the last tick"

        out = CliRunner().invoke(
            app, ["request-retrain", "--family", FAMILY, "--reason", "new resources published"]
        )
        assert out.exit_code == 0, out.output
        assert "the sensor retrain_requests_access_qa starts it on its next tick" in out.stdout
        token = "pulse_events-test"
        grants = parse_grants(orjson.dumps([{"name": "docs-site", "sha256": hash_token(token),
                                              "families": [FAMILY]}]).decode())  # fmt: skip
        with Store(lab["url"]) as store, TestClient(create_app(store, lab["config"], grants)) as client:
            auth = {"Authorization": f"Bearer {token}"}
            r = client.post("/v1/events", json={"family": FAMILY, "reason": "policy changed"}, headers=auth)
            assert r.status_code == 202 and r.json()["family"] == FAMILY
            assert client.post("/v1/events", json={"family": "intent-router", "reason": "x"},
                               headers=auth).status_code == 403  # fmt: skip
            assert client.post("/v1/events", json={"family": FAMILY}, headers=auth).status_code == 400
            assert client.post("/v1/events", json={"family": FAMILY, "reason": "x"}).status_code == 401

        # a training of the family under way: the requests wait for it (the cursor stays)
        with Store(lab["url"]) as store:
            lock = lab["resources"]["training"].lock(store, instance)
            holder = LockHolder("cli:test", None, socket.gethostname(), os.getpid())  # alive: this process
            lock.acquire(FAMILY, holder)
            result, still = tick(cursor)
            assert isinstance(result, dg.SkipReason) and "cli:test" in result.skip_message and still == cursor
            assert lock.release(FAMILY, holder)

        result, cursor = tick(cursor)
        (request,) = result.run_requests
        assert request.tags["pulse/trigger"] == "request"
        assert request.tags["pulse/reason"] == "new resources published; policy changed"
        assert (
            request.tags["pulse/requested_by"].startswith("cli:")
            and "capture:docs-site" in request.tags["pulse/requested_by"]
        )
        again, cursor = tick(cursor)
        assert isinstance(again, dg.SkipReason)
