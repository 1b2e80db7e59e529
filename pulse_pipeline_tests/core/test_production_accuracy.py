"""Live accuracy per deployed version: what counts as right per kind, the interval, the test
accuracy read from eval/results.json, the alert rule, and when a rollback may follow."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace

import orjson
import pytest

from pulse_pipeline.core.artifacts import open_artifact_store
from pulse_pipeline.core.families import AnnotationKind, ProductionWatchConfig, TaskKind, TriageConfig
from pulse_pipeline.core.ingestion import ingest_file
from pulse_pipeline.core.production_accuracy import (
    NotJudged,
    VersionAccuracy,
    assess,
    eval_accuracy,
    judge,
    live_accuracy,
    metric_of,
    production_accuracy,
    rollback_target,
    wilson,
)

# Every kind learned from, so that triage says human_reviewed for a person's judgment of any kind.
FAMILY = SimpleNamespace(
    triage=TriageConfig(), task=TaskKind.classification, annotation_kinds=tuple(AnnotationKind)
)
V1, V2 = "intent-router-20261101-0900", "intent-router-20261120-0900"
T0 = dt.datetime(2026, 11, 21, 9, 0, tzinfo=dt.UTC)


def _segment(**changes):
    base = {"call_id": "c1", "segment_key": "s1", "segment_type": "agent_action", "segment_text": "Hi",
            "ai_assessment": "good", "trainer_assessment": "good"}  # fmt: skip
    return base | changes


@pytest.mark.parametrize(
    ("kind", "payload", "expected"),
    [
        ("intent_label", {"text": "t", "label": "alarm", "predicted_label": "alarm", "annotator": "a"}, 1.0),
        ("intent_label", {"text": "t", "label": "alarm", "predicted_label": "oos", "annotator": "a"}, 0.0),
        ("intent_label", {"text": "t", "label": "alarm", "annotator": "a"}, NotJudged.no_model_output),
        # A capture (no annotator) is the model's own prediction, not a person's verdict on it.
        ("intent_label", {"text": "t", "label": "alarm", "predicted_label": "alarm", "confidence": 0.99},
         NotJudged.not_reviewed),
        ("segment_review", _segment(), 1.0),
        ("segment_review", _segment(trainer_assessment="poor"), 0.0),
        ("segment_review", _segment(disagreement_reason="too_harsh"), 0.0),
        ("segment_review", _segment(timestamp_start=12, original_timestamp_start=10), 0.0),
        ("feedback", {"query": "q", "response": "r", "rating": 4}, 1.0),
        ("feedback", {"query": "q", "response": "r", "rating": 5}, 1.0),
        ("feedback", {"query": "q", "response": "r", "rating": 3}, 0.0),
        ("feedback", {"query": "q", "response": "r", "thumbs": "up"}, 1.0),
        ("feedback", {"query": "q", "response": "r", "thumbs": "down"}, 0.0),
        ("feedback", {"query": "q", "response": "r", "corrected_response": "better"}, 0.0),
        # A logged interaction is the model's output itself, not a verdict on it.
        ("interaction", {"input": "t", "predicted_label": "alarm", "confidence": 0.99}, NotJudged.not_reviewed),
        ("qa_pair", {"question": "q", "answer": "a"}, NotJudged.no_verdict),
        ("score_label", {"text": "t", "scores": {"clarity": 3}}, NotJudged.no_verdict),
    ],
)  # fmt: skip
def test_what_counts_as_right_per_kind(kind, payload, expected):
    assert judge(kind, payload, FAMILY) == expected


def test_a_call_correction_scores_the_share_of_fields_the_ai_got_right():
    corrected = {"sentiment": "Negative", "quality": 4, "topics": ["billing", "refund"],
                 "compliance": {"greeting": True, "disclosure": False}, "summary": None}  # fmt: skip
    ai = {"sentiment": " negative", "quality": 7, "topics": ["refund", "Billing"],
          "compliance": {"greeting": True, "disclosure": True}, "extra": "ignored"}  # fmt: skip
    # right: sentiment (case, spaces), topics (a set), compliance.greeting, summary (null = absent); wrong:
    # quality, compliance.disclosure -> 4 of 6 leaves.
    score = judge("call_correction", {"call_id": "c", "transcript": "x", "corrected_output": corrected,
                                      "ai_output": ai}, FAMILY)  # fmt: skip
    assert score == pytest.approx(4 / 6)
    no_ai = {"call_id": "c", "transcript": "x", "corrected_output": corrected}
    assert judge("call_correction", no_ai, FAMILY) is NotJudged.no_model_output


def test_wilson_interval():
    assert wilson(0, 0) is None
    low, high = wilson(0, 10)
    assert low == 0 and high == pytest.approx(0.2775, abs=1e-4)
    assert wilson(10, 10)[0] == pytest.approx(0.7225, abs=1e-4)
    low, high = wilson(18, 30)
    assert (round(low, 4), round(high, 4)) == (0.4232, 0.7541)


def _row(kind, payload, minutes, column_version=None):
    created = (T0 + dt.timedelta(minutes=minutes)).replace(tzinfo=None)  # SQLite hands back naive UTC
    return SimpleNamespace(kind=kind, payload=payload, created_at=created, model_version=column_version)


def test_live_accuracy_per_version_in_one_pass():
    label = {"text": "t", "label": "alarm", "annotator": "a"}
    rows = [
        _row("intent_label", label | {"predicted_label": "alarm"}, 5, V1),
        _row("intent_label", label | {"predicted_label": "oos"}, 1, V1),
        _row("intent_label", label | {"predicted_label": "alarm", "model_version": V2}, 9),  # payload only
        _row("intent_label", label, 3, V2),  # no prediction recorded
        _row("intent_label", label | {"predicted_label": "alarm"}, 2),  # no version at all
    ]
    live = live_accuracy(rows, FAMILY)
    assert live.without_version == 1
    v1, v2 = live.versions[V1], live.versions[V2]
    assert (v1.judged, v1.accuracy, dict(v1.by_kind)) == (2, 0.5, {"intent_label": 2})
    assert (v1.first_seen, v1.last_seen) == (T0 + dt.timedelta(minutes=1), T0 + dt.timedelta(minutes=5))
    assert (v2.judged, v2.accuracy, dict(v2.not_judged)) == (1, 1.0, {NotJudged.no_model_output.value: 1})


def _live(right, n):
    acc = VersionAccuracy(V2)
    for i in range(n):
        acc.add(1.0 if i < right else 0.0, "intent_label", T0)
    return acc


@pytest.mark.parametrize(
    ("right", "n", "status"),
    [
        (18, 30, "alert"),  # 60% vs 90%: far below, the interval tops out at 75%
        (26, 30, "ok"),  # 86.7%: within the 5-point margin
        (24, 30, "within noise"),  # 80% is 10 points below, but 30 reviews reach 90% at the top
        (0, 29, "too few reviews"),
    ],
)
def test_the_alert_rule(right, n, status):
    verdict = assess(_live(right, n), 0.9, "", ProductionWatchConfig(margin=0.05, min_reviews=30))
    assert verdict.status == status and verdict.alert is (status == "alert")
    if status == "alert":
        assert verdict.drop == pytest.approx(0.3)
        assert verdict.reason == "live 60.0% (95% 42.3%-75.4%, n=30) vs test 90.0%: 30.0% below, margin 5.0%"


def test_without_a_test_accuracy_nothing_is_compared():
    verdict = assess(_live(0, 100), None, "never evaluated", ProductionWatchConfig())
    assert (verdict.status, verdict.reason, verdict.alert, verdict.drop) == (
        "not compared", "never evaluated", False, None
    )  # fmt: skip


def test_the_metric_defaults_per_task(config):
    assert {name: metric_of(f) for name, f in config.families.items()} == {
        "call-analysis": "field_accuracy",
        "intent-router": "accuracy",
        "article-scorer": None,  # no verdicts on live scores to compare with
        "access-qa": "answer_accuracy",
    }
    family = config.family("intent-router")
    watch = family.automation.production_watch.model_copy(update={"metric": "macro_f1"})
    changed = family.model_copy(
        update={"automation": family.automation.model_copy(update={"production_watch": watch})}
    )
    assert metric_of(changed) == "macro_f1"


def _results(artifacts, version, body):
    artifacts.write_bytes(f"adapters/intent-router/{version}/eval/results.json", body)


def test_the_test_accuracy_comes_from_the_versions_eval_results(tmp_path):
    artifacts = open_artifact_store(str(tmp_path / "artifacts"))
    _results(artifacts, V1, orjson.dumps({"metrics": {"test": {"candidate": {"accuracy": 0.91}},
                                                      "golden": {"candidate": {"accuracy": 0.7}}}}))  # fmt: skip
    assert eval_accuracy(artifacts, "intent-router", V1, "accuracy") == (0.91, "")
    assert eval_accuracy(artifacts, "intent-router", V1, "accuracy", "golden") == (0.7, "")
    assert eval_accuracy(artifacts, "intent-router", V1, "macro_f1")[1] == (
        f"{V1}: no macro_f1 on 'test' in eval/results.json"
    )
    assert eval_accuracy(artifacts, "intent-router", V1, "accuracy", "nightly")[1] == (
        f"{V1}: eval/results.json has no 'nightly' set"
    )
    assert eval_accuracy(artifacts, "intent-router", V2, "accuracy")[1] == (
        f"{V2} was never evaluated (no eval/results.json)"
    )
    _results(artifacts, V2, b"{not json")
    assert eval_accuracy(artifacts, "intent-router", V2, "accuracy")[1] == (
        f"{V2}: eval/results.json is not readable JSON"
    )
    assert eval_accuracy(artifacts, "intent-router", "intent-router-base", "accuracy")[1] == (
        "'intent-router-base' is not a version name of intent-router"
    )
    assert eval_accuracy(artifacts, "intent-router", V1, None)[0] is None


def test_the_report_from_a_real_store(store, config, tmp_path):
    family = config.family("intent-router")
    records = [
        {"kind": "intent_label", "family": "intent-router", "text": f"wake me at {i}", "label": "alarm",
         "predicted_label": "alarm" if i < 18 else "timer", "annotator": "r", "model_version": V2,
         "created_at": (T0 + dt.timedelta(minutes=i)).isoformat()}
        for i in range(30)
    ] + [
        {"kind": "intent_label", "family": "intent-router", "text": f"old {i}", "label": "alarm",
         "predicted_label": "alarm", "annotator": "r", "model_version": V1, "created_at": T0.isoformat()}
        for i in range(3)
    ] + [{"kind": "intent_label", "family": "intent-router", "text": "no version", "label": "alarm",
          "annotator": "r"}]  # fmt: skip
    path = tmp_path / "live.jsonl"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    ingest_file(store, path, config)
    artifacts = open_artifact_store(str(tmp_path / "artifacts"))
    _results(artifacts, V2, orjson.dumps({"metrics": {"test": {"candidate": {"accuracy": 0.9}}}}))
    artifacts.write_bytes("adapters/intent-router/current.json", orjson.dumps({"version": V2}))

    report = production_accuracy(store.annotations.iter_family("intent-router"), artifacts, family)
    assert report.current_version == V2 and report.alert and report.without_version == 1
    assert [w.version for w in report.versions] == [V2, V1]  # production first
    current = report.current
    assert (current.live.judged, current.live.accuracy, current.test) == (30, 0.6, 0.9)
    assert current.live.first_seen == T0 and current.live.last_seen == T0 + dt.timedelta(minutes=29)
    old = report.versions[1]
    assert (old.status, old.reason) == ("not compared", f"{V1} was never evaluated (no eval/results.json)")
    table = report.to_markdown()
    assert f"| **{V2}** | 60.0% | 42.3%-75.4% | 30 | 90.0% | 30.0% | **ALERT**:" in table
    assert "- annotations naming no model_version: 1" in table
    assert current.to_json()["first_seen"] == T0.isoformat()


def test_the_production_version_is_listed_before_any_review(tmp_path, config):
    artifacts = open_artifact_store(str(tmp_path / "artifacts"))
    nothing = production_accuracy([], artifacts, config.family("intent-router"))
    assert (nothing.current, nothing.alert, nothing.summary()) == (
        None, False, "intent-router has no production version yet"
    )  # fmt: skip
    assert "No reviewed output names a model version yet." in nothing.to_markdown()
    artifacts.write_bytes("adapters/intent-router/current.json", orjson.dumps({"version": V2}))
    _results(artifacts, V2, orjson.dumps({"metrics": {"test": {"candidate": {"accuracy": 0.9}}}}))
    report = production_accuracy([], artifacts, config.family("intent-router"))
    assert [(w.version, w.status, w.reason) for w in report.versions] == [
        (V2, "too few reviews", "0 of 30 judged outputs")
    ]
    assert not report.alert


@pytest.mark.parametrize(
    ("current", "alerting", "expected"),
    [
        ({"version": V2, "previous_version": V1, "traffic": [{"version": V2, "share": 1.0}]}, [V2], (V1, "")),
        ({"version": V1, "previous_version": V2}, [V2], (None, f"production is now {V1}, not {V2}: nothing to roll back")),
        (None, [V2], (None, f"production is now none, not {V2}: nothing to roll back")),
        ({"version": V2, "previous_version": None}, [V2], (None, f"{V2} has no previous version to roll back to")),
        ({"version": V2, "previous_version": V1, "traffic": [{"version": V2, "share": 0.9}, {"version": "x", "share": 0.1}]},
         [V2], (None, f"a canary is running: a rollback would end the canary, not replace {V2}")),
        ({"version": V2, "previous_version": V1}, [V2, V1],
         (None, f"the previous version {V1} is below its own test accuracy too")),
    ],
)  # fmt: skip
def test_when_a_rollback_may_follow(current, alerting, expected):
    assert rollback_target(current, V2, alerting) == expected
