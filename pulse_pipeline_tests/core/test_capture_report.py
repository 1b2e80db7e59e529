"""The daily capture report on a real store (SQLite and PostgreSQL): one day's records by review
status, rates among that day's captures only, the queue across days, and the threshold."""

import datetime as dt

import orjson
import pytest

from pulse_pipeline.core.artifacts import open_artifact_store
from pulse_pipeline.core.capture_report import capture_report, count_day
from pulse_pipeline.core.ingestion import ingest_lines
from pulse_pipeline_tests.core.test_examples import rows

DAY = dt.date(2026, 6, 30)


def _capture(text, confidence, provider="encoder", day=DAY, **extra):
    return {"kind": "intent_label", "family": "intent-router", "text": text, "label": "balance",
            "predicted_label": "balance", "confidence": confidence, "provider": provider,
            "created_at": f"{day.isoformat()}T10:00:00Z", **extra}  # fmt: skip


def _lines(records):
    return [orjson.dumps(r) for r in records]


def test_counts_a_day_by_review_status(config):
    family = config.family("intent-router")
    counts = count_day(rows(config, [
        _capture("a", 0.95), _capture("b", 0.90), _capture("c", 0.80), _capture("d", 0.40),
        _capture("e", 0.99, provider="llm_fallback"),
        _capture("f", 0.5, annotator="amy"),  # a person's label: human-judged, not a capture
    ]), family)  # fmt: skip
    assert counts.annotations == 6 and counts.captures == 5
    assert dict(counts.by_status) == {
        "auto_approved": 2, "needs_review": 1, "priority_review": 2, "human_reviewed": 1
    }  # fmt: skip
    assert counts.confidences == [0.95, 0.90, 0.80, 0.40, 0.99]


def test_report_from_the_store(store, config, tmp_path):
    family = config.family("intent-router")  # minimum 200
    before = DAY - dt.timedelta(days=1)
    day = [
        _capture("a", 0.95), _capture("b", 0.90), _capture("c", 0.80), _capture("d", 0.40),
        _capture("e", 0.70), {**_capture("a human", 0.5), "annotator": "amy"},
        _capture("mislabelled", 0.99, id="cap-bad"),  # invalidated below: counted apart
    ]  # fmt: skip
    other_days = [_capture("old", 0.30, day=before), _capture("next", 0.99, day=DAY + dt.timedelta(days=1))]
    bad = b'{"kind": "intent_label", "family": "intent-router", "text": "x", "created_at": "2026-06-30T11:00:00Z"}'
    ingest_lines(store, [*_lines(day + other_days), bad], config, source="t")
    store.fixes.invalidate("intent-router", ids=["cap-bad"], reason="wrong label set", by="test")

    report = capture_report(store, open_artifact_store(str(tmp_path / "artifacts")), family, DAY)
    assert (report.annotations, report.captures, report.human_judged) == (6, 5, 1)
    assert (report.auto_approved, report.awaiting_review, report.awaiting_priority_review) == (2, 2, 1)
    assert report.quarantined == 1  # the line without a label, dated that day
    assert report.invalidated == 1
    assert report.auto_approval_rate == pytest.approx(2 / 5)
    assert report.average_confidence == pytest.approx((0.95 + 0.90 + 0.80 + 0.40 + 0.70) / 5)
    assert (report.review_queue, report.review_queue_priority) == (4, 2)  # c, e, d, and "old" the day before
    assert (report.new_trainable, report.min_new_annotations) == (4, 200)  # a, b, the human one, "next"
    assert report.threshold_reached is False
    meta = report.metadata()
    assert meta["training_threshold_reached"] is False and meta["auto_approval_rate"] == pytest.approx(0.4)
    assert all(isinstance(v, int | float) for v in meta.values())
    assert "4 of 200 new trainable annotations (not reached)" in report.summary()


def test_a_family_without_captures_has_no_rates_and_no_queue(store, config, tmp_path):
    family = config.family("access-qa")
    qa = [{"kind": "qa_pair", "family": "access-qa", "question": f"q{i}", "answer": "a",
           "created_at": "2026-06-30T09:00:00Z"} for i in range(50)]  # fmt: skip
    ingest_lines(store, _lines(qa), config, source="t")
    report = capture_report(store, open_artifact_store(str(tmp_path / "artifacts")), family, DAY)
    assert (report.annotations, report.human_judged, report.captures, report.review_queue) == (50, 50, 0, 0)
    assert report.threshold_reached is True  # 50 of 50
    assert "auto_approval_rate" not in report.metadata() and "average_confidence" not in report.metadata()
