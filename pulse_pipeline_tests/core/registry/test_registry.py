"""`Registry`: files and records move together. A version is recorded before any file is written,
visible only once its record says published, evaluated through its record, and new annotations
count from the newest trained version's snapshot."""

from __future__ import annotations

import datetime as dt

import pytest

from pulse_pipeline.core.registry import Registry, RegistryError, State, files
from pulse_pipeline.core.store import StoreError
from pulse_pipeline_tests.core.registry.conftest import FAMILY, T0, adapter_folder, results, trained


def _begin(registry: Registry, minute: int, **kw) -> object:
    return registry.begin(
        FAMILY, dataset_version=f"d{minute}", base_model="minilm-l6", training_config={"m": minute},
        created_by="test", when=T0 + dt.timedelta(minutes=minute), **kw,
    )  # fmt: skip


def test_the_record_exists_before_any_file_and_the_folder_appears_only_when_published(registry, tmp_path):
    record = _begin(registry, 0, run_id="run-a", watermark=40)
    assert record.state is State.TRAINING and record.run_id == "run-a" and record.watermark == 40
    assert registry.artifacts.list(f"adapters/{FAMILY}") == []  # nothing written yet
    assert registry.available(FAMILY) == [] and registry.unrecorded(FAMILY) == []
    with pytest.raises(RegistryError, match="is training: it has no files"):
        registry.require(FAMILY, record.version)

    files.stage(registry.artifacts, FAMILY, record.version, adapter_folder(tmp_path, 0), {"base_model": "x"})
    assert files.is_staged(registry.artifacts, FAMILY, record.version)
    assert files.complete_folders(registry.artifacts, FAMILY) == []  # staged is not visible
    published = registry.publish_staged(record)
    assert published.state is State.PUBLISHED and registry.available(FAMILY) == [record.version]
    assert not files.is_staged(registry.artifacts, FAMILY, record.version)
    meta = registry.metadata(FAMILY, record.version)
    assert meta["version"] == record.version and set(meta["files"]) == {
        "adapter_config.json", "adapter_model.safetensors", "tokenizer.json",
    }  # fmt: skip
    files.verify(registry.artifacts, FAMILY, record.version)


def test_two_trainings_of_one_minute_get_two_names(registry):
    first, second = _begin(registry, 0), _begin(registry, 0)
    assert second.version == f"{first.version}-2"


def test_a_name_whose_folder_exists_without_a_record_is_not_reused(registry, tmp_path):
    version = trained(registry, tmp_path, 0)
    with registry.db.begin() as conn:  # the record lost (a database restored from an old backup)
        conn.exec_driver_sql(f"DELETE FROM adapter_versions WHERE version = '{version}'")
    assert registry.unrecorded(FAMILY) == [version] and registry.available(FAMILY) == []
    again = _begin(registry, 0)
    assert again.version == f"{version}-2"


def test_abandon_fails_the_record_and_drops_the_staged_files(registry, tmp_path):
    record = _begin(registry, 0)
    files.stage(registry.artifacts, FAMILY, record.version, adapter_folder(tmp_path, 0), {})
    assert registry.abandon(record) is True
    assert registry.record(FAMILY, record.version).state is State.FAILED
    assert files.staged_versions(registry.artifacts, FAMILY) == [] and registry.available(FAMILY) == []
    published = _begin(registry, 1)
    registry.publish(published, adapter_folder(tmp_path, 1), {})
    assert registry.abandon(published) is False  # it published after all: its files stay
    assert registry.available(FAMILY) == [published.version]


def test_an_evaluation_moves_a_published_version_and_keeps_a_served_ones_state(registry, tmp_path):
    version = trained(registry, tmp_path, 0)
    judged = registry.record_evaluation(FAMILY, version, results("REVIEW", None))
    assert (judged.state, judged.decision, judged.baseline_version) == (State.EVALUATED, "REVIEW", None)
    assert judged.metrics == {"test": {"accuracy": 0.9}} and judged.evaluated_at is not None
    again = registry.record_evaluation(FAMILY, version, results("DEPLOY", None))
    assert (again.state, again.decision) == (State.EVALUATED, "DEPLOY")
    registry.promote(FAMILY, version, by="test")
    rejudged = registry.record_evaluation(FAMILY, version, results("FAIL", "other-version"))
    assert (rejudged.state, rejudged.decision) == (State.PRODUCTION, "FAIL")  # a person decides on a rollback


def test_a_version_without_a_record_or_files_is_not_judged(registry, tmp_path):
    with pytest.raises(RegistryError, match="has no version"):
        registry.record_evaluation(FAMILY, f"{FAMILY}-20261122-0930", results("DEPLOY"))
    with pytest.raises(RegistryError, match="is not a version name"):
        registry.require(FAMILY, f"{FAMILY}-20261122-0930\n")


def test_new_annotations_count_from_the_newest_trained_versions_snapshot(registry, tmp_path):
    assert registry.trained_watermark(FAMILY) == 0  # never trained: everything is new
    _begin(registry, 0, watermark=500)  # a training in progress saw nothing yet
    assert registry.trained_watermark(FAMILY) == 0
    failed = _begin(registry, 1, watermark=600)
    registry.abandon(failed)  # a training that never published did not either
    assert registry.trained_watermark(FAMILY) == 0
    trained(registry, tmp_path, 2, watermark=80)
    judged_fail = trained(registry, tmp_path, 3, "FAIL", watermark=120)  # trained on: counts as seen
    assert registry.trained_watermark(FAMILY) == 120
    registry.saw_data_up_to(FAMILY, judged_fail, 150)  # reused on a rebuilt, identical snapshot
    assert registry.trained_watermark(FAMILY) == 150
    registry.saw_data_up_to(FAMILY, judged_fail, 10)  # never back
    assert registry.trained_watermark(FAMILY) == 150


def test_a_record_older_than_its_watermark_reads_its_snapshots_manifest(registry, tmp_path):
    version = trained(registry, tmp_path, 0, watermark=0)
    registry.records.update(FAMILY, version, watermark=None)
    registry.artifacts.write_text(
        f"datasets/{FAMILY}/d0/manifest.json", '{"dataset_version": "d0", "watermark": {"seq": 57}}'
    )
    assert registry.trained_watermark(FAMILY) == 57


def test_find_trained_matches_the_snapshot_and_the_settings(registry, tmp_path):
    version = trained(registry, tmp_path, 0)
    assert registry.find_trained(FAMILY, "d0", {"epochs": 1, "minute": 0}).version == version
    assert registry.find_trained(FAMILY, "d0", {"epochs": 2, "minute": 0}) is None
    assert registry.find_trained(FAMILY, "d1", {"epochs": 1, "minute": 0}) is None


@pytest.mark.postgres
def test_postgresql_down_at_publish_leaves_the_files_staged_then_reconcile_publishes(tmp_path):
    """The record cannot move to published while the database is down: the staged folder stays out
    of sight. Once it is back, reconcile (no training alive) finishes what the training did."""
    from pulse_pipeline.core.artifacts import open_artifact_store
    from pulse_pipeline.core.store import Store
    from pulse_pipeline_tests.postgres_server import PostgresServer

    with PostgresServer() as server, Store(server.create_database()) as store:
        registry = Registry(store, open_artifact_store(str(tmp_path / "artifacts")))
        record = _begin(registry, 0)
        server.halt()
        with pytest.raises(StoreError, match="cannot connect to the annotation store"):
            registry.publish(record, adapter_folder(tmp_path, 0), {"base_model": "minilm-l6"})
        assert files.staged_versions(registry.artifacts, FAMILY) == [record.version]
        assert files.complete_folders(registry.artifacts, FAMILY) == []  # nothing visible without a record
        server.resume()
        assert registry.record(FAMILY, record.version).state is State.TRAINING
        done = registry.reconcile(FAMILY, by="test")
        assert done.changes == [
            f"{record.version}: training finished but its record was not moved: published"
        ]
        assert registry.available(FAMILY) == [record.version]


def test_changes_of_one_family_take_turns_across_connections(registry, tmp_path):
    """A promotion waits while another change of the family holds its registry section."""
    import threading

    version = trained(registry, tmp_path, 0, "DEPLOY")
    done = threading.Event()
    with registry.serialized(FAMILY):
        worker = threading.Thread(target=lambda: (registry.promote(FAMILY, version, by="test"), done.set()))
        worker.start()
        assert not done.wait(1.0)  # blocked behind the section
        assert registry.current(FAMILY) is None
    worker.join(timeout=30)
    assert done.is_set() and registry.current(FAMILY)["version"] == version
    with registry.serialized("other-family"):  # another family's section does not wait
        pass
