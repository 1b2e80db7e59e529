"""The registry's rows in the store (core/registry/records.py): version records and the deployments
audit trail, on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import pytest

from pulse_pipeline.core.registry import Deployment, LifecycleError, RegistryError, State, VersionRecord
from pulse_pipeline.core.registry.records import DeploymentLog, VersionRecords
from pulse_pipeline.core.store import Store

T0 = dt.datetime(2026, 11, 20, 8, 30, 15, 123456, tzinfo=dt.UTC)
FAMILY = "access-qa"
V = "access-qa-20261120-0830"
PARIS = dt.timezone(dt.timedelta(hours=1))
S = State
# A path through the lifecycle to each state, from `training`.
PATHS = {
    S.TRAINING: [],
    S.PUBLISHED: [S.PUBLISHED],
    S.EVALUATED: [S.PUBLISHED, S.EVALUATED],
    S.CANARY: [S.PUBLISHED, S.EVALUATED, S.CANARY],
    S.PRODUCTION: [S.PUBLISHED, S.EVALUATED, S.PRODUCTION],
    S.RETIRED: [S.PUBLISHED, S.EVALUATED, S.PRODUCTION, S.RETIRED],
    S.FAILED: [S.FAILED],
    S.REMOVED: [S.PUBLISHED, S.REMOVED],
}
R = TypeVar("R")


def _fields(**extra: Any) -> dict[str, Any]:
    return {
        "base_model": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "dataset_version": "ds-20261120",
        "training_config": {"lora": {"r": 16, "alpha": 32}, "lr": 2e-4, "targets": ["q_proj", "v_proj"]},
        "created_by": "sensor:new_annotations",
        "semantic_version": "1.0.0",
    } | extra


def _assert_utc(t: dt.datetime | None) -> None:
    assert t is not None and t.tzinfo is not None and t.utcoffset() == dt.timedelta(0), t


def _in_state(
    records: VersionRecords, state: State, minute: int, family: str = FAMILY, **fields: Any
) -> VersionRecord:
    """A record reserved at T0 + `minute` and moved along the lifecycle to `state`."""
    record = records.reserve(family, T0 + dt.timedelta(minutes=minute), _fields(**fields))
    for step in PATHS[state]:
        record = records.move(record, step)
    assert record.state is state
    return record


def _race(url: str, n: int, attempt: Callable[[Store, int], R]) -> list[R | BaseException]:
    """Run `attempt(store, i)` at once on `n` stores of one database, each with its own engine
    (as separate processes would); an exception is returned in its place."""
    stores = [Store(url) for _ in range(n)]
    barrier = threading.Barrier(n, timeout=30)

    def run(i: int) -> R | BaseException:
        barrier.wait()
        try:
            return attempt(stores[i], i)
        except Exception as exc:  # noqa: BLE001 - the losers' errors are the point
            return exc

    try:
        with ThreadPoolExecutor(n) as pool:
            return list(pool.map(run, range(n)))
    finally:
        for s in stores:
            s.dispose()


# -- version records -----------------------------------------------------------------------------


def test_a_version_record_round_trips_json_and_utc_times(store):
    records = VersionRecords(store)
    before = dt.datetime.now(dt.UTC)
    reserved = records.reserve(FAMILY, T0.astimezone(PARIS), _fields(run_id="run-1", watermark=42))
    after = dt.datetime.now(dt.UTC)
    assert reserved == records.get(FAMILY, V)
    assert reserved == VersionRecord(
        family=FAMILY,
        version=V,  # the minute in UTC, though asked in Paris time
        state=S.TRAINING,
        decision=None,
        base_model="HuggingFaceTB/SmolLM2-135M-Instruct",
        dataset_version="ds-20261120",
        training_config=_fields()["training_config"],
        metrics=None,
        created_at=reserved.created_at,
        created_by="sensor:new_annotations",
        run_id="run-1",
        traffic_share=0.0,
        semantic_version="1.0.0",
        removed_at=None,
        baseline_version=None,
        evaluated_at=None,
        watermark=42,
    )
    assert before <= reserved.created_at <= after
    _assert_utc(reserved.created_at)

    metrics = {"golden": {"accuracy": 0.91, "n": 200}, "regression": {"exact_match": None}}
    published = records.move(reserved, S.PUBLISHED)
    evaluated = records.move(
        published, S.EVALUATED, decision="DEPLOY", metrics=metrics, evaluated_at=T0.astimezone(PARIS),
        baseline_version="access-qa-20261101-0000",
    )  # fmt: skip
    got = records.get(FAMILY, V)
    assert got == evaluated
    assert (got.state, got.decision, got.metrics, got.baseline_version) == (
        S.EVALUATED,
        "DEPLOY",
        metrics,
        "access-qa-20261101-0000",
    )
    assert got.evaluated_at == T0
    _assert_utc(got.evaluated_at)
    assert got.created_at == reserved.created_at  # not given: kept
    assert records.get(FAMILY, f"{V}-2") is None and records.get("other", V) is None


def test_reserve_takes_the_next_free_name_of_the_minute(store):
    records = VersionRecords(store)
    names = [records.reserve(FAMILY, T0 + dt.timedelta(seconds=s), _fields()).version for s in (0, 10, 44)]
    assert names == [V, f"{V}-2", f"{V}-3"]
    assert records.reserve("other", T0, _fields()).version == "other-20261120-0830"  # per family
    skipped = records.reserve(FAMILY, T0, _fields(), taken=lambda name: name in (f"{V}-4", f"{V}-5"))
    assert skipped.version == f"{V}-6"
    assert [r.version for r in records.list(FAMILY)] == [V, f"{V}-2", f"{V}-3", f"{V}-6"]


def test_reserve_refuses_after_999_names_a_minute(store):
    records = VersionRecords(store)
    asked: list[str] = []
    last = records.reserve(FAMILY, T0, _fields(), taken=lambda name: asked.append(name) or name != f"{V}-999")
    assert last.version == f"{V}-999"
    assert asked == [V] + [f"{V}-{n}" for n in range(2, 1000)]
    with pytest.raises(RegistryError, match=f"no free version name for {FAMILY} at 2026-11-20 08:30"):
        records.reserve(FAMILY, T0, _fields(), taken=lambda name: name != f"{V}-1000")
    assert [r.version for r in records.list(FAMILY)] == [f"{V}-999"]


def test_concurrent_reserves_of_one_minute_get_distinct_names(store):
    """Eight trainings of the same minute, each with its own engine, racing on the primary key."""
    got = _race(store.url, 8, lambda s, i: VersionRecords(s).reserve(FAMILY, T0, _fields(run_id=f"run-{i}")))
    assert not [r for r in got if isinstance(r, BaseException)], got
    assert sorted(r.version for r in got) == sorted([V] + [f"{V}-{n}" for n in range(2, 9)])
    stored = {r.version: r.run_id for r in VersionRecords(store).list(FAMILY)}
    assert stored == {r.version: r.run_id for r in got}  # each name went to the one who reserved it


def test_records_are_listed_oldest_first_and_filtered_by_state(store):
    records = VersionRecords(store)
    late = _in_state(records, S.PUBLISHED, 5)  # reserved first, for a later minute
    early = _in_state(records, S.FAILED, 0)
    middle = _in_state(records, S.EVALUATED, 2)
    _in_state(records, S.PUBLISHED, 1, family="intent-router")
    assert [r.version for r in records.list(FAMILY)] == [late.version, early.version, middle.version]
    visible = frozenset({S.PUBLISHED, S.EVALUATED})
    assert [r.version for r in records.list(FAMILY, states=visible)] == [late.version, middle.version]
    assert records.list(FAMILY, states=frozenset({S.CANARY})) == []
    assert records.list("nobody") == []


def test_move_follows_the_lifecycle_and_leaves_a_refused_record_as_it_was(store):
    records = VersionRecords(store)
    record = records.reserve(FAMILY, T0, _fields())
    with pytest.raises(LifecycleError, match=f"{FAMILY} {V} is training: it cannot become production"):
        records.move(record, S.PRODUCTION, traffic_share=1.0)
    assert records.get(FAMILY, V) == record
    published = records.move(record, S.PUBLISHED)
    production = records.move(published, S.PRODUCTION, traffic_share=1.0)
    assert (production.state, production.traffic_share) == (S.PRODUCTION, 1.0)
    removed_at = T0 + dt.timedelta(days=3)
    with pytest.raises(LifecycleError, match="is production: it cannot become removed"):
        records.move(production, S.REMOVED, removed_at=removed_at)
    retired = records.move(production, S.RETIRED, traffic_share=0.0)
    gone = records.move(retired, S.REMOVED, removed_at=removed_at.astimezone(PARIS))
    assert gone.removed_at == removed_at
    _assert_utc(gone.removed_at)
    with pytest.raises(LifecycleError, match="is removed: it cannot become production"):
        records.move(gone, S.PRODUCTION)


def test_move_is_a_compare_and_set(store):
    """Movers holding the same `training` record race: exactly one moves it, the others learn
    that it changed meanwhile and what it is now; a stale record never overwrites a newer one."""
    record = VersionRecords(store).reserve(FAMILY, T0, _fields())
    targets = [S.PUBLISHED, S.FAILED, S.PUBLISHED, S.FAILED]
    got = _race(store.url, len(targets), lambda s, i: VersionRecords(s).move(record, targets[i]))
    winners = [r for r in got if isinstance(r, VersionRecord)]
    losers = [r for r in got if not isinstance(r, VersionRecord)]
    assert len(winners) == 1 and len(losers) == len(targets) - 1, got
    final = VersionRecords(store).get(FAMILY, V)
    assert final == winners[0] and final.state in (S.PUBLISHED, S.FAILED)
    for loser in losers:
        assert isinstance(loser, RegistryError) and not isinstance(loser, LifecycleError), loser
        assert str(loser) == f"{FAMILY} {V} changed meanwhile (now {final.state}, not training)"


def test_update_changes_other_columns_only(store):
    records = VersionRecords(store)
    record = _in_state(records, S.EVALUATED, 0)
    assert records.update(FAMILY, V, decision="REVIEW", metrics={"g": {"a": 1}}, semantic_version="1.1.0")
    got = records.get(FAMILY, V)
    assert (got.decision, got.metrics, got.semantic_version, got.state) == (
        "REVIEW",
        {"g": {"a": 1}},
        "1.1.0",
        S.EVALUATED,
    )
    assert got == dataclasses.replace(
        record, decision="REVIEW", metrics={"g": {"a": 1}}, semantic_version="1.1.0"
    )
    assert not records.update(FAMILY, f"{V}-2", decision="FAIL")  # no such record


@pytest.mark.parametrize(
    "changes",
    [{}, {"state": "production"}, {"family": "other"}, {"version": f"{V}-2"}, {"colour": "red"}],
    ids=["nothing", "state", "family", "version", "unknown"],
)
def test_update_refuses_the_key_the_state_and_unknown_columns(store, changes):
    records = VersionRecords(store)
    record = records.reserve(FAMILY, T0, _fields())
    with pytest.raises(ValueError, match="update takes one or more columns|adapter_versions has no column"):
        records.update(FAMILY, V, **changes)
    assert records.get(FAMILY, V) == record


def test_a_decision_outside_the_gates_is_refused(store):
    records = VersionRecords(store)
    records.reserve(FAMILY, T0, _fields())
    with pytest.raises(ValueError, match="MAYBE"):
        records.update(FAMILY, V, decision="MAYBE")


@pytest.mark.parametrize(
    "insert",
    [
        lambda records: records.reserve(FAMILY, T0, _fields(state="production")),
        lambda records: records.adopt(FAMILY, V, _fields(state="production")),
    ],
    ids=["reserve", "adopt"],
)
def test_inserting_a_record_refuses_a_state_in_its_fields(store, insert):
    records = VersionRecords(store)
    with pytest.raises(ValueError):
        insert(records)
    assert records.list(FAMILY) == []


def test_adopt_inserts_a_published_record_once(store):
    records = VersionRecords(store)
    assert records.adopt(FAMILY, V, _fields(created_by="reconcile"))
    assert not records.adopt(FAMILY, V, _fields(created_by="someone else"))
    got = records.get(FAMILY, V)
    assert (got.state, got.created_by, got.traffic_share) == (S.PUBLISHED, "reconcile", 0.0)
    assert records.reserve(FAMILY, T0, _fields()).version == f"{V}-2"  # its name is taken


def test_trained_watermark_is_the_highest_among_finished_trainings(store):
    """Published or later, removed included (its data was used); training and failed are not."""
    records = VersionRecords(store)
    assert records.trained_watermark(FAMILY) is None
    _in_state(records, S.TRAINING, 0, watermark=1000)
    _in_state(records, S.FAILED, 1, watermark=900)
    assert records.trained_watermark(FAMILY) is None
    for minute, (state, watermark) in enumerate(
        [(S.PUBLISHED, 10), (S.EVALUATED, 30), (S.PRODUCTION, 20), (S.RETIRED, 15), (S.CANARY, 25)], start=2
    ):
        _in_state(records, state, minute, watermark=watermark)
    _in_state(records, S.PUBLISHED, 8)  # no watermark recorded: ignored
    _in_state(records, S.PUBLISHED, 9, family="intent-router", watermark=5000)
    assert records.trained_watermark(FAMILY) == 30
    _in_state(records, S.REMOVED, 10, watermark=50)
    assert records.trained_watermark(FAMILY) == 50


def test_newest_trained_skips_trainings_that_did_not_finish(store):
    records = VersionRecords(store)
    assert records.newest_trained(FAMILY) is None
    _in_state(records, S.PUBLISHED, 0)
    removed = _in_state(records, S.REMOVED, 1)
    assert records.newest_trained(FAMILY) == removed
    _in_state(records, S.FAILED, 2)
    _in_state(records, S.TRAINING, 3)
    assert records.newest_trained(FAMILY) == removed
    evaluated = _in_state(records, S.EVALUATED, 4)
    assert records.newest_trained(FAMILY) == evaluated


# -- the deployments audit trail -------------------------------------------------------------------


def test_deployments_newest_first_with_every_field(store):
    log = DeploymentLog(store)
    first = log.append(
        FAMILY, "promote", by="alice", reason="gate DEPLOY", to_version="v1", traffic_share=1.0,
        decision="DEPLOY", at=T0,
    )  # fmt: skip
    second = log.append(
        FAMILY,
        "canary",
        by="schedule:nightly",
        reason="gate DEPLOY at 10 %",
        from_version="v1",
        to_version="v2",
        traffic_share=0.1,
        decision="DEPLOY",
        serving="not updated: connection refused by 127.0.0.1:8000",
        at=(T0 + dt.timedelta(minutes=5)).astimezone(PARIS),
    )
    log.append("intent-router", "promote", by="cli", to_version="x", at=T0)
    third = log.append(
        FAMILY,
        "force_promote",
        by="run:abc" + "x" * 300,
        reason="ops override",
        from_version="v2",
        to_version="v3",
        forced=True,
        decision="FAIL",
        serving="updated",
        at=T0 + dt.timedelta(hours=1),
    )
    trail = log.list(FAMILY)
    assert [d.id for d in trail] == [third, second, first]
    assert trail[1] == Deployment(
        id=second,
        family=FAMILY,
        at=T0 + dt.timedelta(minutes=5),
        by="schedule:nightly",
        action="canary",
        from_version="v1",
        to_version="v2",
        traffic_share=0.1,
        reason="gate DEPLOY at 10 %",
        forced=False,
        decision="DEPLOY",
        serving="not updated: connection refused by 127.0.0.1:8000"[:32],
    )
    assert (trail[0].forced, trail[0].decision, trail[0].by) == (True, "FAIL", ("run:abc" + "x" * 300)[:256])
    assert (trail[2].from_version, trail[2].serving, trail[2].traffic_share) == (None, None, 1.0)
    for entry in trail:
        _assert_utc(entry.at)
    assert [d.id for d in log.list(FAMILY, limit=1)] == [third]
    (other,) = log.list("intent-router")
    assert (other.to_version, other.reason, other.forced, other.decision) == ("x", "", False, None)


def test_an_entry_without_a_time_is_stamped_now_in_utc(store):
    log = DeploymentLog(store)
    before = dt.datetime.now(dt.UTC)
    entry_id = log.append(FAMILY, "reconcile", by="cli", reason="adopted v1")
    (entry,) = log.list(FAMILY)
    assert entry.id == entry_id and entry.action == "reconcile"
    assert before <= entry.at <= dt.datetime.now(dt.UTC)
    _assert_utc(entry.at)


@pytest.mark.parametrize("action", ["deploy", "Promote", "", "rollback "])
def test_an_unknown_action_is_refused(store, action):
    log = DeploymentLog(store)
    with pytest.raises(ValueError, match=f"action {action!r} is not one of promote, canary, rollback"):
        log.append(FAMILY, action, by="cli")
    assert log.list(FAMILY) == []
