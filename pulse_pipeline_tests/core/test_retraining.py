"""`snapshot_watermark`, which every retraining sensor calls on every tick, answers from the small
`latest.json` pointer and never parses the manifest (which lists every example id)."""

import orjson

from pulse_pipeline.core.artifacts import LocalArtifactStore
from pulse_pipeline.core.examples import build_examples
from pulse_pipeline.core.ingestion import ingest_lines
from pulse_pipeline.core.retraining import snapshot_watermark
from pulse_pipeline.core.snapshots import latest_manifest, write_snapshot
from pulse_pipeline.core.store import Store


class ReadLog(LocalArtifactStore):
    """A real local artifact store that remembers which keys were read."""

    def __init__(self, root):
        super().__init__(root)
        self.reads = []

    def read_bytes(self, key):
        self.reads.append(key)
        return super().read_bytes(key)


def test_the_watermark_comes_from_the_pointer_without_reading_the_manifest(config, tmp_path):
    family = config.family("access-qa")
    lines = [
        orjson.dumps({"kind": "qa_pair", "family": "access-qa", "question": f"Cores on node {i}?",
                      "answer": f"{i} cores.", "annotator": "reviewer"})
        for i in range(30)
    ]  # fmt: skip
    with Store(f"sqlite:///{tmp_path / 'pulse.db'}") as store:
        ingest_lines(store, lines, config, source="t.jsonl")
        table, stats = build_examples(store, family)
    artifacts = ReadLog(tmp_path / "artifacts")
    assert snapshot_watermark(artifacts, family.name) == 0  # no snapshot yet
    write_snapshot(artifacts, family, table, stats)

    artifacts.reads.clear()
    assert snapshot_watermark(artifacts, family.name) == stats.watermark == 30
    assert artifacts.reads == ["datasets/access-qa/latest.json"]
    assert latest_manifest(artifacts, family.name)["watermark"]["seq"] == 30  # the same answer


def test_a_pointer_without_a_watermark_falls_back_to_the_manifest(tmp_path):
    artifacts = ReadLog(tmp_path / "artifacts")  # written before pointers carried the watermark
    artifacts.write_bytes("datasets/access-qa/v1/manifest.json",
                          orjson.dumps({"dataset_version": "v1", "watermark": {"seq": 57}}))  # fmt: skip
    artifacts.write_bytes("datasets/access-qa/latest.json",
                          orjson.dumps({"dataset_version": "v1", "created_at": "2026-11-22T00:00:00+00:00"}))  # fmt: skip
    assert snapshot_watermark(artifacts, "access-qa") == 57
    assert "datasets/access-qa/v1/manifest.json" in artifacts.reads
