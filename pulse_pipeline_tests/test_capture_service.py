"""The capture service over a real store (SQLite and PostgreSQL), through FastAPI's test client."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid

import httpx
import orjson
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from pulse_pipeline.capture_service import CaptureLimits, create_app
from pulse_pipeline.core.capture import (
    CaptureWriter,
    GrantError,
    Outcome,
    QueueFull,
    hash_token,
    parse_grants,
)
from pulse_pipeline.core.store import annotations, ingestions, quarantine

ROUTER = "intent-router"
TOKEN, NARROW = "pulse_test-all", "pulse_test-router-only"
GRANTS = [
    {"name": "everything", "sha256": hash_token(TOKEN), "families": ["*"]},
    {"name": "router-app", "sha256": hash_token(NARROW), "families": [ROUTER]},
]
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def interaction(text: str = "freeze my account", **changes):
    record = {
        "family": ROUTER,
        "id": uuid.uuid4().hex,
        "input": text,
        "output": "freeze_account",
        "predicted_label": "freeze_account",
        "confidence": 0.93,
        "model_version": "intent-router-20261101-0900",
        "latency_ms": 8.5,
    }
    return record | changes


@pytest.fixture
def service(store, config):
    def start(**limits):
        app = create_app(store, config, parse_grants(orjson.dumps(GRANTS).decode()), CaptureLimits(**limits))
        return TestClient(app)

    return start


def stored(store, kind=None):
    with store.connect() as conn:
        q = sa.select(annotations.c.id, annotations.c.kind, annotations.c.payload)
        if kind:
            q = q.where(annotations.c.kind == kind)
        return {r.id: r.payload for r in conn.execute(q)}


def test_a_batch_stores_the_good_records_and_names_each_bad_one_by_index(service, store):
    good = [interaction(f"text {i}") for i in range(3)]
    bad = [
        interaction(confidence=1.5),  # out of range
        interaction(predicted_label="not-a-label"),
        {"family": "no-such-family", "input": "x"},
        "not an object",
    ]
    records = [good[0], bad[0], good[1], bad[1], bad[2], good[2], bad[3]]
    with service() as client:
        r = client.post("/v1/interactions", json={"records": records}, headers=AUTH)
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["accepted"], body["duplicates"]) == (3, 0)
        assert [q["index"] for q in body["quarantined"]] == [1, 3, 4, 6]
        reasons = [q["reason"] for q in body["quarantined"]]
        assert reasons[0].startswith("interaction.confidence 1.5")
        assert (
            reasons[1] == "interaction.predicted_label 'not-a-label' is not a label of family 'intent-router'"
        )
        assert "'no-such-family' is not declared in pulse.yaml" in reasons[2]
        assert reasons[3] == "a record must be a JSON object, got str"

        # idempotent by id: the same request again stores nothing new
        again = client.post("/v1/interactions", json=records, headers=AUTH).json()  # a bare list works too
        assert (again["accepted"], again["duplicates"], len(again["quarantined"])) == (0, 3, 4)

    rows = stored(store, "interaction")
    assert set(rows) == {g["id"] for g in good}
    assert all(rows[g["id"]]["input"] == g["input"] and rows[g["id"]]["created_at"] for g in good)
    with store.connect() as conn:
        quarantined = list(conn.execute(sa.select(quarantine.c.reason)))
        (ingestion,) = list(conn.execute(sa.select(ingestions)))
    assert len(quarantined) == 8  # every bad record, once per request, each with its request and index
    assert all(" record " in q.reason and q.reason.startswith("everything request ") for q in quarantined)
    # the service's ingestion adds up: lines = accepted + duplicates + quarantined; finished on shutdown
    assert (ingestion.lines, ingestion.accepted, ingestion.duplicates, ingestion.quarantined) == (14, 3, 3, 8)
    assert ingestion.finished_at is not None and ingestion.source.startswith("capture-service ")


def test_requests_it_must_refuse(service, store):
    with service(max_body_bytes=2000, max_records=5) as client:
        post = client.post
        assert post("/v1/interactions", json=[interaction()]).status_code == 401
        r = post("/v1/interactions", json=[interaction()], headers={"Authorization": "Bearer pulse_wrong"})
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        narrow = {"Authorization": f"Bearer {NARROW}"}
        r = post("/v1/interactions", json=[interaction(), interaction(family="call-analysis", input="hi")],
                 headers=narrow)  # fmt: skip
        assert r.status_code == 403
        assert (
            r.json()["detail"]
            == "token 'router-app' may not write family 'call-analysis' (it may write: intent-router)"
        )
        assert post("/v1/interactions", json=[interaction()], headers=narrow).status_code == 200
        r = post("/v1/interactions", json=[interaction("x" * 3000)], headers=AUTH)
        assert r.status_code == 413 and "over 2,000 bytes" in r.json()["detail"]
        assert post("/v1/interactions", json=[{"family": ROUTER}] * 6, headers=AUTH).status_code == 413
        r = post(
            "/v1/interactions", content=b'{"records": [', headers=AUTH | {"content-type": "application/json"}
        )
        assert r.status_code == 400 and r.json()["detail"].startswith("the body is not valid JSON")
        assert post("/v1/interactions", json={"record": []}, headers=AUTH).status_code == 400
        r = post("/v1/feedback", json=[interaction(kind="interaction")], headers=AUTH)
        assert r.status_code == 400 and "send other kinds to /v1/interactions" in r.json()["detail"]
    assert len(stored(store)) == 1  # only the one accepted request wrote anything


def test_feedback_on_a_logged_interaction_becomes_a_complete_judgment(service, store):
    logged = interaction("cancel my card", output={"intent": "cancel_card"}, predicted_label="freeze_account")
    with service() as client:
        assert client.post("/v1/interactions", json=[logged], headers=AUTH).json()["accepted"] == 1
        r = client.post("/v1/feedback", headers=AUTH, json={"records": [
            {"family": ROUTER, "interaction_id": logged["id"], "thumbs": "down", "annotator": "user-42"},
            {"family": ROUTER, "interaction_id": "never-logged", "rating": 5},
            {"family": ROUTER, "interaction_id": logged["id"]},  # no verdict
        ]})  # fmt: skip
        body = r.json()
    assert body["accepted"] == 1
    assert [q["index"] for q in body["quarantined"]] == [1, 2]
    assert body["quarantined"][0]["reason"].startswith(
        "feedback.interaction_id 'never-logged': no interaction"
    )
    assert body["quarantined"][1]["reason"].startswith("feedback.rating is missing: a verdict is needed")
    (fb,) = stored(store, "feedback").values()
    assert fb["query"] == "cancel my card" and orjson.loads(fb["response"]) == {"intent": "cancel_card"}
    assert fb["model_version"] == logged["model_version"] and fb["thumbs"] == "down"


def test_health_and_metrics(service):
    with service() as client:
        client.post("/v1/interactions", json=[interaction(), interaction(confidence=2)], headers=AUTH)
        health = client.get("/healthz")
        assert health.status_code == 200 and health.json() == {"status": "ok", "pending_records": 0}
        text = client.get("/metrics").text
    assert 'pulse_capture_records_total{outcome="accepted"} 1.0' in text
    assert 'pulse_capture_records_total{outcome="quarantined"} 1.0' in text
    assert 'pulse_capture_requests_total{endpoint="interactions",status="200"} 1.0' in text
    assert "pulse_capture_commit_seconds_count 1.0" in text


def test_a_full_write_queue_answers_429_and_the_writer_catches_up(store, config, monkeypatch):
    """Backpressure: past max_pending waiting records, new requests are refused, not queued."""
    release = threading.Event()
    real_store = CaptureWriter._store

    def slow_store(self, group):
        release.wait(30)
        return real_store(self, group)

    monkeypatch.setattr(CaptureWriter, "_store", slow_store)
    grants = parse_grants(orjson.dumps(GRANTS).decode())
    with TestClient(
        create_app(store, config, grants, CaptureLimits(max_pending=3, retry_after_seconds=2))
    ) as client:
        first: dict = {}
        sender = threading.Thread(
            target=lambda: first.update(
                r=client.post("/v1/interactions", json=[interaction()] * 2, headers=AUTH)
            )
        )
        sender.start()
        while client.get("/healthz").json()["pending_records"] < 2:
            pass
        r = client.post("/v1/interactions", json=[interaction(), interaction()], headers=AUTH)
        assert r.status_code == 429 and r.headers["retry-after"] == "2"
        release.set()
        sender.join(30)
        assert first["r"].status_code == 200
        assert client.post("/v1/interactions", json=[interaction()], headers=AUTH).status_code == 200


def test_the_writer_refuses_more_than_it_may_hold(store, config, monkeypatch):
    release = threading.Event()
    monkeypatch.setattr(
        CaptureWriter, "_store", lambda self, group: release.wait(30) and [Outcome(0, 0, [])] * len(group)
    )
    writer = CaptureWriter(store, config, max_pending=5)
    try:
        writer.submit([{}] * 4, label="a")
        with pytest.raises(QueueFull, match="4 records wait for the store"):
            writer.submit([{}] * 2, label="b")
    finally:
        release.set()
        writer.close()


@pytest.mark.postgres
def test_a_stopped_database_gets_503_with_retry_after_and_nothing_acknowledged_is_lost(postgres, config):
    from pulse_pipeline.core.store import Store

    with Store(postgres.create_database()) as store:
        grants = parse_grants(orjson.dumps(GRANTS).decode())
        with TestClient(create_app(store, config, grants)) as client:
            before = [interaction() for _ in range(5)]
            assert client.post("/v1/interactions", json=before, headers=AUTH).json()["accepted"] == 5
            postgres.halt()
            try:
                during = [interaction() for _ in range(5)]
                r = client.post("/v1/interactions", json=during, headers=AUTH)
                assert r.status_code == 503 and r.headers["retry-after"] == "1"
                assert r.json()["detail"].startswith("the annotation store failed:")
                assert client.get("/healthz").status_code == 503
            finally:
                postgres.resume()
            for _ in range(30):  # the pool reconnects; the client's retry succeeds
                r = client.post("/v1/interactions", json=during, headers=AUTH)
                if r.status_code == 200:
                    break
            assert r.status_code == 200 and r.json()["accepted"] == 5
        assert set(stored(store, "interaction")) == {i["id"] for i in before + during}


def test_grants_are_read_strictly():
    assert parse_grants(None) == [] and parse_grants(" ") == []
    with pytest.raises(GrantError, match=r"PULSE_CAPTURE_TOKENS\[0\]\.sha256 must be the token's SHA-256"):
        parse_grants('[{"name": "a", "sha256": "plain-token", "families": ["*"]}]')
    with pytest.raises(GrantError, match=r"PULSE_CAPTURE_TOKENS\[0\]\.families must list family names"):
        parse_grants(orjson.dumps([{"name": "a", "sha256": hash_token("t")}]).decode())
    with pytest.raises(GrantError, match="not valid JSON"):
        parse_grants("[{")


def _serve(url: str, port: int, home) -> subprocess.Popen:
    env = {**os.environ, "PULSE_DATABASE_URL": url, "PULSE_CAPTURE_TOKENS": orjson.dumps(GRANTS).decode(),
           "PULSE_HOME": str(home)}  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "pulse_pipeline.cli", "serve-capture", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("the capture service did not start")


@pytest.mark.slow
@pytest.mark.postgres
def test_the_service_killed_and_restarted_under_load_loses_nothing(postgres, tmp_path):
    """kill -9 while clients send: the client buffers and retries, and every interaction is stored once."""
    from pulse_pipeline.client import PulseClient
    from pulse_pipeline.core.store import Store

    url = postgres.create_database()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    service = _serve(url, port, tmp_path)
    client = PulseClient(f"http://127.0.0.1:{port}", token=TOKEN, family=ROUTER, backoff_cap=0.5)
    logged: list[str] = []
    stop = threading.Event()

    def serving_code(worker: int) -> None:  # four threads of a serving app, each logging every call
        i = 0
        while not stop.is_set():
            logged.append(client.log_interaction(f"worker {worker} call {i}", predicted_label="freeze_account",
                                                 confidence=0.9, model_version="v1"))  # fmt: skip
            i += 1
            time.sleep(0.002)

    workers = [threading.Thread(target=serving_code, args=(w,)) for w in range(4)]
    try:
        for w in workers:
            w.start()
        time.sleep(2)
        service.send_signal(signal.SIGKILL)  # mid-commit, mid-request: whatever it was doing
        service.wait(10)
        time.sleep(2)  # the client keeps logging into its buffer while nothing listens
        down = client.stats
        assert down.retries > 0 and down.dropped == 0
        service = _serve(url, port, tmp_path)
        time.sleep(1)
        stop.set()
        for w in workers:
            w.join()
        assert client.flush(timeout=60), client.stats
    finally:
        stop.set()
        client.close(timeout=5)
        service.kill()
        service.wait(10)
    stats = client.stats
    assert stats.dropped == stats.rejected == stats.quarantined == 0
    with Store(url) as store:
        rows = stored(store, "interaction")
    assert len(logged) > 1000 and set(rows) == set(logged)  # every one stored, and exactly once (ids unique)
