import datetime as dt
import json
from types import SimpleNamespace

import pytest

from pulse_pipeline.core.annotations import parse_record
from pulse_pipeline.core.examples import ExampleBuilder, formatter_version, segment_agrees
from pulse_pipeline.core.triage import ReviewStatus, triage
from pulse_pipeline_tests.core.test_annotations import valid

T0 = dt.datetime(2026, 5, 1, tzinfo=dt.UTC)


def rows(config, records):
    """Stored-annotation look-alikes, in arrival order."""
    out = []
    for i, rec in enumerate(records, start=1):
        ann = parse_record(rec, config)
        created = ann.created_at or T0 + dt.timedelta(minutes=i)
        out.append(
            SimpleNamespace(
                seq=i, id=ann.id, kind=ann.kind, payload=ann.payload, created_at=created, ingested_at=created
            )
        )
    return out


def build(config, family, records):
    builder = ExampleBuilder(config.family(family))
    for row in rows(config, records):
        builder.add(row)
    return builder


@pytest.mark.parametrize(
    ("changes", "status"),
    [
        ({"annotator": "amy"}, ReviewStatus.human_reviewed),
        ({"confidence": 0.9, "provider": "encoder"}, ReviewStatus.auto_approved),
        ({"confidence": 0.85, "provider": "encoder"}, ReviewStatus.needs_review),
        ({"confidence": 0.75, "provider": "encoder"}, ReviewStatus.needs_review),
        ({"confidence": 0.69, "provider": "encoder"}, ReviewStatus.priority_review),
        ({"confidence": 0.95, "provider": "llm_fallback"}, ReviewStatus.priority_review),
        ({"confidence": None}, ReviewStatus.needs_review),
    ],
)
def test_triage_routes_captures(config, changes, status):
    payload = {**valid("intent_label"), **changes}
    payload = {k: v for k, v in payload.items() if v is not None}
    assert triage("intent_label", payload, config.family("intent-router").triage) is status
    assert (
        triage("qa_pair", valid("qa_pair"), config.family("access-qa").triage) is ReviewStatus.human_reviewed
    )


def test_only_approved_and_reviewed_intents_become_examples(config):
    b = build(config, "intent-router", [
        valid("intent_label", text="a", annotator="amy"),
        valid("intent_label", text="b", confidence=0.95, provider="encoder"),
        valid("intent_label", text="c", confidence=0.75, provider="encoder"),
        valid("intent_label", text="d", confidence=0.5, provider="llm_fallback"),
    ])  # fmt: skip
    assert sorted(e.text for e in b.examples()) == ["a", "b"]
    assert b.stats.by_status == {
        "human_reviewed": 1,
        "auto_approved": 1,
        "needs_review": 1,
        "priority_review": 1,
    }
    [ex] = [e for e in b.examples() if e.text == "a"]
    assert ex.record(config.family("intent-router")) == {
        "id": ex.id,
        "text": "a",
        "label": "freeze_account",
        "weight": 1.0,
    }


def test_call_correction_is_a_full_call_chat(config):
    b = build(config, "call-analysis", [valid("call_correction")])
    [ex] = b.examples()
    system, user, assistant = ex.messages
    assert (
        system["role"] == "system" and system["content"] == config.family("call-analysis").prompts["system"]
    )
    assert user["content"].startswith("Analyse this call transcript")
    assert "[00:03] Customer: My card was charged twice." in user["content"]
    assert json.loads(assistant["content"])["sentiment"] == "negative"
    assert ex.weight == 1.0 and ex.group == "call:call-1"


def test_segment_review_names_the_segment_type_and_carries_corrected_timestamps(config):
    b = build(config, "call-analysis", [valid("segment_review")])
    [ex] = b.examples()
    assert ex.messages[1]["content"].startswith("COMPLIANCE FLAGS")
    assert "Agent: can I confirm your date of birth?" in ex.messages[1]["content"]
    answer = json.loads(ex.messages[2]["content"])
    assert answer == {
        "assessment": {"action_detected": True, "quality_impact": "positive"},
        "timestamp_start": 12.0,
        "timestamp_end": 15.5,
    }
    assert ex.weight == 1.0 and ex.stratum == "compliance_flag"


@pytest.mark.parametrize(
    ("changes", "weight"),
    [
        ({"disagreement_reason": ..., "original_timestamp_start": ..., "original_timestamp_end": ...}, 0.5),
        (
            {
                "disagreement_reason": "false_positive",
                "original_timestamp_start": ...,
                "original_timestamp_end": ...,
            },
            1.0,
        ),
        ({"disagreement_reason": ...}, 1.0),  # timestamps moved without a stated reason
        (
            {
                "disagreement_reason": ...,
                "original_timestamp_start": ...,
                "original_timestamp_end": ...,
                "trainer_assessment": {"action_detected": False},
            },
            1.0,
        ),
    ],
)
def test_segment_weights_follow_the_pulse_rules(config, changes, weight):
    record = valid("segment_review", **changes)
    assert segment_agrees(record) is (weight == 0.5)
    [ex] = build(config, "call-analysis", [record]).examples()
    assert ex.weight == weight


def test_qa_keeps_citation_markers_and_feedback_rules(config):
    b = build(config, "access-qa", [
        valid("qa_pair"),
        valid("feedback", query="q1", rating=1, corrected_response="Use ssh <<SRC:documentation:login>>"),
        valid("feedback", query="q2", rating=2, corrected_response=...),
        valid("feedback", query="q3", rating=5, corrected_response=...),
    ])  # fmt: skip
    answers = sorted(e.messages[2]["content"] for e in b.examples())
    assert answers == ["128 cores <<SRC:compute-resources:delta>>", "Use ssh <<SRC:documentation:login>>"]
    assert b.stats.negatives == 1 and b.stats.feedback_not_used == 1


def test_score_labels_are_vectors_in_dimension_order(config):
    family = config.family("article-scorer")
    scores = {d: float(i) for i, d in enumerate(family.dimensions)}
    [ex] = build(
        config, "article-scorer", [valid("score_label", scores=scores, group_id="article-7")]
    ).examples()
    record = ex.record(family)
    assert record["labels"] == [float(i) for i in range(8)] and record["dimension_names"] == list(
        family.dimensions
    )
    assert ex.group == "article:article-7" and ex.stratum == "mid"  # mean 3.5 of [0, 10]


def test_pii_is_redacted_everywhere_and_counted(config):
    b = build(config, "call-analysis", [valid(
        "call_correction",
        transcript=[{"speaker": "Customer", "text": "mail me at jane@example.com or 415-555-0132, card 4111 1111 1111 1111"}],
        corrected_output={"sentiment": "neutral", "summary": "sent to jane@example.com"},
    )])  # fmt: skip
    [ex] = b.examples()
    text = ex.messages[1]["content"] + ex.messages[2]["content"]
    assert "jane@example.com" not in text and "[EMAIL]" in text and "[PHONE]" in text and "[CARD]" in text
    assert b.stats.redactions == {"EMAIL": 2, "PHONE": 1, "CARD": 1}


def test_redaction_can_be_switched_off_per_family(config):
    family = config.family("intent-router")
    off = family.model_copy(update={"redaction": family.redaction.model_copy(update={"enabled": False})})
    builder = ExampleBuilder(off)
    for row in rows(config, [valid("intent_label", text="mail jane@example.com", annotator="a")]):
        builder.add(row)
    assert builder.examples()[0].text == "mail jane@example.com"
    assert formatter_version(off) != formatter_version(family)


def test_duplicates_collapse_to_the_latest_judgment(config):
    b = build(config, "intent-router", [
        valid("intent_label", text="Freeze my account", label="freeze_account", annotator="a", created_at="2026-05-01T10:00:00Z"),
        valid("intent_label", text="Freeze my account", label="report_fraud", annotator="b", created_at="2026-05-03T10:00:00Z"),
        valid("intent_label", text="freeze my account!", label="balance", annotator="c", created_at="2026-05-02T10:00:00Z"),
    ])  # fmt: skip
    [ex] = b.examples()
    assert ex.label == "report_fraud"  # the latest by created_at, though not the last to arrive
    assert (b.stats.exact_duplicates, b.stats.normalized_duplicates) == (1, 1)
