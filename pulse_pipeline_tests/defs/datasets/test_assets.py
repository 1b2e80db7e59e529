import datetime as dt

import dagster as dg
import orjson
import pytest

from pulse_pipeline.core.ingestion import ingest_file, ingest_lines
from pulse_pipeline.core.snapshots import latest_manifest
from pulse_pipeline.core.store import Store
from pulse_pipeline.defs.datasets.assets import dataset_snapshot_asset, examples_asset, review_queue_asset
from pulse_pipeline.defs.resources import AnnotationStore, ArtifactStorage
from pulse_pipeline.demo.data import DemoScale, write_demo_file

ANCHOR = dt.date(2026, 6, 30)


@pytest.fixture
def loaded(config, tmp_path):
    url = f"sqlite:///{tmp_path / 'pulse.db'}"
    demo = write_demo_file(tmp_path / "demo.jsonl", anchor=ANCHOR, scale=DemoScale().scaled(0.3))
    with Store(url) as store:
        ingest_file(store, demo.path, config)
    return url


def _resources(url, artifacts_location, **s3):
    return {
        "annotation_store": AnnotationStore(database_url=url),
        "artifact_storage": ArtifactStorage(location=artifacts_location, **s3),
    }


def _materialize(config, family, resources, instance):
    fam = config.family(family)
    assets = [examples_asset(fam), dataset_snapshot_asset(fam)]
    if family == "intent-router":
        assets.append(review_queue_asset(fam))
    return dg.materialize(assets, resources=resources, instance=instance, raise_on_error=False)


def test_examples_then_snapshot_with_checks_and_readable_metadata(config, loaded, tmp_path):
    with dg.DagsterInstance.ephemeral() as instance:
        result = _materialize(config, "intent-router", _resources(loaded, str(tmp_path / "art")), instance)
        assert result.success
        snap = result.asset_materializations_for_node("intent_router__dataset_snapshot")[0].metadata
        examples = result.asset_materializations_for_node("intent_router__examples")[0].metadata
        queue = result.asset_materializations_for_node("intent_router__review_queue")[0].metadata
    version = snap["dataset_version"].value
    assert snap["reused"].value is False and "| train |" in snap["splits"].value
    assert (
        snap["manifest"].value["dataset_version"] == version and "example_ids" not in snap["manifest"].value
    )
    assert examples["examples"].value == snap["manifest"].value["counts"]["total"]
    assert "| needs_review |" in examples["by_review_status"].value
    assert queue["waiting"].value > 0 and queue["priority"].value > 0
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert {
        "no_empty_split",
        "every_label_in_train",
        "no_group_leakage",
        "weights_in_range",
        "redaction_ran",
    } <= set(checks)
    assert all(c.passed for name, c in checks.items() if name != "labels_with_enough_examples")


def test_same_data_reuses_the_snapshot(config, loaded, tmp_path):
    resources = _resources(loaded, str(tmp_path / "art"))
    with dg.DagsterInstance.ephemeral() as instance:
        first = _materialize(config, "access-qa", resources, instance)
        second = _materialize(config, "access-qa", resources, instance)
        meta = [
            r.asset_materializations_for_node("access_qa__dataset_snapshot")[0].metadata
            for r in (first, second)
        ]
    assert meta[0]["dataset_version"].value == meta[1]["dataset_version"].value
    assert (meta[0]["reused"].value, meta[1]["reused"].value) == (False, True)


def test_new_annotation_gives_a_child_snapshot(config, loaded, tmp_path):
    resources = _resources(loaded, str(tmp_path / "art"))
    with dg.DagsterInstance.ephemeral() as instance:
        _materialize(config, "access-qa", resources, instance)
        first = latest_manifest(resources["artifact_storage"].open(), "access-qa")
        with Store(loaded) as store:
            ingest_lines(
                store,
                [
                    orjson.dumps(
                        {
                            "kind": "qa_pair",
                            "family": "access-qa",
                            "question": "Is there a GPU quota?",
                            "answer": "Yes <<SRC:documentation:gpu>>",
                            "annotator": "x",
                        }
                    )
                ],
                config,
                source="t",
            )
        _materialize(config, "access-qa", resources, instance)
    second = latest_manifest(resources["artifact_storage"].open(), "access-qa")
    assert second["dataset_version"] != first["dataset_version"]
    assert second["parent_version"] == first["dataset_version"]
    assert second["watermark"]["seq"] > first["watermark"]["seq"]


def test_blocking_check_stops_the_run_when_a_split_is_empty(config, tmp_path):
    url = f"sqlite:///{tmp_path / 'tiny.db'}"
    with Store(url) as store:  # one example cannot fill three splits
        ingest_lines(
            store,
            [orjson.dumps({"kind": "qa_pair", "family": "access-qa", "question": "q", "answer": "a"})],
            config,
            source="t",
        )
    with dg.DagsterInstance.ephemeral() as instance:
        result = _materialize(config, "access-qa", _resources(url, str(tmp_path / "art")), instance)
    assert not result.success
    failed = [c.check_name for c in result.get_asset_check_evaluations() if not c.passed]
    assert "no_empty_split" in failed


def test_snapshot_round_trips_through_s3(config, loaded, s3_server):
    resources = _resources(
        loaded,
        "s3://pulse-assets/prod",
        s3_endpoint=s3_server.endpoint,
        s3_access_key=s3_server.access_key,
        s3_secret_key=s3_server.secret_key,
    )
    with dg.DagsterInstance.ephemeral() as instance:
        result = _materialize(config, "article-scorer", resources, instance)
    assert result.success
    store = resources["artifact_storage"].open()
    manifest = latest_manifest(store, "article-scorer")
    version = manifest["dataset_version"]
    assert store.exists(f"datasets/article-scorer/{version}/train.parquet")
    from pulse_pipeline.core.snapshots import read_split

    rows = read_split(store, config.family("article-scorer"), version, "val")
    assert len(rows) == manifest["counts"]["val"] and len(rows[0]["labels"]) == 8


def test_feedback_becomes_preference_data_in_the_snapshot_split_by_prompt(config, loaded, tmp_path):
    from pulse_pipeline.core.snapshots import from_parquet, prefix, read_preferences

    resources = _resources(loaded, str(tmp_path / "art"))
    artifacts = resources["artifact_storage"].open()
    with dg.DagsterInstance.ephemeral() as instance:
        result = _materialize(config, "access-qa", resources, instance)
        examples_meta = result.asset_materializations_for_node("access_qa__examples")[0].metadata
    manifest = latest_manifest(artifacts, "access-qa")
    prefs = manifest["preferences"]
    assert (
        prefs["dpo_pairs"]["correction"] > 0 and prefs["kto_desirable"] > 0 and prefs["kto_undesirable"] > 0
    )
    assert examples_meta["preferences"].value["dpo_pairs_total"] == prefs["dpo_pairs_total"]
    assert sum(prefs["counts"]["dpo"].values()) == prefs["dpo_pairs_total"]
    d_w, u_w = prefs["kto_desirable_weight"], prefs["kto_undesirable_weight"]
    assert 1 - 1e-6 <= prefs["kto_desirable"] * d_w / (prefs["kto_undesirable"] * u_w) <= 4 / 3 + 1e-6

    # leak-free: a prompt's pairs sit in the split of the same prompt's examples
    version = manifest["dataset_version"]
    example_split = {}
    for split in ("train", "val", "test"):
        part = from_parquet(artifacts.read_bytes(f"{prefix('access-qa', version)}/{split}.parquet"))
        example_split |= dict.fromkeys(part["group"].to_pylist(), split)
    for name in ("dpo", "kto"):
        table = read_preferences(artifacts, "access-qa", version, name)
        rows = table.select(["group", "split"]).to_pylist()
        shared = [r for r in rows if r["group"] in example_split]
        assert all(r["split"] == example_split[r["group"]] for r in shared)
        assert shared or name == "kto"  # corrections are examples too; thumbs and ratings are not
        by_group = {}
        for r in rows:
            assert by_group.setdefault(r["group"], r["split"]) == r["split"]  # a prompt in one split

    # what the preference stage of training reads: TRL's conversational rows, by split
    from pulse_pipeline.core.training.preference import read_preference_data

    data = read_preference_data(artifacts, config.family("access-qa"), manifest)
    for name in ("dpo", "kto"):
        assert {s: len(data.rows(name, s)) for s in ("train", "val", "test")} == prefs["counts"][name]
    pair = data.rows("dpo", "train")[0]
    assert pair["prompt"][-1]["role"] == "user" and pair["chosen"][0]["role"] == "assistant"
    assert (data.desirable_weight, data.undesirable_weight) == (d_w, u_w)

    # a thumbs up makes no SFT example, but new preference data: a new snapshot
    with Store(loaded) as store:
        thumbs = {"kind": "feedback", "family": "access-qa", "query": "Where do I find my quota?",
                  "response": "Run `accessusage` <<SRC:documentation:quota>>.", "thumbs": "up"}  # fmt: skip
        ingest_lines(store, [orjson.dumps(thumbs)], config, source="t")
    with dg.DagsterInstance.ephemeral() as instance:
        _materialize(config, "access-qa", resources, instance)
    after = latest_manifest(artifacts, "access-qa")
    assert after["dataset_version"] != version and after["counts"] == manifest["counts"]
    assert after["preferences"]["kto_desirable"] == prefs["kto_desirable"] + 1
