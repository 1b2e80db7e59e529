"""A bad day, fixed and backfilled through Dagster: ingest several days, snapshot through the
assets, invalidate one day, re-materialize that day's partition and then the snapshot. The day's
audit still passes and shows the invalidated records, its data version changes, the next
dataset_version is new and its training data lacks the invalidated records, and the old snapshot
still reads."""

import datetime as dt

import dagster as dg
import orjson
import pytest

from pulse_pipeline.core.artifacts import open_artifact_store
from pulse_pipeline.core.ingestion import ingest_lines
from pulse_pipeline.core.snapshots import SPLITS, prefix, read_split
from pulse_pipeline.core.store import Store
from pulse_pipeline.definitions import annotation_partitions
from pulse_pipeline.defs.annotations.assets import CHECK_ACCOUNTED, annotations_asset
from pulse_pipeline.defs.datasets.assets import dataset_snapshot_asset, examples_asset
from pulse_pipeline.defs.resources import AnnotationStore, ArtifactStorage
from pulse_pipeline_tests.core.test_store_data_fixes import intent, lines

DAYS = [dt.date(2026, 11, 28), dt.date(2026, 11, 29), dt.date(2026, 11, 30)]
BAD = DAYS[1]
LABELS = ["balance", "greeting", "oos"]


@pytest.mark.slow  # six in-process runs: ~20 s on two cores
def test_invalidate_a_day_then_backfill_it_and_the_snapshot(config, tmp_path):
    family = config.family("intent-router")
    url = f"sqlite:///{tmp_path / 'pulse.db'}"
    records = [
        intent(i, day, LABELS[i % 3]) for n, day in enumerate(DAYS) for i in range(n * 30, n * 30 + 30)
    ]
    with Store(url) as store:
        ingest_lines(store, lines(records), config, source="three-days.jsonl")
    resources = {
        "annotation_store": AnnotationStore(database_url=url),
        "artifact_storage": ArtifactStorage(location=str(tmp_path / "artifacts")),
    }
    day_asset = annotations_asset(family, annotation_partitions(config))
    dataset = [examples_asset(family), dataset_snapshot_asset(family)]
    artifacts = open_artifact_store(str(tmp_path / "artifacts"))

    with dg.instance_for_test() as instance:

        def day_run(day):
            result = dg.materialize(
                [day_asset], partition_key=day.isoformat(), resources=resources, instance=instance
            )
            (mat,) = result.asset_materializations_for_node("intent_router__annotations")
            (check,) = result.get_asset_check_evaluations()
            assert check.check_name == CHECK_ACCOUNTED and check.passed, check.description
            return mat

        def snapshot_run():
            result = dg.materialize(dataset, resources=resources, instance=instance)
            (mat,) = result.asset_materializations_for_node("intent_router__dataset_snapshot")
            return mat.metadata["dataset_version"].value

        before = {day: day_run(day) for day in DAYS}
        first = snapshot_run()
        assert (
            before[BAD].metadata["annotations"].value == 30 and before[BAD].metadata["invalidated"].value == 0
        )

        with Store(url) as store:
            bad_ids = {r.id for r in store.annotations.iter_day("intent-router", BAD)}
            fix = store.fixes.invalidate("intent-router", day=BAD, reason="a broken export", by="test")
        assert fix.invalidated == 30

        after = day_run(BAD)  # the backfill of the fixed day's partition
        assert after.metadata["annotations"].value == 0 and after.metadata["invalidated"].value == 30
        assert after.tags["dagster/data_version"] != before[BAD].tags["dagster/data_version"]
        second = snapshot_run()

        assert second != first
        latest = instance.get_latest_materialization_event(dg.AssetKey(["intent-router", "dataset_snapshot"]))
        assert latest.asset_materialization.metadata["dataset_version"].value == second
        new_ids = {r["id"] for split in SPLITS for r in read_split(artifacts, family, second, split)}
        assert new_ids and not new_ids & bad_ids and len(new_ids) == 60
        # The old snapshot is untouched and still reads, invalidated records and all.
        old_manifest = orjson.loads(artifacts.read_bytes(f"{prefix('intent-router', first)}/manifest.json"))
        old_ids = {r["id"] for split in SPLITS for r in read_split(artifacts, family, first, split)}
        assert old_manifest["dataset_version"] == first and bad_ids <= old_ids and len(old_ids) == 90
