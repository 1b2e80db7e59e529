"""The loop running itself, end to end on a demo instance: the new-annotation sensor asks for a
retrain, the run it asked for trains, evaluates and promotes; more judgments arrive, the next tick
asks again (a new run key), and that run promotes a second version over the first."""

import datetime as dt

import dagster as dg
import orjson
import pytest

from pulse_pipeline.core.ingestion import ingest_file
from pulse_pipeline.core.registry import read_current
from pulse_pipeline.core.store import Store
from pulse_pipeline.definitions import build_definitions
from pulse_pipeline.defs.resources import default_resources
from pulse_pipeline.demo.data import DIMENSIONS, DemoScale, write_demo_file
from pulse_pipeline.settings import get_settings

FAMILY = "article-scorer"  # minilm-l6 (22M parameters): small enough to train twice in a test


def _more_scores(n: int, start: int) -> list[dict]:
    """New judged articles in the style of the demo's (scores follow the text's length and topic)."""
    records = []
    for i in range(start, start + n):
        quality = i % 10
        text = (f"Report {i} on regional water policy. " + "It cites two sources and a budget table. " * quality)
        scores = {d: float(min(10, max(0, quality + (j % 3) - 1))) for j, d in enumerate(DIMENSIONS)}
        records.append({"kind": "score_label", "family": FAMILY, "text": text.strip(), "scores": scores,
                        "annotator": "editor-7", "created_at": "2026-06-30T15:00:00Z"})
    return records  # fmt: skip


def _min_examples(config, family, n):
    """`config` with the family's gate asking for `n` test examples (evaluation.gate.evidence)."""
    fam = config.family(family)
    gate = fam.evaluation.gate
    gate = gate.model_copy(update={"evidence": gate.evidence.model_copy(update={"min_examples": n})})
    fam = fam.model_copy(update={"evaluation": fam.evaluation.model_copy(update={"gate": gate})})
    return config.model_copy(update={"families": {**config.families, family: fam}})


def _tick(sensor, instance, cursor):
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=default_resources()) as context:
        result = sensor(context)
        return result, context.cursor


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sensor_requests_a_retrain_whose_run_promotes_a_new_version(config, model_cache, tmp_path):
    settings = get_settings()
    settings.pulse_home.mkdir(parents=True)
    (settings.pulse_home / "models").symlink_to(model_cache)  # the session's base models
    demo = write_demo_file(tmp_path / "demo.jsonl", anchor=dt.date(2026, 6, 30), scale=DemoScale().scaled(0.5))
    with Store(settings.database_url) as store:
        ingest_file(store, demo.path, config)
    # Half the demo gives a test split of ~15 scored articles: below the regression default of 30,
    # the gate would ask a person (REVIEW) and nothing would be promoted on its own.
    defs = build_definitions(_min_examples(config, FAMILY, 10))
    sensor = defs.resolve_sensor_def("new_annotations_article_scorer")
    job = defs.resolve_job_def("retrain_article_scorer")
    artifacts = settings.artifact_store()

    with dg.instance_for_test() as instance:

        def run(request):
            result = job.execute_in_process(instance=instance, tags=request.tags, raise_on_error=False)
            assert result.success, [e.message for e in result.all_events if e.is_failure]
            return read_current(artifacts, FAMILY)

        first, cursor = _tick(sensor, instance, None)
        (request,) = first.run_requests
        assert request.run_key == f"{FAMILY}:0" and request.tags["pulse/family"] == FAMILY
        v1 = run(request)
        assert v1 is not None, "the first version was not promoted"

        idle, cursor = _tick(sensor, instance, cursor)  # the run's training moved the watermark
        assert isinstance(idle, dg.SkipReason) and idle.skip_message == "0 of 50 new annotations"

        path = tmp_path / "more.jsonl"
        path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in _more_scores(60, start=1000)))
        with Store(settings.database_url) as store:
            assert ingest_file(store, path, config).accepted == 60
        second, cursor = _tick(sensor, instance, cursor)
        (request,) = second.run_requests
        assert request.run_key != f"{FAMILY}:0" and request.tags["pulse/new_annotations"] == "60"
        v2 = run(request)
    assert v2["version"] != v1["version"] and v2["previous_version"] == v1["version"]
    assert v2["dataset_version"] != v1["dataset_version"]
