"""`new_annotations_<family>` ticks against a real store: a skip with the count below the minimum,
one run request at it (the same run key on every later tick), counting only what is new, and a
new snapshot starting the count again."""

import datetime as dt

import dagster as dg
import orjson

from pulse_pipeline.core.ingestion import ingest_file
from pulse_pipeline.core.retraining import NewAnnotations
from pulse_pipeline.core.store import Store
from pulse_pipeline.defs.automation.sensors import new_annotations_sensor
from pulse_pipeline.defs.resources import AnnotationStore, ArtifactStorage


def _qa(n, start=0):
    return [
        {"kind": "qa_pair", "family": "access-qa", "question": f"How many cores on node {i}?",
         "answer": f"{i} cores.", "annotator": "reviewer", "created_at": "2026-06-30T12:00:00Z"}
        for i in range(start, start + n)
    ]  # fmt: skip


def _ingest(config, url, tmp_path, records, name):
    path = tmp_path / name
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    with Store(url) as store:
        ingest_file(store, path, config)


def test_skips_below_the_minimum_then_requests_one_run_per_watermark(config, tmp_path):
    family = config.family("access-qa")  # minimum 50
    url = f"sqlite:///{tmp_path / 'pulse.db'}"
    resources = {
        "annotation_store": AnnotationStore(database_url=url),
        "artifact_storage": ArtifactStorage(location=str(tmp_path / "artifacts")),
    }
    sensor = new_annotations_sensor(family, "retrain_access_qa")
    _ingest(config, url, tmp_path, _qa(37), "a.jsonl")
    with dg.instance_for_test() as instance:

        def tick(cursor):
            with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as context:
                return sensor(context), context.cursor

        result, cursor = tick(None)
        assert isinstance(result, dg.SkipReason) and result.skip_message == "37 of 50 new annotations"
        assert NewAnnotations.from_cursor(cursor) == NewAnnotations(0, 37, 37)

        _ingest(config, url, tmp_path, _qa(20, start=100), "b.jsonl")
        result, cursor = tick(cursor)
        (request,) = result.run_requests
        assert request.run_key == "access-qa:0" and request.tags["pulse/new_annotations"] == "57"
        assert NewAnnotations.from_cursor(cursor) == NewAnnotations(0, 57, 57)  # only the 20 new rows read
        again, cursor = tick(cursor)
        assert [r.run_key for r in again.run_requests] == ["access-qa:0"]  # same data, same run key

        # A retrain built a snapshot up to seq 57: counting starts again from there.
        (tmp_path / "artifacts" / "datasets" / "access-qa" / "v1").mkdir(parents=True)
        (tmp_path / "artifacts" / "datasets" / "access-qa" / "v1" / "manifest.json").write_bytes(
            orjson.dumps({"dataset_version": "v1", "watermark": {"seq": 57}})
        )
        (tmp_path / "artifacts" / "datasets" / "access-qa" / "latest.json").write_bytes(
            orjson.dumps({"dataset_version": "v1", "created_at": dt.datetime.now(dt.UTC).isoformat()})
        )
        result, cursor = tick(cursor)
        assert result.skip_message == "0 of 50 new annotations"
        assert NewAnnotations.from_cursor(cursor) == NewAnnotations(57, 57, 0)
