"""Reconcile repairs what a crash, a kill or a lost database left: each case, and that a second
reconcile finds nothing to do."""

from __future__ import annotations

import datetime as dt
import time

import pytest

from pulse_pipeline.core.artifacts import LocalArtifactStore
from pulse_pipeline.core.registry import Registry, RegistryError, State, files, pointer
from pulse_pipeline_tests.core.registry.conftest import FAMILY, T0, adapter_folder, trained


def _training(registry: Registry, minute: int):
    return registry.begin(
        FAMILY, dataset_version=f"d{minute}", base_model="minilm-l6", training_config={}, created_by="test",
        when=T0 + dt.timedelta(minutes=minute),
    )  # fmt: skip


def _settled(registry: Registry) -> None:
    again = registry.reconcile(FAMILY, by="test")
    assert again.changes == [] and again.problems == [], again


def test_a_dead_training_is_failed_and_its_damaged_staging_removed(registry, tmp_path):
    record = _training(registry, 0)
    files.stage(registry.artifacts, FAMILY, record.version, adapter_folder(tmp_path, 0), {})
    registry.artifacts.write_bytes(
        f"{files.staging_key(FAMILY, record.version)}/adapter_model.safetensors", b"cut"
    )
    alive = registry.reconcile(FAMILY, by="test", training_alive=True)
    assert alive.changes == [] and registry.record(FAMILY, record.version).state is State.TRAINING
    dry = registry.reconcile(FAMILY, by="test", dry_run=True)
    assert dry.changes == [f"{record.version}: training never finished (no run holds the lock): failed"]
    assert registry.record(FAMILY, record.version).state is State.TRAINING  # a dry run changes nothing
    done = registry.reconcile(FAMILY, by="alice")
    assert done.changes == dry.changes and registry.record(FAMILY, record.version).state is State.FAILED
    assert files.staged_versions(registry.artifacts, FAMILY) == []
    entry = registry.audit.list(FAMILY)[0]
    assert (entry.action, entry.by) == ("reconcile", "alice") and record.version in entry.reason
    _settled(registry)


def test_a_training_whose_record_did_not_move_is_published(registry, tmp_path):
    record = _training(registry, 0)
    files.stage(registry.artifacts, FAMILY, record.version, adapter_folder(tmp_path, 0), {})
    done = registry.reconcile(FAMILY, by="test")
    assert done.changes == [f"{record.version}: training finished but its record was not moved: published"]
    assert registry.available(FAMILY) == [record.version]
    _settled(registry)


def test_a_reveal_cut_short_is_finished(registry, tmp_path):
    record = _training(registry, 0)
    files.stage(registry.artifacts, FAMILY, record.version, adapter_folder(tmp_path, 0), {})
    registry.records.move(record, State.PUBLISHED)  # the crash came before the reveal
    assert registry.available(FAMILY) == []
    done = registry.reconcile(FAMILY, by="test")
    assert done.changes == [f"{record.version}: published but still staged: revealed"]
    assert registry.available(FAMILY) == [record.version]
    files.verify(registry.artifacts, FAMILY, record.version)
    _settled(registry)


def test_a_folder_without_a_record_is_adopted_when_whole_and_removed_when_damaged(registry, tmp_path):
    source = trained(registry, tmp_path, 0)
    whole, damaged = f"{FAMILY}-20261201-0000", f"{FAMILY}-20261201-0001"
    for name in (whole, damaged):
        for key in registry.artifacts.list(files.key(FAMILY, source)):
            registry.artifacts.write_bytes(key.replace(source, name), registry.artifacts.read_bytes(key))
    registry.artifacts.write_bytes(f"{files.key(FAMILY, damaged)}/adapter_model.safetensors", b"changed")
    assert registry.unrecorded(FAMILY) == [whole, damaged]
    with pytest.raises(RegistryError, match="pulse registry reconcile"):
        registry.promote(FAMILY, whole, by="test", force=True, reason="no record: never")
    done = registry.reconcile(FAMILY, by="test")
    assert (
        done.changes[0]
        == f"{whole}: a folder without a record: adopted as published (evaluate it before promoting it)"
    )
    assert done.changes[1].startswith(f"{damaged}: a folder without a record, damaged (")
    adopted = registry.record(FAMILY, whole)
    assert adopted.state is State.PUBLISHED and adopted.decision is None and "reconcile" in adopted.created_by
    assert registry.available(FAMILY) == [source, whole] and registry.unrecorded(FAMILY) == []
    with pytest.raises(RegistryError, match="was never evaluated"):
        registry.promote(FAMILY, whole, by="test")  # adopted is not judged: no promotion without --force
    _settled(registry)


def test_leftovers_go_and_missing_files_are_recorded(registry, tmp_path):
    gone = trained(registry, tmp_path, 0)
    files.remove(registry.artifacts, FAMILY, gone)  # deleted by hand
    stray = f"{FAMILY}-20261201-0000"
    files.stage(registry.artifacts, FAMILY, stray, adapter_folder(tmp_path, 1), {})  # staged, no record
    half = f"{FAMILY}-20261201-0002"
    registry.artifacts.write_bytes(
        f"{files.key(FAMILY, half)}/adapter_config.json", b"{}"
    )  # upload cut short
    done = registry.reconcile(FAMILY, by="test")
    assert sorted(done.changes) == sorted([
        f"{gone}: published but its files are gone: removed",
        f"{half}: an incomplete folder without a live record: removed",
        f"{stray}: a staged folder without a record: removed",
    ])  # fmt: skip
    assert registry.record(FAMILY, gone).state is State.REMOVED
    assert registry.artifacts.list(f"adapters/{FAMILY}") == []
    _settled(registry)


def test_records_follow_the_pointer_and_the_symlink_is_repaired(registry, tmp_path):
    a, b = trained(registry, tmp_path, 0, "DEPLOY"), trained(registry, tmp_path, 1, "DEPLOY")
    registry.promote(FAMILY, a, by="test")
    meta = registry.metadata(FAMILY, b)  # a pointer moved by hand (or by a run that lost its database)
    pointer.write_current(registry.artifacts, FAMILY, pointer.production(meta, b, a, pointer.stamp()))
    if isinstance(registry.artifacts, LocalArtifactStore):
        registry.artifacts.replace_symlink(pointer.link_key(FAMILY), a)
    done = registry.reconcile(FAMILY, by="test")
    assert f"{a}: production -> retired (after current.json)" in done.changes
    assert f"{b}: evaluated -> production (after current.json)" in done.changes
    assert (registry.record(FAMILY, a).state, registry.record(FAMILY, b).state) == (
        State.RETIRED,
        State.PRODUCTION,
    )
    if isinstance(registry.artifacts, LocalArtifactStore):
        assert registry.artifacts.read_symlink(pointer.link_key(FAMILY)) == b
    _settled(registry)


def test_a_pointer_naming_an_unrecorded_version_is_a_problem_for_a_person(registry, tmp_path):
    a = trained(registry, tmp_path, 0, "DEPLOY")
    registry.promote(FAMILY, a, by="test")
    other = f"{FAMILY}-20261201-0000"
    current = registry.current(FAMILY)
    pointer.write_current(
        registry.artifacts,
        FAMILY,
        {**current, "version": other, "traffic": [{"version": other, "share": 1.0}]},
    )
    done = registry.reconcile(FAMILY, by="test")
    assert any(line.startswith(f"current.json serves {other}, which has no record") for line in done.problems)


def test_a_pointer_change_without_an_audit_entry_is_recorded(registry, tmp_path):
    """A crash after current.json was written and before its audit entry: reconcile logs the change."""
    a, b = trained(registry, tmp_path, 0, "DEPLOY"), trained(registry, tmp_path, 1, "DEPLOY")
    registry.promote(FAMILY, a, by="cli:alice")
    meta = registry.metadata(FAMILY, b)
    time.sleep(2.1)  # current.json's time has whole seconds; the audit's does not
    later = pointer.stamp()
    moved = {**pointer.production(meta, b, a, later), **pointer.change("cli:bob", "hotfix", True, later)}
    pointer.write_current(registry.artifacts, FAMILY, moved)
    done = registry.reconcile(FAMILY, by="reconcile-test")
    assert done.changes[0] == (
        f"current.json changed at {later} by cli:bob (forced) to serve {b} without an audit entry: hotfix"
    )
    entry = registry.audit.list(FAMILY)[0]
    assert entry.action == "reconcile" and "without an audit entry" in entry.reason
    _settled(registry)


def test_a_removal_cut_short_is_finished(registry, tmp_path):
    """Cleanup marks the record removed, then deletes the files: a kill between the two leaves a
    whole folder of a removed version, which reconcile deletes."""
    version = trained(registry, tmp_path, 0)
    registry.records.move(registry.record(FAMILY, version), State.REMOVED)
    assert version in files.complete_folders(registry.artifacts, FAMILY)
    done = registry.reconcile(FAMILY, by="test")
    assert done.changes == [f"{version}: a removed version's folder: removed"]
    assert files.complete_folders(registry.artifacts, FAMILY) == []
    _settled(registry)


def test_a_later_cleanup_entry_does_not_hide_an_unlogged_forced_promotion(registry, tmp_path):
    a, b, c = (trained(registry, tmp_path, m, "DEPLOY") for m in range(3))
    registry.promote(FAMILY, a, by="cli:alice")
    time.sleep(2.1)  # current.json's time has whole seconds; the audit's does not
    moved = pointer.stamp()
    meta = registry.metadata(FAMILY, b)
    pointer.write_current(
        registry.artifacts, FAMILY,
        {**pointer.production(meta, b, a, moved), **pointer.change("cli:bob", "hotfix", True, moved)},
    )  # fmt: skip
    registry.audit.append(FAMILY, "cleanup", by="cli", reason=f"removed {c}")  # after the unlogged move
    done = registry.reconcile(FAMILY, by="test")
    assert any(
        line.startswith(f"current.json changed at {moved} by cli:bob (forced)") for line in done.changes
    )
    entry = registry.audit.list(FAMILY)[0]
    assert (entry.action, entry.forced) == ("reconcile", True)
    _settled(registry)


def test_a_repair_that_fails_is_a_problem_and_the_others_still_run(registry, tmp_path, monkeypatch):
    dead = _training(registry, 0)
    stray = f"{FAMILY}-20261201-0000"
    files.stage(registry.artifacts, FAMILY, stray, adapter_folder(tmp_path, 1), {})

    def refuse(*args, **kwargs):
        raise RuntimeError("the store went away")

    monkeypatch.setattr(registry, "abandon", refuse)
    done = registry.reconcile(FAMILY, by="test")
    assert done.problems == [
        f"{dead.version}: could not repair (training never finished (no run holds the lock): failed): the store went away"
    ]
    assert done.changes == [f"{stray}: a staged folder without a record: removed"]
