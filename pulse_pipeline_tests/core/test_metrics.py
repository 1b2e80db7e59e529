"""Prometheus metrics (core/metrics.py): the textfile read back with prometheus_client's own
parser, families merged, counters carried across processes, writes atomic under concurrency, a
failed delivery one warning line; a real Pushgateway keeping each family's group; and (slow) a
real `pulse train` whose values a real Prometheus returns to PromQL."""

from __future__ import annotations

import datetime as dt
import json
import logging
import multiprocessing
import socket
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pulse_pipeline.core import metrics
from pulse_pipeline.core.metrics import Destination, TrainingMetrics, record_evaluation, record_promotion
from pulse_pipeline.settings import get_settings
from pulse_pipeline_tests.conftest import PROJECT


def samples(path: Path) -> dict[tuple[str, frozenset], float]:
    """Every sample of the textfile, parsed by prometheus_client (not by the module under test)."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(path.read_text())
        for s in family.samples
    }


def value(found: dict, name: str, **labels: str) -> float | None:
    return found.get((name, frozenset(labels.items())))


@pytest.fixture
def textfile(tmp_path: Path) -> Destination:
    return Destination(None, tmp_path / "metrics" / "pulse.prom")


def test_a_training_end_is_a_textfile_that_prometheus_parses(textfile):
    TrainingMetrics("access-qa", textfile).succeeded(0.42)
    TrainingMetrics("access-qa", textfile).succeeded(0.40)
    TrainingMetrics("access-qa", textfile).failed()
    found = samples(textfile.textfile)
    assert value(found, "training_jobs_total", family="access-qa", status="success") == 2
    assert value(found, "training_jobs_total", family="access-qa", status="failed") == 1
    assert value(found, "training_loss_current", family="access-qa") == 0.40  # a failure reports no loss
    assert 0 <= value(found, "training_duration_seconds", family="access-qa") < 60
    assert not any(name == "gpu_memory_utilization_percent" for name, _ in found)  # no CUDA: absent, not 0
    text = textfile.textfile.read_text()
    assert "# TYPE training_jobs_total counter" in text and "# TYPE training_loss_current gauge" in text
    assert textfile.textfile.stat().st_mode & 0o777 == 0o644  # node-exporter may be another user
    left = {p.name for p in textfile.textfile.parent.iterdir()}
    assert left == {"pulse.prom", "pulse.prom.lock"}  # no temporary file left behind


def test_families_merge_and_an_evaluation_replaces_the_familys_previous_values(textfile):
    record_evaluation(
        "intent-router", {"test": {"accuracy": 0.8, "macro_f1": 0.7}, "golden": {"accuracy": 0.9}}, "DEPLOY",
        destination=textfile,
    )  # fmt: skip
    TrainingMetrics("article-scorer", textfile).succeeded(1.5)
    record_evaluation("article-scorer", {"test": {"spearman": 0.6}}, "REVIEW", destination=textfile)
    record_evaluation("intent-router", {"test": {"accuracy": 0.85}}, "FAIL", destination=textfile)
    found = samples(textfile.textfile)
    router = {
        dict(labels)["metric"]: v
        for (name, labels), v in found.items()
        if name == "evaluation_metric_value" and dict(labels)["family"] == "intent-router"
    }
    assert router == {"test/accuracy": 0.85}  # golden/accuracy and test/macro_f1 of the older evaluation gone
    assert value(found, "evaluation_metric_value", family="article-scorer", metric="test/spearman") == 0.6
    assert value(found, "training_jobs_total", family="article-scorer", status="success") == 1
    assert value(found, "evaluations_total", family="intent-router", decision="DEPLOY") == 1
    assert value(found, "evaluations_total", family="intent-router", decision="FAIL") == 1


def test_promotions_by_outcome_and_rollbacks_that_moved_production(textfile):
    for action, changed, partial in [
        ("promote", True, False), ("canary", True, False), ("promote", False, False), ("rollback", True, False),
        ("rollback", False, False), ("failed", True, False), ("promote", False, True), ("rollback", False, True),
    ]:  # fmt: skip
        assert (
            record_promotion("access-qa", action, changed=changed, partial=partial, destination=textfile)
            is None
        )
    found = samples(textfile.textfile)
    outcomes = {
        dict(labels)["outcome"]: v for (name, labels), v in found.items() if name == "promotions_total"
    }
    assert outcomes == {"promote": 1, "canary": 1, "unchanged": 1, "failed": 1, "partial": 2}
    assert value(found, "rollbacks_total", family="access-qa") == 1


def _increment_many(path: str, family: str, times: int) -> None:
    destination = Destination(None, Path(path))
    for _ in range(times):
        assert (
            metrics.record(family, [metrics.increment("promotions_total", outcome="promote")], destination)
            is None
        )


def test_concurrent_writers_lose_no_increment_and_readers_never_see_a_partial_file(textfile):
    metrics.record("intent-router", [metrics.gauge("annotation_backlog", 7)], textfile)
    fork = multiprocessing.get_context("fork")
    writers = [
        fork.Process(target=_increment_many, args=(str(textfile.textfile), family, 25))
        for family in ("access-qa", "access-qa", "call-analysis", "article-scorer")
    ]
    for w in writers:
        w.start()
    reads = 0
    while any(w.is_alive() for w in writers) or reads == 0:
        found = samples(textfile.textfile)  # a half-written file would not parse, or lack the backlog
        assert value(found, "annotation_backlog", family="intent-router") == 7
        reads += 1
    for w in writers:
        w.join(timeout=60)
        assert w.exitcode == 0
    found = samples(textfile.textfile)
    assert value(found, "promotions_total", family="access-qa", outcome="promote") == 50
    assert value(found, "promotions_total", family="call-analysis", outcome="promote") == 25
    assert value(found, "promotions_total", family="article-scorer", outcome="promote") == 25


def test_an_undeliverable_metric_is_one_warning_line_and_never_raises(textfile, caplog):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    gone = Destination(f"http://user:hunter2@127.0.0.1:{closed}", textfile.textfile)
    with caplog.at_level(logging.WARNING, logger="pulse_pipeline.core.metrics"):
        line = TrainingMetrics("access-qa", gone).succeeded(0.5)
    assert line.startswith(
        f"access-qa: metrics not delivered to the Pushgateway at http://user:***@127.0.0.1:{closed}: "
    )
    assert "ConnectError" in line and "hunter2" not in line and "\n" not in line
    assert [r.getMessage() for r in caplog.records] == [line]

    textfile.textfile.parent.mkdir(parents=True)
    textfile.textfile.write_text("this is { not prometheus text\n")  # someone else's file at that path
    line = record_promotion("access-qa", "promote", destination=textfile, warn=lambda _: None)
    assert line.startswith(
        f"access-qa: metrics not delivered to the textfile {textfile.textfile}: cannot read"
    )
    assert textfile.textfile.read_text() == "this is { not prometheus text\n"  # left as it is

    wrong = metrics.record(
        "access-qa", [metrics.gauge("annotation_backlog", 1, sensor="x")], textfile, lambda _: None
    )
    assert "annotation_backlog takes the labels family, not sensor" in wrong


def test_the_settings_choose_the_destination(pulse_env, monkeypatch):
    default = Destination.from_settings()
    assert default == Destination(None, pulse_env / "metrics" / "pulse.prom")
    monkeypatch.setenv("PULSE_PUSHGATEWAY_URL", "pushgateway:9091/")
    get_settings.cache_clear()
    assert Destination.from_settings().pushgateway_url == "http://pushgateway:9091"


def test_the_live_loss_is_reported_during_a_training(textfile, monkeypatch):
    from pulse_pipeline.core.training.recipe import Progress

    seen = []
    monkeypatch.setattr(metrics, "LIVE_LOSS_INTERVAL_S", 0.0)
    progress = TrainingMetrics("call-analysis", textfile).follow(seen.append)
    step = Progress(3, 10, 1, 1, loss=2.5, learning_rate=1e-4, tokens_per_second=100.0, eta_seconds=9.0)
    progress(step)
    assert seen == [step]
    assert value(samples(textfile.textfile), "training_loss_current", family="call-analysis") == 2.5


def test_a_sensor_tick_records_the_backlog_and_how_long_the_oldest_waits(config, tmp_path, pulse_env):
    from pulse_pipeline.core.ingestion import ingest_file
    from pulse_pipeline.core.store import Store
    from pulse_pipeline.defs.automation.sensors import new_annotations_sensor
    from pulse_pipeline.defs.resources import AnnotationStore, ArtifactStorage, TrainingEnvironment

    url = f"sqlite:///{tmp_path / 'pulse.db'}"
    resources = {
        "annotation_store": AnnotationStore(database_url=url),
        "artifact_storage": ArtifactStorage(location=str(tmp_path / "artifacts")),
        "training": TrainingEnvironment(home=str(tmp_path / "home")),
    }
    sensor = new_annotations_sensor(config.family("access-qa"), "retrain_access_qa")
    textfile = pulse_env / "metrics" / "pulse.prom"  # the default: PULSE_PUSHGATEWAY_URL is unset

    def tick() -> dict:
        with (
            dg.instance_for_test() as instance,
            dg.build_sensor_context(instance=instance, resources=resources) as c,
        ):
            sensor(c)
        return samples(textfile)

    with Store(url):
        pass  # the store's tables, before the first tick reads them
    found = tick()
    labels = {"family": "access-qa", "sensor": "new_annotations_access_qa"}
    assert value(found, "annotation_backlog", family="access-qa") == 0
    assert value(found, "sensor_lag_seconds", **labels) == 0  # nothing waits
    path = tmp_path / "qa.jsonl"
    path.write_bytes(
        b"".join(
            orjson.dumps(
                {
                    "kind": "qa_pair",
                    "family": "access-qa",
                    "question": f"Cores on node {i}?",
                    "answer": f"{i} cores.",
                    "annotator": "r",
                    "created_at": "2026-06-30T12:00:00Z",
                }
            )
            + b"\n"
            for i in range(37)
        )  # fmt: skip
    )
    with Store(url) as store:
        ingest_file(store, path, config)
    time.sleep(1.1)
    before = time.time()
    found = tick()
    assert value(found, "annotation_backlog", family="access-qa") == 37
    assert 1.0 <= value(found, "sensor_lag_seconds", **labels) < 120  # ingested a second ago
    assert before <= value(found, "sensor_last_tick_timestamp_seconds", **labels) <= time.time()


def _pushgateway_group(url: str, family: str) -> dict:
    found = {}
    for metric_family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for s in metric_family.samples:
            if s.labels.get("job") == metrics.JOB and s.labels.get("family") == family:
                found[(s.name, frozenset(s.labels.items()))] = s.value
    return found


def test_the_pushgateway_keeps_counters_across_processes_and_each_familys_group(prometheus_stack):
    url = prometheus_stack.pushgateway.url
    code = (
        "import sys; from pulse_pipeline.core.metrics import Destination, TrainingMetrics; "
        f"sys.exit(TrainingMetrics('push-test-a', Destination({url!r}, None)).succeeded(0.25) is not None)"
    )
    for _ in range(2):  # two short-lived processes, each counting from nothing
        subprocess.run([sys.executable, "-c", code], check=True, cwd=PROJECT, timeout=120)
    destination = Destination(url, Path("/nonexistent"))
    assert TrainingMetrics("push-test-b", destination).succeeded(0.75) is None
    # The sensor pushes other names into the same group: the training's stay (pushadd, not push).
    assert (
        metrics.record_sensor_tick(
            "push-test-a", "new_annotations_push_test_a", 12, 30.0, destination=destination
        )
        is None
    )
    a = _pushgateway_group(url, "push-test-a")
    tags = {"job": metrics.JOB, "instance": "", "family": "push-test-a"}
    assert value(a, "training_jobs_total", status="success", **tags) == 2
    assert value(a, "training_loss_current", **tags) == 0.25
    assert value(a, "annotation_backlog", **tags) == 12
    assert value(a, "sensor_lag_seconds", sensor="new_annotations_push_test_a", **tags) == 30
    b = _pushgateway_group(url, "push-test-b")
    assert (
        value(b, "training_jobs_total", status="success", job=metrics.JOB, instance="", family="push-test-b")
        == 1
    )


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_pulse_train_reaches_prometheus(prometheus_stack, pulse_env, monkeypatch):
    """`pulse train` (its Dagster retrain job, as users run it) and `pulse promote` push to the
    Pushgateway; Prometheus scrapes it and PromQL returns the values the run recorded."""
    from typer.testing import CliRunner

    from pulse_pipeline.cli import app
    from pulse_pipeline.demo.data import DemoScale, write_demo_file

    runner = CliRunner()
    monkeypatch.setenv("PULSE_PUSHGATEWAY_URL", prometheus_stack.pushgateway.url)
    get_settings.cache_clear()
    demo = write_demo_file(
        pulse_env.parent / "demo.jsonl", anchor=dt.date(2026, 6, 30), scale=DemoScale().scaled(0.3)
    )
    assert runner.invoke(app, ["ingest", str(demo.path)]).exit_code == 0
    trained = runner.invoke(
        app, ["train", "--family", "access-qa", "--epochs", "1", "--max-samples", "16", "--json"]
    )
    assert trained.exit_code == 0, trained.output
    report = json.loads(trained.stdout)
    version = report["version"]
    assert report["decision"] == "FAIL"  # a tiny model after one epoch: judged, not promoted
    promoted = runner.invoke(
        app, ["promote", "--family", "access-qa", "--version", version, "--force", "--reason", "metrics test"]
    )
    assert promoted.exit_code == 0, promoted.output

    prom = prometheus_stack.prometheus

    def scalar(promql: str, expected: float | None = None) -> float:
        ok = (
            (lambda r: len(r) == 1)
            if expected is None
            else (lambda r: len(r) == 1 and float(r[0]["value"][1]) == expected)
        )
        result = prom.wait_for(promql, ok)
        assert len(result) == 1, (promql, result, prom.log_tail())
        return float(result[0]["value"][1])

    assert scalar('training_jobs_total{family="access-qa",status="success"}', 1) == 1
    assert prom.query('training_jobs_total{family="access-qa",status="failed"}') == []
    assert scalar('training_loss_current{family="access-qa"}') == pytest.approx(report["training_loss"])
    assert scalar('training_duration_seconds{family="access-qa"}') >= report["training_time_seconds"] - 0.1
    assert scalar('evaluations_total{family="access-qa",decision="FAIL"}', 1) == 1
    assert scalar('promotions_total{family="access-qa",outcome="force_promote"}', 1) == 1
    results = json.loads(
        (pulse_env / "artifacts/adapters/access-qa" / version / "eval/results.json").read_text()
    )
    expected = {
        f"{set_name}/{metric}": v
        for set_name, systems in results["metrics"].items()
        for metric, v in systems["candidate"].items()
    }
    found = prom.wait_for('evaluation_metric_value{family="access-qa"}', lambda r: len(r) == len(expected))
    assert {r["metric"]["metric"]: float(r["value"][1]) for r in found} == pytest.approx(
        expected, nan_ok=True
    )
    assert all(
        r["metric"]["job"] == metrics.JOB and "instance" not in r["metric"] for r in found
    )  # honor_labels
    import torch

    if not torch.cuda.is_available():
        assert prom.query('gpu_memory_utilization_percent{family="access-qa"}') == []  # absent, not 0

    # A training that dies after it began (here: at its first progress report) counts as failed.
    from pulse_pipeline.core.families import load_config
    from pulse_pipeline.core.registry import Registry
    from pulse_pipeline.core.store import Store
    from pulse_pipeline.core.training.runner import train_family

    class Killed(Exception):
        pass

    def die(_progress):
        raise Killed

    settings = get_settings()
    family = load_config(settings.pulse_config).family("access-qa")
    with Store(settings.database_url) as store, pytest.raises(Killed):
        registry = Registry(store, settings.artifact_store())
        train_family(
            family, registry, home=settings.pulse_home, tracking_uri=None, force=True, on_progress=die,
            overrides={"epochs": 1, "max_samples": 8},
        )  # fmt: skip
    assert scalar('training_jobs_total{family="access-qa",status="failed"}', 1) == 1
    assert scalar('training_jobs_total{family="access-qa",status="success"}') == 1
