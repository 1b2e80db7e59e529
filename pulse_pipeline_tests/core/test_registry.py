"""The adapter registry on a local folder and on the real S3-API server: promotion, canary,
rollback, cleanup, refused names, the current symlink, and crashes between promotion steps."""

from __future__ import annotations

import datetime as dt
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
import pytest

from pulse_pipeline.core import adapters, registry
from pulse_pipeline.core.adapters import AdapterError
from pulse_pipeline.core.artifacts import ArtifactStore, LocalArtifactStore
from pulse_pipeline.core.registry import RegistryError

FAMILY = "intent-router"
T0 = dt.datetime(2026, 11, 22, 9, 30, tzinfo=dt.UTC)
NOW = dt.datetime(2026, 11, 23, 8, 0, tzinfo=dt.UTC)


def _publish(artifacts: ArtifactStore, tmp_path: Path, minute: int, decision: str | None = None) -> str:
    """A small, complete version published `minute` minutes after T0 (optionally judged)."""
    folder = tmp_path / f"src-{minute}"
    folder.mkdir()
    (folder / "adapter_config.json").write_text('{"r": 8}')
    (folder / "adapter_model.safetensors").write_bytes(bytes([minute % 256]) * 256)
    (folder / "tokenizer.json").write_text("{}")
    meta = {
        "trained_at": (T0 + dt.timedelta(minutes=minute)).isoformat(),
        "samples_used": 100 + minute,
        "training_loss": 0.5,
        "dataset_version": f"d{minute}",
        "base_model": "smollm2-135m",
    }
    version = adapters.publish(artifacts, FAMILY, folder, meta, now=T0 + dt.timedelta(minutes=minute))
    if decision is not None:
        results = {"gate": {"decision": decision, "reasons": ["accuracy 0.41 below 0.80"]}}
        artifacts.write_bytes(f"adapters/{FAMILY}/{version}/eval/results.json", orjson.dumps(results))
    return version


def _versions(artifacts: ArtifactStore, tmp_path: Path, n: int) -> list[str]:
    return [_publish(artifacts, tmp_path, minute) for minute in range(n)]


def test_promote_rollback_and_roll_forward(artifacts, tmp_path):
    a, b = _versions(artifacts, tmp_path, 2)
    first = registry.promote(artifacts, FAMILY, a, by="cli", reason="first", now=NOW)
    assert (first.version, first.previous_version, first.action, first.changed) == (a, None, "promote", True)
    assert first.decision is None and "was never evaluated" in first.notes[0]
    assert (
        registry.read_current(artifacts, FAMILY)
        == first.current
        == {
            "version": a,
            "promoted_at": "2026-11-23T08:00:00+00:00",
            "trained_at": "2026-11-22T09:30:00+00:00",
            "samples_used": 100,
            "training_loss": 0.5,
            "dataset_version": "d0",
            "previous_version": None,
            "traffic": [{"version": a, "share": 1.0}],
            "promoted_by": "cli",
            "reason": "first",
            "forced": False,
            "changed_at": "2026-11-23T08:00:00+00:00",
        }
    )
    second = registry.promote(artifacts, FAMILY, b, by="schedule:nightly", now=NOW)
    assert (second.version, second.previous_version) == (b, a)
    assert registry.read_current(artifacts, FAMILY)["previous_version"] == a

    back = registry.rollback(artifacts, FAMILY, by="alice", reason="regression")
    assert (back.version, back.previous_version, back.action) == (a, b, "rollback")
    current = registry.read_current(artifacts, FAMILY)
    assert (current["version"], current["previous_version"], current["dataset_version"]) == (a, b, "d0")
    assert current["promoted_by"] == "alice" and current["traffic"] == [{"version": a, "share": 1.0}]

    forward = registry.rollback(artifacts, FAMILY, by="alice")  # the second rollback rolls forward
    assert (forward.version, forward.previous_version) == (b, a)
    assert registry.read_current(artifacts, FAMILY)["version"] == b
    assert adapters.versions(artifacts, FAMILY) == [a, b]


def test_promoting_production_again_changes_nothing(artifacts, tmp_path):
    (a,) = _versions(artifacts, tmp_path, 1)
    registry.promote(artifacts, FAMILY, a, by="cli", now=NOW)
    before = registry.read_current(artifacts, FAMILY)
    again = registry.promote(artifacts, FAMILY, a, by="bob", now=NOW + dt.timedelta(hours=1))
    assert (again.changed, again.action, again.version) == (False, "none", a)
    assert registry.read_current(artifacts, FAMILY) == before


def test_rollback_needs_a_previous_version(artifacts, tmp_path):
    with pytest.raises(RegistryError, match="intent-router has no production version yet"):
        registry.rollback(artifacts, FAMILY, by="cli")
    (a,) = _versions(artifacts, tmp_path, 1)
    registry.promote(artifacts, FAMILY, a, by="cli")
    with pytest.raises(RegistryError, match=f"intent-router {a} has no previous version to roll back to"):
        registry.rollback(artifacts, FAMILY, by="cli")


def test_canary_shares_then_the_challenger_promoted_fully(artifacts, tmp_path):
    a, b, c = _versions(artifacts, tmp_path, 3)
    with pytest.raises(RegistryError, match="a canary needs a production version to share traffic with"):
        registry.promote(artifacts, FAMILY, a, by="cli", traffic_share=0.1)
    registry.promote(artifacts, FAMILY, a, by="cli", now=NOW)
    with pytest.raises(RegistryError, match="is already production: a canary needs a different version"):
        registry.promote(artifacts, FAMILY, a, by="cli", traffic_share=0.5)
    for share in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(RegistryError, match="traffic share must be above 0 and at most 1"):
            registry.promote(artifacts, FAMILY, b, by="cli", traffic_share=share)

    canary = registry.promote(artifacts, FAMILY, b, by="alice", reason="try", traffic_share=0.1)
    assert (canary.canary, canary.action, canary.version, canary.previous_version) == (True, "canary", b, a)
    current = registry.read_current(artifacts, FAMILY)
    assert current["version"] == a and current["promoted_at"] == "2026-11-23T08:00:00+00:00"  # champion stays
    assert current["traffic"] == [{"version": a, "share": 0.9}, {"version": b, "share": 0.1}]
    assert current["promoted_by"] == "alice" and current["reason"] == "try"
    assert not registry.promote(artifacts, FAMILY, b, by="alice", traffic_share=0.1).changed

    replaced = registry.promote(artifacts, FAMILY, c, by="alice", traffic_share=0.3)
    assert any(f"replaces {b}" in note for note in replaced.notes)
    assert registry.read_current(artifacts, FAMILY)["traffic"] == [
        {"version": a, "share": 0.7},
        {"version": c, "share": 0.3},
    ]

    full = registry.promote(artifacts, FAMILY, c, by="alice", now=NOW)
    assert (full.canary, full.version, full.previous_version) == (False, c, a)
    current = registry.read_current(artifacts, FAMILY)
    assert (current["version"], current["previous_version"]) == (c, a)
    assert current["traffic"] == [{"version": c, "share": 1.0}]


def test_rollback_during_a_canary_ends_it(artifacts, tmp_path):
    a, b, c = _versions(artifacts, tmp_path, 3)
    registry.promote(artifacts, FAMILY, a, by="cli")
    registry.promote(artifacts, FAMILY, b, by="cli")
    registry.promote(artifacts, FAMILY, c, by="cli", traffic_share=0.25)
    ended = registry.rollback(artifacts, FAMILY, by="bob", reason="challenger misbehaves")
    assert (ended.version, ended.action, ended.changed) == (b, "rollback", True)
    current = registry.read_current(artifacts, FAMILY)
    assert (current["version"], current["previous_version"]) == (b, a)  # production did not move
    assert current["traffic"] == [{"version": b, "share": 1.0}]
    assert registry.rollback(artifacts, FAMILY, by="bob").version == a  # now a real rollback


def test_a_fail_judged_version_needs_force_and_the_force_is_recorded(artifacts, tmp_path):
    a = _publish(artifacts, tmp_path, 0, decision="DEPLOY")
    b = _publish(artifacts, tmp_path, 1, decision="FAIL")
    c = _publish(artifacts, tmp_path, 2, decision="REVIEW")
    assert registry.promote(artifacts, FAMILY, a, by="cli").decision == "DEPLOY"
    with pytest.raises(RegistryError) as err:
        registry.promote(artifacts, FAMILY, b, by="cli")
    assert str(err.value) == (
        f"intent-router {b} was judged FAIL by the promotion gate (accuracy 0.41 below 0.80); "
        "--force promotes anyway, and it is recorded"
    )
    assert registry.read_current(artifacts, FAMILY)["version"] == a
    forced = registry.promote(artifacts, FAMILY, b, by="alice", reason="hotfix", force=True)
    assert (forced.forced, forced.decision) == (True, "FAIL")
    assert registry.read_current(artifacts, FAMILY)["forced"] is True
    review = registry.promote(artifacts, FAMILY, c, by="alice", force=True)  # force not needed: not recorded
    assert review.forced is False and "judged REVIEW" in review.notes[0]
    assert registry.read_current(artifacts, FAMILY)["forced"] is False


def test_a_damaged_version_is_not_promoted(artifacts, tmp_path):
    a, b = _versions(artifacts, tmp_path, 2)
    registry.promote(artifacts, FAMILY, a, by="cli")
    artifacts.write_bytes(f"adapters/{FAMILY}/{b}/adapter_model.safetensors", b"tampered")
    with pytest.raises(
        AdapterError, match=f"{b}: adapter_model.safetensors does not match its recorded sha256"
    ):
        registry.promote(artifacts, FAMILY, b, by="cli")
    assert registry.read_current(artifacts, FAMILY)["version"] == a


def test_cleanup_keeps_the_newest_and_every_version_in_use(artifacts, tmp_path):
    names = _versions(artifacts, tmp_path, 8)
    registry.promote(artifacts, FAMILY, names[0], by="cli")
    registry.promote(artifacts, FAMILY, names[1], by="cli")  # production; names[0] is previous
    registry.promote(artifacts, FAMILY, names[2], by="cli", traffic_share=0.2)  # canary challenger
    unfinished = f"adapters/{FAMILY}/{FAMILY}-20261122-0800/adapter_model.safetensors"
    artifacts.write_bytes(unfinished, b"half")  # no metadata: not a version, left alone

    result = registry.cleanup(artifacts, FAMILY, keep=2)
    assert result.removed == names[3:6]
    assert result.kept == [*names[:3], *names[6:]]
    assert adapters.versions(artifacts, FAMILY) == result.kept
    for version in result.removed:
        assert artifacts.list(f"adapters/{FAMILY}/{version}") == []
    assert artifacts.exists(unfinished)
    assert registry.read_current(artifacts, FAMILY)["version"] == names[1]
    if isinstance(artifacts, LocalArtifactStore):  # no hidden half-deleted folders remain
        assert not [p for p in artifacts.local_path(f"adapters/{FAMILY}").iterdir() if p.name.startswith(".")]

    again = registry.cleanup(artifacts, FAMILY, keep=0)
    assert (again.removed, again.kept) == (names[6:], names[:3])
    assert registry.cleanup(artifacts, FAMILY, keep=0).removed == []


def test_cleanup_before_any_promotion_keeps_the_newest(artifacts, tmp_path):
    names = _versions(artifacts, tmp_path, 3)
    result = registry.cleanup(artifacts, FAMILY, keep=1)
    assert (result.removed, result.kept) == (names[:2], names[2:])
    with pytest.raises(RegistryError, match="--keep must be 0 or more"):
        registry.cleanup(artifacts, FAMILY, keep=-1)


@pytest.mark.parametrize(
    "name",
    [
        "../x",
        "a/b",
        "intent-router-20261122-0930/../../etc",
        "intent-router-20261122-0930/",
        "/intent-router-20261122-0930",
        "other-family-20261122-0930",
        "intent-20261122-0930",
        "intent-router-20261122-0930-1",
        "",
    ],
)
def test_malformed_and_traversing_names_are_refused(tmp_path, name):
    store = LocalArtifactStore(tmp_path / "artifacts")
    _publish(store, tmp_path, 0)
    with pytest.raises(AdapterError, match="is not a version name of family intent-router"):
        registry.promote(store, FAMILY, name, by="cli")
    with pytest.raises(AdapterError, match="is not a version name of family intent-router"):
        adapters.verify(store, FAMILY, name)
    assert registry.read_current(store, FAMILY) is None


@pytest.mark.parametrize("family", ["../x", "a/b", "Intent", ""])
def test_malformed_family_names_are_refused(tmp_path, family):
    store = LocalArtifactStore(tmp_path / "artifacts")
    for call in (
        lambda: registry.rollback(store, family, by="cli"),
        lambda: registry.cleanup(store, family),
        lambda: registry.promote(store, family, "x-20261122-0930", by="cli"),
    ):
        with pytest.raises(RegistryError, match="is not a family name"):
            call()


@pytest.mark.parametrize("artifacts", ["local"], indirect=True)
def test_the_current_symlink_names_the_production_folder_relatively(artifacts, tmp_path):
    a, b = _versions(artifacts, tmp_path, 2)
    link = artifacts.local_path(f"adapters/{FAMILY}") / "current"
    registry.promote(artifacts, FAMILY, a, by="cli")
    assert os.readlink(link) == a
    registry.promote(artifacts, FAMILY, b, by="cli")
    assert os.readlink(link) == b
    registry.promote(artifacts, FAMILY, a, by="cli", traffic_share=0.5)  # canary: link stays on the champion
    assert os.readlink(link) == b
    assert (link / "adapter_config.json").read_text() == '{"r": 8}'
    assert sorted(p.name for p in link.parent.iterdir()) == sorted([a, b, "current", "current.json"])
    assert adapters.versions(artifacts, FAMILY) == [a, b]  # the link is not a second copy

    moved = tmp_path / "moved"
    shutil.move(artifacts.root, moved)  # the tree can move: the link is relative
    assert (moved / "adapters" / FAMILY / "current" / adapters.METADATA).is_file()


@pytest.mark.parametrize("artifacts", ["local"], indirect=True)
def test_a_link_left_behind_is_repaired(artifacts, tmp_path):
    a, b = _versions(artifacts, tmp_path, 2)
    registry.promote(artifacts, FAMILY, b, by="cli")
    artifacts.replace_symlink(registry.link_key(FAMILY), a)  # as if a crash came between the writes
    assert not registry.promote(artifacts, FAMILY, b, by="cli").changed
    assert artifacts.read_symlink(registry.link_key(FAMILY)) == b


def test_semantic_labels():
    meta = {"base_model": "smollm2-135m"}
    assert registry.semantic_label(None, meta, 1.0) == "1.0.0"
    previous = {**meta, "semantic_version": "1.2.3"}
    assert registry.semantic_label(previous, meta, 0.05) == "1.2.4"
    assert registry.semantic_label(previous, meta, 0.10) == "1.2.4"
    assert registry.semantic_label(previous, meta, 0.11) == "1.3.0"
    assert registry.semantic_label(previous, {"base_model": "qwen2.5-0.5b"}, 0.5) == "2.0.0"
    assert registry.semantic_label(meta, meta, 0.0) == "1.0.1"  # a previous without a label is 1.0.0
    with pytest.raises(RegistryError, match="not MAJOR.MINOR.PATCH"):
        registry.semantic_label({"semantic_version": "v2"}, meta, 0.0)


# --- crashes between the steps of a promotion ----------------------------------------------


class Crash(Exception):
    """The process dies here."""


@contextmanager
def _crash_at(artifacts: ArtifactStore, step: int | None, monkeypatch) -> Iterator[list[str]]:
    """Count every step that changes the store (a temporary file's fsync or rename, a link's
    creation or rename locally; an object PUT on S3) and raise Crash before step `step`."""
    steps: list[str] = []

    def wrap(patch: pytest.MonkeyPatch, owner: object, name: str) -> None:
        real = getattr(owner, name)

        def step_then_call(*args, **kwargs):
            steps.append(name)
            if step is not None and len(steps) == step:
                raise Crash(f"crash before step {step} ({name})")
            return real(*args, **kwargs)

        patch.setattr(owner, name, step_then_call)

    with monkeypatch.context() as patch:
        if isinstance(artifacts, LocalArtifactStore):
            for name in ("fsync", "replace", "symlink"):
                wrap(patch, os, name)
        else:
            for name in ("put_object", "fput_object", "remove_object", "remove_objects"):
                wrap(patch, artifacts.client, name)
        yield steps


def _action(artifacts: ArtifactStore, kind: str, c: str) -> None:
    if kind == "promote":
        registry.promote(artifacts, FAMILY, c, by="cli", now=NOW)
    elif kind == "canary":
        registry.promote(artifacts, FAMILY, c, by="cli", traffic_share=0.25, now=NOW)
    else:
        registry.rollback(artifacts, FAMILY, by="cli", now=NOW)


@pytest.mark.parametrize("kind", ["promote", "canary", "rollback"])
def test_a_crash_between_any_two_steps_leaves_the_old_or_the_new_pointer(
    artifacts, tmp_path, monkeypatch, kind
):
    names = a, b, c = _versions(artifacts, tmp_path, 3)
    registry.promote(artifacts, FAMILY, a, by="cli", now=NOW)
    registry.promote(artifacts, FAMILY, b, by="cli", now=NOW)
    old = registry.read_current(artifacts, FAMILY)
    with _crash_at(artifacts, None, monkeypatch) as steps:
        _action(artifacts, kind, c)
    new = registry.read_current(artifacts, FAMILY)
    assert new != old
    local = isinstance(artifacts, LocalArtifactStore)
    assert len(steps) == (4 if local else 1)  # current.json: fsync + rename; link: create + rename

    for step in range(1, len(steps) + 1):
        registry.write_current(artifacts, FAMILY, old)  # back to the state before the promotion
        with pytest.raises(Crash), _crash_at(artifacts, step, monkeypatch):
            _action(artifacts, kind, c)
        assert registry.read_current(artifacts, FAMILY) in (old, new), f"crash before step {step}"
        assert adapters.versions(artifacts, FAMILY) == names
        if local:
            link = artifacts.read_symlink(registry.link_key(FAMILY))
            assert link in (old["version"], new["version"])
            if link != old["version"]:  # the link moves only after current.json was written
                assert registry.read_current(artifacts, FAMILY) == new
            assert (artifacts.local_path(f"adapters/{FAMILY}/current") / adapters.METADATA).is_file()
            registry.sync_link(artifacts, FAMILY)
            assert (
                artifacts.read_symlink(registry.link_key(FAMILY))
                == registry.read_current(artifacts, FAMILY)["version"]
            )
            assert not [
                p for p in artifacts.local_path(f"adapters/{FAMILY}").iterdir() if p.name.startswith(".")
            ]
        if kind != "rollback":  # after a crash, the same command finishes the job (a rollback would go on)
            _action(artifacts, kind, c)
            assert registry.read_current(artifacts, FAMILY) == new
