"""Registry records in the store: version records, the deployments audit trail, the training lock,
and migration 0002, on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext

from pulse_pipeline.core.store import DEFAULT_STALE_LOCK, LockAttempt, Store, metadata
from pulse_pipeline.core.store import registry_records as records

T0 = dt.datetime(2026, 11, 20, 8, 30, 15, 123456, tzinfo=dt.UTC)
FAMILY = "access-qa"
NEW_TABLES = {"adapter_versions", "deployments", "training_locks"}


def _version(version: str, **extra: Any) -> dict[str, Any]:
    return {
        "family": FAMILY,
        "version": version,
        "base_model": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "dataset_version": "ds-20261120",
        "training_config": {"lora": {"r": 16, "alpha": 32}, "lr": 2e-4, "targets": ["q_proj", "v_proj"]},
        "created_by": "sensor:new_annotations",
        "semantic_version": "1.0.0",
    } | extra


def _assert_utc(t: dt.datetime) -> None:
    assert t.tzinfo is not None and t.utcoffset() == dt.timedelta(0), t


# -- version records ------------------------------------------------------------------------


def test_a_version_record_round_trips_json_and_utc_times(store):
    metrics = {"golden": {"accuracy": 0.91, "n": 200}, "regression": {"exact_match": None}}
    paris = dt.timezone(dt.timedelta(hours=1))
    store.record_version(_version("v1", metrics=metrics, created_at=T0.astimezone(paris)))
    got = store.version_record(FAMILY, "v1")
    assert got is not None
    assert got["training_config"] == _version("v1")["training_config"]
    assert got["metrics"] == metrics
    assert got["created_at"] == T0
    _assert_utc(got["created_at"])
    assert (got["status"], got["traffic_share"], got["decision"], got["removed_at"]) == (
        "candidate",
        0.0,
        None,
        None,
    )
    assert store.version_record(FAMILY, "nope") is None


def test_recording_again_updates_only_the_given_columns(store):
    store.record_version(_version("v1", created_at=T0))
    store.record_version(_version("v1", semantic_version="1.1.0", decision="DEPLOY", metrics={"g": {"a": 1}}))
    got = store.version_record(FAMILY, "v1")
    assert (got["semantic_version"], got["decision"], got["metrics"]) == ("1.1.0", "DEPLOY", {"g": {"a": 1}})
    assert got["created_at"] == T0  # not given the second time: kept
    assert len(store.version_records(FAMILY)) == 1


def test_status_updates_and_records_oldest_first(store):
    for i, name in enumerate(["v3", "v1", "v2"]):
        store.record_version(_version(name, created_at=T0 + dt.timedelta(hours=[2, 0, 1][i])))
    store.record_version(_version("other", family="intent-router", created_at=T0))
    assert [r["version"] for r in store.version_records(FAMILY)] == ["v1", "v2", "v3"]

    removed = T0 + dt.timedelta(days=3)
    assert store.update_version(FAMILY, "v2", status="deployed", traffic_share=0.25)
    assert store.update_version(FAMILY, "v1", status="archived", removed_at=removed)
    assert not store.update_version(FAMILY, "missing", status="failed")
    v1, v2 = store.version_record(FAMILY, "v1"), store.version_record(FAMILY, "v2")
    assert (v2["status"], v2["traffic_share"]) == ("deployed", 0.25)
    assert (v1["status"], v1["removed_at"]) == ("archived", removed)
    _assert_utc(v1["removed_at"])


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.record_version(_version("v1", status="live")),
        lambda s: s.record_version(_version("v1", decision="MAYBE")),
        lambda s: s.record_version(_version("v1", colour="red")),
        lambda s: s.record_version({"family": FAMILY, "version": "v1"}),
        lambda s: s.update_version(FAMILY, "v1", version="v2"),
        lambda s: s.record_deployment(FAMILY, "deploy", by="cli"),
    ],
    ids=["status", "decision", "column", "required", "key", "action"],
)
def test_bad_values_are_refused(call: Callable[[Store], Any], tmp_path):
    with Store(f"sqlite:///{tmp_path / 'p.db'}") as s, pytest.raises(ValueError):
        call(s)


# -- deployments ----------------------------------------------------------------------------


def test_deployments_newest_first_with_every_field(store):
    first = store.record_deployment(
        FAMILY, "promote", by="alice", reason="gate DEPLOY", to_version="v1", traffic_share=1.0, at=T0
    )
    second = store.record_deployment(
        FAMILY,
        "canary",
        by="schedule:nightly",
        reason="gate DEPLOY at 10 %",
        from_version="v1",
        to_version="v2",
        traffic_share=0.1,
        serving="not updated: connection refused by 127.0.0.1:8000",
        at=T0 + dt.timedelta(minutes=5),
    )
    store.record_deployment("intent-router", "promote", by="cli", to_version="x", at=T0)
    third = store.record_deployment(
        FAMILY,
        "force_promote",
        by="run:abc",
        reason="ops override",
        from_version="v2",
        to_version="v3",
        forced=True,
        serving="updated",
        at=T0 + dt.timedelta(hours=1),
    )
    trail = store.deployments(FAMILY)
    assert [d["id"] for d in trail] == [third, second, first]
    assert trail[1] == {
        "id": second,
        "family": FAMILY,
        "at": T0 + dt.timedelta(minutes=5),
        "by": "schedule:nightly",
        "action": "canary",
        "from_version": "v1",
        "to_version": "v2",
        "traffic_share": 0.1,
        "reason": "gate DEPLOY at 10 %",
        "forced": False,
        "serving": "not updated: connection refused by 127.0.0.1:8000"[:32],
    }
    assert trail[0]["forced"] is True and trail[2]["from_version"] is None
    _assert_utc(trail[0]["at"])
    assert [d["id"] for d in store.deployments(FAMILY, limit=1)] == [third]


# -- training lock --------------------------------------------------------------------------


def test_lock_acquired_then_refused_with_the_holder_and_its_time(store):
    got = store.acquire_training_lock(FAMILY, "cli pid 1 on a", now=T0)
    assert got == LockAttempt(True, "cli pid 1 on a", T0, None)
    refused = store.acquire_training_lock(FAMILY, "run:r2", now=T0 + dt.timedelta(minutes=1))
    assert refused == LockAttempt(False, "cli pid 1 on a", T0, None)
    _assert_utc(refused.acquired_at)
    assert store.acquire_training_lock("intent-router", "run:r2", now=T0).acquired  # per family
    lock = store.training_lock(FAMILY)
    assert lock == {"family": FAMILY, "holder": "cli pid 1 on a", "acquired_at": T0, "heartbeat_at": T0}
    assert store.training_lock("absent") is None


def test_only_the_holder_releases_or_heartbeats(store):
    store.acquire_training_lock(FAMILY, "a", now=T0)
    assert not store.release_training_lock(FAMILY, "b")
    assert not store.heartbeat_training_lock(FAMILY, "b")
    assert store.heartbeat_training_lock(FAMILY, "a", now=T0 + dt.timedelta(hours=1))
    assert store.training_lock(FAMILY)["heartbeat_at"] == T0 + dt.timedelta(hours=1)
    assert store.release_training_lock(FAMILY, "a")
    assert store.training_lock(FAMILY) is None
    assert not store.release_training_lock(FAMILY, "a")
    assert store.acquire_training_lock(FAMILY, "b", now=T0).acquired


def test_asking_again_keeps_ones_own_lock(store):
    store.acquire_training_lock(FAMILY, "run:r1", now=T0)
    again = store.acquire_training_lock(FAMILY, "run:r1", now=T0 + dt.timedelta(minutes=3))
    assert again == LockAttempt(True, "run:r1", T0, None)
    assert store.training_lock(FAMILY)["heartbeat_at"] == T0 + dt.timedelta(minutes=3)


def test_a_stale_lock_is_taken_over_and_a_fresh_one_is_not(store):
    assert dt.timedelta(hours=4) == DEFAULT_STALE_LOCK
    store.acquire_training_lock(FAMILY, "dead", now=T0)
    store.heartbeat_training_lock(FAMILY, "dead", now=T0 + dt.timedelta(hours=1))
    fresh = store.acquire_training_lock(FAMILY, "new", now=T0 + dt.timedelta(hours=5))  # 4 h after beat
    assert fresh == LockAttempt(False, "dead", T0, None)
    later = T0 + dt.timedelta(hours=5, seconds=1)
    taken = store.acquire_training_lock(FAMILY, "new", now=later)
    assert taken == LockAttempt(True, "new", later, stale_replaced="dead")
    assert store.training_lock(FAMILY)["holder"] == "new"
    assert not store.heartbeat_training_lock(FAMILY, "dead")  # the old holder learns it lost the lock
    short = store.acquire_training_lock(
        FAMILY, "impatient", stale_after=dt.timedelta(minutes=1), now=later + dt.timedelta(minutes=2)
    )
    assert (short.acquired, short.stale_replaced) == (True, "new")


def _race(url: str, n: int, attempt: Callable[[Store], LockAttempt]) -> list[LockAttempt]:
    """Run `attempt` at once on `n` stores of one database, each with its own connections."""
    stores = [Store(url) for _ in range(n)]
    barrier = threading.Barrier(n, timeout=10)

    def run(s: Store) -> LockAttempt:
        barrier.wait()
        return attempt(s)

    try:
        with ThreadPoolExecutor(n) as pool:
            return list(pool.map(run, stores))
    finally:
        for s in stores:
            s.dispose()


def test_concurrent_acquires_of_a_free_lock_one_wins(store):
    holders = iter(f"h{i}" for i in range(4))
    lock = threading.Lock()

    def attempt(s: Store) -> LockAttempt:
        with lock:
            holder = next(holders)
        return s.acquire_training_lock(FAMILY, holder, now=T0)

    results = _race(store.url, 4, attempt)
    winners = [r for r in results if r.acquired]
    assert len(winners) == 1
    assert all(r.holder == winners[0].holder for r in results)


def test_two_concurrent_takeovers_of_a_stale_lock_one_wins(store, monkeypatch):
    store.acquire_training_lock(FAMILY, "dead", now=T0)
    # Both processes must have read the stale row before either replaces it: hold each at the
    # conditional UPDATE until both are there.
    at_update = threading.Barrier(2, timeout=10)
    take_over = records.RegistryRecords._take_over_lock

    def racing_take_over(self: Store, *args: Any) -> bool:
        at_update.wait()
        return take_over(self, *args)

    monkeypatch.setattr(records.RegistryRecords, "_take_over_lock", racing_take_over)
    later = T0 + dt.timedelta(hours=5)
    names = iter(["p1", "p2"])
    lock = threading.Lock()

    def attempt(s: Store) -> LockAttempt:
        with lock:
            holder = next(names)
        return s.acquire_training_lock(FAMILY, holder, now=later)

    results = _race(store.url, 2, attempt)
    winner = [r for r in results if r.acquired]
    loser = [r for r in results if not r.acquired]
    assert len(winner) == 1 and len(loser) == 1, results
    assert winner[0].stale_replaced == "dead"
    assert loser[0] == LockAttempt(False, winner[0].holder, later, None)
    assert store.training_lock(FAMILY)["holder"] == winner[0].holder


# -- migration 0002 -------------------------------------------------------------------------


def test_migration_upgrades_a_0001_database_keeping_its_data(database_url):
    with Store(database_url, upgrade=False) as old:
        assert old.upgrade("0001") == "0001"
        with old.engine.connect() as conn:
            assert not NEW_TABLES & set(sa.inspect(conn).get_table_names())
        _insert_at_0001(old)
    with Store(database_url) as new:  # first open of the new code: upgrades to head
        assert new.revision() == "0003"
        assert new.count_since("access-qa") == 1
        with new.engine.connect() as conn:
            assert set(sa.inspect(conn).get_table_names()) >= NEW_TABLES
            assert compare_metadata(MigrationContext.configure(conn), metadata) == []
        new.record_version(_version("v1"))
        assert new.acquire_training_lock(FAMILY, "a").acquired


def _insert_at_0001(store: Store) -> None:
    """One annotation written with the 0001 columns only (today's ingestion writes later ones)."""
    with store.engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO annotations (id, family, kind, payload, content_hash, created_at, ingested_at) "
                "VALUES ('a1', 'access-qa', 'qa_pair', '{\"question\": \"q\", \"answer\": \"a\"}', 'h1', "
                ":t, :t)"
            ),
            {"t": dt.datetime.now(dt.UTC)},
        )


def test_migration_0002_downgrades_cleanly(store):
    cfg = Config()
    cfg.set_main_option("script_location", "pulse_pipeline.core.store:migrations")
    with store.engine.connect() as conn, conn.begin():
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0001")
    assert store.revision() == "0001"
    with store.engine.connect() as conn:
        assert not NEW_TABLES & set(sa.inspect(conn).get_table_names())
    assert store.upgrade() == "0003"
