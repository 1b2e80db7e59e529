import datetime as dt

import dagster as dg
import pytest

from pulse_pipeline.core.ingestion import ingest_file
from pulse_pipeline.core.store import Store, annotations
from pulse_pipeline.definitions import annotation_partitions
from pulse_pipeline.defs.annotations.assets import CHECK_ACCOUNTED, annotations_asset
from pulse_pipeline.defs.resources import AnnotationStore
from pulse_pipeline.demo.data import DemoScale, write_demo_file

ANCHOR = dt.date(2026, 11, 30)


@pytest.fixture
def loaded(database_url, config, tmp_path):
    demo = write_demo_file(tmp_path / "demo.jsonl", anchor=ANCHOR, scale=DemoScale().scaled(0.3))
    with Store(database_url) as store:
        ingest_file(store, demo.path, config)
    return database_url


def _run(config, database_url, family, day, instance):
    asset = annotations_asset(config.family(family), annotation_partitions(config))
    return dg.materialize(
        [asset],
        partition_key=day.isoformat(),
        resources={"annotation_store": AnnotationStore(database_url=database_url)},
        instance=instance,
        raise_on_error=False,
    )


def test_partition_materializes_counts_breakdowns_and_passing_check(loaded, config):
    with dg.DagsterInstance.ephemeral() as instance:
        result = _run(config, loaded, "call-analysis", ANCHOR, instance)
        assert result.success
        mat = result.asset_materializations_for_node("call_analysis__annotations")[0]
        meta = {k: v.value for k, v in mat.metadata.items()}
        with Store(loaded) as store:
            expected = sum(1 for _ in store.annotations.iter_day("call-analysis", ANCHOR))
        assert expected > 0 and meta["annotations"] == expected
        assert sum(meta["by_kind"].values()) == expected
        assert set(meta["by_segment_type"]) <= {"agent_action", "score_impact", "compliance_flag"}
        assert sum(meta["by_disagreement_reason"].values()) == meta["by_kind"].get("segment_review", 0)
        [check] = result.get_asset_check_evaluations()
        assert check.check_name == CHECK_ACCOUNTED and check.passed
        assert check.metadata["lines_received"].value >= expected
        assert mat.partition == ANCHOR.isoformat()
        # recorded in the instance, as the UI shows it
        event = instance.get_latest_materialization_event(dg.AssetKey(["call-analysis", "annotations"]))
        assert event is not None and event.asset_materialization.partition == ANCHOR.isoformat()


def test_intent_partition_lists_labels(loaded, config):
    with dg.DagsterInstance.ephemeral() as instance:
        result = _run(config, loaded, "intent-router", ANCHOR, instance)
    meta = result.asset_materializations_for_node("intent_router__annotations")[0].metadata
    assert meta["labels"].value > 1 and "| label | count |" in meta["top_labels"].value


def test_check_fails_when_a_received_line_is_missing(loaded, config):
    with Store(loaded) as store, store.engine.begin() as conn:
        victim = next(r.seq for r in store.annotations.iter_day("access-qa", ANCHOR))
        conn.execute(annotations.delete().where(annotations.c.seq == victim))
    with dg.DagsterInstance.ephemeral() as instance:
        result = _run(config, loaded, "access-qa", ANCHOR, instance)
    [check] = result.get_asset_check_evaluations()
    assert not check.passed
    assert "the store holds" in check.description
    assert not result.success  # the check is blocking: downstream assets do not run on an unaudited day


def test_data_version_changes_when_the_day_changes(loaded, config):
    with dg.DagsterInstance.ephemeral() as instance:

        def version():
            r = _run(config, loaded, "access-qa", ANCHOR, instance)
            return r.asset_materializations_for_node("access_qa__annotations")[0].tags["dagster/data_version"]

        before = version()
        assert version() == before
        with Store(loaded) as store:
            from pulse_pipeline.core.ingestion import ingest_lines

            ingest_lines(
                store,
                [
                    b'{"kind":"qa_pair","family":"access-qa","question":"new?","answer":"a",'
                    b'"created_at":"2026-11-30T12:00:00Z"}'
                ],
                config,
                source="t",
            )
        assert version() != before
