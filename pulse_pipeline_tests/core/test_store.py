import datetime as dt

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from pulse_pipeline.core.ingestion import ingest_lines
from pulse_pipeline.core.store import Store, StoreError, metadata


def test_migrations_apply_on_first_use_and_match_the_tables(store):
    assert store.revision() == "0003"
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
        assert again.upgrade() == "0003"
        assert again.count_since("access-qa") == 1


def test_an_empty_database_has_no_revision_until_upgraded(database_url):
    with Store(database_url, upgrade=False) as s:
        assert s.revision() is None
        assert s.upgrade() == "0003"


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
    assert store.count_since("access-qa") == 5
    mark = store.latest_seq("access-qa")
    ingest_lines(
        store, [b'{"kind":"qa_pair","family":"access-qa","question":"new","answer":"a"}'], config, source="t"
    )
    assert store.count_since("access-qa", mark) == 1
    assert store.count_since("intent-router") == 1


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
