"""The review queue against a real Label Studio server (its own venv, SQLite, started once per
session): tasks appear with the model's suggestion as a prediction, in the queue's order; an
answer made through Label Studio's API comes back as a human judgment with its reviewer, lead time
and note; a second sync creates nothing twice; Label Studio's webhook to the capture service stores
an answer at once, and the next poll does not store it again."""

from __future__ import annotations

import socket
import threading
import time
import xml.etree.ElementTree as ET

import httpx
import orjson
import pytest
import sqlalchemy as sa
import uvicorn

from pulse_pipeline.capture_service import create_app
from pulse_pipeline.core.capture import hash_token, parse_grants
from pulse_pipeline.core.ingestion import ingest_lines
from pulse_pipeline.core.label_studio import LabelStudio, LabelStudioUnavailable, project_title, sync
from pulse_pipeline.core.review import review_queue
from pulse_pipeline.core.store import Store, annotations
from pulse_pipeline_tests.core.test_annotations import valid

pytestmark = pytest.mark.slow

FAMILY = "intent-router"
TOKEN = "pulse_label-studio-webhook"


def capture(text, confidence, **extra):
    return valid("intent_label", text=text, confidence=confidence, provider="encoder", **extra)


def answer(studio: LabelStudio, task_id: int, label: str, *, note: str = "", lead_time: float = 4.2) -> None:
    """What a reviewer's click in Label Studio's UI sends."""
    result = [{"from_name": "intent", "to_name": "text", "type": "choices", "value": {"choices": [label]}}]
    if note:
        result.append({"from_name": "note", "to_name": "text", "type": "textarea", "value": {"text": [note]}})
    studio._call("POST", f"/api/tasks/{task_id}/annotations", json={"result": result, "lead_time": lead_time})


def reviewed(store: Store) -> dict[str, dict]:
    a = annotations.c
    with store.connect() as conn:
        rows = conn.execute(
            sa.select(a.id, a.payload).where(a.kind == "intent_label", a.annotator.is_not(None))
        )
        return {r.id: r.payload for r in rows}


@pytest.fixture
def studio(label_studio_server, config):
    with LabelStudio(label_studio_server.url, label_studio_server.token) as client:
        yield client
        for project in client._projects():  # each test starts from no project
            if project["title"] == project_title(config.family(FAMILY)):
                client._call("DELETE", f"/api/projects/{project['id']}")


def test_the_queue_goes_out_as_tasks_and_answers_come_back_once(
    studio, config, tmp_path, label_studio_server
):
    family = config.family(FAMILY)
    with Store(f"sqlite:///{tmp_path / 'pulse.db'}") as store:
        records = [
            capture("freeze it maybe", 0.80, conversation_id="conv-1"),
            capture("is my card blocked", 0.40),
            capture("done, thanks", 0.99),  # auto-approved: not queued
            {"kind": "interaction", "family": FAMILY, "input": "what about my pin", "predicted_label": "pin_change",
             "confidence": 0.55, "provider": "encoder", "model_version": "intent-router-20261201-0900"},
        ]  # fmt: skip
        ingest_lines(store, [orjson.dumps(r) for r in records], config, source="captures")
        queue = review_queue(store.annotations.iter_family(FAMILY), family)
        assert [i.text for i in queue.items] == ["is my card blocked", "what about my pin", "freeze it maybe"]

        first = sync(store, config, family, studio)
        assert (first.pushed, first.in_project, first.answered) == (3, 0, 0)
        project = first.project
        config_xml = ET.fromstring(studio._call("GET", f"/api/projects/{project}")["label_config"])
        assert {c.get("value") for c in config_xml.iter("Choice")} == set(family.labels)
        assert config_xml.find("TextArea").get("name") == "note"
        tasks = sorted(studio.tasks(project), key=lambda t: t["id"])
        assert [t["data"]["text"] for t in tasks] == [i.text for i in queue.items]  # the queue's order
        prediction = tasks[1]["predictions"][0]
        assert prediction["score"] == 0.55 and prediction["result"][0]["value"]["choices"] == ["pin_change"]
        assert prediction["model_version"] == "intent-router-20261201-0900"

        again = sync(store, config, family, studio)
        assert (again.pushed, again.in_project) == (0, 3)  # nothing pushed twice

        answer(studio, tasks[0]["id"], "card_declined", note="no 'card blocked' label yet")
        pulled = sync(store, config, family, studio)
        assert (pulled.answered, pulled.stored, pulled.duplicates) == (1, 1, 0)
        (record,) = reviewed(store).values()
        assert record["text"] == "is my card blocked" and record["label"] == "card_declined"
        assert record["annotator"] == f"label-studio:{label_studio_server.user}"
        assert record["lead_time"] == 4.2 and record["note"] == "no 'card blocked' label yet"
        assert (
            record["predicted_label"] == capture("x", 0.4)["predicted_label"] and record["confidence"] == 0.4
        )

        once_more = sync(store, config, family, studio)
        assert (once_more.stored, once_more.duplicates, once_more.pushed) == (0, 1, 0)
        assert len(reviewed(store)) == 1
        left = review_queue(store.annotations.iter_family(FAMILY), family)
        assert [i.text for i in left.items] == ["what about my pin", "freeze it maybe"] and left.settled == 1


def test_the_webhook_stores_an_answer_at_once_and_the_poll_not_again(
    studio, config, tmp_path, label_studio_server
):
    family = config.family(FAMILY)
    with Store(f"sqlite:///{tmp_path / 'pulse.db'}") as store:
        ingest_lines(store, [orjson.dumps(capture("block my card now", 0.3))], config, source="captures")
        project = sync(store, config, family, studio).project
        (task,) = studio.tasks(project)

        grants = parse_grants(orjson.dumps([{"name": "label-studio", "sha256": hash_token(TOKEN),
                                              "families": [FAMILY]}]).decode())  # fmt: skip
        app = create_app(store, config, grants, label_studio=studio)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        try:
            while not server.started:
                time.sleep(0.05)
            url = f"http://127.0.0.1:{port}/v1/label-studio"
            studio.add_webhook(project, url, {"Authorization": f"Bearer {TOKEN}"})
            assert studio.add_webhook(project, url, {"Authorization": f"Bearer {TOKEN}"})  # once, not twice
            assert len(studio._call("GET", "/api/webhooks", params={"project": project})) == 1

            answer(studio, task["id"], "freeze_account", lead_time=2.0)
            deadline = time.monotonic() + 30
            while not reviewed(store) and time.monotonic() < deadline:
                time.sleep(0.2)
            (record,) = reviewed(store).values()  # stored by the webhook, before any poll
            assert record["label"] == "freeze_account" and record["lead_time"] == 2.0
            assert record["annotator"] == f"label-studio:{label_studio_server.user}"
            r = httpx.post(url, json={"action": "ANNOTATION_CREATED"})
            assert r.status_code == 401
        finally:
            server.should_exit = True
            thread.join(10)
        polled = sync(store, config, family, studio)
        assert (polled.stored, polled.duplicates) == (0, 1)
        assert len(reviewed(store)) == 1


def test_a_server_that_does_not_answer_is_one_line(config):
    with (
        LabelStudio("http://127.0.0.1:9", "t", timeout=2) as studio,
        pytest.raises(
            LabelStudioUnavailable, match=r"^Label Studio at http://127.0.0.1:9: GET /api/projects"
        ),
    ):
        studio.project(config.family(FAMILY))


def test_the_sensor_syncs_on_its_tick_and_skips_without_a_server(studio, config, tmp_path, label_studio_server,
                                                                  monkeypatch):  # fmt: skip
    import dagster as dg

    from pulse_pipeline.defs.automation.label_studio import label_studio_sensor
    from pulse_pipeline.defs.resources import AnnotationStore
    from pulse_pipeline.settings import get_settings

    url = f"sqlite:///{tmp_path / 'pulse.db'}"
    with Store(url) as store:
        ingest_lines(store, [orjson.dumps(capture("lost my card", 0.2))], config, source="captures")
    sensor = label_studio_sensor(config.family(FAMILY), config)
    assert sensor.name == "label_studio_intent_router"

    def tick() -> str:
        get_settings.cache_clear()
        with (
            dg.instance_for_test() as instance,
            dg.build_sensor_context(
                instance=instance, resources={"annotation_store": AnnotationStore(database_url=url)}
            ) as context,
        ):
            return sensor(context).skip_message

    assert tick() == "PULSE_LABEL_STUDIO_URL is not set"
    monkeypatch.setenv("PULSE_LABEL_STUDIO_URL", label_studio_server.url)
    monkeypatch.setenv("PULSE_LABEL_STUDIO_API_KEY", label_studio_server.token)
    assert tick().startswith("pushed 1 task(s) (0 already in project")
    assert tick().startswith("pushed 0 task(s) (1 already in project")
