"""Promotion end to end on real parts: the registry on a local folder, version records and the
audit trail in the store (SQLite), MLflow aliases in a real MLflow store; serving not configured."""

import datetime as dt

import orjson
import pytest

from pulse_pipeline.core import model_registry, promotion, registry
from pulse_pipeline.core.artifacts import LocalArtifactStore
from pulse_pipeline.core.registry import RegistryError
from pulse_pipeline.core.store import Store
from pulse_pipeline_tests.core.test_registry import FAMILY, _publish


@pytest.fixture
def world(tmp_path):
    artifacts = LocalArtifactStore(tmp_path / "artifacts")
    with Store(f"sqlite:///{tmp_path / 'pulse.db'}") as store:
        targets = promotion.Targets(store, f"sqlite:///{tmp_path / 'mlflow.db'}")
        yield artifacts, store, targets


def _trained(artifacts, store, tmp_path, minute, decision="DEPLOY"):
    version = _publish(artifacts, tmp_path, minute, decision)
    promotion.record_trained(store, artifacts, FAMILY, version, created_by="schedule:nightly_retrain")
    results = {
        "gate": {"decision": decision, "reasons": []},
        "metrics": {"test": {"candidate": {"accuracy": 0.9}}},
    }
    promotion.record_evaluation(store, FAMILY, version, results)
    return version


def test_promote_canary_rollback_and_cleanup_keep_records_audit_and_aliases_in_step(world, tmp_path):
    artifacts, store, targets = world
    a, b, c = (_trained(artifacts, store, tmp_path, m) for m in range(3))
    assert [r["semantic_version"] for r in store.version_records(FAMILY)] == ["1.0.0", "1.1.0", "1.2.0"]

    first = promotion.promote(artifacts, FAMILY, a, targets, by="alice", reason="first")
    assert (first.version, first.previous_version, first.serving, first.mlflow) == (
        a,
        None,
        "not configured",
        "updated",
    )
    assert store.version_record(FAMILY, a)["status"] == "deployed"
    assert model_registry.aliases(targets.tracking_uri, FAMILY) == {"champion": a, "challenger": c}

    canary = promotion.promote(artifacts, FAMILY, b, targets, by="alice", traffic_share=0.1)
    assert (canary.action, canary.version, canary.challenger) == ("canary", a, b)
    assert {r["version"]: r["traffic_share"] for r in store.version_records(FAMILY)} == {
        a: 0.9,
        b: 0.1,
        c: 0.0,
    }
    assert model_registry.aliases(targets.tracking_uri, FAMILY) == {"champion": a, "challenger": b}

    full = promotion.promote(artifacts, FAMILY, b, targets, by="alice")
    assert (full.version, full.previous_version) == (b, a)
    assert store.version_record(FAMILY, a)["status"] == "archived"
    back = promotion.rollback(artifacts, FAMILY, targets, by="bob", reason="complaints")
    assert (back.version, back.previous_version) == (a, b)
    assert store.version_record(FAMILY, b)["status"] == "rolled_back"
    assert model_registry.aliases(targets.tracking_uri, FAMILY)["champion"] == a

    audit = store.deployments(FAMILY)
    assert [(d["action"], d["from_version"], d["to_version"], d["by"]) for d in audit] == [
        ("rollback", b, a, "bob"),
        ("promote", a, b, "alice"),
        ("canary", a, b, "alice"),
        ("promote", None, a, "alice"),
    ]
    assert audit[0]["reason"] == "complaints" and audit[2]["traffic_share"] == 0.1

    d = _trained(artifacts, store, tmp_path, 3)
    gone = promotion.cleanup(artifacts, FAMILY, targets, keep=1, by="carol")
    assert gone.removed == [c] and set(gone.kept) == {a, b, d}  # production, previous, newest
    assert store.version_record(FAMILY, c)["removed_at"] is not None
    assert c not in model_registry.registered_versions(targets.tracking_uri, FAMILY)
    assert store.deployments(FAMILY)[0]["action"] == "cleanup"


def test_a_fail_judged_version_needs_force_and_the_force_is_recorded(world, tmp_path):
    artifacts, store, targets = world
    good = _trained(artifacts, store, tmp_path, 0)
    bad = _trained(artifacts, store, tmp_path, 1, decision="FAIL")
    assert store.version_record(FAMILY, bad)["status"] == "failed"
    promotion.promote(artifacts, FAMILY, good, targets, by="alice")
    with pytest.raises(RegistryError, match="judged FAIL"):
        promotion.promote(artifacts, FAMILY, bad, targets, by="alice")
    assert registry.read_current(artifacts, FAMILY)["version"] == good
    forced = promotion.promote(artifacts, FAMILY, bad, targets, by="alice", force=True, reason="hotfix")
    assert forced.action == "force_promote"
    row = store.deployments(FAMILY)[0]
    assert row["forced"] is True and row["action"] == "force_promote" and row["reason"] == "hotfix"
    assert orjson.loads(artifacts.read_bytes(registry.current_key(FAMILY)))["forced"] is True
    assert store.version_record(FAMILY, bad)["status"] == "deployed"
    assert isinstance(store.deployments(FAMILY)[0]["at"], dt.datetime)


def test_a_new_candidate_is_registered_and_becomes_the_challenger(world, tmp_path):
    artifacts, store, targets = world
    first = _trained(artifacts, store, tmp_path, 0)
    assert promotion.announce_candidate(artifacts, FAMILY, targets) == "updated"
    assert model_registry.aliases(targets.tracking_uri, FAMILY) == {"challenger": first}
    promotion.promote(artifacts, FAMILY, first, targets, by="alice")
    second = _trained(artifacts, store, tmp_path, 1)
    promotion.announce_candidate(artifacts, FAMILY, targets)
    assert model_registry.aliases(targets.tracking_uri, FAMILY) == {"champion": first, "challenger": second}
    assert set(model_registry.registered_versions(targets.tracking_uri, FAMILY)) == {first, second}


def test_rolling_back_a_canary_drops_the_challenger_in_the_audit_and_records(world, tmp_path):
    artifacts, store, targets = world
    a, b = (_trained(artifacts, store, tmp_path, m) for m in range(2))
    promotion.promote(artifacts, FAMILY, a, targets, by="alice")
    promotion.promote(artifacts, FAMILY, b, targets, by="alice", traffic_share=0.2)
    back = promotion.rollback(artifacts, FAMILY, targets, by="bob", reason="canary errors")
    assert (back.version, back.challenger, back.traffic) == (a, None, [{"version": a, "share": 1.0}])
    row = store.deployments(FAMILY)[0]
    assert (row["action"], row["from_version"], row["to_version"]) == ("rollback", b, a)
    assert store.version_record(FAMILY, b)["status"] == "rolled_back"
    assert store.version_record(FAMILY, a)["traffic_share"] == 1.0
