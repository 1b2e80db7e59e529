"""New annotations, the one count behind every retrain trigger: trainable annotations newer than the
snapshot of the family's newest trained version. A snapshot alone does not count them as seen; a
training that never published does not either; a data fix makes the count start again."""

import orjson

from pulse_pipeline.core.artifacts import LocalArtifactStore
from pulse_pipeline.core.examples import build_examples
from pulse_pipeline.core.ingestion import ingest_lines
from pulse_pipeline.core.registry import Registry
from pulse_pipeline.core.retraining import NewAnnotations, count_new, new_annotations
from pulse_pipeline.core.snapshots import write_snapshot
from pulse_pipeline.core.store import Store
from pulse_pipeline_tests.core.registry.conftest import adapter_folder


def _qa(i: int, annotator: str | None = "reviewer") -> bytes:
    record = {
        "kind": "qa_pair",
        "family": "access-qa",
        "question": f"Cores on node {i}?",
        "answer": f"{i} cores.",
    }
    return orjson.dumps(record | ({"annotator": annotator} if annotator else {}))


def _publish(registry: Registry, tmp_path, dataset: str, watermark: int) -> str:
    record = registry.begin(
        "access-qa", dataset_version=dataset, base_model="tiny", training_config={}, created_by="t",
        watermark=watermark,
    )  # fmt: skip
    registry.publish(record, adapter_folder(tmp_path, watermark), {})
    return record.version


def test_one_count_from_the_newest_trained_version(database_url, config, tmp_path):
    family = config.family("access-qa")
    artifacts = LocalArtifactStore(tmp_path / "artifacts")
    with Store(database_url) as store:
        registry = Registry(store, artifacts)
        ingest_lines(store, [_qa(i) for i in range(30)], config, source="a")
        assert new_annotations(store, artifacts, family).count == 30  # never trained: all of them
        table, stats = build_examples(store, family)
        snap = write_snapshot(artifacts, family, table, stats)
        assert new_annotations(store, artifacts, family).count == 30  # a snapshot alone: still new

        failed = registry.begin(
            "access-qa", dataset_version=snap.version, base_model="tiny", training_config={}, created_by="t",
            watermark=stats.watermark,
        )  # fmt: skip
        registry.abandon(failed)
        assert new_annotations(store, artifacts, family).count == 30  # a training that never published

        _publish(registry, tmp_path, snap.version, stats.watermark)
        seen = new_annotations(store, artifacts, family)
        assert (seen.watermark, seen.count) == (stats.watermark, 0)
        ingest_lines(store, [_qa(i) for i in range(30, 35)], config, source="b")
        assert new_annotations(store, artifacts, family).count == 5


def test_the_cursor_continues_and_a_data_fix_counts_again(database_url, config, tmp_path):
    family = config.family("access-qa")
    artifacts = LocalArtifactStore(tmp_path / "artifacts")
    with Store(database_url) as store:
        ingest_lines(store, [_qa(i) for i in range(10)], config, source="a")
        first = new_annotations(store, artifacts, family)
        cursor = NewAnnotations.from_cursor(first.to_cursor())
        assert cursor == first and first.count == 10
        ingest_lines(store, [_qa(i) for i in range(10, 14)], config, source="b")
        later = count_new(store, family, 0, cursor)
        assert later.count == 14 and later.read_up_to > first.read_up_to
        ids = [row.id for row in store.annotations.iter_family("access-qa")][:3]
        store.fixes.invalidate("access-qa", ids=ids, reason="wrong", by="t")
        fixed = count_new(store, family, 0, later)
        assert fixed.count == 11 and fixed.invalidations > later.invalidations  # counted again, without them
        assert (
            NewAnnotations.from_cursor("not json") is None and NewAnnotations.from_cursor('{"x": 1}') is None
        )
