import datetime as dt
import json
import tracemalloc

import pytest
import sqlalchemy as sa

from pulse_pipeline.core.ingestion import IngestError, ingest_file
from pulse_pipeline.core.store import annotations, ingestions, quarantine
from pulse_pipeline.demo.data import DemoScale, write_demo_file

SQL_TEXT = "Robert'); DROP TABLE annotations;-- SELECT * FROM quarantine WHERE 1=1; \\x00"
BIG_TEXT = "lorem ipsum " * (1024 * 1024 // 12)  # ~1 MB


def qa(question: str, **extra) -> bytes:
    return json.dumps(
        {"kind": "qa_pair", "family": "access-qa", "question": question, "answer": "a", **extra}
    ).encode()


HOSTILE = [
    qa("good one"),  # accepted
    qa("good one"),  # exact duplicate line
    b'{"kind": "qa_pair", "family": "access-qa", "question": "broken"',  # broken JSON
    b"not json at all",
    b'["a", "list"]',
    b'{"kind": "intent_label", "family": "intent-router", "text": 5, "label": "balance"}',  # wrong type
    b'{"kind": "intent_label", "family": "intent-router", "label": "balance"}',  # missing field
    b'{"kind": "intent_label", "family": "intent-router", "text": "t", "label": "balance", "confidence": 1.7}',
    b'{"kind": "feedback", "family": "access-qa", "query": "q", "response": "r", "rating": 9}',
    b'{"kind": "segment_review", "family": "call-analysis", "call_id": "c", "segment_key": "k", '
    b'"segment_type": "agent_action", "segment_text": "t", "ai_assessment": "a", "trainer_assessment": "a", '
    b'"timestamp_start": 15.5, "timestamp_end": 12.0}',
    b'{"kind": "thumbs_up", "family": "access-qa"}',  # unknown kind
    b'{"kind": "qa_pair", "family": "no-such-family", "question": "q", "answer": "a"}',  # unknown family
    b'{"kind": "qa_pair", "family": "access-qa", "question": "caf\xe9", "answer": "a"}',  # invalid UTF-8 (latin-1)
    b"\xff\xfe\x00garbage",  # invalid UTF-8 with a NUL byte
    b'{"kind": "qa_pair", "family": "access-qa", "question": "nul\x00byte", "answer": "a"}',  # raw NUL
    b'{"kind": "qa_pair", "family": "access-qa", "question": "escaped \\u0000 nul", "answer": "a"}',
    b'{"kind": "qa_pair", "family": "access-qa", "question": "lone \\ud800 surrogate", "answer": "a"}',
    b'{"kind": "intent_label", "family": "intent-router", "text": "t", "label": "balance", "confidence": NaN}',
    qa(BIG_TEXT),  # a 1 MB text: accepted
    qa(SQL_TEXT, annotator="x'; DELETE FROM annotations; --"),  # stored verbatim
    b"",
    b"   ",
    b"{}",
    b"null",
    qa("crlf line") + b"\r",
]


@pytest.fixture
def hostile_file(tmp_path):
    path = tmp_path / "hostile.jsonl"
    path.write_bytes(b"\n".join(HOSTILE) + b"\n")
    return path


def test_hostile_file_is_fully_accounted_for(store, config, hostile_file):
    result = ingest_file(store, hostile_file, config)
    non_empty = sum(1 for line in HOSTILE if line.strip())
    assert result.lines == non_empty
    assert result.blank_lines == 2
    assert result.accepted + result.duplicates + result.quarantined == non_empty
    assert (result.accepted, result.duplicates) == (4, 1)
    with store.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(annotations)).scalar_one() == 4
        rows = list(conn.execute(sa.select(quarantine).order_by(quarantine.c.line_number)))
        run = conn.execute(sa.select(ingestions)).one()
    assert len(rows) == result.quarantined
    assert (run.lines, run.accepted, run.duplicates, run.quarantined) == (
        result.lines,
        result.accepted,
        result.duplicates,
        result.quarantined,
    )
    assert run.finished_at is not None
    by_line = {r.line_number: r for r in rows}
    # Raw bytes are kept exactly, even when they are not UTF-8 or hold NUL bytes.
    assert by_line[14].raw == HOSTILE[13] and "not valid UTF-8" in by_line[14].reason
    assert by_line[15].raw == HOSTILE[14]
    reasons = {r.line_number: r.reason for r in rows}
    assert reasons[3].startswith("line 3: not valid JSON")
    assert reasons[5] == "line 5: a record must be a JSON object, got list"
    assert "line 6: intent_label.text 5" in reasons[6]
    assert reasons[7] == "line 7: intent_label.text is missing"
    assert "intent_label.confidence 1.7" in reasons[8]
    assert "feedback.rating 9" in reasons[9]
    assert reasons[10] == "line 10: segment_review.timestamp_end 12.0 is before timestamp_start 15.5"
    assert "kind 'thumbs_up' is not an annotation kind" in reasons[11]
    assert "'no-such-family' is not declared" in reasons[12]
    assert "byte 0xe9" in reasons[13]
    assert "NUL character" in reasons[16]
    assert "surrogate" in reasons[17]
    assert reasons[23] == "line 23: kind is missing"
    assert by_line[9].family == "access-qa" and by_line[12].family is None


def test_sql_looking_text_is_stored_verbatim(store, config, hostile_file):
    ingest_file(store, hostile_file, config)
    with store.engine.connect() as conn:
        row = conn.execute(
            sa.select(annotations.c.payload, annotations.c.annotator).where(
                annotations.c.annotator.like("x'%")
            )
        ).one()
        big = conn.execute(
            sa.select(annotations.c.payload).where(annotations.c.source_line == 19)
        ).scalar_one()
    assert row.payload["question"] == SQL_TEXT
    assert row.annotator == "x'; DELETE FROM annotations; --"
    assert big["question"] == BIG_TEXT


def test_reingesting_is_a_no_op(store, config, tmp_path):
    demo = write_demo_file(
        tmp_path / "demo.jsonl", anchor=dt.date(2026, 6, 30), scale=DemoScale().scaled(0.2)
    )
    first = ingest_file(store, demo.path, config)
    second = ingest_file(store, demo.path, config)
    assert first.accepted == sum(demo.counts.values()) and first.quarantined == demo.flawed_lines
    assert second.accepted == 0
    assert second.duplicates == first.accepted
    assert second.quarantined == first.quarantined  # a bad line is reported again, every time
    assert store.annotations.count_since("intent-router") == demo.counts["intent_label"]


def test_batches_do_not_change_the_outcome(store, config, tmp_path):
    demo = write_demo_file(
        tmp_path / "demo.jsonl", anchor=dt.date(2026, 6, 30), scale=DemoScale().scaled(0.05)
    )
    doubled = tmp_path / "doubled.jsonl"
    doubled.write_bytes(demo.path.read_bytes() * 2)  # duplicates both inside and across batches
    result = ingest_file(store, doubled, config, batch_size=7)
    total = sum(demo.counts.values())
    assert (result.accepted, result.duplicates, result.quarantined) == (total, total, 2 * demo.flawed_lines)


def test_duplicate_judgment_under_a_new_id_is_a_duplicate(store, config):
    from pulse_pipeline.core.ingestion import ingest_lines

    result = ingest_lines(
        store, [qa("same", id="a-1"), qa("same", id="a-2"), qa("other", id="a-1")], config, source="t"
    )
    assert (result.accepted, result.duplicates) == (1, 2)


def test_every_family_day_audits_clean_after_ingest(store, config, hostile_file, tmp_path):
    demo = write_demo_file(
        tmp_path / "demo.jsonl", anchor=dt.date(2026, 6, 30), scale=DemoScale().scaled(0.1)
    )
    ingest_file(store, demo.path, config)
    ingest_file(store, hostile_file, config)
    ingest_file(store, demo.path, config)
    days = store.annotations.days_with_annotations()
    assert len(days) >= 5
    for family in config.families:
        for day in days:
            audit = store.annotations.audit_day(family, day)
            assert audit.accounted_for, (family, day, audit)


def test_audit_notices_a_lost_row(store, config):
    from pulse_pipeline.core.ingestion import ingest_lines

    ingest_lines(
        store,
        [qa("one", created_at="2026-05-01T10:00:00Z"), qa("two", created_at="2026-05-01T11:00:00Z")],
        config,
        source="t",
    )
    day = dt.date(2026, 5, 1)
    assert store.annotations.audit_day("access-qa", day).accounted_for
    with store.engine.begin() as conn:
        conn.execute(annotations.delete().where(annotations.c.source_line == 1))
    audit = store.annotations.audit_day("access-qa", day)
    assert not audit.accounted_for and (audit.accepted, audit.stored) == (2, 1)


def test_oversized_line_is_quarantined_with_its_head(store, config, tmp_path):
    path = tmp_path / "big.jsonl"
    path.write_bytes(qa("x" * 5000) + b"\n" + qa("fine") + b"\n")
    result = ingest_file(store, path, config, max_line_bytes=1000)
    assert (result.accepted, result.quarantined) == (1, 1)
    row = store.annotations.quarantined()[0]
    assert row.raw_size > 5000 and "over the 1000-byte limit" in row.reason and row.line_number == 1


def test_unreadable_file_is_an_ingest_error(store, config, tmp_path):
    with pytest.raises(IngestError, match="cannot be read"):
        ingest_file(store, tmp_path / "missing.jsonl", config)
    with pytest.raises(IngestError, match="is a folder"):
        ingest_file(store, tmp_path, config)


@pytest.mark.slow
def test_memory_does_not_grow_with_the_file(config, tmp_path):
    """Streaming: peak traced memory for 4x the lines stays about the same."""
    from pulse_pipeline.core.store import Store

    peaks = []
    for n in (5_000, 20_000):
        path = tmp_path / f"{n}.jsonl"
        with path.open("wb") as fh:
            for i in range(n):
                fh.write(qa(f"{i} " + "q" * 200) + b"\n")
        with Store(f"sqlite:///{tmp_path / f'{n}.db'}") as store:
            tracemalloc.start()
            result = ingest_file(store, path, config, batch_size=1000)
            peaks.append(tracemalloc.get_traced_memory()[1])
            tracemalloc.stop()
        assert result.accepted == n
    assert peaks[1] < 1.5 * peaks[0], peaks


def test_concurrent_ingests_of_one_file_store_each_record_once(store, config, tmp_path):
    """Two ingestions racing over the same records (and batches racing inside each) still
    account for every line and store each record exactly once."""
    from concurrent.futures import ThreadPoolExecutor

    demo = write_demo_file(
        tmp_path / "demo.jsonl", anchor=dt.date(2026, 6, 30), scale=DemoScale().scaled(0.3)
    )
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: ingest_file(store, demo.path, config, batch_size=50), range(2)))
    total = sum(demo.counts.values())
    assert sum(r.accepted for r in results) == total
    assert all(r.accepted + r.duplicates + r.quarantined == r.lines for r in results)
    with store.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(annotations)).scalar_one() == total
        runs = list(conn.execute(sa.select(ingestions)))
    assert sorted(r.accepted for r in runs) == sorted(r.accepted for r in results)
    for day in store.annotations.days_with_annotations():
        for family in config.families:
            assert store.annotations.audit_day(family, day).accounted_for


def test_an_annotator_given_at_ingest_signs_records_that_name_none(store, config, tmp_path):
    label = config.family("intent-router").labels[0]
    rows = [
        {"kind": "intent_label", "family": "intent-router", "text": "unsigned", "label": label},
        {"kind": "intent_label", "family": "intent-router", "text": "signed", "label": label, "annotator": "ann"},
    ]
    path = tmp_path / "labelled.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert ingest_file(store, path, config, annotator="crowd").accepted == 2
    with store.engine.connect() as conn:
        stored = dict(conn.execute(sa.select(annotations.c.annotator, annotations.c.payload)).all())
    assert set(stored) == {"crowd", "ann"}


def test_a_csv_table_of_text_and_label_ingests_as_the_familys_kind(store, config, tmp_path):
    labels = config.family("intent-router").labels
    path = tmp_path / "labelled.csv"
    path.write_text(f"text,label\nfirst one,{labels[0]}\nsecond one,{labels[1]}\nthird one,not-a-label\n")
    result = ingest_file(store, path, config, annotator="crowd", family="intent-router")
    assert (result.accepted, result.quarantined) == (2, 1)
    assert result.reasons == ["line 4: intent_label.label 'not-a-label' is not a label of family 'intent-router'"]
    with store.engine.connect() as conn:
        stored = conn.execute(sa.select(annotations.c.kind, annotations.c.annotator)).all()
    assert sorted(stored) == [("intent_label", "crowd")] * 2


def test_a_csv_table_says_what_it_needs_before_anything_is_ingested(store, config, tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("question,answer\nq?,a\n")
    with pytest.raises(IngestError, match=r"t.csv: no family column: give the family"):
        ingest_file(store, path, config)
    with pytest.raises(IngestError, match=r"no kind column and access-qa learns from several .*give --kind"):
        ingest_file(store, path, config, family="access-qa")
    with pytest.raises(IngestError, match=r"--family 'nope' is not a family"):
        ingest_file(store, path, config, family="nope")
    assert ingest_file(store, path, config, family="access-qa", kind="qa_pair").accepted == 1
    with pytest.raises(IngestError, match=r"--family and --kind apply to CSV files"):
        ingest_file(store, tmp_path / "x.jsonl", config, family="access-qa")
