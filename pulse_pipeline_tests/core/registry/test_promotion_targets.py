"""Promotion end to end on real parts: version records and the deployments audit trail in the store
(SQLite or PostgreSQL), the files on a local folder or the S3-API server, and MLflow's model
registry (an embedded sqlite store; a real MLflow server in the slow test) kept in step with
promote, canary, rollback and cleanup. Serving is not configured."""

from __future__ import annotations

import datetime as dt
import socket
import uuid
from collections.abc import Iterator

import pytest

from pulse_pipeline.core.registry import Registry, RegistryError, State, Targets, mlflow_models, promotion
from pulse_pipeline_tests.core.registry.conftest import FAMILY, trained
from pulse_pipeline_tests.mlflow_server import MlflowServer

P, C, E, R, X = State.PRODUCTION, State.CANARY, State.EVALUATED, State.RETIRED, State.REMOVED


@pytest.fixture
def mirrored(registry: Registry, mlflow_uri: str) -> Registry:
    """The `registry` fixture's store and files, with MLflow's model registry as a target."""
    return Registry(registry.db, registry.artifacts, Targets(tracking_uri=mlflow_uri))


def _aliases(registry: Registry) -> dict[str, str]:
    return mlflow_models.aliases(registry.targets.tracking_uri, FAMILY)


def _registered(registry: Registry) -> set[str]:
    return set(mlflow_models.registered_versions(registry.targets.tracking_uri, FAMILY))


def _states(registry: Registry) -> dict[str, tuple[State, float]]:
    return {r.version: (r.state, r.traffic_share) for r in registry.records.list(FAMILY)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_promote_canary_rollback_and_cleanup_keep_records_audit_and_aliases_in_step(mirrored, tmp_path):
    registry = mirrored
    a, b, c = (trained(registry, tmp_path, m, "DEPLOY") for m in range(3))
    assert [r.semantic_version for r in registry.records.list(FAMILY)] == ["1.0.0", "1.1.0", "1.2.0"]
    assert _states(registry) == {a: (E, 0.0), b: (E, 0.0), c: (E, 0.0)}

    first = registry.promote(FAMILY, a, by="alice", reason="first")
    assert (first.version, first.previous_version, first.serving, first.mlflow) == (
        a, None, "not configured", "updated",
    )  # fmt: skip
    assert _states(registry) == {a: (P, 1.0), b: (E, 0.0), c: (E, 0.0)}
    assert _aliases(registry) == {"champion": a, "challenger": c}  # the newest candidate
    assert _registered(registry) == {a, b, c}

    canary = registry.promote(FAMILY, b, by="alice", traffic_share=0.1)
    assert (canary.action, canary.version, canary.challenger, canary.mlflow) == ("canary", a, b, "updated")
    assert _states(registry) == {a: (P, 0.9), b: (C, 0.1), c: (E, 0.0)}
    assert _aliases(registry) == {"champion": a, "challenger": b}

    full = registry.promote(FAMILY, b, by="alice")
    assert (full.version, full.previous_version, full.challenger) == (b, a, None)
    assert _states(registry) == {a: (R, 0.0), b: (P, 1.0), c: (E, 0.0)}  # the old champion retired
    assert _aliases(registry) == {"champion": b, "challenger": c}

    back = registry.rollback(FAMILY, by="bob", reason="complaints")
    assert (back.version, back.previous_version, back.mlflow) == (a, b, "updated")
    assert _states(registry) == {a: (P, 1.0), b: (R, 0.0), c: (E, 0.0)}  # production again; b retired
    assert _aliases(registry) == {"champion": a, "challenger": c}

    audit = registry.audit.list(FAMILY)
    assert [(d.action, d.from_version, d.to_version, d.by, d.traffic_share) for d in audit] == [
        ("rollback", b, a, "bob", 1.0),
        ("promote", a, b, "alice", 1.0),
        ("canary", a, b, "alice", 0.1),
        ("promote", None, a, "alice", 1.0),
    ]
    assert [(d.reason, d.forced, d.decision, d.serving) for d in audit] == [
        ("complaints", False, "DEPLOY", "not configured"),
        ("", False, "DEPLOY", "not configured"),
        ("", False, "DEPLOY", "not configured"),
        ("first", False, "DEPLOY", "not configured"),
    ]

    d = trained(registry, tmp_path, 3, "DEPLOY")
    started = dt.datetime.now(dt.UTC)
    gone = registry.cleanup(FAMILY, keep=1, by="carol")
    assert gone.removed == [c] and set(gone.kept) == {a, b, d}  # production, previous, newest
    assert gone.mlflow == "updated"
    record = registry.record(FAMILY, c)  # the record stays: removed, with when
    assert (record.state, record.traffic_share) == (X, 0.0)
    assert started <= record.removed_at <= dt.datetime.now(dt.UTC)
    assert registry.artifacts.list(f"adapters/{FAMILY}/{c}") == []
    assert _states(registry) == {a: (P, 1.0), b: (R, 0.0), c: (X, 0.0), d: (E, 0.0)}
    assert _registered(registry) == {a, b, d}
    assert _aliases(registry) == {"champion": a, "challenger": d}
    entry = registry.audit.list(FAMILY)[0]
    assert (entry.action, entry.by, entry.reason) == ("cleanup", "carol", f"removed {c}")


def test_a_fail_judged_version_needs_force_and_the_force_is_recorded(mirrored, tmp_path):
    registry = mirrored
    good = trained(registry, tmp_path, 0, "DEPLOY")
    registry.promote(FAMILY, good, by="alice")
    bad = trained(registry, tmp_path, 1, "FAIL")
    record = registry.record(FAMILY, bad)
    assert (record.state, record.decision, record.baseline_version) == (E, "FAIL", good)
    assert _aliases(registry) == {"champion": good}  # a FAIL-judged version is no challenger
    with pytest.raises(RegistryError, match="judged FAIL"):
        registry.promote(FAMILY, bad, by="alice")
    assert registry.current(FAMILY)["version"] == good
    assert len(registry.audit.list(FAMILY)) == 1

    forced = registry.promote(FAMILY, bad, by="alice", force=True, reason="hotfix")
    assert (forced.action, forced.forced, forced.decision, forced.mlflow) == (
        "force_promote",
        True,
        "FAIL",
        "updated",
    )
    row = registry.audit.list(FAMILY)[0]
    assert (row.action, row.forced, row.reason, row.decision, row.by) == (
        "force_promote",
        True,
        "hotfix",
        "FAIL",
        "alice",
    )
    assert row.at.tzinfo is not None and row.at.utcoffset() == dt.timedelta(0)
    assert registry.current(FAMILY)["forced"] is True
    assert _states(registry) == {good: (R, 0.0), bad: (P, 1.0)}
    assert _aliases(registry) == {"champion": bad}


def test_a_new_candidate_is_registered_and_becomes_the_challenger(mirrored, tmp_path):
    registry = mirrored
    first = trained(registry, tmp_path, 0, "DEPLOY")
    assert promotion.sync_mlflow(registry, FAMILY) == "updated"
    assert _aliases(registry) == {"challenger": first}
    registry.promote(FAMILY, first, by="alice")
    assert _aliases(registry) == {"champion": first}  # nothing newer waits
    second = trained(registry, tmp_path, 1, "REVIEW")  # REVIEW waits for a person: a candidate
    assert promotion.sync_mlflow(registry, FAMILY) == "updated"
    assert _aliases(registry) == {"champion": first, "challenger": second}
    third = trained(registry, tmp_path, 2)  # published, not evaluated yet: the newest candidate
    promotion.sync_mlflow(registry, FAMILY)
    assert _aliases(registry) == {"champion": first, "challenger": third}
    fourth = trained(registry, tmp_path, 3, "FAIL")  # judged FAIL: never the challenger
    promotion.sync_mlflow(registry, FAMILY)
    assert _aliases(registry) == {"champion": first, "challenger": third}
    assert _registered(registry) == {first, second, third, fourth}


def test_rolling_back_a_canary_drops_the_challenger_in_the_audit_and_records(mirrored, tmp_path):
    registry = mirrored
    a, b = (trained(registry, tmp_path, m, "DEPLOY") for m in range(2))
    registry.promote(FAMILY, a, by="alice")
    registry.promote(FAMILY, b, by="alice", traffic_share=0.2)
    assert _aliases(registry) == {"champion": a, "challenger": b}
    back = registry.rollback(FAMILY, by="bob", reason="canary errors")
    assert (back.version, back.challenger, back.traffic) == (a, None, [{"version": a, "share": 1.0}])
    row = registry.audit.list(FAMILY)[0]
    assert (row.action, row.from_version, row.to_version, row.reason) == ("rollback", b, a, "canary errors")
    assert _states(registry) == {a: (P, 1.0), b: (R, 0.0)}
    assert _aliases(registry) == {"champion": a}  # a retired challenger is no candidate


def test_promoting_production_again_retries_mlflow(registry, mlflow_uri, tmp_path):
    """MLflow that cannot be reached leaves the promotion standing, "not updated"; promoting the
    production version again (a REVIEW one, forced in: no force is needed again) re-syncs it."""
    down = Registry(registry.db, registry.artifacts, Targets(tracking_uri=f"http://127.0.0.1:{_free_port()}"))
    a = trained(down, tmp_path, 0, "REVIEW")
    out = down.promote(FAMILY, a, by="alice", force=True, reason="accepted by a person")
    assert out.mlflow.startswith(f"not updated: MLflow registry at {down.targets.tracking_uri}: ")
    assert (out.version, out.forced) == (a, True)
    assert _states(down) == {a: (P, 1.0)}
    assert [d.action for d in down.audit.list(FAMILY)] == ["force_promote"]

    up = Registry(registry.db, registry.artifacts, Targets(tracking_uri=mlflow_uri))
    assert _aliases(up) == {}
    again = up.promote(FAMILY, a, by="alice")
    assert (again.action, again.changed, again.forced, again.decision, again.mlflow) == (
        "none", False, False, "REVIEW", "updated",
    )  # fmt: skip
    assert _aliases(up) == {"champion": a}
    assert [d.action for d in up.audit.list(FAMILY)] == ["force_promote"]


# -- a real MLflow server (slow) -----------------------------------------------------------------


@pytest.fixture(scope="module")
def mlflow_server() -> Iterator[MlflowServer]:
    with MlflowServer() as server:
        yield server


@pytest.mark.slow
def test_promotion_against_a_real_mlflow_server(registry, mlflow_server, tmp_path):
    """A server takes the S3 store's s3:// sources; it refuses a local folder's paths, which
    leaves the promotion standing and MLflow "not updated", saying why."""
    family = f"f{uuid.uuid4().hex[:8]}"  # one server for the module: a model of its own
    served = Registry(registry.db, registry.artifacts, Targets(tracking_uri=mlflow_server.tracking_uri))
    a, b = (trained(served, tmp_path, m, "DEPLOY", family=family) for m in range(2))
    out = served.promote(family, a, by="alice")
    assert registry.current(family)["version"] == a
    assert [r.state for r in registry.records.list(family)] == [P, E]
    uri = mlflow_server.tracking_uri
    if registry.artifacts.uri("x").startswith("s3://"):
        assert out.mlflow == "updated"
        assert mlflow_models.aliases(uri, family) == {"champion": a, "challenger": b}
        assert served.promote(family, b, by="alice").mlflow == "updated"
        assert mlflow_models.aliases(uri, family) == {"champion": b}
        assert served.rollback(family, by="bob").mlflow == "updated"
        assert mlflow_models.aliases(uri, family) == {"champion": a}
        assert set(mlflow_models.registered_versions(uri, family)) == {a, b}
    else:
        assert out.mlflow.startswith(f"not updated: MLflow registry at {uri}: ")
        assert "refuses a local path" in out.mlflow
        assert mlflow_models.registered_versions(uri, family) == {}
