"""Promotion, canary, rollback and cleanup through the registry, on SQLite or PostgreSQL and a local
folder or the real S3-API server: the pointer (current.json and the local `current` symlink), what
may be promoted (DEPLOY, or --force with a reason; never a folder without a record, a failed or a
removed version), records' states following the pointer, refused names, and crashes between the
steps of a change."""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from pulse_pipeline.core.artifacts import LocalArtifactStore
from pulse_pipeline.core.registry import (
    Expected,
    NameError_,
    Registry,
    RegistryError,
    State,
    VersionFilesError,
    files,
    pointer,
    read_current,
)
from pulse_pipeline.core.registry.names import version_name
from pulse_pipeline.core.registry.records import DeploymentLog, VersionRecords
from pulse_pipeline_tests.core.registry.conftest import FAMILY, T0, results, trained

P, C, E, R = State.PRODUCTION, State.CANARY, State.EVALUATED, State.RETIRED
local_only = pytest.mark.parametrize("registry", [("sqlite", "local")], indirect=True, ids=["sqlite-local"])


def _versions(
    registry: Registry, tmp_path: Path, n: int, decision: str | None = "DEPLOY", **kw: Any
) -> list[str]:
    """`n` versions, one a minute from T0, judged `decision` (None: published, never evaluated)."""
    return [trained(registry, tmp_path, minute, decision, **kw) for minute in range(n)]


def _states(registry: Registry, family: str = FAMILY) -> dict[str, tuple[State, float]]:
    return {r.version: (r.state, r.traffic_share) for r in registry.records.list(family)}


def _second() -> dt.datetime:
    """Now, to the second (current.json's times are written to the second)."""
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _hidden(registry: Registry, family: str = FAMILY) -> list[str]:
    """Hidden entries of a local family folder (half-written files, half-deleted folders), the
    staging folder aside (it stays, empty, after a version is revealed)."""
    folder = registry.artifacts.local_path(f"adapters/{family}")
    staging = folder / files.STAGING
    left = [p.name for p in folder.iterdir() if p.name.startswith(".") and p.name != files.STAGING]
    return left + ([f"{files.STAGING}/{p.name}" for p in staging.iterdir()] if staging.is_dir() else [])


def _copy_unrecorded(registry: Registry, source: str, name: str) -> None:
    """A complete, intact folder without a record (copied in by hand), its metadata written last."""
    src, dst = files.key(FAMILY, source), files.key(FAMILY, name)
    keys = [k for k in registry.artifacts.list(src) if "/eval/" not in k]
    keys.sort(key=lambda k: k.endswith(files.METADATA))
    for k in keys:
        registry.artifacts.write_bytes(dst + k[len(src) :], registry.artifacts.read_bytes(k))


# -- the pointer ------------------------------------------------------------------------------------


def test_promote_rollback_and_roll_forward(registry, tmp_path):
    a, b = _versions(registry, tmp_path, 2)
    before = _second()
    first = registry.promote(FAMILY, a, by="cli", reason="first")
    after = _second()
    assert (first.version, first.previous_version, first.action, first.changed) == (a, None, "promote", True)
    assert (first.decision, first.forced, first.notes, first.challenger) == ("DEPLOY", False, [], None)
    assert first.traffic == [{"version": a, "share": 1.0}]
    current = read_current(registry.artifacts, FAMILY)
    assert current == registry.current(FAMILY)
    promoted_at = current.pop("promoted_at")
    assert before <= dt.datetime.fromisoformat(promoted_at) <= after
    assert current.pop("changed_at") == promoted_at
    assert current == {
        "version": a,
        "trained_at": "2026-11-22T09:30:00+00:00",
        "samples_used": 100,
        "training_loss": 0.5,
        "dataset_version": "d0",
        "previous_version": None,
        "traffic": [{"version": a, "share": 1.0}],
        "promoted_by": "cli",
        "reason": "first",
        "forced": False,
    }
    assert _states(registry) == {a: (P, 1.0), b: (E, 0.0)}

    second = registry.promote(FAMILY, b, by="schedule:nightly")
    assert (second.version, second.previous_version, second.action) == (b, a, "promote")
    current = registry.current(FAMILY)
    assert (current["version"], current["previous_version"], current["dataset_version"]) == (b, a, "d1")
    assert current["promoted_by"] == "schedule:nightly" and current["reason"] == ""
    assert _states(registry) == {a: (R, 0.0), b: (P, 1.0)}

    back = registry.rollback(FAMILY, by="alice", reason="regression")
    assert (back.version, back.previous_version, back.action, back.changed) == (a, b, "rollback", True)
    current = registry.current(FAMILY)
    assert (current["version"], current["previous_version"], current["dataset_version"]) == (a, b, "d0")
    assert (current["promoted_by"], current["reason"]) == ("alice", "regression")
    assert current["traffic"] == [{"version": a, "share": 1.0}]
    assert _states(registry) == {a: (P, 1.0), b: (R, 0.0)}

    forward = registry.rollback(FAMILY, by="alice")  # the second rollback rolls forward
    assert (forward.version, forward.previous_version) == (b, a)
    assert registry.current(FAMILY)["version"] == b
    assert _states(registry) == {a: (R, 0.0), b: (P, 1.0)}
    assert registry.available(FAMILY) == [a, b]


@pytest.mark.parametrize(
    ("decision", "later"),
    [("DEPLOY", None), ("REVIEW", None), ("DEPLOY", "REVIEW")],
    ids=["deploy", "review-forced", "review-after-promotion"],
)
def test_promoting_production_again_changes_nothing(registry, tmp_path, decision, later):
    """Also when its decision is REVIEW (forced in, or judged again since): no force is needed
    to promote again what already serves all the traffic, which only re-syncs serving and MLflow."""
    (a,) = _versions(registry, tmp_path, 1, decision)
    forced = decision != "DEPLOY"
    registry.promote(FAMILY, a, by="cli", force=forced, reason="a person checked it" if forced else "")
    if later:
        registry.record_evaluation(FAMILY, a, results(later, a))
    before, audit, states = registry.current(FAMILY), registry.audit.list(FAMILY), _states(registry)
    assert states == {a: (P, 1.0)}

    again = registry.promote(FAMILY, a, by="bob", reason="again")
    assert (again.changed, again.action, again.version, again.forced) == (False, "none", a, False)
    assert again.decision == (later or decision)
    assert again.notes == [f"{FAMILY} {a} is already production with all the traffic"]
    assert registry.current(FAMILY) == before
    assert registry.audit.list(FAMILY) == audit
    assert _states(registry) == states


def test_rollback_needs_a_previous_version(registry, tmp_path):
    with pytest.raises(RegistryError, match="^intent-router has no production version yet"):
        registry.rollback(FAMILY, by="cli")
    (a,) = _versions(registry, tmp_path, 1)
    registry.promote(FAMILY, a, by="cli")
    before = registry.current(FAMILY)
    with pytest.raises(RegistryError, match=f"^intent-router {a} has no previous version to roll back to$"):
        registry.rollback(FAMILY, by="cli")
    assert registry.current(FAMILY) == before
    assert [d.action for d in registry.audit.list(FAMILY)] == ["promote"]


def test_canary_shares_then_the_challenger_promoted_fully(registry, tmp_path):
    a, b, c = _versions(registry, tmp_path, 3)
    with pytest.raises(RegistryError, match="a canary needs a production version to share traffic with"):
        registry.promote(FAMILY, a, by="cli", traffic_share=0.1)
    assert registry.current(FAMILY) is None
    registry.promote(FAMILY, a, by="cli")
    champion_since = registry.current(FAMILY)["promoted_at"]
    with pytest.raises(RegistryError, match="is already production: a canary needs a different version"):
        registry.promote(FAMILY, a, by="cli", traffic_share=0.5)
    for share in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(RegistryError, match="traffic share must be above 0 and at most 1"):
            registry.promote(FAMILY, b, by="cli", traffic_share=share)
    assert _states(registry) == {a: (P, 1.0), b: (E, 0.0), c: (E, 0.0)}

    canary = registry.promote(FAMILY, b, by="alice", reason="try", traffic_share=0.1)
    assert (canary.action, canary.version, canary.challenger, canary.previous_version) == (
        "canary",
        a,
        b,
        None,
    )
    assert canary.traffic == [{"version": a, "share": 0.9}, {"version": b, "share": 0.1}]
    current = registry.current(FAMILY)
    assert current["version"] == a and current["promoted_at"] == champion_since  # the champion stays
    assert current["traffic"] == [{"version": a, "share": 0.9}, {"version": b, "share": 0.1}]
    assert (current["promoted_by"], current["reason"]) == ("alice", "try")
    assert _states(registry) == {a: (P, 0.9), b: (C, 0.1), c: (E, 0.0)}
    same = registry.promote(FAMILY, b, by="alice", traffic_share=0.1)
    assert (same.changed, same.action) == (False, "none")

    replaced = registry.promote(FAMILY, c, by="alice", traffic_share=0.3)
    assert f"{FAMILY} {c} replaces {b} as the canary challenger" in replaced.notes
    assert registry.current(FAMILY)["traffic"] == [{"version": a, "share": 0.7}, {"version": c, "share": 0.3}]
    assert _states(registry) == {a: (P, 0.7), b: (R, 0.0), c: (C, 0.3)}

    full = registry.promote(FAMILY, c, by="alice")
    assert (full.action, full.version, full.previous_version, full.challenger) == ("promote", c, a, None)
    current = registry.current(FAMILY)
    assert (current["version"], current["previous_version"]) == (c, a)
    assert current["traffic"] == [{"version": c, "share": 1.0}]
    assert _states(registry) == {a: (R, 0.0), b: (R, 0.0), c: (P, 1.0)}


def test_rollback_during_a_canary_ends_it(registry, tmp_path):
    a, b, c = _versions(registry, tmp_path, 3)
    registry.promote(FAMILY, a, by="cli")
    registry.promote(FAMILY, b, by="cli")
    registry.promote(FAMILY, c, by="cli", traffic_share=0.25)
    assert _states(registry) == {a: (R, 0.0), b: (P, 0.75), c: (C, 0.25)}
    ended = registry.rollback(FAMILY, by="bob", reason="challenger misbehaves")
    assert (ended.version, ended.action, ended.changed, ended.challenger) == (b, "rollback", True, None)
    current = registry.current(FAMILY)
    assert (current["version"], current["previous_version"]) == (b, a)  # production did not move
    assert current["traffic"] == [{"version": b, "share": 1.0}]
    assert _states(registry) == {a: (R, 0.0), b: (P, 1.0), c: (R, 0.0)}
    assert registry.rollback(FAMILY, by="bob").version == a  # now a real rollback
    assert _states(registry) == {a: (P, 1.0), b: (R, 0.0), c: (R, 0.0)}


def test_promoting_another_version_during_a_canary_retires_the_challenger(registry, tmp_path):
    a, b, c = _versions(registry, tmp_path, 3)
    registry.promote(FAMILY, a, by="cli")
    registry.promote(FAMILY, b, by="cli", traffic_share=0.2)
    out = registry.promote(FAMILY, c, by="cli")
    assert (out.action, out.version, out.previous_version, out.challenger) == ("promote", c, a, None)
    assert registry.current(FAMILY)["traffic"] == [{"version": c, "share": 1.0}]
    assert _states(registry) == {a: (R, 0.0), b: (R, 0.0), c: (P, 1.0)}
    entry = registry.audit.list(FAMILY)[0]
    assert (entry.action, entry.from_version, entry.to_version) == ("promote", a, c)


# -- what may be promoted -------------------------------------------------------------------------

UNRECORDED = version_name(FAMILY, T0 + dt.timedelta(minutes=59))


def _unrecorded(registry: Registry, tmp_path: Path) -> str:
    _copy_unrecorded(registry, trained(registry, tmp_path, 1, "DEPLOY"), UNRECORDED)
    assert UNRECORDED in files.complete_folders(registry.artifacts, FAMILY)
    assert registry.unrecorded(FAMILY) == [UNRECORDED]
    return UNRECORDED


def _in_training(registry: Registry, tmp_path: Path) -> str:
    return registry.begin(
        FAMILY, dataset_version="d1", base_model="minilm-l6", training_config={}, created_by="test",
        when=T0 + dt.timedelta(minutes=1),
    ).version  # fmt: skip


def _failed(registry: Registry, tmp_path: Path) -> str:
    record = registry.records.get(FAMILY, _in_training(registry, tmp_path))
    assert registry.abandon(record)
    return record.version


def _removed(registry: Registry, tmp_path: Path) -> str:
    version = trained(registry, tmp_path, 1, "DEPLOY")
    assert registry.cleanup(FAMILY, keep=0, by="cli").removed == [version]  # production stays
    return version


REFUSED: dict[str, tuple[Callable[[Registry, Path], str], dict[str, Any], str]] = {
    # case: (the version, promote's arguments, the message with {v} for the version)
    "no record": (
        _unrecorded,
        {"force": True, "reason": "it looks fine"},
        "intent-router {v} has files but no record in the store (left by a crash, or copied in by hand): "
        "`pulse registry reconcile --family intent-router` adopts or removes it",
    ),
    "never evaluated": (
        lambda r, p: trained(r, p, 1),
        {},
        "intent-router {v} was never evaluated; --force with --reason promotes it anyway, and it is recorded",
    ),
    "review": (
        lambda r, p: trained(r, p, 1, "REVIEW"),
        {"reason": "a reason is not a force"},
        "intent-router {v} was judged REVIEW by the promotion gate; --force with --reason promotes it "
        "anyway, and it is recorded (the gate: review for the test)",
    ),
    "fail": (
        lambda r, p: trained(r, p, 1, "FAIL"),
        {},
        "intent-router {v} was judged FAIL by the promotion gate; --force with --reason promotes it "
        "anyway, and it is recorded (the gate: fail for the test)",
    ),
    "force without reason": (
        lambda r, p: trained(r, p, 1, "FAIL"),
        {"force": True},
        "intent-router {v} was judged FAIL by the promotion gate: --force needs a --reason, for the audit trail "
        "(the gate: fail for the test)",
    ),
    "force with a blank reason": (
        lambda r, p: trained(r, p, 1),
        {"force": True, "reason": " \n\t"},
        "intent-router {v} was never evaluated: --force needs a --reason, for the audit trail",
    ),
    "training": (
        _in_training,
        {"force": True, "reason": "hotfix"},
        "intent-router {v} is training: it has no files to use",
    ),
    "failed": (
        _failed,
        {"force": True, "reason": "hotfix"},
        "intent-router {v} is failed: it has no files to use",
    ),
    "removed": (
        _removed,
        {"force": True, "reason": "hotfix"},
        "intent-router {v} is removed: it has no files to use",
    ),
}


@pytest.mark.parametrize("share", [1.0, 0.5], ids=["production", "canary"])
@pytest.mark.parametrize("case", list(REFUSED))
def test_promotion_is_refused(registry, tmp_path, case, share):
    make, kwargs, message = REFUSED[case]
    (champion,) = _versions(registry, tmp_path, 1)
    registry.promote(FAMILY, champion, by="cli")
    version = make(registry, tmp_path)
    before, audit, states = registry.current(FAMILY), registry.audit.list(FAMILY), _states(registry)

    with pytest.raises(RegistryError) as err:
        registry.promote(FAMILY, version, by="alice", traffic_share=share, **kwargs)
    assert str(err.value) == message.format(v=version)
    assert registry.current(FAMILY) == before
    assert registry.audit.list(FAMILY) == audit
    assert _states(registry) == states


def test_a_folder_adopted_by_reconcile_must_be_evaluated_before_it_is_promoted(registry, tmp_path):
    version = _unrecorded(registry, tmp_path)
    registry.reconcile(FAMILY, by="cli")
    assert (registry.record(FAMILY, version).state, registry.unrecorded(FAMILY)) == (State.PUBLISHED, [])
    with pytest.raises(RegistryError, match=f"^intent-router {version} was never evaluated; --force"):
        registry.promote(FAMILY, version, by="cli")
    assert registry.current(FAMILY) is None
    registry.record_evaluation(FAMILY, version, results("DEPLOY"))
    assert registry.promote(FAMILY, version, by="cli").version == version
    assert registry.record(FAMILY, version).state is State.PRODUCTION


@pytest.mark.parametrize("share", [1.0, 0.25], ids=["production", "canary"])
@pytest.mark.parametrize("decision", [None, "REVIEW", "FAIL"])
def test_force_with_a_reason_promotes_and_is_recorded(registry, tmp_path, decision, share):
    (champion,) = _versions(registry, tmp_path, 1)
    registry.promote(FAMILY, champion, by="cli")
    version = trained(registry, tmp_path, 1, decision)

    out = registry.promote(FAMILY, version, by="alice", reason="hotfix #42", force=True, traffic_share=share)
    assert (out.action, out.forced, out.decision, out.changed) == ("force_promote", True, decision, True)
    judged = f"was judged {decision}" if decision else "was never evaluated"
    assert out.notes == [f"{FAMILY} {version} {judged} and was promoted with --force: hotfix #42"]
    current = registry.current(FAMILY)
    assert (current["forced"], current["reason"], current["promoted_by"]) == (True, "hotfix #42", "alice")
    entry = registry.audit.list(FAMILY)[0]
    assert (entry.action, entry.forced, entry.reason, entry.decision, entry.by) == (
        "force_promote", True, "hotfix #42", decision, "alice",
    )  # fmt: skip
    assert (entry.from_version, entry.to_version, entry.traffic_share) == (champion, version, share)
    if share == 1.0:
        assert (out.version, out.previous_version, out.challenger) == (version, champion, None)
        assert _states(registry) == {champion: (R, 0.0), version: (P, 1.0)}
    else:
        assert (out.version, out.challenger) == (champion, version)
        assert _states(registry) == {champion: (P, 0.75), version: (C, 0.25)}


def test_force_on_a_deploy_version_is_not_recorded_as_forced(registry, tmp_path):
    a, b = _versions(registry, tmp_path, 2)
    registry.promote(FAMILY, a, by="cli")
    out = registry.promote(FAMILY, b, by="alice", force=True, reason="not needed")
    assert (out.action, out.forced, out.decision, out.notes) == ("promote", False, "DEPLOY", [])
    assert registry.current(FAMILY)["forced"] is False
    entry = registry.audit.list(FAMILY)[0]
    assert (entry.action, entry.forced, entry.reason) == ("promote", False, "not needed")


def test_production_must_still_be_what_the_evaluation_compared_with(registry, tmp_path):
    a, b, c = _versions(registry, tmp_path, 3)  # all judged before anything was in production
    assert registry.record(FAMILY, b).baseline_version is None
    first = registry.promote(FAMILY, a, by="cli", expect=Expected(production=None))
    assert first.version == a
    before, audit = registry.current(FAMILY), registry.audit.list(FAMILY)

    for expected, kwargs in [
        (None, {}),
        (None, {"traffic_share": 0.5}),
        (None, {"force": True, "reason": "even forced"}),
        (c, {}),
    ]:
        with pytest.raises(RegistryError) as err:
            registry.promote(FAMILY, b, by="cli", expect=Expected(production=expected), **kwargs)
        assert str(err.value) == (
            f"{FAMILY} {b}: production is {a} now, not {expected or 'none'} as when it was evaluated; "
            "evaluate it again before promoting it"
        )
    assert registry.current(FAMILY) == before
    assert registry.audit.list(FAMILY) == audit

    registry.record_evaluation(FAMILY, b, results("DEPLOY", a))  # judged again, against production
    expect = Expected(registry.record(FAMILY, b).baseline_version)
    assert expect == Expected(production=a)
    out = registry.promote(FAMILY, b, by="cli", expect=expect)
    assert (out.version, out.previous_version, out.action) == (b, a, "promote")


def test_a_damaged_version_is_not_promoted(registry, tmp_path):
    a, b = _versions(registry, tmp_path, 2)
    registry.promote(FAMILY, a, by="cli")
    registry.artifacts.write_bytes(f"adapters/{FAMILY}/{b}/adapter_model.safetensors", b"tampered")
    with pytest.raises(
        VersionFilesError, match=f"{b}: adapter_model.safetensors does not match its recorded sha256"
    ):
        registry.promote(FAMILY, b, by="cli")
    assert registry.current(FAMILY)["version"] == a
    assert _states(registry) == {a: (P, 1.0), b: (E, 0.0)}


# -- cleanup --------------------------------------------------------------------------------------


def test_cleanup_keeps_the_newest_and_every_version_in_use(registry, tmp_path):
    names = _versions(registry, tmp_path, 8)
    registry.promote(FAMILY, names[0], by="cli")
    registry.promote(FAMILY, names[1], by="cli")  # production; names[0] is previous
    registry.promote(FAMILY, names[2], by="cli", traffic_share=0.2)  # canary challenger
    unfinished = f"adapters/{FAMILY}/{FAMILY}-20261122-0800/adapter_model.safetensors"
    registry.artifacts.write_bytes(unfinished, b"half")  # no metadata: not a version, left alone
    _copy_unrecorded(registry, names[7], UNRECORDED)  # no record: reconcile's to judge, not cleanup's
    before = registry.current(FAMILY)

    started = dt.datetime.now(dt.UTC)
    result = registry.cleanup(FAMILY, keep=2, by="carol")
    assert (result.action, result.changed, result.version, result.previous_version) == (
        "cleanup", True, names[1], names[0],
    )  # fmt: skip
    assert result.removed == names[3:6]
    assert result.kept == [*names[:3], *names[6:]]
    assert registry.available(FAMILY) == result.kept
    for version in result.removed:
        assert registry.artifacts.list(f"adapters/{FAMILY}/{version}") == []
        record = registry.record(FAMILY, version)  # the record stays, for the audit
        assert (record.state, record.traffic_share, record.decision) == (State.REMOVED, 0.0, "DEPLOY")
        assert started <= record.removed_at <= dt.datetime.now(dt.UTC)
    assert registry.artifacts.exists(unfinished)
    assert registry.unrecorded(FAMILY) == [UNRECORDED]
    assert registry.current(FAMILY) == before
    entry = registry.audit.list(FAMILY)[0]
    assert (entry.action, entry.by, entry.reason) == ("cleanup", "carol", f"removed {', '.join(names[3:6])}")
    if isinstance(registry.artifacts, LocalArtifactStore):  # no hidden half-deleted folders remain
        assert _hidden(registry) == []
    assert {v: s for v, (s, _) in _states(registry).items() if v not in result.removed} == {
        names[0]: R, names[1]: P, names[2]: C, names[6]: E, names[7]: E,
    }  # fmt: skip

    again = registry.cleanup(FAMILY, keep=0, by="carol")
    assert (again.removed, again.kept) == (names[6:], names[:3])
    assert registry.unrecorded(FAMILY) == [UNRECORDED]
    last = registry.cleanup(FAMILY, keep=0, by="carol")
    assert (last.removed, last.changed) == ([], False)
    assert [d.action for d in registry.audit.list(FAMILY)].count("cleanup") == 2  # none for nothing removed


def test_cleanup_before_any_promotion_keeps_the_newest(registry, tmp_path):
    names = _versions(registry, tmp_path, 3, None)
    result = registry.cleanup(FAMILY, keep=1, by="cli")
    assert (result.removed, result.kept, result.version) == (names[:2], names[2:], None)
    assert registry.available(FAMILY) == names[2:]
    assert [registry.record(FAMILY, v).state for v in names] == [
        State.REMOVED,
        State.REMOVED,
        State.PUBLISHED,
    ]
    with pytest.raises(RegistryError, match="--keep must be 0 or more"):
        registry.cleanup(FAMILY, keep=-1, by="cli")


# -- names ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "../x",
        "a/b",
        "intent-router-20261122-0930/../../etc",
        "intent-router-20261122-0930/",
        "/intent-router-20261122-0930",
        "intent-router-20261122-0930\n",
        "other-family-20261122-0930",
        "intent-20261122-0930",
        "intent-router-20261122-0930-1",
        "",
    ],
)
def test_malformed_and_traversing_names_are_refused(registry, tmp_path, name):
    assert _versions(registry, tmp_path, 1) == ["intent-router-20261122-0930"]  # what a trick could reach
    message = "^" + re.escape(f"{name!r} is not a version name of family intent-router")
    with pytest.raises(NameError_, match=message):
        registry.promote(FAMILY, name, by="cli", force=True, reason="tricks")
    with pytest.raises(NameError_, match=message):
        files.verify(registry.artifacts, FAMILY, name)
    with pytest.raises(NameError_, match=message):
        registry.require(FAMILY, name)
    assert registry.current(FAMILY) is None
    assert registry.audit.list(FAMILY) == []


@pytest.mark.parametrize("family", ["../x", "a/b", "Intent", "intent-router\n", ""])
def test_malformed_family_names_are_refused(registry, family):
    for call in (
        lambda: registry.rollback(family, by="cli"),
        lambda: registry.cleanup(family, keep=1, by="cli"),
        lambda: registry.promote(family, "x-20261122-0930", by="cli"),
    ):
        with pytest.raises(RegistryError, match="^" + re.escape(f"{family!r} is not a family name")):
            call()


# -- the local `current` symlink ----------------------------------------------------------------------


@local_only
def test_the_current_symlink_names_the_production_folder_relatively(registry, tmp_path):
    a, b = _versions(registry, tmp_path, 2)
    link = registry.artifacts.local_path(f"adapters/{FAMILY}") / "current"
    registry.promote(FAMILY, a, by="cli")
    assert os.readlink(link) == a
    registry.promote(FAMILY, b, by="cli")
    assert os.readlink(link) == b
    registry.promote(FAMILY, a, by="cli", traffic_share=0.5)  # canary: the link stays on the champion
    assert os.readlink(link) == b
    assert (link / "adapter_config.json").read_text() == '{"r": 8}'
    assert sorted(p.name for p in link.parent.iterdir()) == sorted(
        [a, b, "current", "current.json", files.STAGING]
    )
    assert registry.available(FAMILY) == [a, b]  # the link is not a second copy
    assert registry.unrecorded(FAMILY) == []

    moved = tmp_path / "moved"
    shutil.move(registry.artifacts.root, moved)  # the tree can move: the link is relative
    assert (moved / "adapters" / FAMILY / "current" / files.METADATA).is_file()


@local_only
def test_a_link_left_behind_is_repaired(registry, tmp_path):
    a, b = _versions(registry, tmp_path, 2)
    registry.promote(FAMILY, b, by="cli")
    registry.artifacts.replace_symlink(pointer.link_key(FAMILY), a)  # as if a crash came between the writes
    again = registry.promote(FAMILY, b, by="cli")
    assert (again.changed, again.action) == (False, "none")
    assert registry.artifacts.read_symlink(pointer.link_key(FAMILY)) == b


# --- crashes between the steps of a change ----------------------------------------------------------


class Crash(Exception):
    """The process dies here."""


DB_STEPS = ((VersionRecords, "move"), (VersionRecords, "update"), (DeploymentLog, "append"))


@contextmanager
def _crash_at(registry: Registry, step: int | None, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Count every step that changes the artifact store (a temporary file's fsync or rename, a
    link's creation or rename locally; an object write or delete on S3) or the store's records
    (a record's move or update, an audit entry), and raise Crash before step `step`."""
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
        if isinstance(registry.artifacts, LocalArtifactStore):
            for name in ("fsync", "replace", "symlink", "rename"):
                wrap(patch, os, name)
        else:
            for name in ("put_object", "fput_object", "copy_object", "remove_object", "remove_objects"):
                wrap(patch, registry.artifacts.client, name)
        for owner, name in DB_STEPS:
            wrap(patch, owner, name)
        yield steps


def _action(registry: Registry, family: str, kind: str, version: str) -> None:
    if kind == "promote":
        registry.promote(family, version, by="cli")
    elif kind == "canary":
        registry.promote(family, version, by="cli", traffic_share=0.25)
    else:
        registry.rollback(family, by="cli")


def _before_the_change(registry: Registry, tmp_path: Path, family: str) -> list[str]:
    """a, b, c judged DEPLOY; a promoted, then b: b production, a previous, c waiting."""
    names = _versions(registry, tmp_path, 3, family=family)
    registry.promote(family, names[0], by="cli")
    registry.promote(family, names[1], by="cli")
    return names


def _shape(registry: Registry, family: str, names: list[str]) -> tuple[Any, dict[str, Any]]:
    """The pointer and the records' states with the family's names as v0, v1, v2 and without the
    pointer's times, so that two families that went through the same change compare equal."""
    alias = {name: f"v{i}" for i, name in enumerate(names)}
    current = registry.current(family)

    def rename(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: rename(v) for k, v in value.items() if k not in ("promoted_at", "changed_at")}
        if isinstance(value, list):
            return [rename(v) for v in value]
        return alias.get(value, value) if isinstance(value, str) else value

    return rename(current), {alias[v]: s for v, s in _states(registry, family).items()}


EXPECTED_STEPS = {
    # the pointer (current.json: fsync + rename; locally the link: create + rename; on S3 one PUT),
    # then the records follow it, then one audit entry
    "promote": ["move", "move", "append"],  # b production -> retired, c evaluated -> production
    "canary": ["update", "move", "append"],  # b's share 1 -> 0.75, c evaluated -> canary
    "rollback": ["move", "move", "append"],  # a retired -> production, b production -> retired
}


@pytest.mark.parametrize("kind", ["promote", "canary", "rollback"])
def test_a_crash_between_any_two_steps_leaves_the_old_or_the_new_pointer(
    registry, tmp_path, monkeypatch, kind
):
    """Each crash is tried on a family of its own brought to the same point; after it the pointer
    is the old one or the new one, never half of either, no version is lost, reconcile brings the
    records to the pointer, and (but for a rollback, which would go on) the same command again
    finishes the change."""
    local = isinstance(registry.artifacts, LocalArtifactStore)
    names = _before_the_change(registry, tmp_path, "ref")
    old = _shape(registry, "ref", names)
    with _crash_at(registry, None, monkeypatch) as steps:
        _action(registry, "ref", kind, names[2])
    new = _shape(registry, "ref", names)
    assert new[0] != old[0] and new[1] != old[1]
    pointer_steps = ["fsync", "replace", "symlink", "replace"] if local else ["put_object"]
    written = 2 if local else 1  # current.json is new from the step after this one on
    assert steps == pointer_steps + EXPECTED_STEPS[kind]

    for step in range(1, len(steps) + 1):
        family = f"crash-{step}"
        names = _before_the_change(registry, tmp_path, family)
        assert _shape(registry, family, names) == old
        entries = len(registry.audit.list(family))
        with pytest.raises(Crash), _crash_at(registry, step, monkeypatch):
            _action(registry, family, kind, names[2])
        where = f"crash before step {step} ({steps[step - 1]})"
        now_pointer, _ = _shape(registry, family, names)
        assert now_pointer == (old[0] if step <= written else new[0]), where
        assert registry.available(family) == names, where
        assert len(registry.audit.list(family)) == entries, where  # the audit entry is the last step
        if local:
            link = registry.artifacts.read_symlink(pointer.link_key(family))
            assert link in (names[1], registry.current(family)["version"]), where
            if link != names[1]:  # the link moves only after current.json was written
                assert now_pointer == new[0], where
            assert (registry.artifacts.local_path(f"adapters/{family}/current") / files.METADATA).is_file()
            assert _hidden(registry, family) == [], where

        registry.reconcile(family, by="cli")  # the records and the link follow current.json
        assert _shape(registry, family, names) == (old if now_pointer == old[0] else new), where
        if local:
            assert (
                registry.artifacts.read_symlink(pointer.link_key(family))
                == registry.current(family)["version"]
            )
        if kind != "rollback":  # the same command again finishes the change
            _action(registry, family, kind, names[2])
            assert _shape(registry, family, names) == new, where


def test_a_forced_champion_ends_its_canary_without_force(registry, tmp_path):
    """All the traffic back to production asks the gate nothing, however production got there."""
    champion, challenger = trained(registry, tmp_path, 0, "REVIEW"), trained(registry, tmp_path, 1, "DEPLOY")
    registry.promote(FAMILY, champion, by="cli", force=True, reason="looked at the report")
    registry.promote(FAMILY, challenger, by="cli", traffic_share=0.2)
    out = registry.promote(FAMILY, champion, by="cli")
    assert (out.action, out.changed, out.forced, out.challenger) == ("promote", True, False, None)
    assert registry.current(FAMILY)["traffic"] == [{"version": champion, "share": 1.0}]
    assert registry.record(FAMILY, challenger).state is State.RETIRED
