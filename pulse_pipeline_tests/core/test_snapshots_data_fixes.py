"""Snapshots after a data fix: a new dataset_version without the invalidated records, the old
snapshot untouched, and a watermark that never goes back (not even when a fix brings the examples
back to an older snapshot, which is then reused)."""

import datetime as dt

from pulse_pipeline.core.artifacts import open_artifact_store
from pulse_pipeline.core.examples import build_examples
from pulse_pipeline.core.ingestion import ingest_lines
from pulse_pipeline.core.snapshots import SPLITS, latest_manifest, prefix, read_split, write_snapshot
from pulse_pipeline_tests.core.test_store_data_fixes import intent, lines

DAY1, DAY2 = dt.date(2026, 6, 29), dt.date(2026, 6, 30)


def snap(store, family, artifacts):
    table, stats = build_examples(store, family)
    return write_snapshot(artifacts, family, table, stats)


def ids_in(artifacts, family, version):
    return {r["id"] for split in SPLITS for r in read_split(artifacts, family, version, split)}


def test_a_fix_gives_a_new_version_and_reuse_keeps_the_newest_watermark(store, config, tmp_path):
    family = config.family("intent-router")
    artifacts = open_artifact_store(str(tmp_path / "artifacts"))
    labels = ["balance", "greeting", "oos"]
    day1 = [intent(i, DAY1, labels[i % 3]) for i in range(30)]
    ingest_lines(store, lines(day1), config, source="day1")
    first = snap(store, family, artifacts)
    ingest_lines(store, lines([intent(i, DAY2, labels[i % 3]) for i in range(30, 60)]), config, source="d2")
    second = snap(store, family, artifacts)
    top = store.annotations.latest_seq("intent-router")
    assert second.manifest["watermark"]["seq"] == top and second.version != first.version
    old_files = {
        name: (tmp_path / "artifacts" / prefix("intent-router", second.version) / name).read_bytes()
        for name in ("manifest.json", "train.parquet")
    }

    # Day 2 was bad: invalidate it. The next snapshot is day 1's again (same content: reused),
    # but its watermark is the store's newest seq, not day 1's.
    store.fixes.invalidate("intent-router", day=DAY2, reason="bad export", by="t")
    third = snap(store, family, artifacts)
    assert third.reused and third.version == first.version
    assert ids_in(artifacts, family, third.version) == {r.id for r in store.annotations.iter_day("intent-router", DAY1)}
    assert latest_manifest(artifacts, "intent-router")["watermark"]["seq"] == top
    assert top > first.manifest["watermark"]["seq"]

    # Half of day 2 comes back: a new version without the rest; the old snapshots still read.
    back = list(store.annotations.iter_day("intent-router", DAY2, include_invalidated=True))[:15]
    store.fixes.replace_day(DAY2, {"intent-router": {r.content_hash for r in back}}, reason="r", by="t")
    keep = {r.id for r in back}
    fourth = snap(store, family, artifacts)
    assert fourth.version not in {first.version, second.version}
    assert ids_in(artifacts, family, fourth.version) == ids_in(artifacts, family, first.version) | keep
    assert len(ids_in(artifacts, family, second.version)) == 60  # the old snapshot is untouched
    for name, data in old_files.items():
        assert (tmp_path / "artifacts" / prefix("intent-router", second.version) / name).read_bytes() == data
