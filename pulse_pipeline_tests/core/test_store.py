import datetime as dt

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext

from pulse_pipeline.core.ingestion import ingest_lines
from pulse_pipeline.core.store import LockHolder, Store, StoreError, metadata


def test_migrations_apply_on_first_use_and_match_the_tables(store):
    assert store.revision() == "0007"
    with store.engine.connect() as conn:
        tables = set(sa.inspect(conn).get_table_names())
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert {"annotations", "quarantine", "ingestions", "ingestion_tallies", "alembic_version"} <= tables
    assert diff == [], f"migrations and schema.py disagree: {diff}"


def test_upgrade_is_idempotent_and_reopening_keeps_data(database_url, config):
    with Store(database_url) as first:
        ingest_lines(
            first,
            [b'{"kind":"qa_pair","family":"access-qa","question":"q","answer":"a"}'],
            config,
            source="t",
        )
    with Store(database_url) as again:
        assert again.upgrade() == "0007"
        assert again.annotations.count_since("access-qa") == 1


def test_an_empty_database_has_no_revision_until_upgraded(database_url):
    with Store(database_url, upgrade=False) as s:
        assert s.revision() is None
        assert s.upgrade() == "0007"


def _plan(store: Store, sql: str, params: dict) -> str:
    with store.engine.connect() as conn:
        if store.dialect == "postgresql":
            conn.execute(sa.text("SET enable_seqscan = off"))  # tiny tables: ask whether an index *can* serve
            rows = conn.execute(sa.text(f"EXPLAIN {sql}"), params)
        else:
            rows = conn.execute(sa.text(f"EXPLAIN QUERY PLAN {sql}"), params)
        return "\n".join(" ".join(str(c) for c in r) for r in rows)


@pytest.mark.parametrize(
    ("sql", "index"),  # index: the one SQLite must use
    [
        ("SELECT count(*) FROM annotations WHERE family = :f AND seq > :w", "ix_annotations_family_seq"),
        (
            "SELECT count(*) FROM annotations WHERE family = :f AND ingested_at > :t",
            "ix_annotations_family_ingested_at",
        ),
    ],
)
def test_new_annotations_since_a_watermark_is_an_index_range_scan(store, config, sql, index):
    families = ["access-qa", "intent-router"]
    lines = [
        (
            f'{{"kind":"qa_pair","family":"access-qa","question":"q{i}","answer":"a"}}'
            if i % 2
            else f'{{"kind":"intent_label","family":"intent-router","text":"t{i}","label":"balance"}}'
        ).encode()
        for i in range(3000)
    ]
    ingest_lines(store, lines, config, source="t")
    with store.engine.begin() as conn:
        conn.execute(sa.text("ANALYZE"))
    # A selective watermark, as a sensor's is: only the newest rows qualify.
    params = {"f": families[0], "w": 2900, "t": dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)}
    plan = _plan(store, sql, params)
    column = "seq" if "seq" in sql else "ingested_at"
    if store.dialect == "sqlite":
        assert f"USING COVERING INDEX {index} (family=? AND {column}>?)" in plan, plan
    else:
        # The planner may pick the family index or the primary key; either way a range on an index.
        assert "Seq Scan" not in plan and f"{column} >" in plan.split("Index Cond:")[1], plan


def test_count_since_counts_only_newer_rows_of_the_family(store, config):
    lines = [
        f'{{"kind":"qa_pair","family":"access-qa","question":"q{i}","answer":"a"}}'.encode() for i in range(5)
    ] + [b'{"kind":"intent_label","family":"intent-router","text":"hi","label":"greeting"}']
    ingest_lines(store, lines, config, source="t")
    assert store.annotations.count_since("access-qa") == 5
    mark = store.annotations.latest_seq("access-qa")
    ingest_lines(
        store, [b'{"kind":"qa_pair","family":"access-qa","question":"new","answer":"a"}'], config, source="t"
    )
    assert store.annotations.count_since("access-qa", mark) == 1
    assert store.annotations.count_since("intent-router") == 1


def test_unreachable_database_is_one_clear_error(postgres):
    dead = postgres.url().replace(f":{postgres.port}/", ":1/")
    with pytest.raises(
        StoreError,
        match=r"cannot connect to the annotation store at postgresql\+psycopg2://postgres@127.0.0.1:1/",
    ):
        Store(dead)


def test_password_is_hidden_in_errors():
    with pytest.raises(StoreError) as exc:
        Store("postgresql+psycopg2://user:s3cret@127.0.0.1:1/db")
    assert "s3cret" not in str(exc.value) and "***" in str(exc.value)


def test_bad_url_is_a_clear_error():
    with pytest.raises(StoreError, match="is not a database URL"):
        Store("not a url")


# -- migrations from older databases ------------------------------------------------------------

REGISTRY_TABLES = {"adapter_versions", "deployments", "training_locks"}
T0 = dt.datetime(2026, 11, 20, 8, 30, 15, 123456, tzinfo=dt.UTC)


def _columns(store: Store, table: str) -> set[str]:
    with store.engine.connect() as conn:
        return {c["name"] for c in sa.inspect(conn).get_columns(table)}


def _schema_diff(store: Store) -> list:
    """Where the migrated database and schema.py differ, column comments aside (those are checked by
    test_migrations_apply_on_first_use_and_match_the_tables)."""
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    return [d for d in diff if not (isinstance(d, list) and all(op[0] == "modify_comment" for op in d))]


def _downgrade(store: Store, target: str) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", "pulse_pipeline.core.store:migrations")
    with store.engine.connect() as conn, conn.begin():
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, target)


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


def test_migration_upgrades_a_0001_database_keeping_its_data(database_url):
    with Store(database_url, upgrade=False) as old:
        assert old.upgrade("0001") == "0001"
        with old.engine.connect() as conn:
            assert not REGISTRY_TABLES & set(sa.inspect(conn).get_table_names())
        _insert_at_0001(old)
    with Store(database_url) as new:  # first open of the new code: upgrades to head
        assert new.revision() == "0007"
        assert new.annotations.count_since("access-qa") == 1
        with new.engine.connect() as conn:
            assert set(sa.inspect(conn).get_table_names()) >= REGISTRY_TABLES
        assert _schema_diff(new) == []
        versions = _columns(new, "adapter_versions")
        assert "state" in versions and "status" not in versions
        assert {"run_id", "baseline_version", "evaluated_at", "watermark"} <= versions
        assert {"run_id", "host", "pid"} <= _columns(new, "training_locks")
        holder = LockHolder("cli:alice", "run-1", "h", 42)
        assert new.locks.insert("access-qa", holder)
        assert new.locks.get("access-qa").holder == holder


def test_migration_0002_downgrades_cleanly(store):
    _downgrade(store, "0001")
    assert store.revision() == "0001"
    with store.engine.connect() as conn:
        assert not REGISTRY_TABLES & set(sa.inspect(conn).get_table_names())
    assert store.upgrade() == "0007"
    assert _schema_diff(store) == []


# version: (status, decision, traffic_share, removed_at) as 0003 kept them -> the state 0004 gives
OLD_VERSIONS = {
    "v-candidate": (("candidate", None, 0.0, None), "published"),
    "v-judged": (("candidate", "REVIEW", 0.0, None), "evaluated"),
    "v-production": (("deployed", "DEPLOY", 1.0, None), "production"),
    "v-canary": (("deployed", "DEPLOY", 0.1, None), "canary"),
    "v-archived": (("archived", "DEPLOY", 0.0, None), "retired"),
    "v-rolled-back": (("rolled_back", "DEPLOY", 0.0, None), "retired"),
    # The old code marked a version failed when its gate said FAIL: its files are there.
    "v-failed": (("failed", "FAIL", 0.0, None), "evaluated"),
    "v-removed": (("archived", "DEPLOY", 0.0, T0), "removed"),
}


def _insert_at_0003(store: Store) -> None:
    with store.engine.begin() as conn:
        for version, ((status, decision, share, removed_at), _) in OLD_VERSIONS.items():
            conn.execute(
                sa.text(
                    "INSERT INTO adapter_versions (family, version, base_model, dataset_version, "
                    "training_config, metrics, decision, status, created_at, created_by, traffic_share, "
                    "semantic_version, removed_at) VALUES ('access-qa', :v, 'base', 'ds-1', '{\"r\": 16}', "
                    "NULL, :d, :s, :t, 'cli', :share, '1.0.0', :removed)"
                ),
                {"v": version, "d": decision, "s": status, "t": T0, "share": share, "removed": removed_at},
            )
        conn.execute(
            sa.text(
                "INSERT INTO training_locks (family, holder, acquired_at, heartbeat_at) "
                "VALUES ('access-qa', 'cli pid 1 on a', :t, :t)"
            ),
            {"t": T0},
        )


def _states(store: Store) -> dict[str, str]:
    with store.engine.connect() as conn:
        return dict(conn.execute(sa.text("SELECT version, state FROM adapter_versions")).all())


def test_migration_0004_gives_every_old_status_its_state(database_url):
    with Store(database_url, upgrade=False) as s:
        assert s.upgrade("0003") == "0003"
        assert "status" in _columns(s, "adapter_versions")
        assert not {"host", "pid", "run_id"} & _columns(s, "training_locks")
        _insert_at_0003(s)

        assert s.upgrade() == "0007"
        expected = {version: state for version, (_, state) in OLD_VERSIONS.items()}
        assert _states(s) == expected
        with s.engine.connect() as conn:
            lock = conn.execute(sa.text("SELECT holder, run_id, host, pid FROM training_locks")).one()
            kept = conn.execute(
                sa.text(
                    "SELECT decision, traffic_share, removed_at FROM adapter_versions WHERE version = 'v-removed'"
                )
            ).one()
        assert tuple(lock) == ("cli pid 1 on a", None, "", 0)
        assert kept.decision == "DEPLOY" and kept.traffic_share == 0.0 and kept.removed_at is not None
        row = s.locks.get("access-qa")
        assert (row.holder.who, row.holder.run_id, row.holder.pid, row.acquired_at) == (
            "cli pid 1 on a",
            None,
            0,
            T0,
        )

        _downgrade(s, "0003")
        assert s.revision() == "0003"
        assert "state" not in _columns(s, "adapter_versions")
        assert not {"host", "pid", "run_id"} & _columns(s, "training_locks")
        assert s.upgrade() == "0007"
        assert _states(s) == expected  # the round trip keeps every state
        assert _schema_diff(s) == []
        with s.engine.connect() as conn:
            assert tuple(conn.execute(sa.text("SELECT host, pid FROM training_locks")).one()) == ("", 0)
