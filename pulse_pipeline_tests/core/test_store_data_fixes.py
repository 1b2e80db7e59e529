"""Invalidating annotations and replacing a day, on SQLite and on a real PostgreSQL server: the
records stay stored, every query that trains or counts skips them, the day's audit still adds up,
and the fix is logged with who, when and why."""

import datetime as dt

import orjson
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from pulse_pipeline.core.examples import build_examples
from pulse_pipeline.core.ingestion import IngestError, ingest_lines, replace_day
from pulse_pipeline.core.retraining import count_new
from pulse_pipeline.core.review import review_queue
from pulse_pipeline.core.store import InvalidationError, Store, annotations

DAY1, DAY2 = dt.date(2026, 6, 29), dt.date(2026, 6, 30)


def intent(i: int, day: dt.date, label: str = "balance", **extra) -> dict:
    return {"kind": "intent_label", "family": "intent-router", "text": f"utterance number {i}",
            "label": label, "annotator": "ann", "created_at": f"{day}T12:00:00Z", **extra}  # fmt: skip


def lines(records) -> list[bytes]:
    return [orjson.dumps(r) for r in records]


@pytest.fixture
def two_days(store, config):
    """Five intent labels on each of two days, plus one captured prediction waiting for review."""
    records = [intent(i, DAY1) for i in range(5)] + [intent(i, DAY2) for i in range(5, 10)]
    capture = intent(99, DAY2, confidence=0.5, provider="encoder")
    del capture["annotator"]
    ingest_lines(store, lines([*records, capture]), config, source="days.jsonl")
    return store


def ids_of(store, day, **kw):
    return [r.id for r in store.annotations.iter_day("intent-router", day, **kw)]


def test_invalidating_a_day_hides_it_from_everything_that_trains_or_counts(two_days, config):
    store, family = two_days, config.family("intent-router")
    before_seq = store.annotations.latest_seq("intent-router")
    assert len(review_queue(store.annotations.iter_family("intent-router"), family).items) == 1
    fix = store.fixes.invalidate("intent-router", day=DAY2, reason="labels from a broken export", by="cli:ana")
    assert (fix.invalidated, fix.already_invalidated) == (6, 0)
    assert ids_of(store, DAY2) == [] and len(ids_of(store, DAY2, include_invalidated=True)) == 6
    assert len(ids_of(store, DAY1)) == 5
    assert store.annotations.count_since("intent-router") == 5
    assert sum(1 for _ in store.annotations.iter_family("intent-router")) == 5
    assert count_new(store, family, 0).count == 5
    assert review_queue(store.annotations.iter_family("intent-router"), family).items == []
    table, stats = build_examples(store, family)
    assert table.num_rows == 5 and set(table["id"].to_pylist()) == set(ids_of(store, DAY1))
    # The watermark never goes back: an earlier retrain's run key is not reused.
    assert store.annotations.latest_seq("intent-router") == before_seq and stats.watermark == before_seq
    assert stats.invalidations == store.fixes.latest_invalidation("intent-router") > 0
    # The day's audit: the rows were received and stored, and are shown as invalidated.
    audit = store.annotations.audit_day("intent-router", DAY2)
    assert audit.accounted_for and (audit.stored, audit.invalidated) == (6, 6)
    (log,) = store.fixes.invalidation_log("intent-router")
    assert (log.action, log.day, log.by, log.reason, log.annotations) == (
        "invalidate", DAY2, "cli:ana", "labels from a broken export", 6
    )  # fmt: skip
    first = ids_of(store, DAY2, include_invalidated=True)[0]
    with store.engine.connect() as conn:
        row = conn.execute(sa.select(annotations).where(annotations.c.id == first)).one()
    assert row.invalidation_id == log.id and row.invalidated_at is not None


def test_invalidating_some_ids_and_naming_a_wrong_one(two_days):
    store = two_days
    day2 = ids_of(store, DAY2)
    fix = store.fixes.invalidate("intent-router", day=DAY2, ids=day2[:2], reason="typo", by="t")
    assert fix.invalidated == 2 and ids_of(store, DAY2) == day2[2:]
    again = store.fixes.invalidate("intent-router", day=DAY2, ids=day2[:3], reason="typo", by="t")
    assert (again.invalidated, again.already_invalidated) == (1, 2)
    day1_id = ids_of(store, DAY1)[0]
    with pytest.raises(
        InvalidationError, match=rf"annotation '{day1_id}' is not a intent-router annotation of {DAY2}"
    ):
        store.fixes.invalidate("intent-router", day=DAY2, ids=[day2[4], day1_id], reason="x", by="t")
    assert ids_of(store, DAY2) == day2[3:]  # nothing changed by the refused call
    with pytest.raises(InvalidationError, match="'nope' is not a access-qa annotation"):
        store.fixes.invalidate("access-qa", day=DAY2, ids=["nope"], reason="x", by="t")


def test_replacing_a_day_invalidates_what_the_file_dropped_and_restores_what_it_repeats(
    two_days, config, tmp_path
):
    store = two_days
    old = {r.id: r for r in store.annotations.iter_day("intent-router", DAY2)}
    store.fixes.invalidate("intent-router", day=DAY2, ids=[ids_of(store, DAY2)[0]], reason="first look", by="t")
    corrected = [intent(i, DAY2) for i in range(5, 8)]  # 5 (invalidated before), 6, 7 kept as they were
    corrected += [intent(8, DAY2, label="greeting")]  # 8 corrected: a new record
    corrected += [intent(7, DAY2)]  # a repeated line: a duplicate
    path = tmp_path / "fixed.jsonl"
    path.write_bytes(b"\n".join(lines(corrected)) + b"\n\n")
    result = replace_day(store, path, config, DAY2, by="cli:ana")
    counts = (result.accepted, result.restored, result.invalidated, result.duplicates, result.quarantined)
    assert counts == (1, 3, 3, 1, 0)  # 8-greeting new; 5, 6, 7 restored; old 8, 9 and the capture dropped
    valid = ids_of(store, DAY2)
    assert len(valid) == 4 and set(valid) - set(old) == {result_id(corrected[3], config)}
    assert ids_of(store, DAY1) and len(ids_of(store, DAY1)) == 5  # other days untouched
    audit = store.annotations.audit_day("intent-router", DAY2)
    assert audit.accounted_for, audit
    assert (audit.restored, audit.invalidated, audit.stored) == (3, 3, 7)
    actions = [(r.action, r.annotations, r.reason) for r in store.fixes.invalidation_log("intent-router")]
    assert actions[1:] == [("invalidate", 3, f"replaced by {path}"), ("restore", 1, f"replaced by {path}")]
    again = replace_day(store, path, config, DAY2, by="cli:ana")  # the same fix twice changes nothing
    assert (again.accepted, again.restored, again.invalidated, again.duplicates) == (0, 4, 0, 1)


def result_id(record: dict, config) -> str:
    from pulse_pipeline.core.annotations import parse_record

    return parse_record(record, config).id


def test_replace_day_refuses_a_file_with_another_day_or_a_reused_id_and_changes_nothing(
    two_days, config, tmp_path
):
    store = two_days
    before = ids_of(store, DAY2)
    path = tmp_path / "wrong.jsonl"
    path.write_bytes(b"\n".join(lines([intent(5, DAY2), intent(50, DAY1)])))
    with pytest.raises(
        IngestError,
        match=rf"wrong.jsonl: line 2: created_at 2026-06-29T12:00:00\+00:00 is not on the replaced day {DAY2}",
    ):
        replace_day(store, path, config, DAY2, by="t")
    undated = intent(51, DAY2)
    del undated["created_at"]
    path.write_bytes(orjson.dumps(undated))
    with pytest.raises(IngestError, match="line 1: no created_at"):
        replace_day(store, path, config, DAY2, by="t")
    path.write_bytes(orjson.dumps(intent(5, DAY2, label="greeting", id=before[0])))
    with pytest.raises(
        IngestError, match=rf"line 1: id '{before[0]}' is taken by a stored record with other content"
    ):
        replace_day(store, path, config, DAY2, by="t")
    # A line that would be quarantined: replacing the day first would leave it without the record.
    path.write_bytes(
        b"\n".join([*lines([intent(5, DAY2)]), b"not json", *lines([intent(6, DAY2, label="nope")])])
    )
    with pytest.raises(IngestError, match=r"line 2: not valid JSON .*nothing was changed"):
        replace_day(store, path, config, DAY2, by="t")
    path.write_bytes(b"\n".join(lines([intent(5, DAY2), intent(6, DAY2, label="no-such-intent")])))
    with pytest.raises(IngestError, match=r"line 2: .*no-such-intent.*nothing was changed"):
        replace_day(store, path, config, DAY2, by="t")
    assert ids_of(store, DAY2) == before and store.fixes.invalidation_log("intent-router") == []


def test_migration_0003_upgrades_a_0002_store_keeping_its_data_and_downgrades(database_url, config):
    with Store(database_url, upgrade=False) as old:
        assert old.upgrade("0002") == "0002"
        with old.engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO annotations (id, family, kind, payload, content_hash, created_at, ingested_at) "
                    "VALUES ('a1', 'access-qa', 'qa_pair', '{\"question\": \"q\", \"answer\": \"a\"}', 'h', :t, :t)"
                ),
                {"t": dt.datetime(2026, 6, 30, 12, tzinfo=dt.UTC)},
            )
    with Store(database_url) as new:
        assert new.revision() == "0007"
        assert [r.id for r in new.annotations.iter_family("access-qa")] == ["a1"]  # valid by default
        assert new.fixes.invalidate("access-qa", day=DAY2, reason="r", by="t").invalidated == 1
        cfg = Config()
        cfg.set_main_option("script_location", "pulse_pipeline.core.store:migrations")
        with new.engine.connect() as conn, conn.begin():
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0002")
        assert new.revision() == "0002"
        with new.engine.connect() as conn:
            tables = set(sa.inspect(conn).get_table_names())
            columns = {c["name"] for c in sa.inspect(conn).get_columns("annotations")}
        assert not {"invalidations", "review_sessions"} & tables and "invalidated_at" not in columns
        assert new.upgrade() == "0007"


def test_read_columns_in_a_created_window_and_with_every_row_invalidated(two_days, config):
    store = two_days
    fields = {"text": (("text",), "str")}
    start = dt.datetime.combine(DAY2, dt.time(), tzinfo=dt.UTC)
    window = store.annotations.read_columns("intent-router", fields, created=(start, start + dt.timedelta(days=1)))
    assert sorted(window["id"].to_pylist()) == sorted(ids_of(store, DAY2))  # the capture included
    assert len(window) == 6 and "utterance number 0" not in window["text"].to_pylist()
    for day in (DAY1, DAY2):
        store.fixes.invalidate("intent-router", day=day, reason="all wrong", by="t")
    empty = store.annotations.read_columns("intent-router", fields)
    assert len(empty) == 0 and empty.column_names == [
        "seq",
        "id",
        "kind",
        "created_at",
        "ingested_at",
        "text",
    ]
